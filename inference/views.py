"""Thin API views: validate with a serializer, call one service, return the spec's shape."""

from __future__ import annotations

import uuid

from django.http import StreamingHttpResponse
from drf_spectacular.utils import extend_schema
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from . import services
from .auth import AdminKeyOrStaff
from .disconnect import client_gone_check
from .engine import GenerationResult
from .errors import VLMError
from .runtime import runtime
from .schema import SseEventSerializer, error_responses
from .serializers import (
    ClearVramResponseSerializer,
    GenerateRequestSerializer,
    GenerateResponseSerializer,
    HealthResponseSerializer,
    MemorySerializer,
)
from .streaming import EventStreamNegotiation, SseEvents, sse_event, sse_response


class HealthApi(APIView):
    """200 when the model serves; 503 while it loads or after loading failed (body says which)."""

    # Open to all and never throttled: load balancers and orchestrators probe it.
    authentication_classes: list = []
    permission_classes: list = []
    throttle_classes: list = []

    @extend_schema(responses={200: HealthResponseSerializer, 503: HealthResponseSerializer})
    def get(self, request: Request) -> Response:
        state, error = runtime.status()
        state = state if state != "idle" else "loading"
        body = {
            "status": state,
            "model_loaded": state == "healthy",
            "device": runtime.device,
            "model": runtime.model_name,
        }
        if state == "error":
            body["error"] = error
        return Response(body, status=200 if state == "healthy" else 503)


class VramStatusApi(APIView):
    @extend_schema(responses={200: MemorySerializer, **error_responses(401, 403, 429)})
    def get(self, request: Request) -> Response:
        return Response(services.vram_status().as_dict())


class GenerateApi(APIView):
    """The spec's generation; with `"stream": true`, Server-Sent Events (see `_GenerateEvents`)."""

    content_negotiation_class = EventStreamNegotiation

    @extend_schema(
        request=GenerateRequestSerializer,
        responses={
            (200, "application/json"): GenerateResponseSerializer,
            (200, "text/event-stream"): SseEventSerializer,
            **error_responses(400, 401, 403, 413, 429, 503, 504),
        },
    )
    def post(self, request: Request) -> Response | StreamingHttpResponse:
        serializer = GenerateRequestSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        record = request.vlm_record
        client_gone = client_gone_check(request.META)
        generation = services.generation_start(
            record=record,
            messages=serializer.validated_data["messages"],
            stream=serializer.validated_data["stream"],
            **serializer.validated_params(),
        )
        if generation.text is not None:
            deltas = services.generation_deltas(record=record, generation=generation, client_gone=client_gone)
            events = SseEvents(record=record, deltas=deltas, job=generation.job, stream_format=_GenerateEvents(record))
            return sse_response(events)
        result = services.generation_result(record=record, generation=generation, client_gone=client_gone)
        return Response(generate_response_body(result, record.request_id))


def generate_response_body(result: GenerationResult, request_id: uuid.UUID) -> dict:
    """The spec's response: the answer, usage and processing time, plus our request id and timings."""
    timings = result.timings
    return {
        "response": result.text,
        "usage": {
            "input_tokens": result.input_tokens,
            "output_tokens": result.output_tokens,
            "total_tokens": result.input_tokens + result.output_tokens,
        },
        "processing_time": round(timings.total_s, 4),
        "request_id": str(request_id),
        "finish_reason": result.finish_reason,
        "timings": {
            "queue_ms": round(timings.queue_s * 1000, 2),
            "preprocess_ms": round(timings.preprocess_s * 1000, 2),
            "time_to_first_token_ms": round(timings.ttft_s * 1000, 2),
            "decode_ms": round(timings.decode_s * 1000, 2),
            "total_ms": round(timings.total_s * 1000, 2),
        },
    }


class _GenerateEvents:
    """The spec endpoint's events: `data: {"delta": ...}` per piece of text; then `event: done` whose
    data is the very body a non-streamed request gets; or, after a failure, `event: error` with
    `{"detail", "status", "request_id"}`."""

    def __init__(self, record: services.RequestRecord) -> None:
        self.request_id = record.request_id

    def opening(self) -> list[bytes]:
        return []

    def delta(self, text: str) -> bytes:
        return sse_event({"delta": text})

    def closing(self, result: GenerationResult) -> list[bytes]:
        return [sse_event(generate_response_body(result, self.request_id), event="done")]

    def failure(self, error: VLMError) -> list[bytes]:
        body = {"detail": error.detail, "status": error.status_code, "request_id": str(self.request_id)}
        return [sse_event(body, event="error")]


class ClearVramApi(APIView):
    """Needs an admin key or a staff session, whatever VLM_REQUIRE_API_KEY says: it stalls every client."""

    permission_classes = [AdminKeyOrStaff]

    @extend_schema(
        request=None, responses={200: ClearVramResponseSerializer, **error_responses(401, 403, 413, 429, 503, 504)}
    )
    def post(self, request: Request) -> Response:
        body = services.vram_clear(trigger="manual")
        body["request_id"] = str(request.vlm_record.request_id)
        return Response(body)
