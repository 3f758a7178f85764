"""Production settings: `manage.py check --deploy` is clean with README's production environment, each of its
settings is needed, and the server refuses to start without a SECRET_KEY when DEBUG is off."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from django.core.checks import run_checks

from .servers import ROOT

STRONG_SECRET = "kq3V8pX0mZ7rT2wL9sN4bY6cH1jF5dG8aE3uR7iO0pK2lM9nB4vC6xZ1qW5eT8yU"
# README's production environment ("Production settings").
PRODUCTION = {
    "DEBUG": "false",
    "SECRET_KEY": STRONG_SECRET,
    "ALLOWED_HOSTS": "vlm.example.com",
    "CSRF_TRUSTED_ORIGINS": "https://vlm.example.com",
    "SECURE_SSL_REDIRECT": "true",
    "SECURE_PROXY_SSL_HEADER": "HTTP_X_FORWARDED_PROTO,https",
    "VLM_REQUIRE_API_KEY": "true",
}


def run_manage(*args: str, **env: str) -> subprocess.CompletedProcess:
    # Only the variables given (plus PATH and HOME): nothing leaks in from the developer's shell, and the
    # checkout's .env (a development SECRET_KEY) is overridden wherever it matters.
    environment = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root"), **env}
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=environment, capture_output=True, text=True, timeout=120
    )


def test_check_deploy_is_clean_with_the_production_environment():
    done = run_manage("check", "--deploy", "--fail-level", "WARNING", **PRODUCTION)
    assert done.returncode == 0, done.stdout + done.stderr
    # security.W021 (HSTS preload) is silenced on purpose: see settings.py.
    assert "System check identified no issues (1 silenced)." in done.stdout


def test_the_defaults_are_the_production_ones_where_plain_http_allows():
    script = "import json, vlmsite.settings as s; print(json.dumps({n: getattr(s, n) for n in dir(s) if n.isupper()}, default=str))"
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env={"PATH": os.environ["PATH"], "SECRET_KEY": STRONG_SECRET},
        capture_output=True,
        text=True,
        timeout=60,
    )
    defaults = json.loads(done.stdout.splitlines()[-1])
    assert defaults["DEBUG"] is False
    assert defaults["SESSION_COOKIE_SECURE"] is True and defaults["CSRF_COOKIE_SECURE"] is True
    assert defaults["SECURE_HSTS_SECONDS"] == 31_536_000 and defaults["SECURE_HSTS_INCLUDE_SUBDOMAINS"] is True
    assert defaults["SECURE_SSL_REDIRECT"] is False and defaults["SECURE_PROXY_SSL_HEADER"] is None
    assert defaults["VLM_REQUIRE_API_KEY"] is False and defaults["VLM_RATE_LIMIT"] == ""


def test_no_secret_key_with_debug_off_refuses_to_start():
    done = run_manage("check", SECRET_KEY="", DEBUG="false")
    assert done.returncode != 0
    assert "ImproperlyConfigured: SECRET_KEY is not set (and DEBUG is off)." in done.stderr


@pytest.mark.parametrize(
    "change, check_id",
    [
        ({"DEBUG": True}, "security.W018"),
        ({"SECRET_KEY": "django-insecure-short"}, "security.W009"),
        ({"ALLOWED_HOSTS": []}, "security.W020"),
        ({"SECURE_SSL_REDIRECT": False}, "security.W008"),
        ({"SESSION_COOKIE_SECURE": False}, "security.W012"),
        ({"CSRF_COOKIE_SECURE": False}, "security.W016"),
        ({"SECURE_HSTS_SECONDS": 0}, "security.W004"),
        ({"VLM_REQUIRE_API_KEY": False}, "apikeys.W001"),
        ({"VLM_ALLOW_PRIVATE_MEDIA_URLS": True}, "inference.W001"),
    ],
)
def test_each_production_setting_is_needed(settings, change, check_id):
    settings.DEBUG, settings.SECRET_KEY, settings.ALLOWED_HOSTS = False, STRONG_SECRET, ["vlm.example.com"]
    settings.SECURE_SSL_REDIRECT, settings.VLM_REQUIRE_API_KEY = True, True
    assert reported(tags=["security"]) == []
    for name, value in change.items():
        setattr(settings, name, value)
    assert check_id in reported()


def reported(**kwargs) -> list[str]:
    """Ids of the deployment checks' issues, as `check --deploy` lists them (without the silenced)."""
    from django.conf import settings

    issues = run_checks(include_deployment_checks=True, **kwargs)
    return [issue.id for issue in issues if issue.id not in settings.SILENCED_SYSTEM_CHECKS]
