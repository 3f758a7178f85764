"""Metrics settings as Django system checks (ids monitoring.*), reported by `manage.py check` and `migrate`."""

from __future__ import annotations

from django.conf import settings
from django.core.checks import Error, register

from .access import allowed_networks


@register()
def check_metrics_settings(app_configs, **kwargs):
    try:
        allowed_networks(settings.VLM_METRICS_ALLOWED_IPS)
    except ValueError as error:
        return [
            Error(
                f"VLM_METRICS_ALLOWED_IPS: {error}.",
                hint="Comma-separated addresses or CIDR networks, e.g. 127.0.0.1,10.0.0.0/8,::1",
                id="monitoring.E001",
            )
        ]
    return []
