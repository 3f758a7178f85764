"""Gives every API request an id and a record, and writes its request-log row whatever happens."""

from __future__ import annotations

import time
import uuid

from django.http import JsonResponse
from django.utils import timezone

from .services import RequestRecord, request_finish

# Paths whose requests are recorded; /health, /metrics, the admin and static files are not.
LOGGED_PREFIXES = ("/api/", "/v1/", "/clear_vram", "/vram_status")


def _request_id(header: str | None) -> uuid.UUID:
    """A client-sent X-Request-ID is kept when it is a valid UUID, so traces line up across services."""
    if header:
        try:
            return uuid.UUID(header)
        except ValueError:
            pass
    return uuid.uuid4()


class RequestLogMiddleware:
    def __init__(self, get_response) -> None:
        self.get_response = get_response

    def __call__(self, request):
        if not request.path.startswith(LOGGED_PREFIXES):
            return self.get_response(request)
        record = RequestRecord(
            request_id=_request_id(request.headers.get("X-Request-ID")),
            received_at=timezone.now(),
            received_monotonic=time.monotonic(),
            endpoint=request.path[:100],
            method=request.method,
            client_ip=request.META.get("REMOTE_ADDR") or None,
        )
        request.vlm_record = record
        response = self.get_response(request)
        record.status_code = response.status_code
        if response.status_code == 404 and not record.error_reason:
            record.error_reason, record.error_detail = "not_found", "no such endpoint"
        response["X-Request-ID"] = str(record.request_id)
        if response.streaming:
            # The view returned before the answer was generated: the row waits for the stream's end.
            response.streaming_content = _RowWrittenWhenClosed(response.streaming_content, record)
        else:
            request_finish(record=record)
        return response


class _RowWrittenWhenClosed:
    """A streamed body that writes the request's row when the server closes it: after the last event,
    or after the client went away (the server closes the body on a failed write; by then the stream
    has recorded what happened). WSGI servers always call close(), so the row is never lost."""

    def __init__(self, content, record: RequestRecord) -> None:
        self._content = content
        self._record = record
        self._written = False

    def __iter__(self):
        return iter(self._content)

    def close(self) -> None:
        # Django calls this after the view's own body was closed (closers run in the order added).
        if not self._written:
            self._written = True
            request_finish(record=self._record)


class BodySizeLimitMiddleware:
    """413 before the body is read or parsed, from Content-Length (DRF parsers alone would read it)."""

    def __init__(self, get_response) -> None:
        self.get_response = get_response

    def __call__(self, request):
        from django.conf import settings

        length = request.META.get("CONTENT_LENGTH")
        if length and length.isdigit() and int(length) > settings.VLM_MAX_BODY_BYTES:
            record = getattr(request, "vlm_record", None)
            detail = f"request body is larger than {settings.VLM_MAX_BODY_BYTES} bytes"
            if record is not None:
                record.error_reason, record.error_detail = "too_large", detail
            return JsonResponse({"detail": detail}, status=413)
        return self.get_response(request)
