from django.urls import path

from . import openai_api, views
from .playground import playground_view

urlpatterns = [
    path("", playground_view, name="playground"),
    path("health", views.HealthApi.as_view(), name="health"),
    path("vram_status", views.VramStatusApi.as_view(), name="vram-status"),
    path("api/v1/generate", views.GenerateApi.as_view(), name="generate"),
    path("clear_vram", views.ClearVramApi.as_view(), name="clear-vram"),
    path("v1/chat/completions", openai_api.ChatCompletionsApi.as_view(), name="openai-chat-completions"),
    path("v1/models", openai_api.ModelsApi.as_view(), name="openai-models"),
    path("v1/models/<path:model>", openai_api.ModelApi.as_view(), name="openai-model"),
]
