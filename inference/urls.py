from django.urls import path

from . import views

urlpatterns = [
    path("health", views.HealthApi.as_view(), name="health"),
    path("vram_status", views.VramStatusApi.as_view(), name="vram-status"),
    path("api/v1/generate", views.GenerateApi.as_view(), name="generate"),
    path("clear_vram", views.ClearVramApi.as_view(), name="clear-vram"),
]
