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


class ContentItemSerializer(serializers.Serializer):
    """One item of a message's content array: text, image or video, plus optional decode hints."""

    type = serializers.ChoiceField(choices=CONTENT_TYPES)
    text = serializers.CharField(required=False, allow_blank=True, trim_whitespace=False)
    image = serializers.CharField(required=False, trim_whitespace=False)
    video = serializers.CharField(required=False, trim_whitespace=False)
    # Decode hints, as qwen-vl-utils accepts them; the media loader clamps them to the server's caps.
    min_pixels = serializers.IntegerField(required=False, min_value=1)
    max_pixels = serializers.IntegerField(required=False, min_value=1)
    fps = FiniteFloatField(required=False, min_value=0.01)
    nframes = serializers.IntegerField(required=False, min_value=2)

    def validate(self, attrs):
        kind = attrs["type"]
        if kind not in attrs:
            raise serializers.ValidationError({kind: f"a '{kind}' item needs a '{kind}' field"})
        return attrs


class ContentField(serializers.Field):
    """A message's content: a plain string, or an array of content items."""

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
        items = ContentItemSerializer(data=data, many=True)
        items.is_valid(raise_exception=True)
        return items.validated_data

    def to_representation(self, value):
        return value


class MessageSerializer(serializers.Serializer):
    role = serializers.ChoiceField(choices=ROLES)
    content = ContentField()


class GenerateRequestSerializer(serializers.Serializer):
    messages = MessageSerializer(many=True, allow_empty=False)
    max_new_tokens = serializers.IntegerField(required=False, min_value=1)
    temperature = FiniteFloatField(required=False, min_value=0.0, max_value=2.0)
    top_p = FiniteFloatField(required=False, min_value=0.0, max_value=1.0)
    # true: Server-Sent Events, one per text delta, then the usual body as the final event (README).
    stream = serializers.BooleanField(required=False, default=False)

    def validate_max_new_tokens(self, value: int) -> int:
        limit = settings.VLM_MAX_NEW_TOKENS_LIMIT
        if value > limit:
            raise serializers.ValidationError(f"must be at most {limit}")
        return value

    def validate_top_p(self, value: float) -> float:
        if value <= 0.0:
            raise serializers.ValidationError("must be greater than 0")
        return value

    def validate_messages(self, messages: list[dict]) -> list[dict]:
        if messages[-1]["role"] == "assistant":
            raise serializers.ValidationError("the last message must not be from the assistant")
        return messages

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

    response = serializers.CharField()
    usage = UsageSerializer()
    processing_time = serializers.FloatField()
    request_id = serializers.CharField()
    finish_reason = serializers.CharField()
    timings = serializers.DictField(child=serializers.FloatField())
