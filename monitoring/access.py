"""Who may scrape /metrics, as DRF policy classes: an optional address allowlist and an optional bearer token.

Both are off by default (Prometheus expects an open endpoint); when both are set, a scraper needs both.
"""

from __future__ import annotations

import hmac
import ipaddress

from django.conf import settings
from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication
from rest_framework.permissions import BasePermission
from rest_framework.request import Request

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def allowed_networks(entries: list[str]) -> list[Network]:
    """VLM_METRICS_ALLOWED_IPS as networks (a bare address is a network of one); ValueError if malformed."""
    return [ipaddress.ip_network(entry.strip(), strict=False) for entry in entries]


def address_allowed(address: str | None, networks: list[Network]) -> bool:
    """True when no networks are configured, or when `address` lies in one of them."""
    if not networks:
        return True
    try:
        client = ipaddress.ip_address(address or "")
    except ValueError:
        return False
    # gunicorn bound to `::` reports IPv4 clients as ::ffff:a.b.c.d; the allowlist names them as IPv4.
    if client.version == 6 and client.ipv4_mapped:
        client = client.ipv4_mapped
    return any(client in network for network in networks)


class MetricsBearerToken(BaseAuthentication):
    """`Authorization: Bearer <VLM_METRICS_TOKEN>`, looked at only when a token is configured."""

    def authenticate(self, request: Request) -> tuple[None, str] | None:
        expected = settings.VLM_METRICS_TOKEN
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if not expected or scheme.lower() != "bearer":
            return None
        # Constant time, so that response times do not tell a prober how much of the token it has right.
        if not hmac.compare_digest(token.strip().encode(), expected.encode()):
            raise exceptions.AuthenticationFailed("Invalid metrics token.")
        return None, "metrics-token"

    def authenticate_header(self, request: Request) -> str:
        return 'Bearer realm="metrics"'


class MetricsScrapeAllowed(BasePermission):
    """From an allowed address (else 403), with the token when one is configured (else 401)."""

    def has_permission(self, request: Request, view) -> bool:
        networks = allowed_networks(settings.VLM_METRICS_ALLOWED_IPS)
        if not address_allowed(request.META.get("REMOTE_ADDR"), networks):
            raise exceptions.PermissionDenied("Metrics are not served to this address.")
        return not settings.VLM_METRICS_TOKEN or request.successful_authenticator is not None
