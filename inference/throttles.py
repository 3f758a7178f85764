"""Rate limits per client, counted in the shared cache (Redis when CACHE_URL says so, so every worker shares them).

A client is its API key, else its staff user, else its address (the peer address, or the one the trusted
proxies put in X-Forwarded-For: REST_FRAMEWORK's NUM_PROXIES, from VLM_NUM_PROXIES; a client's own
X-Forwarded-For is ignored, or anyone could dodge the limit by inventing addresses).

Counts are fixed windows kept with atomic cache increments (INCR in Redis), so concurrent requests are counted
exactly: DRF's stock throttles read a list, append and write it back, and concurrent requests overwrite each
other's entries. The price is that a client may spend two windows' worth across a window boundary.
"""

from __future__ import annotations

import hashlib
import logging
import time

from django.conf import settings
from django.core.cache import cache
from rest_framework.request import Request
from rest_framework.throttling import BaseThrottle

from apikeys.rates import parse_rate

from .auth import is_staff_session, request_api_key

logger = logging.getLogger(__name__)

CACHE_PREFIX = "vlm-throttle"


class ClientRateThrottle(BaseThrottle):
    """VLM_RATE_LIMIT per key or staff user (a key's own `rate_limit` wins), VLM_ANON_RATE_LIMIT per address."""

    def __init__(self) -> None:
        self.seconds_to_wait: float | None = None

    def allow_request(self, request: Request, view) -> bool:
        client, rate_text = self._client_and_rate(request)
        rate = parse_rate(rate_text)  # the settings and the admin validated it
        if rate is None:
            return True
        limit, period = rate
        now = time.time()
        window = int(now // period)
        try:
            count = _count_request(f"{CACHE_PREFIX}:{client}:{period}:{window}", period)
        except Exception:  # the limiter fails open: a cache outage must not stop the model from serving
            logger.warning("rate limit not applied: the cache is unavailable", exc_info=True)
            return True
        if count <= limit:
            return True
        self.seconds_to_wait = (window + 1) * period - now
        return False

    def wait(self) -> float | None:
        """Seconds until the window ends (DRF's Retry-After)."""
        return self.seconds_to_wait

    def _client_and_rate(self, request: Request) -> tuple[str, str]:
        api_key = request_api_key(request)
        if api_key is not None:
            return f"key:{api_key.prefix}", api_key.rate_limit or settings.VLM_RATE_LIMIT
        if is_staff_session(request):
            return f"user:{request.user.pk}", settings.VLM_RATE_LIMIT
        # Hashed: an address from X-Forwarded-For is arbitrary text, a cache key must be short and plain.
        # No address at all (a Unix socket, some test clients) is one client too.
        address = hashlib.sha256((self.get_ident(request) or "").encode()).hexdigest()[:32]
        return f"addr:{address}", settings.VLM_ANON_RATE_LIMIT


def _count_request(key: str, period: int) -> int:
    """This request's number in its window. add() does nothing when the key exists; incr() is atomic."""
    cache.add(key, 0, timeout=period + 1)
    try:
        return cache.incr(key)
    except ValueError:  # the window's key expired between add() and incr()
        cache.add(key, 1, timeout=period + 1)
        return 1
