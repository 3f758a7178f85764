"""inference.media: every source kind, every refusal, and the decoding limits. Plain pytest, no Django."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import socket
import ssl
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import av
import numpy as np
import pytest
from PIL import Image

from inference import media
from inference.errors import MediaError
from inference.media import MediaPolicy, load_image, load_video
from tests.media_origin import MediaOrigin
from tests.samples import data_uri, gray_level, image_bytes, png_declaring, video_bytes


def frame_gray(frame: Image.Image) -> int:
    return int(np.asarray(frame.convert("L")).mean().round())


PNG = image_bytes()
JPEG = image_bytes(fmt="JPEG")
VIDEO = video_bytes()

OPEN = MediaPolicy(allow_private_urls=True)  # the origin listens on 127.0.0.1
SAFE = MediaPolicy()


@pytest.fixture(scope="module")
def origin():
    files = {
        "/cat.png": ("image/png", PNG),
        "/cat.jpg": ("image/jpeg", JPEG),
        "/clip.mp4": ("video/mp4", VIDEO),
        "/live.m3u8": ("application/vnd.apple.mpegurl", b"#EXTM3U\n"),
        "/stream.mp4": ("video/mp4", b"#EXTM3U\n#EXTINF:10,\nhttp://169.254.169.254/latest\n"),
    }
    with MediaOrigin(files) as server:
        yield server


@pytest.fixture
def media_root(tmp_path):
    root = tmp_path / "media"
    root.mkdir()
    (root / "cat.png").write_bytes(PNG)
    (root / "clip.mp4").write_bytes(VIDEO)
    (tmp_path / "secret.png").write_bytes(PNG)  # exists, but outside the root
    return root


@pytest.fixture
def no_connections(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a connection was attempted")

    monkeypatch.setattr(media, "_connect", refuse)


def refusal(source: str, policy: MediaPolicy, loader=load_image) -> MediaError:
    with pytest.raises(MediaError) as caught:
        loader(source, policy)
    return caught.value


# --- Each source kind works ------------------------------------------------------------------------------


@pytest.mark.parametrize("path, raw", [("/cat.png", PNG), ("/cat.jpg", JPEG)])
def test_image_from_url(origin, path, raw):
    loaded = load_image(origin.url(path), OPEN)
    assert loaded.source_kind == "url"
    assert loaded.sha256 == hashlib.sha256(raw).hexdigest()
    assert loaded.original_size == (64, 48)
    assert loaded.image.mode == "RGB"
    assert loaded.image.size == (56, 56)  # 64×48 rounds to 56×56, within [4, 1280] × 28²
    assert loaded.fetch_seconds >= 0


def test_image_from_data_uri():
    loaded = load_image(data_uri(PNG), SAFE)
    assert (loaded.source_kind, loaded.sha256) == ("data", hashlib.sha256(PNG).hexdigest())


def test_image_from_file_under_root(media_root):
    policy = MediaPolicy(allowed_root=str(media_root))
    for source in (
        "cat.png",
        str(media_root / "cat.png"),
        f"file://{media_root}/cat.png",
        f"file://{media_root}/c%61t.png",
    ):
        loaded = load_image(source, policy)
        assert (loaded.source_kind, loaded.sha256) == ("file", hashlib.sha256(PNG).hexdigest())


def test_video_from_url_sampled_at_two_fps(origin):
    loaded = load_video(origin.url("/clip.mp4"), OPEN)
    assert (loaded.source_kind, loaded.sha256) == ("url", hashlib.sha256(VIDEO).hexdigest())
    assert (len(loaded.frames), loaded.sample_fps, loaded.duration_s) == (6, 2.0, 3.0)
    assert loaded.original_size == (32, 32)
    assert {frame.size for frame in loaded.frames} == {(336, 336)}  # raised to the 128 × 28² per-frame floor
    assert [frame_gray(frame) for frame in loaded.frames] == pytest.approx(
        [gray_level(second) for second in (0, 0.5, 1, 1.5, 2, 2.5)], abs=3
    )


def test_video_from_file_and_data_uri(media_root):
    from_file = load_video("clip.mp4", MediaPolicy(allowed_root=str(media_root)))
    from_data = load_video(data_uri(VIDEO, "video/mp4"), SAFE)
    assert (from_file.source_kind, from_data.source_kind) == ("file", "data")
    assert len(from_file.frames) == len(from_data.frames) == 6


# --- The address rule and URL syntax ------------------------------------------------------------------


def test_loopback_origin_refused_by_default(origin):
    before = len(origin.requests)
    error = refusal(origin.url("/cat.png"), SAFE)
    assert (error.detail, error.media_reason) == ("URL resolves to a non-public address", "address")
    assert len(origin.requests) == before


@pytest.mark.parametrize(
    "url",
    [
        "http://2130706433/",
        "http://0x7f000001/",
        "http://0177.0.0.1/",
        "http://127.1/",
        "http://[::1]/",
        "http://[::ffff:127.0.0.1]/",
        "http://[::ffff:7f00:1]/",
        "http://[2002:7f00:1::1]/",  # 6to4 embedding 127.0.0.1
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.1/",
        "http://192.168.1.1:8080/",
        "http://100.64.0.1/",
        "http://0.0.0.0/",
        "http://224.0.0.1/",
        "http://localhost/",
        "HTTP://LOCALHOST./x.png",
    ],
)
def test_non_public_hosts_refused_without_connecting(no_connections, url):
    error = refusal(url, SAFE)
    assert (error.detail, error.media_reason) == ("URL resolves to a non-public address", "address")


@pytest.mark.parametrize(
    "source, detail",
    [
        ("http://user:pass@example.com/cat.png", "URLs with a user name or password are not allowed"),
        ("http://@example.com/cat.png", "URLs with a user name or password are not allowed"),
        ("ftp://example.com/cat.png", "unsupported URL scheme 'ftp': use http, https, data or a file path"),
        (
            "gopher://127.0.0.1:6379/_INFO",
            "unsupported URL scheme 'gopher': use http, https, data or a file path",
        ),
        (
            "http://example.com\\@127.0.0.1/",
            "not a valid URL: it contains spaces, control characters or backslashes",
        ),
        ("http://exa\tmple.com/", "not a valid URL: it contains spaces, control characters or backslashes"),
        (" http://example.com/", "file paths are not allowed on this server"),
        ("http:///cat.png", "not a valid URL: it has no host"),
        ("http://example.com:99999/", "not a valid URL"),
        ("http://[fe80::1%25eth0]/", "not a valid URL: bad host name"),
        ("file:///etc/passwd", "file paths are not allowed on this server"),
        ("/etc/passwd", "file paths are not allowed on this server"),
        ("http://example.com/live.m3u8", "streaming playlists (m3u8) are not supported"),
    ],
)
@pytest.mark.parametrize("policy", [SAFE, OPEN], ids=["safe", "private-urls-allowed"])
def test_malformed_or_forbidden_sources_refused_without_connecting(no_connections, source, detail, policy):
    assert refusal(source, policy).detail == detail


def test_domain_allowlist_checked_before_resolving(no_connections, monkeypatch):
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: pytest.fail("resolved a refused host"))
    policy = MediaPolicy(allowed_domains=("example.com",))
    for url in ("http://evil.com/x.png", "http://notexample.com/x.png", "http://example.com.evil.com/x.png"):
        assert refusal(url, policy).media_reason == "domain"


def test_domain_allowlist_allows_subdomains_and_checks_every_hop(origin):
    policy = MediaPolicy(allow_private_urls=True, allowed_domains=("localhost",))
    assert load_image(f"http://localhost:{origin.port}/cat.png", policy).source_kind == "url"
    redirect_out = f"http://localhost:{origin.port}/redirect?to={origin.url('/cat.png')}"
    assert refusal(redirect_out, policy).media_reason == "domain"


def test_connects_to_the_checked_address_without_resolving_again(origin, monkeypatch):
    """DNS rebinding: the first answer is the one connected to, and the Host header keeps the name."""
    real_getaddrinfo = socket.getaddrinfo
    lookups = []

    def rebinding_dns(host, port, *args, **kwargs):
        if host != "rebind.test":
            return real_getaddrinfo(host, port, *args, **kwargs)
        lookups.append(host)
        address = "127.0.0.1" if len(lookups) == 1 else "10.255.255.1"
        return real_getaddrinfo(address, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", rebinding_dns)
    load_image(f"http://rebind.test:{origin.port}/cat.png", OPEN)
    assert lookups == ["rebind.test"]
    assert origin.requests[-1] == ("/cat.png", f"rebind.test:{origin.port}")


# --- Redirects, deadline, byte caps, playlists, HTTP errors ------------------------------------------------


def test_redirect_to_itself_followed(origin):
    assert load_image(origin.url("/redirect?to=/cat.png"), OPEN).sha256 == hashlib.sha256(PNG).hexdigest()


def test_redirect_from_a_public_host_to_loopback_refused(origin, monkeypatch):
    """Each hop is checked: the first hop is declared public, so only the redirect's own check stops it."""
    checks = []
    real_check = media._is_public_address

    def first_hop_public(address):
        checks.append(address)
        return len(checks) == 1 or real_check(address)

    monkeypatch.setattr(media, "_is_public_address", first_hop_public)
    before = len(origin.requests)
    error = refusal(origin.url(f"/redirect?to={origin.url('/cat.png')}"), SAFE)
    assert (error.detail, error.media_reason) == ("URL resolves to a non-public address", "address")
    assert len(origin.requests) == before + 1  # the redirect target was never contacted


def test_redirect_limit(origin):
    assert load_image(origin.url("/chain/3?to=/cat.png"), OPEN).source_kind == "url"
    error = refusal(origin.url("/chain/4?to=/cat.png"), OPEN)
    assert (error.detail, error.media_reason) == ("too many redirects (more than 3)", "fetch")


def test_redirect_to_another_scheme_refused(origin):
    assert refusal(origin.url("/redirect?to=file:///etc/passwd"), OPEN).media_reason == "scheme"


@pytest.mark.parametrize("path", ["/trickle", "/slow-headers"])
def test_total_deadline_cuts_off_a_trickling_origin(origin, path):
    started = time.monotonic()
    error = refusal(origin.url(path), MediaPolicy(allow_private_urls=True, image_deadline_s=1.0))
    assert (error.detail, error.media_reason) == ("fetching the image took longer than 1 s", "timeout")
    assert time.monotonic() - started < 2.0


def test_byte_cap_enforced_while_streaming_without_content_length(origin):
    policy = MediaPolicy(allow_private_urls=True, max_image_bytes=64 * 1024)
    error = refusal(origin.url("/oversize?size=10000000"), policy)
    assert (error.detail, error.media_reason) == ("image is larger than 64 KB", "too_large")


def test_lying_content_length_reads_no_more_than_it_claims(origin):
    policy = MediaPolicy(allow_private_urls=True, max_image_bytes=64 * 1024)
    started = time.monotonic()
    assert refusal(origin.url("/lying-length?size=10000000"), policy).detail == "could not decode the image"
    assert time.monotonic() - started < 1.0


def test_declared_length_over_the_cap_refused_before_reading(origin):
    assert refusal(origin.url("/huge-length"), OPEN).detail == "image is larger than 20 MB"


@pytest.mark.parametrize("path", ["/live.m3u8", "/playlist-type", "/stream.mp4"])
def test_playlists_refused(origin, path):
    error = refusal(origin.url(path), OPEN, loader=load_video)
    assert (error.detail, error.media_reason) == ("streaming playlists (m3u8) are not supported", "scheme")


def test_http_error_status(origin):
    error = refusal(origin.url("/status/404"), OPEN)
    assert (error.detail, error.media_reason) == ("could not fetch the URL: HTTP 404", "fetch")


@pytest.fixture
def tls_files(tmp_path):
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost"]
        + ["-addext", "subjectAltName=DNS:localhost", "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )
    return str(cert), str(key)


def test_https_verifies_the_url_host_while_connecting_to_the_checked_address(tls_files, monkeypatch):
    monkeypatch.setattr(media, "_TLS_CONTEXT", ssl.create_default_context(cafile=tls_files[0]))
    with MediaOrigin({"/cat.png": ("image/png", PNG)}, tls=tls_files) as secure:
        assert load_image(secure.url("/cat.png"), OPEN).source_kind == "url"
        assert secure.requests[-1] == ("/cat.png", f"localhost:{secure.port}")
        wrong_name = refusal(f"https://127.0.0.1:{secure.port}/cat.png", OPEN)
        assert wrong_name.detail == "could not fetch the URL: its TLS certificate is not valid"
    monkeypatch.setattr(media, "_TLS_CONTEXT", ssl.create_default_context())
    with MediaOrigin({"/cat.png": ("image/png", PNG)}, tls=tls_files) as secure:
        untrusted = refusal(secure.url("/cat.png"), OPEN)
        assert untrusted.detail == "could not fetch the URL: its TLS certificate is not valid"


def test_connection_refused(origin):
    with socket.socket() as closed:  # a port nobody listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    error = refusal(f"http://127.0.0.1:{port}/cat.png", OPEN)
    assert (error.detail, error.media_reason) == ("could not fetch the URL: the connection failed", "fetch")


# --- Local files -----------------------------------------------------------------------------------------


def test_paths_outside_the_root_refused_alike(media_root, tmp_path):
    os.symlink(tmp_path / "secret.png", media_root / "link.png")
    os.mkfifo(media_root / "pipe.png")
    (media_root / "folder.png").mkdir()
    (media_root / "empty.png").write_bytes(b"")
    policy = MediaPolicy(allowed_root=str(media_root))
    sources = [
        "../secret.png",
        str(tmp_path / "secret.png"),
        f"file://{media_root}/..%2fsecret.png",
        f"file://{media_root}/%2e%2e/secret.png",
        "link.png",
        "pipe.png",
        "folder.png",
        "empty.png",
        "/proc/self/environ",
        "/dev/zero",
        "../missing.png",
        "missing.png",
        "cat.png\0.png",
        "file://otherhost/cat.png",
    ]
    for source in sources:
        error = refusal(source, policy)
        assert (error.detail, error.media_reason) == (media._FILE_UNAVAILABLE, "path"), source


def test_file_extension_must_match_the_kind(media_root):
    policy = MediaPolicy(allowed_root=str(media_root))
    (media_root / "notes.txt").write_text("hello")
    assert refusal("notes.txt", policy).detail.startswith("only image files can be loaded (")
    assert refusal("cat.png", policy, loader=load_video).detail.startswith("only video files can be loaded (")


def test_file_byte_cap(media_root):
    error = refusal("cat.png", MediaPolicy(allowed_root=str(media_root), max_image_bytes=10))
    assert (error.detail, error.media_reason) == ("image is larger than 10 bytes", "too_large")


# --- Data URIs -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "source, detail",
    [
        ("data:image/png;base64,@@@@", "not a valid data URI: the base64 data is malformed"),
        ("data:image/png;base64,iVBORw0", "not a valid data URI: the base64 data is malformed"),
        ("data:image/png;base64", "not a valid data URI: expected data:image/...;base64,<data>"),
        ("data:image/png,rawbytes", "not a valid data URI: expected data:image/...;base64,<data>"),
        ("data:text/html;base64,PGgxPg==", "data URI has the wrong media type: expected data:image/..."),
    ],
)
def test_bad_data_uris(source, detail):
    assert refusal(source, SAFE).detail == detail


def test_data_uri_size_checked_before_decoding():
    error = refusal(data_uri(PNG), MediaPolicy(max_image_bytes=100))
    assert error.media_reason == "too_large"


# --- Image decoding ----------------------------------------------------------------------------------


def test_decompression_bomb_refused_from_the_header():
    error = refusal(data_uri(png_declaring(100_000, 100_000)), SAFE)
    assert (error.detail, error.media_reason) == (
        "image is too large to decode (more than 64,000,000 pixels)",
        "too_large",
    )
    # Under Pillow's own limit, the policy's limit applies before any pixel is decoded.
    small_limit = MediaPolicy(max_decode_pixels=1000)
    assert refusal(data_uri(png_declaring(40, 40)), small_limit).media_reason == "too_large"


@pytest.mark.parametrize("raw", [JPEG[: len(JPEG) // 2], PNG[:60], b"not an image at all"])
def test_undecodable_images(raw):
    error = refusal(data_uri(raw), SAFE)
    assert (error.detail, error.media_reason) == ("could not decode the image", "decode")


def test_other_formats_refused():
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n"
    assert refusal(data_uri(eps), SAFE).detail == "could not decode the image"


def test_tiny_and_elongated_images():
    assert load_image(data_uri(image_bytes((1, 1))), SAFE).image.size == (56, 56)  # scaled up, not crashed
    assert load_image(data_uri(image_bytes((150, 1))), SAFE).image.size == (140, 28)
    error = refusal(data_uri(image_bytes((1, 1000))), SAFE)
    assert (error.detail, error.media_reason) == (
        "image aspect ratio 1×1000 is more extreme than 200:1",
        "dimensions",
    )


@pytest.mark.parametrize(
    "mode, color, expected",
    [
        ("RGBA", (10, 20, 30, 0), (255, 255, 255)),  # transparent onto white, as qwen does
        ("LA", (100, 255), (100, 100, 100)),
        ("P", 0, (0, 0, 0)),
        ("CMYK", (0, 0, 0, 0), (255, 255, 255)),
        ("I;16", 40000, (156, 156, 156)),  # 16-bit grey scaled, not clipped to white
        ("1", 1, (255, 255, 255)),
    ],
)
def test_modes_converted_to_rgb(mode, color, expected):
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    image = load_image(data_uri(image_bytes((30, 30), mode, fmt, color)), SAFE).image
    assert image.mode == "RGB"
    assert image.getpixel((5, 5)) == pytest.approx(expected, abs=2)


def test_animated_gif_gives_its_first_frame():
    frames = [Image.new("RGB", (30, 30), color) for color in ((255, 0, 0), (0, 0, 255))]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:])
    image = load_image(data_uri(buffer.getvalue()), SAFE).image
    assert image.getpixel((5, 5)) == pytest.approx((255, 0, 0), abs=2)


def test_pixel_hints_clamped_to_the_policy():
    big = data_uri(image_bytes((2000, 1500)))
    policy = MediaPolicy()
    capped = load_image(big, policy, max_pixels=10**9).image
    assert capped.width * capped.height <= policy.max_image_pixels
    assert capped.size == load_image(big, policy).image.size
    smaller = load_image(big, policy, max_pixels=100 * 28 * 28).image
    assert smaller.width % 28 == smaller.height % 28 == 0 and smaller.width * smaller.height <= 100 * 28 * 28
    tiny = load_image(big, policy, max_pixels=1).image  # raised to the policy's minimum
    assert tiny.width * tiny.height <= policy.min_image_pixels and tiny.size != (0, 0)
    upscaled = load_image(data_uri(image_bytes((10, 10))), policy, min_pixels=10**9).image
    assert upscaled.width * upscaled.height <= policy.max_image_pixels


def test_elongated_image_under_a_small_budget_keeps_one_row_of_patches():
    image = load_image(data_uri(image_bytes((4000, 500))), SAFE, max_pixels=4 * 28 * 28).image
    assert image.size == (112, 28)


# --- Video decoding ----------------------------------------------------------------------------------


def test_corrupt_and_truncated_videos():
    for raw in (b"\0" * 5000, VIDEO[: len(VIDEO) // 2], PNG):
        error = refusal(data_uri(raw, "video/mp4"), SAFE, loader=load_video)
        assert (error.detail, error.media_reason) == ("could not decode the video", "decode")


def test_frame_cap_spreads_frames_and_reports_effective_fps():
    loaded = load_video(data_uri(VIDEO, "video/mp4"), MediaPolicy(max_video_frames=4))
    assert (len(loaded.frames), loaded.sample_fps) == (4, pytest.approx(4 / 3))
    assert [frame_gray(frame) for frame in loaded.frames] == pytest.approx(
        [gray_level(second) for second in (0, 0.7, 1.5, 2.2)], abs=3
    )


def test_video_hints_clamped_to_the_policy():
    source = data_uri(VIDEO, "video/mp4")
    assert len(load_video(source, SAFE, fps=30).frames) == 6  # fps above the policy's 2 → 2
    assert len(load_video(source, SAFE, fps=1).frames) == 2  # 3 frames at 1 fps → even count 2
    assert len(load_video(source, MediaPolicy(max_video_frames=8), nframes=1000).frames) == 8
    assert len(load_video(source, SAFE, nframes=3).frames) == 2
    frame = load_video(source, SAFE, max_pixels=10**9).frames[0]
    assert frame.width * frame.height <= SAFE.video_max_frame_pixels


def test_total_pixel_budget_shrinks_frames():
    policy = MediaPolicy(video_min_frame_pixels=28 * 28, video_total_pixels=2 * 112 * 112)
    loaded = load_video(data_uri(video_bytes(seconds=1, side=224), "video/mp4"), policy)
    assert [frame.size for frame in loaded.frames] == [(112, 112)] * 2
    # A total budget below the per-frame floor is raised to it: 100352 pixels, 308×308 fits, 336×336 not.
    floor = MediaPolicy(video_total_pixels=6 * 28 * 28)
    assert {frame.size for frame in load_video(data_uri(VIDEO, "video/mp4"), floor).frames} == {(308, 308)}


def test_video_without_duration_metadata_is_measured_from_its_packets():
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="webm", options={"live": "1"}) as container:  # no duration written
        stream = container.add_stream("libvpx", rate=10)
        stream.width = stream.height = 32
        stream.pix_fmt = "yuv420p"
        for index in range(30):
            pixels = np.full((32, 32, 3), gray_level(index / 10), dtype=np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")))
        container.mux(stream.encode())
    source = data_uri(buffer.getvalue(), "video/webm")
    loaded = load_video(source, SAFE)
    assert (len(loaded.frames), loaded.sample_fps, loaded.duration_s) == (6, 2.0, pytest.approx(3.0))
    too_long = refusal(source, MediaPolicy(max_video_seconds=2), loader=load_video)
    assert too_long.detail == "video is longer than 2 seconds"


def test_video_longer_than_the_policy_refused():
    error = refusal(data_uri(VIDEO, "video/mp4"), MediaPolicy(max_video_seconds=2), loader=load_video)
    assert (error.detail, error.media_reason) == ("video is longer than 2 seconds", "too_large")


def test_long_video_sampled_by_seeking_within_the_decoding_budget():
    """40 s at 5 fps, a keyframe every 2 s: 4 frames 10 s apart need far fewer than the 200 decodes."""
    long_video = data_uri(video_bytes(seconds=40, fps=5, side=16, gop=10), "video/mp4")
    loaded = load_video(long_video, MediaPolicy(max_video_frames=4, video_max_decoded_frames=60))
    assert loaded.sample_fps == pytest.approx(0.1)
    assert [frame_gray(frame) for frame in loaded.frames] == pytest.approx(
        [gray_level(second) for second in (0, 10, 20, 30)], abs=3
    )
    tight_budget = MediaPolicy(max_video_frames=4, video_max_decoded_frames=5)
    error = refusal(long_video, tight_budget, loader=load_video)
    assert error.detail == "video needs too much decoding to sample"


def test_source_must_be_a_non_empty_string():
    assert refusal("", SAFE).detail == "no image source given"
    assert refusal(None, SAFE, loader=load_video).detail == "no video source given"


def test_policy_validates_itself():
    with pytest.raises(ValueError):
        MediaPolicy(max_video_frames=1)
    with pytest.raises(ValueError):
        MediaPolicy(max_image_pixels=100, min_image_pixels=4 * 28 * 28)


def test_decoding_runs_at_most_as_many_at_once_as_there_are_slots(monkeypatch):
    """16 threads loading images: never more decodes at once than DECODE_SLOTS, so peak memory stays bounded."""
    monkeypatch.setattr(media, "DECODE_SLOTS", threading.BoundedSemaphore(3))
    real_decode, running, peak, lock = media._decode_image, [0], [0], threading.Lock()

    def slow_decode(raw, policy):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.05)
        try:
            return real_decode(raw, policy)
        finally:
            with lock:
                running[0] -= 1

    monkeypatch.setattr(media, "_decode_image", slow_decode)
    with ThreadPoolExecutor(16) as pool:
        loaded = list(pool.map(lambda _: load_image(data_uri(PNG), SAFE), range(16)))
    assert len(loaded) == 16 and peak[0] == 3
