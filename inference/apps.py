from __future__ import annotations

import os
import sys

from django.apps import AppConfig


def serving_http() -> bool:
    """True in a process that answers HTTP: gunicorn (via wsgi.py) or runserver's serving child."""
    if os.environ.get("VLM_SERVING") == "1":
        return True
    if "runserver" not in sys.argv:
        return False
    # With the autoreloader, only the child (RUN_MAIN=true) serves; the parent just watches files.
    return "--noreload" in sys.argv or os.environ.get("RUN_MAIN") == "true"


class InferenceConfig(AppConfig):
    name = "inference"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Light and idempotent: start the model loading in a background thread, and only where HTTP
        # is served (not for migrate, shell or tests, which load it explicitly through a fixture).
        from . import checks  # noqa: F401  (registers the system checks)

        if serving_http():
            from django.urls import get_resolver

            from .runtime import runtime

            # Import the views now, before the loader thread starts importing transformers' processor
            # modules: otherwise the first request waits on Python's import lock for the whole load,
            # and /health could not answer "loading".
            get_resolver().url_patterns  # noqa: B018
            runtime.start_loading()
