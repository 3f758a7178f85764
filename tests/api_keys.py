"""API keys for a test gunicorn server (tests.servers.gunicorn), made with the real management command."""

from __future__ import annotations

import os
import subprocess
import sys

from .servers import ROOT, Gunicorn


def _environment(server: Gunicorn) -> dict[str, str]:
    # The server's own SQLite database (tests.servers.gunicorn makes one per server).
    return {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{server.database}",
        "SECRET_KEY": os.environ.get("SECRET_KEY") or "test-secret-key",
    }


def create_api_key(server: Gunicorn, name: str, *, admin: bool = False, rate_limit: str = "") -> str:
    """A new key in the server's database, as `manage.py create_api_key` prints it."""
    command = [sys.executable, "manage.py", "create_api_key", name]
    if admin:
        command.append("--admin")
    if rate_limit:
        command += ["--rate-limit", rate_limit]
    done = subprocess.run(command, cwd=ROOT, env=_environment(server), check=True, capture_output=True, text=True)
    return done.stdout.strip()


def revoke_api_key(server: Gunicorn, key: str) -> None:
    """Revoke `key` with `manage.py revoke_api_key PREFIX`."""
    command = [sys.executable, "manage.py", "revoke_api_key", key.partition(".")[0]]
    subprocess.run(command, cwd=ROOT, env=_environment(server), check=True, capture_output=True)
