"""Configuration problems as Django system checks, with stable ids and hints (never crashes at import)."""

from __future__ import annotations

import os

from django.conf import settings
from django.core.checks import Error, Warning, register


@register()
def check_vlm_settings(app_configs, **kwargs):
    problems = []
    if settings.VLM_DEVICE not in ("auto", "cpu", "cuda"):
        problems.append(
            Error(f"VLM_DEVICE={settings.VLM_DEVICE!r} is not one of auto, cpu, cuda.", id="inference.E001")
        )
    root = settings.VLM_ALLOWED_MEDIA_ROOT
    if root and not os.path.isdir(root):
        problems.append(
            Error(
                f"VLM_ALLOWED_MEDIA_ROOT={root!r} is not a directory.",
                hint="Create it, or unset VLM_ALLOWED_MEDIA_ROOT to refuse file paths.",
                id="inference.E002",
            )
        )
    if not 0 < settings.VLM_VRAM_THRESHOLD <= 1:
        problems.append(Error("VLM_VRAM_THRESHOLD must be in (0, 1].", id="inference.E003"))
    if settings.VLM_ALLOW_PRIVATE_MEDIA_URLS:
        problems.append(
            Warning(
                "VLM_ALLOW_PRIVATE_MEDIA_URLS is on: clients can make the server fetch loopback and private addresses.",
                hint="Leave it off outside tests and closed networks.",
                id="inference.W001",
            )
        )
    return problems
