"""`manage.py create_api_key NAME [--admin] [--rate-limit 600/min] [--expires-in-days N]`.

Prints the key alone on stdout (so `KEY=$(manage.py create_api_key ci)` works) and what was created on
stderr. Only a hash is stored: the key cannot be shown again. Revoke it in the admin or with
`manage.py revoke_api_key PREFIX`.
"""

from __future__ import annotations

from datetime import timedelta

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from apikeys.models import APIKey


class Command(BaseCommand):
    # No system checks: they import the model stack (seconds) and concern serving, not keys.
    requires_system_checks: list = []
    help = "Create an API key and print it (once)."

    def add_arguments(self, parser) -> None:
        parser.add_argument("name", help="Who the key is for; the request log shows this name.")
        parser.add_argument("--admin", action="store_true", help="Also allow the control endpoints (/clear_vram).")
        parser.add_argument(
            "--rate-limit", default="", help="This key's own rate, e.g. 600/min (default: VLM_RATE_LIMIT)."
        )
        parser.add_argument("--expires-in-days", type=int, default=None, help="Expire the key after this many days.")

    def handle(self, *args, name: str, admin: bool, rate_limit: str, expires_in_days: int | None, **options) -> None:
        api_key = APIKey(name=name, is_admin=admin, rate_limit=rate_limit)
        if expires_in_days is not None:
            if expires_in_days < 1:
                raise CommandError("--expires-in-days must be at least 1")
            api_key.expiry_date = timezone.now() + timedelta(days=expires_in_days)
        try:
            api_key.full_clean(exclude=["id", "prefix", "hashed_key"])
        except ValidationError as error:
            raise CommandError(
                "; ".join(f"{field}: {' '.join(messages)}" for field, messages in error.message_dict.items())
            ) from None
        key = APIKey.objects.assign_key(api_key)
        api_key.save()
        kind = "admin key" if admin else "key"
        self.stderr.write(f"Created {kind} {name!r} (prefix {api_key.prefix}). Store it now: it cannot be shown again.")
        self.stdout.write(key)
