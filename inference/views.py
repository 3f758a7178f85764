"""Thin API views: validate with a serializer, call one service, return the spec's shape."""

from __future__ import annotations

from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from . import services
from .disconnect import client_gone_check
from .runtime import runtime
from .serializers import GenerateRequestSerializer


class HealthApi(APIView):
    """200 when the model serves; 503 while it loads or after loading failed (body says which)."""

    authentication_classes: list = []
    permission_classes: list = []

    def get(self, request: Request) -> Response:
        state = runtime.state if runtime.state != "idle" else "loading"
        body = {
            "status": state,
            "model_loaded": state == "healthy",
            "device": runtime.device,
            "model": runtime.model_name,
        }
        if state == "error":
            body["error"] = runtime.error
        return Response(body, status=200 if state == "healthy" else 503)


class VramStatusApi(APIView):
    def get(self, request: Request) -> Response:
        return Response(services.vram_status().as_dict())


class GenerateApi(APIView):
    def post(self, request: Request) -> Response:
        serializer = GenerateRequestSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        record = request.vlm_record
        result = services.generation_run(
            record=record,
            messages=serializer.validated_data["messages"],
            client_gone=client_gone_check(request.META),
            **serializer.validated_params(),
        )
        timings = result.timings
        return Response(
            {
                "response": result.text,
                "usage": {
                    "input_tokens": result.input_tokens,
                    "output_tokens": result.output_tokens,
                    "total_tokens": result.input_tokens + result.output_tokens,
                },
                "processing_time": round(timings.total_s, 4),
                "request_id": str(record.request_id),
                "finish_reason": result.finish_reason,
                "timings": {
                    "queue_ms": round(timings.queue_s * 1000, 2),
                    "preprocess_ms": round(timings.preprocess_s * 1000, 2),
                    "time_to_first_token_ms": round(timings.ttft_s * 1000, 2),
                    "decode_ms": round(timings.decode_s * 1000, 2),
                    "total_ms": round(timings.total_s * 1000, 2),
                },
            }
        )


class ClearVramApi(APIView):
    def post(self, request: Request) -> Response:
        body = services.vram_clear(trigger="manual")
        body["request_id"] = str(request.vlm_record.request_id)
        return Response(body)
