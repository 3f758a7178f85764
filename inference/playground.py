"""The playground at `/`: a page where a person tries the model in a browser.

The page is static apart from a few settings; its script (static/playground/playground.js) talks to
the OpenAI-compatible API like any client, with the API key typed into the page, so the page itself
grants nothing. VLM_PLAYGROUND=false turns it off.
"""

from __future__ import annotations

from django.conf import settings
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from .openai_api import served_model_name


@require_GET
def playground_view(request: HttpRequest) -> HttpResponse:
    if not settings.VLM_PLAYGROUND:
        raise Http404("the playground is turned off")
    context = {
        "model": served_model_name(),
        "max_tokens": settings.VLM_MAX_NEW_TOKENS,
        "max_tokens_limit": settings.VLM_MAX_NEW_TOKENS_LIMIT,
        "temperature": settings.VLM_DEFAULT_TEMPERATURE,
    }
    return render(request, "playground.html", context)
