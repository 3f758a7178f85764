"""`manage.py revoke_api_key PREFIX`: revoke a key for good (the admin's "revoked" box does the same)."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from apikeys.models import APIKey


class Command(BaseCommand):
    # No system checks: they import the model stack (seconds) and concern serving, not keys.
    requires_system_checks: list = []
    help = "Revoke an API key, given its prefix (the 8 characters before the dot, shown in the admin)."

    def add_arguments(self, parser) -> None:
        parser.add_argument("prefix")

    def handle(self, *args, prefix: str, **options) -> None:
        try:
            api_key = APIKey.objects.get(prefix=prefix)
        except APIKey.DoesNotExist:
            raise CommandError(f"no API key has the prefix {prefix!r}") from None
        if api_key.revoked:
            self.stderr.write(f"The key {api_key.name!r} ({prefix}) was already revoked.")
            return
        api_key.revoked = True
        api_key.save(update_fields=["revoked"])
        self.stderr.write(f"Revoked the key {api_key.name!r} ({prefix}).")
