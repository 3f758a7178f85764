from __future__ import annotations

from django.apps import AppConfig


class APIKeysConfig(AppConfig):
    """Who may call the API: hashed API keys (djangorestframework-api-key), managed in the admin."""

    name = "apikeys"
    verbose_name = "API access"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from . import checks  # noqa: F401  (registers the system checks)
