"""Noticing that an HTTP client has gone away while its request waits for the model.

WSGI gives no disconnect signal, but gunicorn exposes the client socket in the environ
(`gunicorn.socket`). A socket that is readable yet yields no bytes on a peek has been closed by
the peer. (A readable socket with bytes is a pipelined next request, not a disconnect.)
"""

from __future__ import annotations

import select
import socket
from collections.abc import Callable


def client_gone_check(environ: dict) -> Callable[[], bool] | None:
    """A cheap `() -> bool` for the request's client socket, or None where the server gives no socket."""
    sock = environ.get("gunicorn.socket")
    if not isinstance(sock, socket.socket):
        return None

    def client_gone() -> bool:
        try:
            readable, _, _ = select.select([sock], [], [], 0)
            if not readable:
                return False
            return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except BlockingIOError:
            return False
        except OSError:
            return True

    return client_gone
