"""Access settings as Django system checks (stable ids, hints), never crashes at import."""

from __future__ import annotations

from django.conf import settings
from django.core.checks import Error, Tags, Warning, register

from .rates import parse_rate


@register()
def check_rate_limits(app_configs, **kwargs):
    problems = []
    for name in ("VLM_RATE_LIMIT", "VLM_ANON_RATE_LIMIT"):
        try:
            parse_rate(getattr(settings, name))
        except ValueError as error:
            problems.append(
                Error(
                    f"{name}={getattr(settings, name)!r}: {error}",
                    hint="Use a count per period, e.g. 60/min, 10/s, 1000/hour or 5000/day; empty means no limit.",
                    id="apikeys.E001",
                )
            )
    return problems


@register(Tags.security, deploy=True)
def check_api_keys_required(app_configs, **kwargs):
    if settings.VLM_REQUIRE_API_KEY:
        return []
    return [
        Warning(
            "VLM_REQUIRE_API_KEY is off: anyone who can reach the server can use the model.",
            hint="Set VLM_REQUIRE_API_KEY=true and give each client a key (manage.py create_api_key NAME).",
            id="apikeys.W001",
        )
    ]
