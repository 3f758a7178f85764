"""The one place that turns errors into HTTP responses: `{"detail": ...}` with the right status.

Domain errors carry their status (inference.errors); DRF's validation errors are flattened into a
single detail that says what is wrong and where (`messages[2].content[0].image: ...`); anything
else is a 500 whose body says nothing about the internals (the traceback goes to the log).
"""

from __future__ import annotations

import logging

from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from .errors import Overloaded, VLMError

logger = logging.getLogger(__name__)

# DRF's own exceptions, as failure reasons for the metrics and the request log.
_DRF_REASONS = {
    exceptions.ValidationError: "validation",
    exceptions.ParseError: "validation",
    exceptions.UnsupportedMediaType: "validation",
    exceptions.NotAuthenticated: "unauthorized",
    exceptions.AuthenticationFailed: "unauthorized",
    exceptions.PermissionDenied: "forbidden",
    exceptions.Throttled: "throttled",
    exceptions.MethodNotAllowed: "method_not_allowed",
    exceptions.NotFound: "not_found",
}


def flatten_errors(detail, path: str = "") -> list[str]:
    """DRF's nested error structure as `path: message` lines."""
    if isinstance(detail, dict):
        lines = []
        for key, value in detail.items():
            if key == "non_field_errors":
                lines += flatten_errors(value, path)
            elif isinstance(key, int):  # list fields report errors by index
                lines += flatten_errors(value, f"{path}[{key}]")
            else:
                lines += flatten_errors(value, f"{path}.{key}" if path else str(key))
        return lines
    if isinstance(detail, list):
        if all(isinstance(item, str) for item in detail):
            return [f"{path}: {item}" if path else str(item) for item in detail]
        lines = []
        for index, item in enumerate(detail):
            lines += flatten_errors(item, f"{path}[{index}]")
        return lines
    return [f"{path}: {detail}" if path else str(detail)]


def _record_failure(request, reason: str, detail: str) -> None:
    record = getattr(request, "vlm_record", None)
    if record is not None:
        record.error_reason, record.error_detail = reason, detail


def api_exception_handler(exc, context):
    request = context.get("request")
    headers = {}
    if isinstance(exc, VLMError):
        detail, status_code, reason = exc.detail, exc.status_code, exc.reason
        if isinstance(exc, Overloaded):
            headers["Retry-After"] = str(exc.retry_after)
    elif isinstance(exc, exceptions.ValidationError):
        detail, status_code, reason = "; ".join(flatten_errors(exc.detail)), 400, "validation"
    elif isinstance(exc, exceptions.APIException):
        response = drf_exception_handler(exc, context)
        reason = next((r for cls, r in _DRF_REASONS.items() if isinstance(exc, cls)), "client_error")
        detail = "; ".join(flatten_errors(exc.detail))
        _record_failure(request, reason, detail)
        response.data = {"detail": detail}
        return response
    else:
        logger.exception("unhandled error")
        detail, status_code, reason = VLMError.default_detail, status.HTTP_500_INTERNAL_SERVER_ERROR, "internal"
        _record_failure(request, reason, f"{type(exc).__name__}: {exc}")
        return Response({"detail": detail}, status=status_code)
    _record_failure(request, reason, detail)
    return Response({"detail": detail}, status=status_code, headers=headers)
