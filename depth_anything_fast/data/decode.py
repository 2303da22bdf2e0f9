"""Encoded-image checks and safe decoding on the CPU side.

Loaders check every file here before it reaches a decoder, so a corrupt, empty or mislabelled
file is skipped and reported (path + reason) instead of failing a whole DALI batch. The checks
are cheap: magic bytes, the end-of-image marker of JPEG/PNG (truncation), and the header.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable

import numpy as np

logger = logging.getLogger(__name__)

ErrorCallback = Callable[[str, str], None]

# EXIF orientations 5..8 transpose the image: stored width and height swap once applied.
_TRANSPOSING_ORIENTATIONS = {5, 6, 7, 8}
_EXIF_ORIENTATION = 0x0112
# Formats both backends decode (DALI's CPU decoder has no GIF).
SUPPORTED_FORMATS = ("jpeg", "png", "webp", "bmp", "pnm", "tiff")


class DecodeError(ValueError):
    """An input image that cannot be used; `path` and `reason` say which and why."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


def report_error(path: str, reason: str, on_error: ErrorCallback | None) -> None:
    """Log a skipped input and pass it to the user's callback, if any."""
    logger.warning("skipping %s: %s", path, reason)
    if on_error is not None:
        on_error(path, reason)


def sniff_format(data: bytes) -> str | None:
    """Image format from magic bytes: "jpeg", "png", "webp", "bmp", "pnm", "tiff", "gif" or
    None."""
    if data[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data[:2] == b"BM":
        return "bmp"
    if data[:1] == b"P" and data[1:2] in b"123456" and len(data) > 2:
        return "pnm"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    return None


def check_encoded(data: bytes) -> str | None:
    """Reason why `data` is not a usable encoded image, or None when it looks complete."""
    if len(data) == 0:
        return "empty file"
    fmt = sniff_format(data)
    if fmt is None:
        return "not an image (unrecognised content)"
    if fmt not in SUPPORTED_FORMATS:
        return f"unsupported image format ({fmt})"
    # Trailing padding after the end marker is legal and common; look at the last bytes only.
    if fmt == "jpeg" and b"\xff\xd9" not in data[-64:]:
        return "truncated JPEG (no end-of-image marker)"
    if fmt == "png" and b"IEND" not in data[-64:]:
        return "truncated PNG (no IEND chunk)"
    return None


def image_size(data: bytes) -> tuple[int, int]:
    """(height, width) of the decoded, EXIF-oriented image, read from the header only.

    Raises `ValueError` when the header cannot be parsed.
    """
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        w, h = img.size
        orientation = img.getexif().get(_EXIF_ORIENTATION, 1) if img.format == "JPEG" else 1
    if orientation in _TRANSPOSING_ORIENTATIONS:
        h, w = w, h
    if h <= 0 or w <= 0:
        raise ValueError(f"invalid image size {w}x{h}")
    return h, w


def probe(data: bytes) -> tuple[tuple[int, int] | None, str | None]:
    """((h, w), None) for a usable encoded image, else (None, reason)."""
    reason = check_encoded(data)
    if reason is not None:
        return None, reason
    try:
        return image_size(data), None
    except Exception as exc:  # any header parse failure means the file is unusable
        return None, f"unreadable header ({type(exc).__name__}: {exc})"


def to_rgb(img):
    """PIL image -> oriented RGB PIL image; 16-bit greyscale maps to 8 bits as DALI does
    (round(v / 257)), where PIL's own conversion would clip."""
    from PIL import Image, ImageOps

    img = ImageOps.exif_transpose(img)
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        grey = np.clip(np.rint(np.asarray(img, dtype=np.float64) / 257.0), 0, 255)
        img = Image.fromarray(grey.astype(np.uint8))
    return img.convert("RGB")


def decode_rgb(data: bytes, path: str = "<bytes>") -> np.ndarray:
    """Decode to (H, W, 3) uint8 RGB with EXIF orientation applied (PIL).

    Greyscale, palette and alpha images are converted to RGB. Raises `DecodeError`.
    """
    from PIL import Image

    reason = check_encoded(data)
    if reason is not None:
        raise DecodeError(path, reason)
    try:
        with Image.open(io.BytesIO(data)) as img:
            return np.asarray(to_rgb(img))
    except Exception as exc:
        raise DecodeError(path, f"decode failed ({type(exc).__name__}: {exc})") from exc
