"""The OpenAPI schema (drf-spectacular, served at /api/schema/): how the API key appears, and which views it covers."""

from __future__ import annotations

from django.conf import settings
from drf_spectacular.extensions import OpenApiAuthenticationExtension, OpenApiSerializerFieldExtension
from rest_framework import serializers

from .serializers import CONTENT_ITEM_SERIALIZERS

# The paths of the API, and those (metrics for Prometheus, the schema itself) that are not part of it.
EXCLUDED_PATHS = ("/metrics", "/api/schema")


class APIKeyAuthenticationScheme(OpenApiAuthenticationExtension):
    """`Authorization: Bearer <key>` or `X-API-Key: <key>`, either one (Swagger UI's Authorize button)."""

    target_class = "inference.auth.APIKeyAuthentication"
    name = ["bearerKey", "headerKey"]

    def get_security_definition(self, auto_schema):
        return [
            {"type": "http", "scheme": "bearer", "description": "An API key: `manage.py create_api_key NAME`."},
            {"type": "apiKey", "in": "header", "name": "X-API-Key", "description": "The same key in its own header."},
        ]

    def get_security_requirement(self, auto_schema):
        alternatives = [{"bearerKey": []}, {"headerKey": []}]
        if not settings.VLM_REQUIRE_API_KEY:
            alternatives.append({})  # keys are optional on this server
        return alternatives


class ContentFieldSchema(OpenApiSerializerFieldExtension):
    """A message's content: a string, or a non-empty array of text, image and video items told apart by `type`."""

    target_class = "inference.serializers.ContentField"

    def map_serializer_field(self, auto_schema, direction):
        refs = {
            kind: auto_schema.resolve_serializer(serializer, direction).ref
            for kind, serializer in CONTENT_ITEM_SERIALIZERS.items()
        }
        item = {
            "oneOf": list(refs.values()),
            "discriminator": {"propertyName": "type", "mapping": {kind: ref["$ref"] for kind, ref in refs.items()}},
        }
        return {"oneOf": [{"type": "string"}, {"type": "array", "minItems": 1, "items": item}]}


def api_endpoints_only(endpoints: list, **kwargs) -> list:
    """PREPROCESSING_HOOKS: leave out /metrics (Prometheus text, not JSON) and the schema's own views."""
    return [endpoint for endpoint in endpoints if not endpoint[0].startswith(EXCLUDED_PATHS)]


class SseEventSerializer(serializers.Serializer):
    """One Server-Sent Event of a streamed answer (`"stream": true`): its `event:` and `data:` lines."""

    event = serializers.CharField(required=False, help_text="`message` when absent; `done` or `error` at the end.")
    data = serializers.CharField(allow_blank=True, help_text="JSON, or `[DONE]` at the end of an OpenAI stream.")


class ErrorSerializer(serializers.Serializer):
    """Every error: `{"detail": "..."}` (inference.exception_handler)."""

    detail = serializers.CharField()


def error_responses(*status_codes: int) -> dict[int, type[ErrorSerializer]]:
    """`{status: ErrorSerializer}` for extend_schema's responses."""
    return dict.fromkeys(status_codes, ErrorSerializer)
