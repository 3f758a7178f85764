from django.contrib import admin
from django.http import JsonResponse
from django.urls import include, path

from inference.dashboard import request_log_dashboard_view

urlpatterns = [
    path("", include("inference.urls")),
    path("", include("monitoring.urls")),  # GET /metrics
    # Before admin/: the admin's catch-all would answer this path with a 404.
    path("admin/dashboard/", admin.site.admin_view(request_log_dashboard_view), name="request-log-dashboard"),
    path("admin/", admin.site.urls),
]


def json_not_found(request, exception=None):
    return JsonResponse({"detail": "Not found."}, status=404)


def json_server_error(request):
    return JsonResponse({"detail": "Internal server error."}, status=500)


handler404 = json_not_found
handler500 = json_server_error
