from __future__ import annotations

from django.contrib import admin
from rest_framework_api_key.admin import APIKeyModelAdmin
from rest_framework_api_key.models import APIKey as LibraryAPIKey

from .models import APIKey

# The library registers its own stock model, which this project does not use: one "API keys" page only.
if admin.site.is_registered(LibraryAPIKey):
    admin.site.unregister(LibraryAPIKey)


@admin.register(APIKey)
class APIKeyAdmin(APIKeyModelAdmin):
    """Create (the key is shown once, in a message), revoke (final) and expire keys."""

    list_display = ("prefix", "name", "is_admin", "rate_limit", "created", "expiry_date", "_has_expired", "revoked")
    list_filter = ("is_admin", "revoked", "created")
