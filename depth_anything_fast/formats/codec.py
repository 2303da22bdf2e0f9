"""How a predicted map (relative disparity, or metric depth of a metric model) is stored:
16-bit PNG (per-map min/max, or a fixed metric scale) or float32 .npy, and the `LabelledSpec`
that reads the stored files back as training targets.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass

import numpy as np

from depth_anything_fast.formats.spec import PSEUDO_LABEL_SPEC, LabelledSpec

FORMATS = ("png16", "npy", "webdataset")
_SUFFIX = {"png16": ".png", "npy": ".npy", "webdataset": ".png"}


def output_suffix(fmt: str) -> str:
    """File suffix of one disparity map stored in format `fmt`."""
    if fmt not in _SUFFIX:
        raise ValueError(f"unknown output format {fmt!r}; expected one of {FORMATS}")
    return _SUFFIX[fmt]


@dataclass
class Encoded:
    """Bytes of one stored disparity map and the values needed to decode it."""

    data: bytes
    shape: tuple[int, int]
    min: float
    max: float


def encode_png16(disparity: np.ndarray, depth_range: float | None = None) -> Encoded:
    """Quantise a (H, W) float map to a 16-bit PNG.

    Relative disparity (`depth_range` None): code q in [0, 65535] stands for
    `min + q / 65535 * (max - min)` with min/max of this map (a constant map is all zeros).
    Metric depth in metres (`depth_range` = the model's max depth): one fixed scale for every
    map, q stands for `q / 65535 * depth_range` (min 0, max depth_range; values are clipped to
    that range), so depths stay metric and comparable across files. Raises ValueError on
    non-finite values.
    """
    from PIL import Image

    d = _checked(disparity)
    if depth_range is None:
        lo, hi = float(d.min()), float(d.max())
    else:
        if not depth_range > 0:
            raise ValueError(f"depth_range must be positive, got {depth_range}")
        lo, hi = 0.0, float(depth_range)
        d = np.clip(d, lo, hi)
    span = hi - lo
    scaled = (d.astype(np.float64) - lo) * (65535.0 / span) if span > 0 else np.zeros(d.shape)
    codes = np.rint(scaled).astype(np.uint16)
    buf = io.BytesIO()
    Image.fromarray(codes).save(buf, format="PNG", compress_level=1)  # speed over size
    return Encoded(buf.getvalue(), (int(d.shape[0]), int(d.shape[1])), lo, hi)


def decode_png16(data: bytes | str | os.PathLike[str], lo: float, hi: float) -> np.ndarray:
    """Inverse of `encode_png16`: (H, W) float32 map from PNG bytes or a path; `lo`/`hi` are
    the manifest record's min/max."""
    from PIL import Image

    src = io.BytesIO(data) if isinstance(data, bytes) else data
    with Image.open(src) as im:
        codes = np.asarray(im, dtype=np.float64)
    return (lo + codes / 65535.0 * (hi - lo)).astype(np.float32)


def encode_npy(disparity: np.ndarray) -> Encoded:
    """Store a (H, W) disparity losslessly as float32 .npy. Raises ValueError on non-finite."""
    d = _checked(disparity).astype(np.float32, copy=False)
    buf = io.BytesIO()
    np.save(buf, d)
    return Encoded(
        buf.getvalue(), (int(d.shape[0]), int(d.shape[1])), float(d.min()), float(d.max())
    )


def encode(disparity: np.ndarray, fmt: str, depth_range: float | None = None) -> Encoded:
    """Encode with `encode_png16` (formats png16 and webdataset; `depth_range` for metric
    depth) or `encode_npy`."""
    output_suffix(fmt)
    return encode_npy(disparity) if fmt == "npy" else encode_png16(disparity, depth_range)


def stored_spec(fmt: str, depth_range: float | None = None) -> LabelledSpec:
    """How `data.LabelledSource` reads maps stored by `encode(..., fmt, depth_range)` back:
    relative disparity (per-map 16-bit codes, or raw float32 .npy), or for metric models
    (`depth_range` given) depth in metres (kind "depth", fixed 16-bit scale, or raw .npy)."""
    output_suffix(fmt)
    if depth_range is None:
        return PSEUDO_LABEL_SPEC if fmt != "npy" else LabelledSpec(kind="disparity", invalid=())
    # a zero code or value is depth 0: no valid metric depth (kind "depth" masks it anyway)
    scale = 1.0 if fmt == "npy" else depth_range / 65535.0
    return LabelledSpec(kind="depth", scale=scale, invalid=())


def _checked(disparity: np.ndarray) -> np.ndarray:
    if disparity.ndim != 2 or disparity.size == 0:
        raise ValueError(f"expected a non-empty (H, W) disparity, got shape {disparity.shape}")
    if not np.isfinite(disparity).all():
        raise ValueError("prediction contains non-finite values")
    return disparity
