from django.contrib import admin
from django.http import JsonResponse
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from inference.dashboard import request_log_dashboard_view
from inference.openai_api import openai_error_body

urlpatterns = [
    path("", include("inference.urls")),
    # The OpenAPI schema and Swagger UI (files from drf-spectacular-sidecar, no CDN); open, like /health.
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/schema/swagger-ui/", SpectacularSwaggerView.as_view(url_name="schema"), name="swagger-ui"),
    path("", include("monitoring.urls")),  # GET /metrics
    # Before admin/: the admin's catch-all would answer this path with a 404.
    path("admin/dashboard/", admin.site.admin_view(request_log_dashboard_view), name="request-log-dashboard"),
    path("admin/", admin.site.urls),
]


def json_bad_request(request, exception=None):
    # Django's own refusals (a Host not in ALLOWED_HOSTS, say): no HTML, and nothing about the cause.
    return JsonResponse({"detail": "Bad request."}, status=400)


def json_forbidden(request, exception=None):
    return JsonResponse({"detail": "Forbidden."}, status=403)


def json_not_found(request, exception=None):
    if request.path.startswith("/v1/"):  # the OpenAI-compatible API's clients parse OpenAI's error shape
        return JsonResponse(openai_error_body("Not found.", status=404, code="not_found"), status=404)
    return JsonResponse({"detail": "Not found."}, status=404)


def json_server_error(request):
    return JsonResponse({"detail": "Internal server error."}, status=500)


handler400 = json_bad_request
handler403 = json_forbidden
handler404 = json_not_found
handler500 = json_server_error
