"""OpenAI-compatible API, as vLLM serves it: POST /v1/chat/completions, GET /v1/models.

The same generation path as the spec's endpoint (services.generation_start: media loader, limits,
engine, request log, metrics); only the shapes differ. Errors keep the one error table's status
codes and reasons, reshaped as OpenAI's `{"error": {"message", "type", "param", "code"}}`.
Authentication and throttling are the DRF defaults, as for every other API view.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

from django.http import StreamingHttpResponse
from drf_spectacular.utils import extend_schema
from rest_framework import exceptions
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from . import services
from .disconnect import client_gone_check
from .engine import GenerationResult
from .errors import MediaError, ModelNotFound, VLMError
from .exception_handler import api_exception_handler
from .openai_serializers import (
    ChatCompletionRequestSerializer,
    ChatCompletionSerializer,
    ModelCardSerializer,
    ModelListSerializer,
    OpenAIErrorSerializer,
)
from .runtime import runtime
from .schema import SseEventSerializer
from .streaming import EventStreamNegotiation, SseEvents, sse_event, sse_response

# /v1/models' `created`: when this process started serving (OpenAI gives a model's creation time).
_STARTED_AT = int(time.time())
_DONE = b"data: [DONE]\n\n"
# Codes as OpenAI names them where it has a name; otherwise the reason from the one error table.
_OPENAI_CODES = {401: "invalid_api_key", 429: "rate_limit_exceeded"}
# Media errors name the spec's item (`messages[0].content[1].image`); OpenAI clients sent `image_url`.
_SPEC_MEDIA_LOCATION = re.compile(r"^(messages\[\d+\]\.content\[\d+\])\.(image|video)\b")


def served_model_name() -> str:
    return runtime.model_name


def openai_error_body(message: str, *, status: int, code: str | None, param: str | None = None) -> dict:
    if status == 429:
        kind = "requests"  # OpenAI's type for a request rate limit
    elif status >= 500:
        kind = "server_error"
    else:
        kind = "invalid_request_error"
    return {"error": {"message": message, "type": kind, "param": param, "code": _OPENAI_CODES.get(status, code)}}


def openai_exception_handler(exc, context) -> Response:
    """The project's handler (status, reason, request log), with the body in OpenAI's shape."""
    response = api_exception_handler(exc, context)
    record = getattr(context.get("request"), "vlm_record", None)
    message, param = response.data["detail"], None
    if isinstance(exc, exceptions.ValidationError):
        param = _first_error_path(exc.detail)
    elif isinstance(exc, MediaError):
        message = _SPEC_MEDIA_LOCATION.sub(r"\1.\2_url", message)
        param = message.split(": ", 1)[0]
    elif isinstance(exc, ModelNotFound):
        param = "model"
    code = record.error_reason if record is not None and record.error_reason else None
    response.data = openai_error_body(message, status=response.status_code, code=code, param=param)
    return response


def _first_error_path(detail, path: str = "") -> str | None:
    """Where the first validation error is, as `messages[0].content[1].image_url`."""
    if isinstance(detail, dict):
        for key, value in detail.items():
            if key == "non_field_errors":
                return _first_error_path(value, path) or None
            if isinstance(key, int):
                return _first_error_path(value, f"{path}[{key}]")
            return _first_error_path(value, f"{path}.{key}" if path else str(key))
    if isinstance(detail, list) and detail and not all(isinstance(item, str) for item in detail):
        for index, item in enumerate(detail):
            if item:
                return _first_error_path(item, f"{path}[{index}]")
    return path or None


class OpenAIApiView(APIView):
    """Errors of these views come in OpenAI's shape."""

    content_negotiation_class = EventStreamNegotiation

    def get_exception_handler(self):
        return openai_exception_handler


def model_card() -> dict:
    card = {"id": served_model_name(), "object": "model", "created": _STARTED_AT, "owned_by": "vlm-server"}
    if runtime.backend is not None:
        card["max_model_len"] = runtime.backend.context_length
    return card


def check_model(name: str | None) -> None:
    """A request may leave `model` out or name the served model; another name is a 404, as in vLLM."""
    if name and name != served_model_name():
        raise ModelNotFound(f"The model `{name}` does not exist.")


def openai_errors(*status_codes: int) -> dict:
    """`{status: OpenAIErrorSerializer}` for extend_schema's responses."""
    return dict.fromkeys(status_codes, OpenAIErrorSerializer)


class ModelsApi(OpenAIApiView):
    @extend_schema(operation_id="openai_models_list", responses={200: ModelListSerializer, **openai_errors(401, 429)})
    def get(self, request: Request) -> Response:
        return Response({"object": "list", "data": [model_card()]})


class ModelApi(OpenAIApiView):
    @extend_schema(
        operation_id="openai_model_retrieve", responses={200: ModelCardSerializer, **openai_errors(401, 404, 429)}
    )
    def get(self, request: Request, model: str) -> Response:
        check_model(model)
        return Response(model_card())


class ChatCompletionsApi(OpenAIApiView):
    @extend_schema(
        operation_id="openai_chat_completions_create",
        request=ChatCompletionRequestSerializer,
        responses={
            (200, "application/json"): ChatCompletionSerializer,
            (200, "text/event-stream"): SseEventSerializer,
            **openai_errors(400, 401, 403, 404, 429, 503, 504),
        },
    )
    def post(self, request: Request) -> Response | StreamingHttpResponse:
        serializer = ChatCompletionRequestSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        check_model(serializer.validated_data.get("model"))
        record = request.vlm_record
        client_gone = client_gone_check(request.META)
        generation = services.generation_start(
            record=record,
            messages=serializer.spec_messages(),
            stream=serializer.streaming,
            **serializer.generation_params(),
        )
        completion = Completion(
            id=f"chatcmpl-{record.request_id.hex}",
            created=int(record.received_at.timestamp()),
            model=served_model_name(),
        )
        if serializer.streaming:
            deltas = services.generation_deltas(record=record, generation=generation, client_gone=client_gone)
            chunks = _CompletionChunks(completion, include_usage=serializer.include_usage)
            return sse_response(SseEvents(record=record, deltas=deltas, job=generation.job, stream_format=chunks))
        result = services.generation_result(record=record, generation=generation, client_gone=client_gone)
        return Response(completion.body(result))


@dataclass(frozen=True)
class Completion:
    """What every object of one completion shares: its id (the request id), creation time and model."""

    id: str
    created: int
    model: str

    def body(self, result: GenerationResult) -> dict:
        choice = {
            "index": 0,
            "message": {"role": "assistant", "content": result.text},
            "logprobs": None,
            "finish_reason": result.finish_reason,
        }
        return {**self._head("chat.completion"), "choices": [choice], "usage": usage(result)}

    def chunk(self, choices: list[dict], **extra) -> dict:
        return {**self._head("chat.completion.chunk"), "choices": choices, **extra}

    def _head(self, kind: str) -> dict:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model}


def usage(result: GenerationResult) -> dict:
    return {
        "prompt_tokens": result.input_tokens,
        "completion_tokens": result.output_tokens,
        "total_tokens": result.input_tokens + result.output_tokens,
    }


class _CompletionChunks:
    """OpenAI's stream: a first chunk with the role, one per text delta, one with the finish reason,
    with `include_usage` a last chunk with no choices and the usage (`"usage": null` on the others),
    then `data: [DONE]`. A failure mid-stream is `data: {"error": ...}` and `[DONE]`, as in vLLM."""

    def __init__(self, completion: Completion, *, include_usage: bool) -> None:
        self.completion = completion
        self.include_usage = include_usage

    def _event(self, delta: dict, finish_reason: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        extra = {"usage": None} if self.include_usage else {}
        return sse_event(self.completion.chunk([choice], **extra))

    def opening(self) -> list[bytes]:
        return [self._event({"role": "assistant", "content": ""})]

    def delta(self, text: str) -> bytes:
        return self._event({"content": text})

    def closing(self, result: GenerationResult) -> list[bytes]:
        events = [self._event({}, finish_reason=result.finish_reason)]
        if self.include_usage:
            events.append(sse_event(self.completion.chunk([], usage=usage(result))))
        return [*events, _DONE]

    def failure(self, error: VLMError) -> list[bytes]:
        body = openai_error_body(error.detail, status=error.status_code, code=error.reason)
        return [sse_event(body), _DONE]
