"""API keys: hashed by djangorestframework-api-key (only an 8-character prefix is stored in clear)."""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.db import models
from rest_framework_api_key.models import AbstractAPIKey

from .rates import parse_rate


def validate_rate(value: str) -> None:
    try:
        parse_rate(value)
    except ValueError as error:
        raise ValidationError(str(error)) from None


class APIKey(AbstractAPIKey):
    """One client's key. Revoking is final; `expiry_date` ends it at a set time."""

    is_admin = models.BooleanField(
        "admin",
        default=False,
        help_text="May also call the control endpoints (POST /clear_vram).",
    )
    rate_limit = models.CharField(
        max_length=20,
        blank=True,
        validators=[validate_rate],
        help_text="Requests this key may make per period, e.g. 600/min; empty: the server's VLM_RATE_LIMIT.",
    )
