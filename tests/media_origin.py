"""A real local HTTP origin for media tests: serves files and misbehaves on purpose.

Usage:
    with MediaOrigin({"/cat.png": ("image/png", png_bytes)}) as origin:
        load_image(origin.url("/cat.png"), policy)

Built-in endpoints (besides the files given):
    /redirect?to=<url>     302 to <url> (absolute or relative)
    /chain/<n>?to=<url>    a chain of n redirects ending at <url>
    /status/<code>         an empty response with that status
    /trickle               200, Content-Length 1000, then 1 byte every 0.5 s
    /slow-headers          a status line, then a header at 1 byte every 0.5 s
    /oversize?size=<n>     n bytes with no Content-Length (the body ends when the connection closes)
    /lying-length?size=<n> claims Content-Length 100, then writes n bytes
    /huge-length           claims Content-Length 10**12, sends nothing more
    /playlist-type         an image body served as application/vnd.apple.mpegurl
Every request is recorded in `origin.requests` as (path, Host header). With `tls=(certfile, keyfile)`
the origin speaks HTTPS and `base_url` names it https://localhost.
"""

from __future__ import annotations

import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class MediaOrigin:
    def __init__(
        self,
        files: dict[str, tuple[str, bytes]] | None = None,
        tls: tuple[str, str] | None = None,
    ) -> None:
        self.files = dict(files or {})
        self.requests: list[tuple[str, str | None]] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.base_url = f"http://127.0.0.1:{self.port}"
        if tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*tls)
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
            self.base_url = f"https://localhost:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        return self.base_url + path

    def __enter__(self) -> MediaOrigin:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._server.shutdown()
        self._server.server_close()


def _handler_for(origin: MediaOrigin) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:  # keep pytest output quiet
            pass

        def do_GET(self) -> None:
            origin.requests.append((self.path, self.headers.get("Host")))
            parts = urllib.parse.urlsplit(self.path)
            query = dict(urllib.parse.parse_qsl(parts.query))
            name, _, argument = parts.path.lstrip("/").partition("/")
            if parts.path in origin.files:
                content_type, body = origin.files[parts.path]
                self._send(200, body, content_type)
            elif name == "redirect":
                self._redirect(query["to"])
            elif name == "chain":
                hops = int(argument)
                target = query["to"] if hops <= 1 else f"/chain/{hops - 1}?" + urllib.parse.urlencode(query)
                self._redirect(target)
            elif name == "status":
                self._send(int(argument), b"")
            elif name == "trickle":
                self._trickle(self._start_body)
            elif name == "slow-headers":
                self._trickle(self._start_headers)
            elif name in ("oversize", "lying-length"):
                self._flood(int(query["size"]), claimed_length=100 if name == "lying-length" else None)
            elif name == "huge-length":
                self.send_response(200)
                self.send_header("Content-Length", str(10**12))
                self.end_headers()
            elif name == "playlist-type":
                self._send(200, b"\x89PNG not really", "application/vnd.apple.mpegurl")
            else:
                self._send(404, b"")

        def _send(self, status: int, body: bytes, content_type: str = "application/octet-stream") -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _redirect(self, location: str) -> None:
            self.send_response(302)
            self.send_header("Location", location)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def _start_body(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()

        def _start_headers(self) -> None:
            self.wfile.write(b"HTTP/1.1 200 OK\r\nX-Slow: ")

        def _trickle(self, start: Callable[[], None]) -> None:
            start()
            try:
                for _ in range(1000):
                    self.wfile.write(b"x")
                    self.wfile.flush()
                    time.sleep(0.5)
            except OSError:  # the client gave up, as it should
                pass

        def _flood(self, size: int, claimed_length: int | None) -> None:
            self.close_connection = True
            self.send_response(200)
            if claimed_length is not None:
                self.send_header("Content-Length", str(claimed_length))
            self.send_header("Connection", "close")
            self.end_headers()
            try:
                chunk = b"\0" * 65536
                for _ in range(0, size, len(chunk)):
                    self.wfile.write(chunk)
            except OSError:
                pass

    return Handler
