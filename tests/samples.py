"""Media made on the spot for tests: images, videos and malformed files, as bytes."""

from __future__ import annotations

import base64
import io
import struct
import zlib

import av
import numpy as np
from PIL import Image


def image_bytes(
    size: tuple[int, int] = (64, 48),
    mode: str = "RGB",
    fmt: str = "PNG",
    color: object = None,
) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, color if color is not None else (200, 30, 30)).save(buffer, fmt)
    return buffer.getvalue()


def gray_level(second: float) -> int:
    """The grey of a test video frame shown at `second`: 6 levels per second, so frames tell their time."""
    return int(second * 6) % 256


def video_bytes(seconds: float = 3, fps: int = 10, side: int = 32, gop: int | None = None) -> bytes:
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width = stream.height = side
        stream.pix_fmt = "yuv420p"
        if gop:
            stream.codec_context.gop_size = gop
        for index in range(int(seconds * fps)):
            pixels = np.full((side, side, 3), gray_level(index / fps), dtype=np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")))
        container.mux(stream.encode())
    return buffer.getvalue()


def png_declaring(width: int, height: int) -> bytes:
    """A PNG whose IHDR declares any size (valid CRCs), followed by a tiny IDAT: what a bomb looks like."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    pixels = zlib.compress(b"\0" * 1000)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


def data_uri(raw: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(raw).decode()
