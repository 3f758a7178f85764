"""Schemathesis fuzzes every operation of the OpenAPI schema (/api/schema/) over HTTP, against the real
gunicorn serving the tiny model, with data that fits the schema and data that does not: never a 5xx; every
status, content type, header and JSON body as documented; every API request on record.

Bounded for `make test` (VLM_FUZZ_EXAMPLES, default 50 per operation and mode); `make fuzz` runs many more.
The operations are found from the schema itself, so new endpoints are fuzzed without a change here.
"""

from __future__ import annotations

import os
import sqlite3
import time
import uuid
from collections.abc import Iterator

import pytest
import schemathesis
from django.contrib.staticfiles import finders
from drf_spectacular.generators import SchemaGenerator
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.specs.openapi import checks

from .api_keys import create_api_key
from .servers import Gunicorn, gunicorn

EXAMPLES = int(os.environ.get("VLM_FUZZ_EXAMPLES", "50"))
# Two checks would fail on purpose. The schema cannot say which strings are loadable media, nor that the
# last message may not be the assistant's, so some schema-valid requests are refused (positive_data_acceptance);
# and like DRF (and pydantic) the serializers take "4" for 4 (negative_data_rejection).
EXCLUDED_CHECKS = [checks.positive_data_acceptance, checks.negative_data_rejection]
OPERATIONS = [
    (method.upper(), path)
    for path, methods in SchemaGenerator().get_schema(request=None, public=True)["paths"].items()
    for method in methods
]
examples_run: list[str] = []


@pytest.fixture(scope="module")
def server(tiny_model_path, tmp_path_factory) -> Iterator[tuple[Gunicorn, str]]:
    """The server and an admin key (it reaches every operation)."""
    with gunicorn(
        tmp_path_factory.mktemp("fuzz"),
        model=str(tiny_model_path),
        # Short generations keep the fuzz quick; the schema shows the limit, so the fuzzer knows it too.
        VLM_MAX_NEW_TOKENS_LIMIT="4",
        # Random URLs are refused before any DNS lookup: no network, no waiting on resolvers.
        VLM_ALLOWED_MEDIA_DOMAINS="fuzz.invalid",
        VLM_THREADS="8",
    ) as running:
        yield running, create_api_key(running, "fuzzer", admin=True)


@pytest.fixture(scope="module")
def api_schema(server):
    return schemathesis.openapi.from_url(f"{server[0].base}/api/schema/")


def on_record(server: Gunicorn, request_id: str) -> bool:
    """Whether the request's row is in the request log (written once the response is sent: give it a moment)."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        with sqlite3.connect(server.database) as connection:
            query = "SELECT 1 FROM inference_requestlog WHERE id = ?"
            if connection.execute(query, (uuid.UUID(request_id).hex,)).fetchone():
                return True
        time.sleep(0.02)
    return False


@pytest.fixture(scope="module", autouse=True)
def report_examples(request):
    yield
    if examples_run:  # printed past pytest's output capture, for the record of how much was fuzzed
        with request.config.pluginmanager.get_plugin("capturemanager").global_and_fixture_disabled():
            print(f"\nfuzz: {len(examples_run)} examples over {len(set(examples_run))} operations, none failed")


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=str)
@pytest.mark.parametrize("method, path", OPERATIONS)
def test_operation_matches_its_schema_and_never_fails(server, api_schema, method, path, mode):
    running, admin_key = server
    operation = api_schema[path][method]
    if mode == GenerationMode.NEGATIVE and not operation.body:
        pytest.skip("no body to make invalid (a path parameter here is any string)")

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def fuzz(case):
        request_id = str(uuid.uuid4())
        # The admin key reaches every operation; a key the fuzzer made up replaces it.
        headers = {"Authorization": f"Bearer {admin_key}", **(case.headers or {}), "X-Request-ID": request_id}
        response = case.call(base_url=running.base, headers=headers, timeout=60)
        case.validate_response(response, excluded_checks=EXCLUDED_CHECKS)
        assert response.status_code < 500, response.text
        if path != "/health":
            assert on_record(running, request_id), "no request-log row"
        examples_run.append(f"{method} {path}")

    fuzz()


def test_schema_and_swagger_ui_are_served_without_a_key_or_a_cdn(client, db, settings):
    settings.VLM_REQUIRE_API_KEY = True
    schema = client.get("/api/schema/", HTTP_ACCEPT="application/json")
    assert schema.status_code == 200
    document = schema.json()
    assert document["openapi"].startswith("3.") and "/api/v1/generate" in document["paths"]
    assert "/metrics" not in document["paths"]  # Prometheus text, not part of the JSON API
    assert set(document["components"]["securitySchemes"]) >= {"bearerKey", "headerKey"}
    page = client.get("/api/schema/swagger-ui/")
    assert page.status_code == 200
    html = page.content.decode()
    assert "cdn" not in html.lower()
    bundle = "drf_spectacular_sidecar/swagger-ui-dist/swagger-ui-bundle.js"
    assert f"/static/{bundle}" in html and finders.find(bundle)
