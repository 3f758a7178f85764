"""The one media loader: a client's string (URL, data URI or file path) to RGB images or video frames.

Every limit lives in `MediaPolicy`, which the server fills from settings. Each refusal raises `MediaError`
with a plain-words detail that never names resolved addresses or real paths; the caller prefixes the
location (`messages[0].content[1].image: `). Images and frames leave here resized the way Qwen2.5-VL wants
them (sides multiples of 28, pixel count within the budget), so nothing downstream needs to resize.

Why so careful (notes/anchors.md, "Security lessons"): vLLM shipped SSRF through media URLs
(CVE-2025-6242), two URL parsers disagreeing about `\\` (CVE-2026-24779), fetching the raw instead of the
validated URL (CVE-2026-25960), a crash on 1×1 images (CVE-2026-22773) and unbounded frame counts
(GHSA-x6mc-67gf-chw4). Django-free on purpose: the engine and plain tests use it directly.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import http.client
import io
import ipaddress
import logging
import math
import os
import re
import socket
import ssl
import stat
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass

import av
import certifi
from PIL import Image, ImageOps
from qwen_vl_utils import smart_resize

from inference.errors import MediaError

logger = logging.getLogger(__name__)

QWEN_FACTOR = 28  # vision patch 14 × spatial merge 2: every side the model sees is a multiple of this
# Decodes at once, per process. Decoding is CPU work, so more at once than cores only adds memory: one
# image of the 64-megapixel decode limit is 192 MB of RGB before it is scaled down, and dozens of request
# threads decoding such images together could exhaust the host's memory. Fetching is not limited.
DECODE_SLOTS = threading.BoundedSemaphore(max(2, os.cpu_count() or 1))
_Address = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class MediaPolicy:
    """Every media limit in one place; the server builds one from settings."""

    allowed_root: str | None = None  # file paths load only from under this folder; None refuses them
    allow_private_urls: bool = False  # lifts ONLY the non-public address rule (tests: a 127.0.0.1 origin)
    allowed_domains: tuple[str, ...] = ()  # empty: any host; else the host or a parent domain is listed
    max_image_bytes: int = 20 * 1024 * 1024  # raw bytes of one image, counted while streaming
    max_video_bytes: int = 200 * 1024 * 1024  # raw bytes of one video, counted while streaming
    image_deadline_s: float = 10.0  # TOTAL wall clock of one fetch: DNS, connect, redirects, body
    video_deadline_s: float = 30.0  # the same for a video
    max_redirects: int = 3  # each hop is parsed, resolved and checked like the first
    max_image_pixels: int = 1280 * 28 * 28  # images are scaled down to at most this (1280 visual tokens)
    min_image_pixels: int = 4 * 28 * 28  # and up to about this (the HF processor's min_pixels)
    max_decode_pixels: int = 64_000_000  # width×height from the header above this: a decompression bomb
    max_aspect_ratio: float = 200.0  # long side / short side; at most qwen's own 200
    video_fps: float = 2.0  # frames sampled per second of video, and the cap on a client's fps
    max_video_frames: int = 64  # frames per video; when fps would give more, these are spread evenly
    max_video_seconds: float = 600.0  # longer videos are refused before decoding
    # Per-frame pixel cap: a quarter of qwen's 768*28*28, frames up to ~388×388, so 64 frames (two per
    # temporal patch) cost at most 6144 visual tokens. Qwen's default allows 24,576 for the same frames,
    # and a 5 s video once made a 43,698-token prompt in vLLM.
    video_max_frame_pixels: int = 768 * 28 * 28 // 4
    # Per-frame floor: qwen's VIDEO_MIN_TOKEN_NUM and the HF video processor's shortest_edge, so frames
    # leave here at a size the processor keeps. A total budget below it is raised to it.
    video_min_frame_pixels: int = 128 * 28 * 28
    # Pixels over ALL frames; per frame min(video_max_frame_pixels, this / frames). 64 full frames, so
    # raising max_video_frames shrinks frames instead of growing the prompt past 6144 visual tokens.
    video_total_pixels: int = 64 * (768 * 28 * 28 // 4)
    # Frames decoded (not kept) per video: bounds the work on broken timestamps or keyframe-less
    # streams. The longest allowed video at 30 fps fits; seeking makes most videos need far fewer.
    video_max_decoded_frames: int = 18_000

    def __post_init__(self) -> None:
        problems = {
            "min_image_pixels must be at least 28*28": self.min_image_pixels < QWEN_FACTOR**2,
            "max_image_pixels must be >= min_image_pixels": self.max_image_pixels < self.min_image_pixels,
            "max_aspect_ratio must be in [1, 200]": not 1 <= self.max_aspect_ratio <= 200,
            "video_fps must be positive": self.video_fps <= 0,
            "max_video_frames must be at least 2": self.max_video_frames < 2,
            "video_min_frame_pixels must be at least 28*28": self.video_min_frame_pixels < QWEN_FACTOR**2,
            "max_redirects must not be negative": self.max_redirects < 0,
        }
        for message, failed in problems.items():
            if failed:
                raise ValueError(f"MediaPolicy: {message}")


@dataclass
class LoadedImage:
    image: Image.Image  # RGB, sides multiples of 28, pixel count within the budget
    sha256: str  # of the raw bytes as received
    source_kind: str  # "url", "data" or "file"
    original_size: tuple[int, int]  # (width, height) as decoded (upright), before resizing
    fetch_seconds: float  # getting the bytes (network, file or base64), decoding excluded


@dataclass
class LoadedVideo:
    frames: list[Image.Image]  # RGB, one size (sides multiples of 28), an even count >= 2
    sample_fps: float  # effective frames per second of video: consecutive frames are 1/this apart
    sha256: str
    source_kind: str
    original_size: tuple[int, int]
    duration_s: float
    fetch_seconds: float


def load_image(
    source: str, policy: MediaPolicy, *, max_pixels: int | None = None, min_pixels: int | None = None
) -> LoadedImage:
    """Fetch, check and decode one image, resized for Qwen2.5-VL.

    `max_pixels` / `min_pixels` are client hints, clamped into the policy's range. Raises `MediaError`.
    """
    kind = _MediaKind("image", _IMAGE_EXTENSIONS, policy.max_image_bytes, policy.image_deadline_s)
    started = time.monotonic()
    raw, source_kind = _read_source(source, policy, kind)
    fetch_seconds = time.monotonic() - started
    high = _clamp(max_pixels, policy.min_image_pixels, policy.max_image_pixels, policy.max_image_pixels)
    low = _clamp(min_pixels, policy.min_image_pixels, high, policy.min_image_pixels)
    with DECODE_SLOTS:  # the full-size pixels exist only inside
        image = _decode_image(raw, policy)
        size = _qwen_size(image.width, image.height, int(low), int(high))
        resized = image if image.size == size else image.resize(size, Image.Resampling.BICUBIC)
    return LoadedImage(resized, hashlib.sha256(raw).hexdigest(), source_kind, image.size, fetch_seconds)


def load_video(
    source: str,
    policy: MediaPolicy,
    *,
    fps: float | None = None,
    nframes: int | None = None,
    max_pixels: int | None = None,
) -> LoadedVideo:
    """Fetch, check and decode one video into evenly spaced RGB frames, resized for Qwen2.5-VL.

    `fps` or `nframes` (fps wins if both) and `max_pixels` (per frame) are client hints, clamped to the
    policy. Raises `MediaError`.
    """
    kind = _MediaKind("video", _VIDEO_EXTENSIONS, policy.max_video_bytes, policy.video_deadline_s)
    started = time.monotonic()
    raw, source_kind = _read_source(source, policy, kind)
    fetch_seconds = time.monotonic() - started
    try:
        with DECODE_SLOTS:
            frames, sample_fps, original_size, duration_s = _decode_video(raw, policy, fps, nframes, max_pixels)
    except (av.FFmpegError, OSError, ValueError, IndexError, EOFError) as error:
        logger.info("video decoding failed: %r", error)
        raise MediaError("could not decode the video", media_reason="decode") from None
    sha256 = hashlib.sha256(raw).hexdigest()
    return LoadedVideo(frames, sample_fps, sha256, source_kind, original_size, duration_s, fetch_seconds)


# --- Sources ---------------------------------------------------------------------------------------

_IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"})
_VIDEO_EXTENSIONS = frozenset({".mp4", ".mkv", ".webm", ".mov", ".avi", ".m4v"})
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):")
# HLS playlists make FFmpeg fetch each segment URL itself, past every check here (vLLM refuses .m3u8
# too); the demuxer allowlist in _open_container is the second line of defence.
_PLAYLIST_TYPES = {
    "application/vnd.apple.mpegurl",
    "application/x-mpegurl",
    "audio/mpegurl",
    "audio/x-mpegurl",
}
_PLAYLIST_REFUSED = "streaming playlists (m3u8) are not supported"


@dataclass(frozen=True)
class _MediaKind:
    name: str  # "image" or "video", as the messages say it
    extensions: frozenset[str]
    max_bytes: int
    deadline_s: float


def _read_source(source: str, policy: MediaPolicy, kind: _MediaKind) -> tuple[bytes, str]:
    """The raw bytes of `source`, and its kind: "url", "data" or "file"."""
    if not isinstance(source, str) or not source:
        raise MediaError(f"no {kind.name} source given", media_reason="scheme")
    match = _SCHEME.match(source)
    scheme = match.group(1).lower() if match else ""
    if scheme in ("http", "https"):
        raw, source_kind = _fetch_url(source, policy, kind), "url"
    elif scheme == "data":
        raw, source_kind = _decode_data_uri(source, kind), "data"
    elif scheme in ("file", ""):
        raw, source_kind = _read_local_file(source, policy, kind), "file"
    else:
        detail = f"unsupported URL scheme {scheme!r}: use http, https, data or a file path"
        raise MediaError(detail, media_reason="scheme")
    if raw[:64].lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"#EXTM3U"):
        raise MediaError(_PLAYLIST_REFUSED, media_reason="scheme")
    return raw, source_kind


def _too_large(kind: _MediaKind) -> MediaError:
    size = kind.max_bytes
    readable = f"{size} bytes"
    if size >= 1024:
        readable = f"{size / 2**20:g} MB" if size >= 2**20 else f"{size / 2**10:g} KB"
    return MediaError(f"{kind.name} is larger than {readable}", media_reason="too_large")


def _decode_data_uri(source: str, kind: _MediaKind) -> bytes:
    header, comma, payload = source.partition(",")
    media_type, *params = header[len("data:") :].split(";")
    if not comma or "base64" not in (param.strip().lower() for param in params):
        detail = f"not a valid data URI: expected data:{kind.name}/...;base64,<data>"
        raise MediaError(detail, media_reason="scheme")
    if not media_type.strip().lower().startswith(f"{kind.name}/"):
        detail = f"data URI has the wrong media type: expected data:{kind.name}/..."
        raise MediaError(detail, media_reason="scheme")
    if len(payload) * 3 // 4 > kind.max_bytes:
        raise _too_large(kind)
    try:
        return base64.b64decode("".join(payload.split()), validate=True)
    except (binascii.Error, ValueError):
        detail = "not a valid data URI: the base64 data is malformed"
        raise MediaError(detail, media_reason="decode") from None


# --- Local files -----------------------------------------------------------------------------------

# One message for missing, outside the root, symlinked out and not a regular file, so a client cannot
# probe which paths exist outside the root (notes: "Errors must not leak file-existence hints").
_FILE_UNAVAILABLE = "file is not available: give the path of an existing file in the server's media folder"


def _read_local_file(source: str, policy: MediaPolicy, kind: _MediaKind) -> bytes:
    if policy.allowed_root is None:
        raise MediaError("file paths are not allowed on this server", media_reason="path")
    root = os.path.realpath(policy.allowed_root)
    try:
        # realpath resolves "..", and symlinks anywhere in the path, before the containment check.
        real_path = os.path.realpath(os.path.join(root, _path_from_source(source)))
    except ValueError:  # an embedded NUL byte
        raise MediaError(_FILE_UNAVAILABLE, media_reason="path") from None
    if os.path.commonpath([root, real_path]) != root:
        logger.warning("media file refused: %r is outside the media root", source)
        raise MediaError(_FILE_UNAVAILABLE, media_reason="path")
    if os.path.splitext(real_path)[1].lower() not in kind.extensions:
        detail = f"only {kind.name} files can be loaded ({' '.join(sorted(kind.extensions))})"
        raise MediaError(detail, media_reason="path")
    return _read_regular_file(real_path, kind)


def _path_from_source(source: str) -> str:
    """The path a `file:` URL or a bare path names; relative paths are relative to the root."""
    if source[:5].lower() != "file:":
        return source
    parts = urllib.parse.urlsplit(source)
    if parts.netloc not in ("", "localhost"):
        raise MediaError(_FILE_UNAVAILABLE, media_reason="path")
    return urllib.parse.unquote(parts.path)  # decoded once: "%2e%2e" becomes ".." and meets the root check


def _read_regular_file(path: str, kind: _MediaKind) -> bytes:
    try:
        # O_NOFOLLOW: a symlink swapped in after realpath fails; O_NONBLOCK: opening a FIFO cannot hang.
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as error:
        logger.info("media file %r could not be opened: %s", path, error.strerror)
        raise MediaError(_FILE_UNAVAILABLE, media_reason="path") from None
    try:
        info = os.fstat(fd)
        # Empty too: /proc and /sys files are "regular" with st_size 0, yet return data.
        if not stat.S_ISREG(info.st_mode) or info.st_size == 0:
            logger.warning("media file %r refused: not a regular non-empty file", path)
            raise MediaError(_FILE_UNAVAILABLE, media_reason="path")
        if info.st_size > kind.max_bytes:
            raise _too_large(kind)
        with open(fd, "rb", closefd=False) as file:
            raw = file.read(kind.max_bytes + 1)
        if len(raw) > kind.max_bytes:  # it grew after fstat
            raise _too_large(kind)
        return raw
    finally:
        os.close(fd)


# --- URLs ------------------------------------------------------------------------------------------

# Python's urlsplit silently drops tabs and newlines, and other parsers split on "\" (CVE-2026-24779):
# such URLs are refused outright so that only one reading of a URL exists.
_UNSAFE_URL_CHARACTERS = re.compile(r"[\x00-\x20\x7f\\]")
_HOST_NAME = re.compile(r"[a-z0-9_-]+(\.[a-z0-9_-]+)*")
_PRINTABLE_ASCII = "".join(chr(code) for code in range(0x21, 0x7F))  # quote() only what is not this
_REDIRECTS = (301, 302, 303, 307, 308)
_CONNECTION_FAILED = "could not fetch the URL: the connection failed"
_TLS_CONTEXT = ssl.create_default_context(cafile=certifi.where())
# getaddrinfo has no timeout of its own: running it here lets the fetch deadline cover DNS too.
_RESOLVER = ThreadPoolExecutor(max_workers=8, thread_name_prefix="media-dns")


@dataclass(frozen=True)
class _Target:
    """A URL parsed once; the request is built from exactly these parts (CVE-2026-25960)."""

    url: str
    scheme: str
    host: str  # lower-case ASCII; IPv6 without brackets
    port: int
    request_path: str  # path and query, as sent

    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == _default_port(self.scheme) else f"{host}:{self.port}"


class _Deadline:
    """One wall-clock budget for a whole fetch; a socket timeout only bounds each single read."""

    def __init__(self, kind: _MediaKind) -> None:
        self.kind = kind
        self.expires = time.monotonic() + kind.deadline_s

    def seconds_left(self) -> float:
        return self.expires - time.monotonic()

    def next_timeout(self) -> float:
        """The timeout for the next blocking call: the seconds left, or the timeout error if none are."""
        if (left := self.seconds_left()) <= 0:
            raise self.error()
        return left

    def error(self) -> MediaError:
        detail = f"fetching the {self.kind.name} took longer than {self.kind.deadline_s:g} s"
        return MediaError(detail, media_reason="timeout")


def _fetch_url(url: str, policy: MediaPolicy, kind: _MediaKind) -> bytes:
    deadline = _Deadline(kind)
    for hop in range(policy.max_redirects + 1):
        target = _parse_url(url)
        _check_domain(target.host, policy)
        addresses = _resolve_checked(target, policy, deadline)
        location, body = _get(target, addresses, kind, deadline)
        if location is None:
            return body
        url = urllib.parse.urljoin(target.url, location)
        logger.info("media URL redirect %d from host %s", hop + 1, target.host)
    raise MediaError(f"too many redirects (more than {policy.max_redirects})", media_reason="fetch")


def _default_port(scheme: str) -> int:
    return 443 if scheme == "https" else 80


def _parse_url(url: str) -> _Target:
    if _UNSAFE_URL_CHARACTERS.search(url):
        detail = "not a valid URL: it contains spaces, control characters or backslashes"
        raise MediaError(detail, media_reason="scheme")
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError:
        raise MediaError("not a valid URL", media_reason="scheme") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise MediaError(f"unsupported URL scheme {scheme!r}: use http or https", media_reason="scheme")
    if "@" in parts.netloc:
        raise MediaError("URLs with a user name or password are not allowed", media_reason="scheme")
    if port == 0:
        raise MediaError("not a valid URL: port 0", media_reason="scheme")
    if parts.path.lower().endswith((".m3u8", ".m3u")):
        raise MediaError(_PLAYLIST_REFUSED, media_reason="scheme")
    path = urllib.parse.quote(parts.path or "/", safe=_PRINTABLE_ASCII)
    query = urllib.parse.quote(parts.query, safe=_PRINTABLE_ASCII)
    request_path = f"{path}?{query}" if query else path
    return _Target(url, scheme, _normalise_host(parts.hostname), port or _default_port(scheme), request_path)


def _normalise_host(hostname: str | None) -> str:
    if not hostname:
        raise MediaError("not a valid URL: it has no host", media_reason="scheme")
    try:
        host = hostname.encode("idna").decode("ascii").lower().removesuffix(".")
    except UnicodeError:
        host = ""
    # An IPv6 literal was validated by urlsplit; its zone id ("%eth0") is refused with the bad names.
    if not (_HOST_NAME.fullmatch(host) or (":" in host and "%" not in host)):
        raise MediaError("not a valid URL: bad host name", media_reason="scheme")
    return host


def _check_domain(host: str, policy: MediaPolicy) -> None:
    domains = [domain.lower().strip(".") for domain in policy.allowed_domains]
    if domains and not any(host == domain or host.endswith("." + domain) for domain in domains):
        raise MediaError("URL host is not in this server's list of allowed domains", media_reason="domain")


def _resolve_checked(target: _Target, policy: MediaPolicy, deadline: _Deadline) -> list[_Address]:
    """Resolve once; every address must be public. The connection goes to these, never re-resolved."""
    future = _RESOLVER.submit(socket.getaddrinfo, target.host, target.port, type=socket.SOCK_STREAM)
    try:
        infos = future.result(timeout=deadline.next_timeout())
    except FutureTimeout:
        raise deadline.error() from None
    except (OSError, UnicodeError) as error:
        logger.info("media URL host %s did not resolve: %s", target.host, error)
        raise MediaError("could not resolve the URL's host name", media_reason="fetch") from None
    # getaddrinfo turns "2130706433", "0x7f000001", "0177.0.0.1" and "127.1" into 127.0.0.1: the check
    # runs on what will really be connected to, whatever spelling the URL used.
    addresses = list(dict.fromkeys(ipaddress.ip_address(info[4][0].partition("%")[0]) for info in infos))
    refused = [str(address) for address in addresses if not _is_public_address(address)]
    if refused and not policy.allow_private_urls:
        logger.warning("media URL host %s refused: it resolves to %s", target.host, ", ".join(refused))
        raise MediaError("URL resolves to a non-public address", media_reason="address")
    return addresses


def _is_public_address(address: _Address) -> bool:
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:  # ::ffff:127.0.0.1 is 127.0.0.1 on a dual-stack socket
            return _is_public_address(address.ipv4_mapped)
        # 6to4 (2002::/16) counts as global yet embeds an IPv4 address. Teredo and NAT64 (64:ff9b::/96)
        # are non-global or reserved for ipaddress already, so the rule below refuses them.
        if address.sixtofour is not None and not _is_public_address(address.sixtofour):
            return False
    # is_global alone lets multicast through, hence the explicit list (169.254.169.254 is link-local).
    special = (
        address.is_loopback
        or address.is_private
        or address.is_link_local
        or address.is_unspecified
        or address.is_multicast
        or address.is_reserved
    )
    return address.is_global and not special


class _PinnedConnection(http.client.HTTPConnection):
    """HTTP over a socket already open to the checked address: it never resolves or reconnects."""

    def __init__(self, sock: socket.socket, host: str, port: int) -> None:
        super().__init__(host, port)
        self.sock = sock

    def connect(self) -> None:
        raise ConnectionError("a pinned media connection does not reconnect")


class _Watchdog:
    """Shuts the socket down at the deadline, so an origin that trickles bytes cannot outlive it."""

    def __init__(self, sock: socket.socket, deadline: _Deadline) -> None:
        self.sock = sock
        self._timer = threading.Timer(deadline.seconds_left(), self._fire)  # at once if already late
        self._timer.daemon = True
        self._timer.start()

    def _fire(self) -> None:
        try:  # socket.socket's own: SSLSocket.shutdown would also drop its TLS state under the reader
            socket.socket.shutdown(self.sock, socket.SHUT_RDWR)
        except OSError:
            pass

    def cancel(self) -> None:
        self._timer.cancel()


def _get(
    target: _Target,
    addresses: list[_Address],
    kind: _MediaKind,
    deadline: _Deadline,
) -> tuple[str | None, bytes]:
    """One GET to a checked address: (redirect location, b"") or (None, body)."""
    sock = _connect(addresses, target.port, deadline)
    watchdog = _Watchdog(sock, deadline)
    connection = None
    try:
        if target.scheme == "https":
            sock = _TLS_CONTEXT.wrap_socket(sock, server_hostname=target.host, do_handshake_on_connect=False)
            watchdog.sock = sock
            sock.do_handshake()  # the certificate is checked against the URL's host, not the address
        connection = _PinnedConnection(sock, target.host, target.port)
        response = _send_get(connection, target)
        if response.status in _REDIRECTS and response.getheader("Location"):
            return response.getheader("Location"), b""
        _check_response_headers(response, kind)
        return None, _read_body(response, kind, deadline)
    except ssl.SSLCertVerificationError as error:
        logger.info("media URL host %s: %s", target.host, error)
        detail = "could not fetch the URL: its TLS certificate is not valid"
        raise MediaError(detail, media_reason="fetch") from None
    except (OSError, http.client.HTTPException) as error:
        if deadline.seconds_left() <= 0:
            raise deadline.error() from None
        logger.info("media fetch from host %s failed: %r", target.host, error)
        raise MediaError(_CONNECTION_FAILED, media_reason="fetch") from None
    finally:
        watchdog.cancel()
        if connection is not None:
            connection.close()
        sock.close()


def _send_get(connection: _PinnedConnection, target: _Target) -> http.client.HTTPResponse:
    connection.putrequest("GET", target.request_path, skip_host=True, skip_accept_encoding=True)
    connection.putheader("Host", target.host_header())
    connection.putheader("User-Agent", "vlm-server-media/1")
    connection.putheader("Accept-Encoding", "identity")  # no gzip: the byte cap counts what is decoded
    connection.putheader("Connection", "close")
    connection.endheaders()
    return connection.getresponse()


def _check_response_headers(response: http.client.HTTPResponse, kind: _MediaKind) -> None:
    if not 200 <= response.status < 300:
        raise MediaError(f"could not fetch the URL: HTTP {response.status}", media_reason="fetch")
    if (response.getheader("Content-Type") or "").partition(";")[0].strip().lower() in _PLAYLIST_TYPES:
        raise MediaError(_PLAYLIST_REFUSED, media_reason="scheme")
    declared_length = response.getheader("Content-Length") or ""
    if declared_length.isdigit() and int(declared_length) > kind.max_bytes:  # refused before reading
        raise _too_large(kind)


def _connect(addresses: list[_Address], port: int, deadline: _Deadline) -> socket.socket:
    """A TCP connection to the first checked address that answers; numeric addresses, so no DNS here."""
    for address in addresses:
        sock = socket.socket(socket.AF_INET6 if address.version == 6 else socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.settimeout(deadline.next_timeout())
            sock.connect((str(address), port))
            return sock
        except OSError as error:
            logger.info("media URL connection to %s failed: %r", address, error)
        except MediaError:
            sock.close()
            raise
        sock.close()
    if deadline.seconds_left() <= 0:
        raise deadline.error()
    raise MediaError(_CONNECTION_FAILED, media_reason="fetch")


def _read_body(response: http.client.HTTPResponse, kind: _MediaKind, deadline: _Deadline) -> bytes:
    # The cap counts the bytes actually read: a missing or lying Content-Length changes nothing.
    chunks, received = [], 0
    while deadline.seconds_left() > 0 and (chunk := response.read1(1 << 16)):
        received += len(chunk)
        if received > kind.max_bytes:
            raise _too_large(kind)
        chunks.append(chunk)
    if deadline.seconds_left() <= 0:  # the watchdog's shutdown looks like an early end of the body
        raise deadline.error()
    return b"".join(chunks)


# --- Images ----------------------------------------------------------------------------------------

_IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")  # the only decoders client bytes reach
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def _decode_image(raw: bytes, policy: MediaPolicy) -> Image.Image:
    """Upright RGB; bombs are refused from the header's size before any pixel is decoded."""
    # Pillow raises many exception types on hostile input (its own fuzzers accept OSError, ValueError,
    # SyntaxError, EOFError, struct.error, IndexError, ...): each one means "could not decode".
    try:
        image = Image.open(io.BytesIO(raw), formats=_IMAGE_FORMATS)
    except Image.DecompressionBombError:  # Pillow's own limit (2 × MAX_IMAGE_PIXELS) came first
        raise _pixel_bomb("image", policy) from None
    except Exception as error:
        logger.info("image header not readable: %r", error)
        raise MediaError("could not decode the image", media_reason="decode") from None
    _check_dimensions("image", image.width, image.height, policy)
    try:
        return _to_rgb(ImageOps.exif_transpose(image))  # of an animated image, the first frame
    except Exception as error:
        logger.info("image decoding failed: %r", error)
        raise MediaError("could not decode the image", media_reason="decode") from None


def _pixel_bomb(kind_name: str, policy: MediaPolicy) -> MediaError:
    detail = f"{kind_name} is too large to decode (more than {policy.max_decode_pixels:,} pixels)"
    return MediaError(detail, media_reason="too_large")


def _check_dimensions(kind_name: str, width: int, height: int, policy: MediaPolicy) -> None:
    if width <= 0 or height <= 0:
        raise MediaError(f"could not decode the {kind_name}", media_reason="decode")
    if width * height > policy.max_decode_pixels:
        raise _pixel_bomb(kind_name, policy)
    # Tiny is fine (smart_resize scales a 1×1 up to 56×56; CVE-2026-22773 was a crash on it); only
    # elongation is refused, before smart_resize would raise on it.
    if max(width, height) / min(width, height) > policy.max_aspect_ratio:
        limit = policy.max_aspect_ratio
        detail = f"{kind_name} aspect ratio {width}×{height} is more extreme than {limit:g}:1"
        raise MediaError(detail, media_reason="dimensions")


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in _SIXTEEN_BIT_MODES:  # a plain convert clips every value above 255 to white
        image = image.point(lambda value: value / 257).convert("L")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))  # onto white, as qwen_vl_utils does
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image.convert("RGB")


def _qwen_size(width: int, height: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """(width, height): sides multiples of 28, at most max_pixels, as qwen_vl_utils.smart_resize does."""
    new_height, new_width = smart_resize(height, width, QWEN_FACTOR, min_pixels, max_pixels)
    if new_height * new_width > max_pixels:
        # Scaling up to min_pixels rounds both sides up and can overshoot the cap: the cap wins.
        new_height, new_width = smart_resize(new_height, new_width, QWEN_FACTOR, QWEN_FACTOR**2, max_pixels)
    if new_height == 0 or new_width == 0:
        # smart_resize floors the short side of an elongated image to 0 under a small budget (the resize
        # would then fail): keep one row of patches and fit the long side into the budget.
        long_side = max(QWEN_FACTOR, max_pixels // QWEN_FACTOR**2 * QWEN_FACTOR)
        return (long_side, QWEN_FACTOR) if width >= height else (QWEN_FACTOR, long_side)
    return new_width, new_height


def _clamp(value: float | None, low: float, high: float, default: float) -> float:
    """A client hint forced into [low, high]; missing or not a finite number means `default`."""
    if value is None or not math.isfinite(value):
        return default
    return min(max(value, low), high)


# --- Videos ----------------------------------------------------------------------------------------

# The demuxers that may read client bytes (FFmpeg's format_whitelist): no hls or concat, which open
# further URLs or files named inside the data, and none of the exotic ones.
_VIDEO_DEMUXERS = "mov,mp4,m4a,3gp,3g2,mj2,matroska,webm,avi"
_MIN_FPS = 0.01  # a client's fps below this is raised to it
_SEEK_AHEAD_S = 5.0  # targets nearer than this are decoded forward to; farther ones are sought
_EPSILON_S = 1e-6


def _open_container(raw: bytes) -> av.container.InputContainer:
    return av.open(io.BytesIO(raw), options={"format_whitelist": _VIDEO_DEMUXERS})


def _decode_video(
    raw: bytes, policy: MediaPolicy, fps: float | None, nframes: int | None, max_pixels: int | None
) -> tuple[list[Image.Image], float, tuple[int, int], float]:
    """(frames, sample_fps, original_size, duration_s)."""
    with _open_container(raw) as container:
        stream = container.streams.video[0]
        width, height = stream.codec_context.width, stream.codec_context.height
        _check_dimensions("video", width, height, policy)
        start_s = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
        duration_s = _metadata_duration(container, stream)
    if duration_s is None:  # e.g. a webm recorded by a browser: read packet times, no decoding
        duration_s = _scanned_duration(raw, start_s, policy)
    if duration_s > policy.max_video_seconds:
        detail = f"video is longer than {policy.max_video_seconds:g} seconds"
        raise MediaError(detail, media_reason="too_large")
    times, sample_fps = _sampling_times(duration_s, fps, nframes, policy)
    floor = policy.video_min_frame_pixels
    frame_cap = max(floor, min(policy.video_max_frame_pixels, policy.video_total_pixels // len(times)))
    size = _qwen_size(width, height, floor, int(_clamp(max_pixels, floor, frame_cap, frame_cap)))
    with _open_container(raw) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        frames = _pick_frames(container, stream, [start_s + time_s for time_s in times], size, policy)
    return frames, sample_fps, (width, height), duration_s


def _metadata_duration(container: av.container.InputContainer, stream: av.VideoStream) -> float | None:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / av.time_base
    return None


def _scanned_duration(raw: bytes, start_s: float, policy: MediaPolicy) -> float:
    end_s = start_s
    with _open_container(raw) as container:
        stream = container.streams.video[0]
        for count, packet in enumerate(container.demux(stream)):
            if count > policy.video_max_decoded_frames:
                raise MediaError("video has too many frames to read", media_reason="too_large")
            if packet.pts is not None:
                end_s = max(end_s, float((packet.pts + (packet.duration or 0)) * stream.time_base))
            if end_s - start_s > policy.max_video_seconds:
                break  # long enough to be refused
    return end_s - start_s


def _sampling_times(
    duration_s: float, fps: float | None, nframes: int | None, policy: MediaPolicy
) -> tuple[list[float], float]:
    """Times (from the start) of the frames to take, an even count >= 2, and their effective fps.

    At the requested fps (capped by the policy) while that fits max_video_frames; otherwise
    max_video_frames spread over the whole video: client hints never raise the frame count
    (GHSA-x6mc-67gf-chw4). Times past the end get the last frame, as qwen pads.
    """
    even_cap = policy.max_video_frames - policy.max_video_frames % 2
    if fps is None and nframes is not None:
        count = int(_clamp(nframes, 2, even_cap, even_cap)) // 2 * 2
        spacing = duration_s / count if duration_s > 0 else 1 / policy.video_fps
    else:
        rate = _clamp(fps, _MIN_FPS, policy.video_fps, policy.video_fps)
        wanted = math.floor(duration_s * rate + _EPSILON_S)
        if wanted > even_cap:
            count, spacing = even_cap, duration_s / even_cap
        else:
            count, spacing = max(2, wanted // 2 * 2), 1 / rate
    return [index * spacing for index in range(count)], 1 / spacing


def _pick_frames(
    container: av.container.InputContainer,
    stream: av.VideoStream,
    targets: list[float],
    size: tuple[int, int],
    policy: MediaPolicy,
) -> list[Image.Image]:
    """For each target time the frame on screen then, resized; decoding stops after the last target."""
    picked: list[Image.Image] = []
    on_screen: _ShownFrame | None = None  # the latest decoded frame
    decoded, sought_for = 0, -1
    frames = container.decode(stream)
    while len(picked) < len(targets):
        target = targets[len(picked)]
        position = on_screen.time if on_screen is not None else targets[0]
        if target - position > _SEEK_AHEAD_S and sought_for < len(picked):
            sought_for = len(picked)  # one seek per target, even when its keyframe is far behind it
            container.seek(int(target / stream.time_base), stream=stream)  # to the keyframe at or before
            frames = container.decode(stream)
        frame = next(frames, None)
        if frame is None:
            break
        decoded += 1
        if decoded > policy.video_max_decoded_frames:
            raise MediaError("video needs too much decoding to sample", media_reason="too_large")
        if frame.width * frame.height > policy.max_decode_pixels:  # the size changed mid-stream
            raise _pixel_bomb("video", policy)
        frame_time = frame.time if frame.time is not None else position
        while on_screen and len(picked) < len(targets) and frame_time > targets[len(picked)] + _EPSILON_S:
            picked.append(on_screen.image(size))
        on_screen = _ShownFrame(frame, frame_time)
    if on_screen is None:
        raise MediaError("could not decode the video: it has no frames", media_reason="decode")
    while len(picked) < len(targets):  # the video ended before the last target: repeat its last frame
        picked.append(on_screen.image(size))
    return picked


class _ShownFrame:
    """A decoded frame, converted and resized only once it is picked, and only once if picked twice."""

    def __init__(self, frame: av.VideoFrame, time_s: float) -> None:
        self.frame = frame
        self.time = time_s
        self._image: Image.Image | None = None

    def image(self, size: tuple[int, int]) -> Image.Image:
        if self._image is None:
            width, height = size
            self._image = self.frame.to_image(width=width, height=height, interpolation="BICUBIC")
        return self._image
