"""The request dashboard: an admin page with charts of the request log over the last hour, day or week.

Served at /admin/dashboard/ through `admin.site.admin_view` (staff only; others go to the admin
login), for users who may view the request log. The numbers come from one selector; the page embeds
them as JSON and Chart.js (from npm, see package.json) draws them in the browser.
"""

from __future__ import annotations

from dataclasses import asdict

from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse

from .selectors import DASHBOARD_WINDOWS, DEFAULT_DASHBOARD_WINDOW, Dashboard, request_log_dashboard


def request_log_dashboard_view(request: HttpRequest) -> HttpResponse:
    if not request.user.has_perm("inference.view_requestlog"):
        raise PermissionDenied
    window = DASHBOARD_WINDOWS.get(request.GET.get("window", ""), DASHBOARD_WINDOWS[DEFAULT_DASHBOARD_WINDOW])
    dashboard = request_log_dashboard(window=window)
    context = {
        **admin.site.each_context(request),
        "title": "Request dashboard",
        "dashboard": dashboard,
        "chart_data": dashboard_chart_data(dashboard),
        "windows": DASHBOARD_WINDOWS.values(),
    }
    return TemplateResponse(request, "admin/inference/dashboard.html", context)


def dashboard_chart_data(dashboard: Dashboard) -> dict:
    """What the page's script draws, as plain JSON-able values."""
    return {
        "window": dashboard.window.key,
        "bucketSeconds": dashboard.window.bucket_s,
        "start": dashboard.start.isoformat(),
        "end": dashboard.end.isoformat(),
        **asdict(dashboard.series),
    }
