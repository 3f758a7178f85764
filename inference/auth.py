"""Who is calling and what they may do: API keys and staff sessions, as DRF policy classes.

These classes are the REST_FRAMEWORK defaults (settings.py), so every API view, the OpenAI-compatible ones
included, is covered without declaring anything; a view opts out explicitly (only /health does) or asks for
more (/clear_vram: `AdminKeyOrStaff`).

- A key comes as `Authorization: Bearer <key>`, `X-API-Key: <key>` or the library's `Authorization: Api-Key
  <key>`. No key means anonymous, and the permissions decide. A key of this server's shape that is unknown,
  revoked or expired is refused (401) at once, even where keys are optional, so a client with a broken key
  finds out instead of silently being served as anonymous. Any other string ("EMPTY", "sk-...") is refused
  where keys are required and ignored where they are not: OpenAI clients must send some key, and vLLM's
  documentation has them send "EMPTY".
- A staff user's admin session counts too (DRF's SessionAuthentication, which enforces CSRF on POST: browser
  code must send the `X-CSRFToken` header).
- Without credentials the answer is 401 with `WWW-Authenticate: Bearer` (DRF's convention); with credentials
  that are valid but not enough (a plain key on /clear_vram), 403.
"""

from __future__ import annotations

import re

from django.conf import settings
from rest_framework.authentication import BaseAuthentication
from rest_framework.exceptions import AuthenticationFailed, NotAuthenticated
from rest_framework.permissions import BasePermission
from rest_framework.request import Request

from apikeys.models import APIKey

# The shape of the keys KeyGenerator makes: an 8-character prefix, a dot, a 32-character secret.
_KEY_SHAPE = re.compile(r"[A-Za-z0-9]{8}\.[A-Za-z0-9]{32}")
_KEY_SCHEMES = ("bearer", "api-key")
INVALID_KEY = "Invalid API key."


class APIKeyAuthentication(BaseAuthentication):
    """Authenticates a request by its API key; fills the request log's `api_key` with the key's name."""

    def authenticate(self, request: Request) -> tuple[None, APIKey] | None:
        presented = presented_key(request)
        if presented is None:
            return None
        if not _KEY_SHAPE.fullmatch(presented):  # not one of ours: never asks the database
            if settings.VLM_REQUIRE_API_KEY:
                raise AuthenticationFailed(INVALID_KEY)
            return None  # a placeholder, as OpenAI clients send when the server wants no key
        api_key = _usable_key(presented)
        record = getattr(request, "vlm_record", None)
        if record is not None:
            record.api_key = api_key.name
        return None, api_key

    def authenticate_header(self, request: Request) -> str:
        return 'Bearer realm="api"'


def presented_key(request: Request) -> str | None:
    """The key a request carries, or None when it carries none (other Authorization schemes are not keys)."""
    header = request.META.get("HTTP_X_API_KEY")
    if header is not None:
        return header.strip()
    scheme, _, credentials = request.META.get("HTTP_AUTHORIZATION", "").strip().partition(" ")
    if scheme.lower() in _KEY_SCHEMES:
        return credentials.strip()
    return None


def _usable_key(presented: str) -> APIKey:
    try:
        # One query by prefix (revoked keys excluded), then a constant-time comparison of the hashes.
        api_key = APIKey.objects.get_from_key(presented)
    except APIKey.DoesNotExist:
        raise AuthenticationFailed(INVALID_KEY) from None
    if api_key.has_expired:
        # Only the holder of the whole secret gets this far, so saying why leaks nothing.
        raise AuthenticationFailed("This API key has expired.")
    return api_key


def request_api_key(request: Request) -> APIKey | None:
    """The request's authenticated API key, if it came with one."""
    return request.auth if isinstance(request.auth, APIKey) else None


def is_staff_session(request: Request) -> bool:
    user = request.user
    return bool(user is not None and user.is_active and user.is_staff)


class APIKeyRequiredWhenConfigured(BasePermission):
    """With VLM_REQUIRE_API_KEY: a valid key or a staff session. Without it: anyone."""

    message = "An API key is required; the session of a user who is not staff does not count."

    def has_permission(self, request: Request, view) -> bool:
        if not settings.VLM_REQUIRE_API_KEY or request_api_key(request) is not None or is_staff_session(request):
            return True
        if request.user is None:
            raise NotAuthenticated(
                "An API key is required: send it as `Authorization: Bearer <key>` or `X-API-Key: <key>`."
            )
        return False  # a signed-in user who is not staff: 403


class AdminKeyOrStaff(BasePermission):
    """An admin key (`manage.py create_api_key NAME --admin`) or a staff session, whatever VLM_REQUIRE_API_KEY says."""

    message = "This endpoint needs an admin API key or a staff session."

    def has_permission(self, request: Request, view) -> bool:
        api_key = request_api_key(request)
        if (api_key is not None and api_key.is_admin) or is_staff_session(request):
            return True
        if api_key is None and request.user is None:
            raise NotAuthenticated(f"{self.message} Send the key as `Authorization: Bearer <key>`.")
        return False
