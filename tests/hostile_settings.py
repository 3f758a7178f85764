"""Settings for the hostile suite's gunicorn: the real settings, plus one fake DNS answer.

The suite needs a media host that passes the public-address rule yet is served by a local test origin,
to play a public server under an attacker's control (it redirects to loopback, trickles, lies about its
length). So `PUBLIC_LOOKING_HOST` resolves to 127.0.0.1 and that one answer is declared public; every
other name, and every redirect hop to another host, goes through the real resolution and the real check.
"""

from __future__ import annotations

import ipaddress

from inference import media
from vlmsite.settings import *  # noqa: F403

PUBLIC_LOOKING_HOST = "media.public-looking.test"

_real_resolve_checked = media._resolve_checked


def _resolve_checked(target, policy, deadline):
    if target.host == PUBLIC_LOOKING_HOST:
        return [ipaddress.ip_address("127.0.0.1")]
    return _real_resolve_checked(target, policy, deadline)


media._resolve_checked = _resolve_checked
