"""Gives every API request an id and a record, and writes its request-log row whatever happens."""

from __future__ import annotations

import io
import json
import time
import uuid

from django.conf import settings
from django.core.handlers.wsgi import LimitedStream
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
        if response.status_code >= 400 and not response.streaming:
            _name_request_in_error_body(response, record.request_id)
        if response.streaming:
            # The view returned before the answer was generated: the row waits for the stream's end.
            response.streaming_content = _RowWrittenWhenClosed(response.streaming_content, record)
        else:
            # Written when the server closes the response, i.e. once the client has it: the database
            # write stays off the client's latency (and out of the way of the next batch forming).
            # Django runs these closers on close(); WSGI servers and the test client always call it.
            response._resource_closers.append(lambda: request_finish(record=record))
        return response


def _name_request_in_error_body(response, request_id: uuid.UUID) -> None:
    """Add `request_id` to a JSON error body, as success bodies have it: a client quoting it finds the row.

    Done here, once, for every source of errors (the DRF exception handler, the body-size limit, Django's
    404 and 500 handlers, the OpenAI-shaped errors), after the body is rendered."""
    if response.get("Content-Type", "").split(";")[0].strip() != "application/json":
        return
    try:
        body = json.loads(response.content)
    except ValueError:
        return
    if isinstance(body, dict) and "request_id" not in body:
        body["request_id"] = str(request_id)
        response.content = json.dumps(body).encode()
        if response.has_header("Content-Length"):
            response["Content-Length"] = str(len(response.content))


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
    """413 for a body over VLM_MAX_BODY_BYTES, before anything parses it (DRF's parsers would read it all).

    With a Content-Length, nothing is read. A chunked body has none: it is read here, counting, and refused
    as soon as the count passes the limit; under the limit it is handed on as if it had come with a
    Content-Length (Django reads no body without one). Only where the server de-chunks and ends the stream
    with the body (gunicorn: `wsgi.input_terminated`); elsewhere reading could wait for the next request.
    """

    READ_SIZE = 64 * 1024

    def __init__(self, get_response) -> None:
        self.get_response = get_response

    def __call__(self, request):
        limit = settings.VLM_MAX_BODY_BYTES
        declared = request.META.get("CONTENT_LENGTH")
        if declared:
            if declared.isdigit() and int(declared) > limit:
                return _body_too_large(request, limit)
        elif _is_chunked(request):
            body = self._read_at_most(request.environ["wsgi.input"], limit)
            if body is None:
                return _body_too_large(request, limit)
            # Django keeps the body's stream in a private attribute, set up from CONTENT_LENGTH before any
            # middleware runs: replaced by the bytes read, with the length they turned out to have.
            request._stream = LimitedStream(io.BytesIO(body), len(body))
            request.META["CONTENT_LENGTH"] = str(len(body))
        return self.get_response(request)

    def _read_at_most(self, stream, limit: int) -> bytes | None:
        """The whole body, or None as soon as it is longer than `limit` (the rest is never read)."""
        chunks, size = [], 0
        while chunk := stream.read(self.READ_SIZE):
            size += len(chunk)
            if size > limit:
                return None
            chunks.append(chunk)
        return b"".join(chunks)


def _is_chunked(request) -> bool:
    encoding = request.META.get("HTTP_TRANSFER_ENCODING", "").lower()
    return "chunked" in encoding and bool(request.environ.get("wsgi.input_terminated"))


def _body_too_large(request, limit: int) -> JsonResponse:
    detail = f"request body is larger than {limit} bytes"
    record = getattr(request, "vlm_record", None)
    if record is not None:
        record.error_reason, record.error_detail = "too_large", detail
    return JsonResponse({"detail": detail}, status=413)
