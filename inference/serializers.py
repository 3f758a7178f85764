"""Input and output shapes of the API. They check shape and ranges; they never fetch media or touch the model."""

from __future__ import annotations

import math

from django.conf import settings
from rest_framework import serializers

ROLES = ("system", "user", "assistant")
CONTENT_TYPES = ("text", "image", "video")


class FiniteFloatField(serializers.FloatField):
    """FloatField that refuses NaN and the infinities (JSON parsers accept them)."""

    def to_internal_value(self, data):
        value = super().to_internal_value(data)
        if not math.isfinite(value):
            raise serializers.ValidationError("must be a finite number")
        return value


class TextItemSerializer(serializers.Serializer):
    type = serializers.ChoiceField(choices=["text"])
    text = serializers.CharField(allow_blank=True, trim_whitespace=False)


class ImageItemSerializer(serializers.Serializer):
    type = serializers.ChoiceField(choices=["image"])
    image = serializers.CharField(trim_whitespace=False, help_text="An http(s) URL, a data URI or a file path.")
    # Decode hints, as qwen-vl-utils accepts them; the media loader clamps them to the server's caps.
    min_pixels = serializers.IntegerField(required=False, min_value=1)
    max_pixels = serializers.IntegerField(required=False, min_value=1)


class VideoItemSerializer(serializers.Serializer):
    type = serializers.ChoiceField(choices=["video"])
    video = serializers.CharField(trim_whitespace=False, help_text="An http(s) URL, a data URI or a file path.")
    fps = FiniteFloatField(required=False, min_value=0.01)
    nframes = serializers.IntegerField(required=False, min_value=2)
    max_pixels = serializers.IntegerField(required=False, min_value=1)


CONTENT_ITEM_SERIALIZERS = {"text": TextItemSerializer, "image": ImageItemSerializer, "video": VideoItemSerializer}


class _ContentTypeSerializer(serializers.Serializer):
    """Only an item's `type`, checked first to choose the item's serializer."""

    type = serializers.ChoiceField(choices=CONTENT_TYPES)


class StringOrItemsField(serializers.Field):
    """A message's content: a plain string, or a non-empty array whose items `parse_items` validates
    (the spec's content items here, OpenAI's content parts in openai_serializers)."""

    default_error_messages = {
        "invalid": "must be a string or an array of content items",
        "empty": "must not be an empty array",
    }

    def to_internal_value(self, data):
        if isinstance(data, str):
            return data
        if not isinstance(data, list):
            self.fail("invalid")
        if not data:
            self.fail("empty")
        return self.parse_items(data)

    def parse_items(self, data: list) -> list:
        raise NotImplementedError

    def to_representation(self, value):
        return value


class ContentField(StringOrItemsField):
    """A message's content: a plain string, or an array of text, image and video items."""

    def parse_items(self, data: list) -> list:
        items, errors = [], []
        for item in data:
            serializer = _ContentTypeSerializer(data=item)
            if serializer.is_valid():
                serializer = CONTENT_ITEM_SERIALIZERS[serializer.validated_data["type"]](data=item)
            if serializer.is_valid():
                items.append(serializer.validated_data)
            errors.append(serializer.errors)
        if any(errors):
            raise serializers.ValidationError(errors)
        return items


class MessageSerializer(serializers.Serializer):
    role = serializers.ChoiceField(choices=ROLES)
    content = ContentField()


def validate_conversation(messages: list[dict]) -> list[dict]:
    """Checks on a whole conversation, the same for both APIs: it ends with a turn to answer, and its text fits
    VLM_MAX_PROMPT_CHARS."""
    if messages[-1]["role"] == "assistant":
        raise serializers.ValidationError("the last message must not be from the assistant")
    chars, limit = prompt_chars(messages), settings.VLM_MAX_PROMPT_CHARS
    if chars > limit:
        raise serializers.ValidationError(f"at most {limit} characters of text per request, got {chars}")
    return messages


def content_item_count(messages: object) -> int:
    """Content items over all messages of a request not yet validated (anything malformed counts 0)."""
    if not isinstance(messages, list):
        return 0
    contents = (message.get("content") for message in messages if isinstance(message, dict))
    return sum(len(content) for content in contents if isinstance(content, list))


def prompt_chars(messages: list[dict]) -> int:
    """Characters of text over all validated messages."""
    total = 0
    for message in messages:
        content = message["content"]
        if isinstance(content, str):
            total += len(content)
        else:
            total += sum(len(item["text"]) for item in content if item["type"] == "text")
    return total


class GenerateRequestSerializer(serializers.Serializer):
    """The spec's request. The shape limits are checked before any item is validated, media before any is fetched."""

    temperature = FiniteFloatField(required=False, min_value=0.0, max_value=2.0)
    top_p = FiniteFloatField(required=False, min_value=0.0, max_value=1.0)
    # true: Server-Sent Events, one per text delta, then the usual body as the final event (README).
    stream = serializers.BooleanField(required=False, default=False)

    def get_fields(self) -> dict:
        # Bounds from settings, read at each use (tests override them); the OpenAPI schema shows them too.
        return {
            "messages": MessageSerializer(many=True, allow_empty=False, max_length=settings.VLM_MAX_MESSAGES),
            "max_new_tokens": serializers.IntegerField(
                required=False, min_value=1, max_value=settings.VLM_MAX_NEW_TOKENS_LIMIT
            ),
            **super().get_fields(),
        }

    def to_internal_value(self, data):
        if isinstance(data, dict):
            count, limit = content_item_count(data.get("messages")), settings.VLM_MAX_CONTENT_ITEMS
            if count > limit:
                message = f"at most {limit} content items per request, got {count}"
                raise serializers.ValidationError({"messages": [message]})
        return super().to_internal_value(data)

    def validate_top_p(self, value: float) -> float:
        if value <= 0.0:
            raise serializers.ValidationError("must be greater than 0")
        return value

    def validate_messages(self, messages: list[dict]) -> list[dict]:
        return validate_conversation(messages)

    def validated_params(self) -> dict:
        """The request's generation parameters with the server's defaults filled in."""
        data = self.validated_data
        return {
            "max_new_tokens": data.get("max_new_tokens", settings.VLM_MAX_NEW_TOKENS),
            "temperature": data.get("temperature", settings.VLM_DEFAULT_TEMPERATURE),
            "top_p": data.get("top_p", settings.VLM_DEFAULT_TOP_P),
        }


class UsageSerializer(serializers.Serializer):
    input_tokens = serializers.IntegerField()
    output_tokens = serializers.IntegerField()
    total_tokens = serializers.IntegerField()


class GenerateResponseSerializer(serializers.Serializer):
    """The spec's response, plus request_id, finish_reason and the latency breakdown."""

    response = serializers.CharField(allow_blank=True)
    usage = UsageSerializer()
    processing_time = serializers.FloatField()
    request_id = serializers.UUIDField()
    finish_reason = serializers.ChoiceField(choices=["stop", "length"])
    timings = serializers.DictField(child=serializers.FloatField())


class HealthResponseSerializer(serializers.Serializer):
    """200 when healthy, 503 while loading or after loading failed (`error` says why)."""

    status = serializers.ChoiceField(choices=["loading", "healthy", "error"])
    model_loaded = serializers.BooleanField()
    device = serializers.CharField()
    model = serializers.CharField()
    error = serializers.CharField(required=False)


class MemorySerializer(serializers.Serializer):
    """The spec's VRAM figures; on a CPU, host memory under the same keys."""

    allocated_gb = serializers.FloatField()
    reserved_gb = serializers.FloatField()
    free_gb = serializers.FloatField()
    total_gb = serializers.FloatField()
    usage_percentage = serializers.FloatField()
    device = serializers.CharField()


class ClearVramResponseSerializer(serializers.Serializer):
    status = serializers.ChoiceField(choices=["cleared"])
    before = MemorySerializer()
    after = MemorySerializer()
    freed_gb = serializers.FloatField()
    request_id = serializers.UUIDField()
