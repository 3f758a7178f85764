"""Input shape of OpenAI's Chat Completions API, as vLLM accepts it, and its translation into the spec's
messages, so both APIs share one generation path (the same media loader, limits and request log).

They check shape and ranges; they never fetch media or touch the model.
"""

from __future__ import annotations

from django.conf import settings
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from .serializers import (
    FiniteFloatField,
    StringOrItemsField,
    content_item_count,
    validate_conversation,
)

# OpenAI's newer "developer" role is its "system" role under another name.
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
PART_TYPES = ("text", "image_url", "video_url")
MAX_STOP_STRINGS = 4  # as OpenAI
# What a part type becomes in the spec's content items.
SPEC_ITEM_TYPE = {"image_url": "image", "video_url": "video"}
# Features this server does not have. A request that turns one on is refused rather than answered as
# if it had been honoured; clients that send them switched off (null, false, 0, "none", "auto", a text
# response format) are served.
UNSUPPORTED = (
    "tools",
    "tool_choice",
    "functions",
    "function_call",
    "logprobs",
    "top_logprobs",
    "logit_bias",
    "response_format",
    "frequency_penalty",
    "presence_penalty",
)
_SWITCHED_OFF = (None, False, 0, "", [], {}, "none", "auto", {"type": "text"})

# OpenAPI shapes of the fields below, which DRF cannot describe by itself.
_MEDIA_URL_SCHEMA = {
    "oneOf": [
        {
            "type": "object",
            "properties": {"url": {"type": "string"}, "detail": {"type": "string"}},
            "required": ["url"],
            "description": "An http(s) URL or a data URI (a file path under VLM_ALLOWED_MEDIA_ROOT too).",
        },
        {"type": "string"},
    ]
}
_PART_SCHEMA = {
    "type": "object",
    "properties": {
        "type": {"type": "string", "enum": list(PART_TYPES)},
        "text": {"type": "string"},
        "image_url": _MEDIA_URL_SCHEMA,
        "video_url": _MEDIA_URL_SCHEMA,
    },
    "required": ["type"],
}


@extend_schema_field(_MEDIA_URL_SCHEMA)
class MediaUrlField(serializers.Field):
    """`{"url": ...}` as OpenAI sends it (`detail` is accepted and ignored), or the bare URL string."""

    default_error_messages = {"invalid": 'must be an object with a "url" string'}

    def to_internal_value(self, data) -> str:
        url = data.get("url") if isinstance(data, dict) else data
        if not isinstance(url, str) or not url:
            self.fail("invalid")
        return url

    def to_representation(self, value):
        return {"url": value}


class ContentPartSerializer(serializers.Serializer):
    type = serializers.ChoiceField(choices=PART_TYPES)
    text = serializers.CharField(required=False, allow_blank=True, trim_whitespace=False)
    image_url = MediaUrlField(required=False)
    video_url = MediaUrlField(required=False)

    def validate(self, attrs):
        kind = attrs["type"]
        if kind not in attrs:
            raise serializers.ValidationError({kind: f"a '{kind}' part needs a '{kind}' field"})
        return attrs


@extend_schema_field({"oneOf": [{"type": "string"}, {"type": "array", "minItems": 1, "items": _PART_SCHEMA}]})
class ChatContentField(StringOrItemsField):
    """A message's content: a string, or a non-empty array of content parts."""

    default_error_messages = {"invalid": "must be a string or an array of content parts"}

    def parse_items(self, data: list) -> list:
        parts = ContentPartSerializer(data=data, many=True)
        parts.is_valid(raise_exception=True)
        return parts.validated_data


class ChatMessageSerializer(serializers.Serializer):
    role = serializers.ChoiceField(choices=list(ROLES))
    content = ChatContentField()
    name = serializers.CharField(required=False)  # accepted and ignored, as by vLLM for these roles


@extend_schema_field(
    {
        "oneOf": [
            {"type": "string"},
            {"type": "array", "maxItems": MAX_STOP_STRINGS, "items": {"type": "string", "minLength": 1}},
        ],
        "nullable": True,
    }
)
class StopField(serializers.Field):
    """`stop`: a string or a list of up to four strings; null for none."""

    default_error_messages = {
        "invalid": f"must be a string or a list of at most {MAX_STOP_STRINGS} non-empty strings",
    }

    def to_internal_value(self, data) -> tuple[str, ...]:
        stops = [data] if isinstance(data, str) else data
        if (
            not isinstance(stops, list)
            or len(stops) > MAX_STOP_STRINGS
            or not all(isinstance(stop, str) and stop for stop in stops)
        ):
            self.fail("invalid")
        return tuple(stops)

    def to_representation(self, value):
        return list(value)


class StreamOptionsSerializer(serializers.Serializer):
    include_usage = serializers.BooleanField(required=False, default=False)


class ChatCompletionRequestSerializer(serializers.Serializer):
    """The request, with the spec endpoint's limits (messages, content items, characters of text)."""

    model = serializers.CharField(required=False, allow_null=True)
    max_tokens = serializers.IntegerField(required=False, allow_null=True, min_value=1)
    max_completion_tokens = serializers.IntegerField(required=False, allow_null=True, min_value=1)
    temperature = FiniteFloatField(required=False, allow_null=True, min_value=0.0, max_value=2.0)
    top_p = FiniteFloatField(required=False, allow_null=True, min_value=0.0, max_value=1.0)
    n = serializers.IntegerField(required=False, allow_null=True)
    stop = StopField(required=False, allow_null=True)
    seed = serializers.IntegerField(required=False, allow_null=True, min_value=-(2**63), max_value=2**64 - 1)
    stream = serializers.BooleanField(required=False, allow_null=True, default=False)
    stream_options = StreamOptionsSerializer(required=False, allow_null=True)

    def get_fields(self) -> dict:
        # Limits from settings, read at each use (tests override them).
        messages = ChatMessageSerializer(many=True, allow_empty=False, max_length=settings.VLM_MAX_MESSAGES)
        return {"messages": messages, **super().get_fields()}

    def to_internal_value(self, data):
        # Counted before any part is validated, as for the spec endpoint.
        if isinstance(data, dict):
            count, limit = content_item_count(data.get("messages")), settings.VLM_MAX_CONTENT_ITEMS
            if count > limit:
                raise serializers.ValidationError(
                    {"messages": [f"at most {limit} content parts per request, got {count}"]}
                )
        return super().to_internal_value(data)

    def validate_max_tokens(self, value: int | None) -> int | None:
        limit = settings.VLM_MAX_NEW_TOKENS_LIMIT
        if value is not None and value > limit:
            raise serializers.ValidationError(f"must be at most {limit}")
        return value

    validate_max_completion_tokens = validate_max_tokens

    def validate_top_p(self, value: float | None) -> float | None:
        if value is not None and value <= 0.0:
            raise serializers.ValidationError("must be greater than 0")
        return value

    def validate_n(self, value: int | None) -> int | None:
        if value not in (None, 1):
            raise serializers.ValidationError("only n=1 is supported")
        return value

    def validate_messages(self, messages: list[dict]) -> list[dict]:
        return validate_conversation(messages)

    def validate(self, attrs: dict) -> dict:
        for name in UNSUPPORTED:
            if name in self.initial_data and self.initial_data[name] not in _SWITCHED_OFF:
                raise serializers.ValidationError({name: "is not supported by this server"})
        if attrs.get("stream_options") is not None and not attrs.get("stream"):
            raise serializers.ValidationError({"stream_options": "is only allowed when stream is true"})
        return attrs

    @property
    def streaming(self) -> bool:
        return bool(self.validated_data.get("stream"))

    @property
    def include_usage(self) -> bool:
        options = self.validated_data.get("stream_options") or {}
        return bool(options.get("include_usage"))

    def spec_messages(self) -> list[dict]:
        """The messages in the spec's form: image_url and video_url parts become image and video items."""
        return [
            {"role": ROLES[message["role"]], "content": _spec_content(message["content"])}
            for message in self.validated_data["messages"]
        ]

    def generation_params(self) -> dict:
        """Generation parameters with the server's defaults for what the request leaves out (or null)."""
        data = self.validated_data

        def given(*names: str, default):
            return next((data[name] for name in names if data.get(name) is not None), default)

        return {
            # max_completion_tokens is OpenAI's newer name; it wins when both are sent.
            "max_new_tokens": given("max_completion_tokens", "max_tokens", default=settings.VLM_MAX_NEW_TOKENS),
            "temperature": given("temperature", default=settings.VLM_DEFAULT_TEMPERATURE),
            "top_p": given("top_p", default=settings.VLM_DEFAULT_TOP_P),
            "stop": data.get("stop") or (),
            "seed": data.get("seed"),
        }


def _spec_content(content: str | list[dict]) -> str | list[dict]:
    if isinstance(content, str):
        return content
    items = []
    for part in content:
        kind = part["type"]
        if kind == "text":
            items.append({"type": "text", "text": part["text"]})
        else:
            items.append({"type": SPEC_ITEM_TYPE[kind], SPEC_ITEM_TYPE[kind]: part[kind]})
    return items


# --- responses, for the OpenAPI schema ------------------------------------------------------------


class CompletionUsageSerializer(serializers.Serializer):
    prompt_tokens = serializers.IntegerField()
    completion_tokens = serializers.IntegerField()
    total_tokens = serializers.IntegerField()


class AssistantMessageSerializer(serializers.Serializer):
    role = serializers.ChoiceField(choices=["assistant"])
    content = serializers.CharField(allow_blank=True)


class CompletionChoiceSerializer(serializers.Serializer):
    index = serializers.IntegerField()
    message = AssistantMessageSerializer()
    logprobs = serializers.JSONField(allow_null=True)
    finish_reason = serializers.ChoiceField(choices=["stop", "length"])


class ChatCompletionSerializer(serializers.Serializer):
    """A non-streamed answer. Streamed, the same fields come as `chat.completion.chunk` events."""

    id = serializers.CharField(help_text="chatcmpl-<the request id, hex>")
    object = serializers.ChoiceField(choices=["chat.completion"])
    created = serializers.IntegerField()
    model = serializers.CharField()
    choices = CompletionChoiceSerializer(many=True)
    usage = CompletionUsageSerializer()


class ModelCardSerializer(serializers.Serializer):
    id = serializers.CharField()
    object = serializers.ChoiceField(choices=["model"])
    created = serializers.IntegerField()
    owned_by = serializers.CharField()
    max_model_len = serializers.IntegerField(required=False)


class ModelListSerializer(serializers.Serializer):
    object = serializers.ChoiceField(choices=["list"])
    data = ModelCardSerializer(many=True)


class OpenAIErrorDetailSerializer(serializers.Serializer):
    message = serializers.CharField()
    type = serializers.CharField()
    param = serializers.CharField(allow_null=True)
    code = serializers.CharField(allow_null=True)


class OpenAIErrorSerializer(serializers.Serializer):
    """Every error of the OpenAI-compatible API: `{"error": {"message", "type", "param", "code"}}`."""

    error = OpenAIErrorDetailSerializer()
