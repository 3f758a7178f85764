"""The hostile suite: what an attacker would send, over HTTP, to the real gunicorn serving the tiny model.

Every case asserts its status code and its `{"detail": ...}` body (no traceback, path or address in it),
how many requests reached the media origin (0 wherever the server must refuse before fetching anything),
that the server still serves right after (a real generation), and that the request log has the case's
row with the right status and failure reason. API keys are required, as README recommends for production.

Faked: nothing but one DNS answer (tests/hostile_settings.py): `media.public-looking.test` is a public host
that the local origin plays, so that it can redirect to loopback, trickle, flood and lie.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

from inference.media import _FILE_UNAVAILABLE

from .api_keys import create_api_key, revoke_api_key
from .hostile_settings import PUBLIC_LOOKING_HOST
from .media_origin import MediaOrigin
from .redis_cache import redis_url_if_answering
from .samples import data_uri, image_bytes, png_declaring, video_bytes
from .servers import ROOT, Gunicorn, gunicorn

GENERATE = "/api/v1/generate"
PNG = image_bytes()
JPEG = image_bytes(fmt="JPEG")
MB = 1024 * 1024
NON_PUBLIC = "URL resolves to a non-public address"


@dataclass
class Hostile:
    """The server under attack, its media origin and folder, and the keys the cases use."""

    server: Gunicorn
    origin: MediaOrigin
    media_root: Path
    keys: dict[str, str] = field(default_factory=dict)

    def public_url(self, path: str) -> str:
        """A URL on the public-looking host, which the server reaches (only its first hop is faked)."""
        return f"http://{PUBLIC_LOOKING_HOST}:{self.origin.port}{path}"

    def log_row(self, request_id: str) -> tuple | None:
        """(status, reason, detail) of the request's row; rows are written once the response is sent."""
        query = "SELECT status_code, error_reason, error_detail FROM inference_requestlog WHERE id = ?"
        deadline = time.monotonic() + 5
        while True:
            with sqlite3.connect(self.server.database) as connection:
                row = connection.execute(query, (uuid.UUID(request_id).hex,)).fetchone()
            if row is not None or time.monotonic() > deadline:
                return row
            time.sleep(0.02)


@pytest.fixture(scope="module")
def hostile(tiny_model_path, tmp_path_factory) -> Iterator[Hostile]:
    workdir = tmp_path_factory.mktemp("hostile")
    media_root = workdir / "media"
    media_root.mkdir()
    (media_root / "cat.png").write_bytes(PNG)
    (workdir / "secret.png").write_bytes(PNG)  # exists, outside the root
    (media_root / "link.png").symlink_to(workdir / "secret.png")
    os.mkfifo(media_root / "pipe.png")
    (media_root / "folder.png").mkdir()
    files = {"/cat.png": ("image/png", PNG), "/live.m3u8": ("application/vnd.apple.mpegurl", b"#EXTM3U\n")}
    # Rate counts in Redis when it answers (in CI it must), shared as they are between several workers.
    redis_url = redis_url_if_answering(0)
    cache = {"CACHE_URL": redis_url} if redis_url else {}
    with (
        MediaOrigin(files) as origin,
        gunicorn(
            workdir,
            model=str(tiny_model_path),
            DJANGO_SETTINGS_MODULE="tests.hostile_settings",
            VLM_REQUIRE_API_KEY="true",
            VLM_ALLOWED_MEDIA_ROOT=str(media_root),
            VLM_IMAGE_FETCH_TIMEOUT_S="2",
            VLM_VIDEO_FETCH_TIMEOUT_S="2",
            VLM_THREADS="16",
            **cache,
        ) as server,
    ):
        target = Hostile(server, origin, media_root)
        target.keys["client"] = create_api_key(server, "hostile client")
        target.keys["limited"] = create_api_key(server, "limited client", rate_limit="2/min")
        target.keys["revoked"] = create_api_key(server, "revoked client")
        revoke_api_key(server, target.keys["revoked"])
        yield target
        assert server.process.poll() is None, "the server died during the suite"


# --- the cases -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    id: str
    status: int
    reason: str  # the request log's error_reason ("" for a success)
    request: Callable[[Hostile], dict]  # keyword arguments for requests.request, plus "path"
    detail: str = ""  # the error's detail contains this
    origin_hits: int = 0  # requests that may reach the media origin


def ask(content, **fields) -> dict:
    return {"messages": [{"role": "user", "content": content}], "max_new_tokens": 1, **fields}


def with_image(source: str, **hints) -> dict:
    return ask([{"type": "image", "image": source, **hints}, {"type": "text", "text": "What is this?"}])


def with_video(source: str) -> dict:
    return ask([{"type": "video", "video": source}, {"type": "text", "text": "What happens?"}])


def post(body_for: Callable[[Hostile], dict], auth: dict | None = None) -> Callable[[Hostile], dict]:
    """A generation request; `auth` replaces the client's key header ({}: no key at all)."""
    return lambda h: {"method": "POST", "path": GENERATE, "json": body_for(h), "auth": auth}


def post_raw(data, content_type: str = "application/json") -> Callable[[Hostile], dict]:
    return lambda h: {"method": "POST", "path": GENERATE, "data": data, "headers": {"Content-Type": content_type}}


def image_case(case_id: str, source: Callable[[Hostile], str], status: int, reason: str, detail: str, hits=0):
    return Case(case_id, status, reason, post(lambda h: with_image(source(h))), detail, hits)


def ssrf_case(case_id: str, url: str) -> Case:
    return image_case(f"ssrf-{case_id}", lambda h: url.format(port=h.origin.port), 400, "media", NON_PUBLIC)


def file_case(case_id: str, source: Callable[[Hostile], str]) -> Case:
    return image_case(f"file-{case_id}", source, 400, "media", _FILE_UNAVAILABLE)


def parameter_case(case_id: str, fields: dict, where: str) -> Case:
    return Case(f"param-{case_id}", 400, "validation", post(lambda h: ask("hi", **fields)), where)


def chunks(total: int, size: int = MB) -> Iterator[bytes]:
    for start in range(0, total, size):
        yield b" " * min(size, total - start)


def throttled_third_request(h: Hostile) -> dict:
    """The limited key may make 2 requests a minute: two pass, the case's own is the third."""
    for _ in range(2):
        response = requests.get(f"{h.server.base}/vram_status", headers=bearer(h, "limited"), timeout=10)
        assert response.status_code == 200, response.text
    return {"method": "GET", "path": "/vram_status", "auth": bearer(h, "limited")}


def bearer(h: Hostile, key: str) -> dict:
    return {"Authorization": f"Bearer {h.keys[key]}"}


def nested(depth: int) -> str:
    return '{"messages": ' + "[" * depth + "]" * depth + "}"


CASES = [
    # Media URLs that reach loopback, private, link-local or unspecified addresses, in every spelling.
    image_case("ssrf-loopback-origin", lambda h: h.origin.url("/cat.png"), 400, "media", NON_PUBLIC),
    ssrf_case("decimal", "http://2130706433:{port}/cat.png"),
    ssrf_case("hex", "http://0x7f000001:{port}/cat.png"),
    ssrf_case("octal", "http://0177.0.0.1:{port}/cat.png"),
    ssrf_case("short-form", "http://127.1:{port}/cat.png"),
    ssrf_case("ipv6-loopback", "http://[::1]:{port}/cat.png"),
    ssrf_case("ipv4-mapped-ipv6", "http://[::ffff:127.0.0.1]:{port}/cat.png"),
    ssrf_case("metadata", "http://169.254.169.254/latest/meta-data/iam/security-credentials/"),
    ssrf_case("private-10", "http://10.0.0.1/cat.png"),
    ssrf_case("private-192", "http://192.168.1.1:8080/cat.png"),
    ssrf_case("unspecified", "http://0.0.0.0:{port}/cat.png"),
    ssrf_case("localhost-name", "http://localhost:{port}/cat.png"),
    ssrf_case("localhost-trailing-dot", "HTTP://LOCALHOST.:{port}/cat.png"),
    image_case(
        "ssrf-redirect-public-to-loopback",
        lambda h: h.public_url("/redirect?to=" + h.origin.url("/cat.png")),
        400,
        "media",
        NON_PUBLIC,
        hits=1,  # the public-looking hop only; the redirect's loopback target is never contacted
    ),
    image_case(
        "ssrf-redirect-chain-of-4",
        lambda h: h.public_url("/chain/4?to=/cat.png"),
        400,
        "media",
        "too many redirects (more than 3)",
        hits=4,
    ),
    image_case(
        "url-userinfo",
        lambda h: f"http://user:pass@{PUBLIC_LOOKING_HOST}:{h.origin.port}/cat.png",
        400,
        "media",
        "user name or password",
    ),
    image_case("url-scheme-ftp", lambda h: "ftp://example.com/cat.png", 400, "media", "unsupported URL scheme"),
    image_case("url-scheme-gopher", lambda h: "gopher://127.0.0.1:6379/_INFO", 400, "media", "unsupported URL"),
    image_case(
        "url-backslash-confusion",
        lambda h: f"http://{PUBLIC_LOOKING_HOST}\\@127.0.0.1:{h.origin.port}/cat.png",
        400,
        "media",
        "backslashes",
    ),
    image_case("playlist-url", lambda h: h.public_url("/live.m3u8"), 400, "media", "playlists"),
    Case(
        "playlist-content-type",
        400,
        "media",
        post(lambda h: with_video(h.public_url("/playlist-type"))),
        "playlists",
        origin_hits=1,
    ),
    # Local files: only regular image or video files under the media root; every refusal alike.
    file_case("traversal", lambda h: "../secret.png"),
    file_case("traversal-percent-encoded", lambda h: f"file://{h.media_root}/%2e%2e/secret.png"),
    file_case("absolute-outside-root", lambda h: "/etc/passwd"),
    file_case("symlink-out-of-root", lambda h: "link.png"),
    file_case("fifo", lambda h: "pipe.png"),
    file_case("directory", lambda h: "folder.png"),
    file_case("device", lambda h: "/dev/zero"),
    file_case("proc", lambda h: "/proc/self/environ"),
    file_case("missing", lambda h: "missing.png"),
    # Decoding.
    image_case(
        "png-declaring-100000x100000",
        lambda h: data_uri(png_declaring(100_000, 100_000)),
        400,
        "media",
        "too large to decode",
    ),
    image_case("truncated-jpeg", lambda h: data_uri(JPEG[: len(JPEG) // 2]), 400, "media", "could not decode"),
    image_case("bad-base64", lambda h: "data:image/png;base64,@@@@not-base64", 400, "media", "malformed"),
    image_case("data-uri-without-comma", lambda h: "data:image/png;base64", 400, "media", "not a valid data URI"),
    image_case("data-uri-wrong-type", lambda h: "data:text/html;base64,PGgxPg==", 400, "media", "wrong media type"),
    image_case("image-1x1-is-scaled-up", lambda h: data_uri(image_bytes((1, 1))), 200, "", ""),
    image_case("image-1x1000", lambda h: data_uri(image_bytes((1, 1000))), 400, "media", "aspect ratio"),
    Case("corrupt-mp4", 400, "media", post(lambda h: with_video(data_uri(b"\0" * 5000, "video/mp4"))), "decode"),
    Case(
        "truncated-mp4",
        400,
        "media",
        post(lambda h: with_video(data_uri(video_bytes()[:2000], "video/mp4"))),
        "could not decode the video",
    ),
    # Origins that misbehave.
    image_case("origin-trickles", lambda h: h.public_url("/trickle"), 400, "media", "longer than 2 s", hits=1),
    image_case("origin-slow-headers", lambda h: h.public_url("/slow-headers"), 400, "media", "longer than", hits=1),
    image_case(
        "origin-floods-without-length",
        lambda h: h.public_url("/oversize?size=30000000"),
        400,
        "media",
        "image is larger than 20 MB",
        hits=1,
    ),
    image_case(
        "origin-floods-past-false-length",
        lambda h: h.public_url("/lying-length?size=30000000"),
        400,
        "media",
        "could not decode the image",  # only the 100 bytes it claimed are read
        hits=1,
    ),
    image_case(
        "origin-declares-a-terabyte",
        lambda h: h.public_url("/huge-length"),
        400,
        "media",
        "image is larger than 20 MB",
        hits=1,
    ),
    image_case("origin-http-500", lambda h: h.public_url("/status/500"), 400, "media", "HTTP 500", hits=1),
    # Request limits: refused before parsing, validating or fetching.
    Case("body-60mb", 413, "too_large", post_raw(b" " * (60 * MB)), "larger than 52428800 bytes"),
    Case("body-60mb-chunked", 413, "too_large", post_raw(chunks(60 * MB)), "larger than 52428800 bytes"),
    Case(
        "too-many-images",
        400,
        "validation",
        post(lambda h: ask([{"type": "image", "image": h.public_url("/cat.png")}] * 9)),
        "at most 8 images",
    ),
    Case(
        "too-many-videos",
        400,
        "validation",
        post(lambda h: ask([{"type": "video", "video": h.public_url("/clip.mp4")}] * 3)),
        "at most 2 videos",
    ),
    parameter_case("max-new-tokens-0", {"max_new_tokens": 0}, "max_new_tokens: "),
    parameter_case("max-new-tokens-4097", {"max_new_tokens": 4097}, "max_new_tokens: "),
    parameter_case("max-new-tokens-string", {"max_new_tokens": "many"}, "max_new_tokens: "),
    parameter_case("temperature-negative", {"temperature": -0.1}, "temperature: "),
    parameter_case("temperature-above-2", {"temperature": 2.01}, "temperature: "),
    Case(
        "temperature-1e309",  # parses as infinity
        400,
        "validation",
        post_raw('{"messages": [{"role": "user", "content": "hi"}], "temperature": 1e309}'),
        "temperature: A valid number is required.",
    ),
    parameter_case("top-p-zero", {"top_p": 0}, "top_p: must be greater than 0"),
    parameter_case("top-p-above-1", {"top_p": 1.5}, "top_p: "),
    Case(
        "nan",
        400,
        "validation",
        post_raw('{"messages": [{"role": "user", "content": "hi"}], "temperature": NaN}'),
        "NaN is not valid JSON",
    ),
    Case(
        "infinity",
        400,
        "validation",
        post_raw('{"messages": [{"role": "user", "content": "hi"}], "top_p": -Infinity}'),
        "-Infinity is not valid JSON",
    ),
    Case(
        "unknown-role",
        400,
        "validation",
        post(lambda h: {"messages": [{"role": "root", "content": "hi"}]}),
        "messages[0].role: ",
    ),
    Case(
        "unknown-content-type",
        400,
        "validation",
        post(lambda h: ask([{"type": "audio", "audio": "x"}])),
        "messages[0].content[0].type: ",
    ),
    Case(
        "context-overflow",
        400,
        "validation",
        post(lambda h: ask("hello " * 150_000, max_new_tokens=4096)),
        "exceeds the model's context",
    ),
    Case(
        "prompt-over-a-million-characters",
        400,
        "validation",
        post(lambda h: ask("x" * 1_000_001)),
        "at most 1000000 characters",
    ),
    Case(
        "a-thousand-and-one-messages",
        400,
        "validation",
        post(lambda h: {"messages": [{"role": "user", "content": "hi"}] * 1001}),
        "no more than 1000 elements",
    ),
    Case(
        "a-million-content-items",
        400,
        "validation",
        post(lambda h: ask([{"type": "text", "text": ""}] * 1_000_000)),
        "at most 1000 content items",
    ),
    Case("json-nested-100000-deep", 400, "validation", post_raw(nested(100_000)), "nested too deeply"),
    Case("json-malformed", 400, "validation", post_raw('{"messages": [{"role": '), "JSON parse error"),
    Case("json-not-utf8", 400, "validation", post_raw(b'{"messages": "\xff\xfe\xfa"}'), "JSON parse error"),
    Case("json-array-body", 400, "validation", post_raw("[]"), "Expected a dictionary"),
    Case("form-encoded-body", 415, "validation", post_raw("a=1", "application/x-www-form-urlencoded"), "Unsupported"),
    Case(
        "bogus-charset-is-ignored",
        200,
        "",
        post_raw(json.dumps(ask("hi")), "application/json; charset=rot13"),
    ),
    Case("nul-in-the-prompt", 200, "", post(lambda h: ask("a\0b"))),
    Case("nul-in-the-path", 404, "not_found", lambda h: {"method": "GET", "path": "/api/v1/generate%00"}),
    Case("unknown-path", 404, "not_found", lambda h: {"method": "GET", "path": "/api/v1/..%2f..%2fetc%2fpasswd"}),
    Case("wrong-method", 405, "method_not_allowed", lambda h: {"method": "GET", "path": GENERATE}, "GET"),
    # Keys and rate limits: refused before the body is read, so before any media is fetched.
    Case(
        "no-api-key",
        401,
        "unauthorized",
        post(lambda h: with_image(h.public_url("/cat.png")), auth={}),
        "An API key is required",
    ),
    Case(
        "wrong-api-key",
        401,
        "unauthorized",
        post(lambda h: with_image(h.public_url("/cat.png")), auth={"Authorization": "Bearer abcdefgh.wrong"}),
        "Invalid API key.",
    ),
    Case(
        "real-prefix-wrong-secret",
        401,
        "unauthorized",
        lambda h: {
            "method": "POST",
            "path": GENERATE,
            "json": ask("hi"),
            "auth": {"X-API-Key": h.keys["client"].partition(".")[0] + "." + "w" * 32},
        },
        "Invalid API key.",
    ),
    Case(
        "revoked-api-key",
        401,
        "unauthorized",
        lambda h: {"method": "POST", "path": GENERATE, "json": ask("hi"), "auth": bearer(h, "revoked")},
        "Invalid API key.",
    ),
    Case(
        "api-key-with-sql",
        401,
        "unauthorized",
        post(lambda h: ask("hi"), auth={"X-API-Key": "' OR 1=1 --"}),
        "Invalid API key.",
    ),
    Case(
        "clear-vram-without-key",
        401,
        "unauthorized",
        lambda h: {"method": "POST", "path": "/clear_vram", "auth": {}},
        "admin API key",
    ),
    Case(
        "clear-vram-plain-key", 403, "forbidden", lambda h: {"method": "POST", "path": "/clear_vram"}, "admin API key"
    ),
    Case("throttled", 429, "throttled", throttled_third_request, "throttled"),
]


def _send(h: Hostile, case: Case, request_id: str) -> requests.Response:
    spec = case.request(h)
    method, path = spec.pop("method"), spec.pop("path")
    auth = spec.pop("auth", None)
    headers = {
        "X-Request-ID": request_id,
        **(bearer(h, "client") if auth is None else auth),
        **spec.pop("headers", {}),
    }
    return requests.request(method, h.server.base + path, headers=headers, timeout=60, **spec)


def _assert_still_serving(h: Hostile) -> None:
    assert h.server.process.poll() is None, "the server process died"
    response = requests.post(
        h.server.base + GENERATE, json=ask("Still there?"), headers={"X-API-Key": h.keys["client"]}, timeout=60
    )
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["output_tokens"] == 1


def _assert_leaks_nothing(h: Hostile, detail: str) -> None:
    for secret in ("Traceback", 'File "', str(ROOT), str(h.media_root.parent), "site-packages"):
        assert secret not in detail, f"the error detail leaks {secret!r}: {detail}"


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_hostile_request(hostile: Hostile, case: Case):
    request_id = str(uuid.uuid4())
    origin_requests = len(hostile.origin.requests)
    started = time.monotonic()

    response = _send(hostile, case, request_id)

    assert response.status_code == case.status, response.text
    assert time.monotonic() - started < 15
    body = response.json()
    if case.status != 200:
        assert set(body) == {"detail", "request_id"}, body
        assert body["request_id"] == request_id, body
        assert case.detail in body["detail"], body
        _assert_leaks_nothing(hostile, body["detail"])
    if case.status == 401:
        assert response.headers["WWW-Authenticate"] == 'Bearer realm="api"'
    if case.status == 429:
        assert 0 < int(response.headers["Retry-After"]) <= 60
    assert len(hostile.origin.requests) - origin_requests == case.origin_hits, hostile.origin.requests[-5:]

    _assert_still_serving(hostile)
    row = hostile.log_row(response.headers.get("X-Request-ID", request_id))
    assert row is not None, "no request-log row"
    assert row[:2] == (case.status, case.reason), row


def test_the_suite_covers_forty_cases_or_more():
    assert len(CASES) >= 40
    assert len({case.id for case in CASES}) == len(CASES)
