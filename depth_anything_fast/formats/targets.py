"""Reading stored ground truth: the file formats (16-bit PNG/PGM, float TIFF, .npy, .pfm) and
the `LabelledSpec` that turns raw stored values into metric depth or disparity with a validity
mask."""

from __future__ import annotations

import io

import numpy as np

from depth_anything_fast.formats.paths import read_bytes
from depth_anything_fast.formats.spec import LabelledSpec


def read_pfm(data: bytes, path: str = "<bytes>") -> np.ndarray:
    """Portable float map -> (H, W) or (H, W, 3) float32, top row first."""
    stream = io.BytesIO(data)
    header = stream.readline().strip()
    if header not in (b"Pf", b"PF"):
        raise ValueError(f"{path}: not a PFM file (header {header[:8]!r})")
    dims = stream.readline().split()
    scale = float(stream.readline().strip())
    w, h = int(dims[0]), int(dims[1])
    channels = 3 if header == b"PF" else 1
    dtype = "<f4" if scale < 0 else ">f4"
    count = w * h * channels
    values = np.frombuffer(stream.read(count * 4), dtype=dtype)
    if values.size != count:
        raise ValueError(f"{path}: PFM data has {values.size} values, header says {count}")
    shape = (h, w, channels) if channels == 3 else (h, w)
    # PFM stores rows bottom to top.
    return np.ascontiguousarray(values.reshape(shape)[::-1]).astype(np.float32)


def read_raw_target(path: str) -> np.ndarray:
    """Stored ground-truth values as a 2-D array: 16-bit PNG/PGM (uint16), 8-bit PNG (uint8),
    float TIFF (float32), .npy (any numeric dtype), .pfm (float32)."""
    from PIL import Image

    low = path.lower()
    data = read_bytes(path)
    if low.endswith(".npy"):
        arr = np.load(io.BytesIO(data), allow_pickle=False)
    elif low.endswith(".pfm"):
        arr = read_pfm(data, path)
    else:
        try:
            with Image.open(io.BytesIO(data)) as img:
                arr = np.array(img)
        except Exception as exc:
            raise ValueError(f"cannot read ground truth {path}: {exc}") from exc
        if arr.dtype == np.int32 and arr.size and arr.min() >= 0 and arr.max() <= 0xFFFF:
            arr = arr.astype(np.uint16)  # PIL gives 16-bit PGM and some PNGs as int32 mode "I"
    arr = np.squeeze(arr)
    if arr.ndim == 3:
        arr = arr[..., 0]  # multi-channel ground truth (e.g. PF): the first channel holds depth
    if arr.ndim != 2:
        raise ValueError(f"ground truth {path} must be a 2-D map, got shape {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise TypeError(f"ground truth {path} has non-numeric dtype {arr.dtype}")
    return arr


def _checked_values(raw: np.ndarray, spec: LabelledSpec) -> tuple[np.ndarray, np.ndarray]:
    """Raw stored values (H, W) -> (value = raw * scale + offset, float64 (H, W); valid bool
    (H, W)) with every check of `spec` applied (invalid values, sign, depth range)."""
    if spec.bit_rotate:
        if raw.dtype != np.uint16:
            raise TypeError(f"bit_rotate needs 16-bit ground truth, got {raw.dtype}")
        r = spec.bit_rotate
        raw = ((raw >> r) | (raw << (16 - r))).astype(np.uint16)
    raw64 = raw.astype(np.float64)
    valid = np.isfinite(raw64)
    for v in spec.invalid:
        valid &= raw64 != v
    value = np.where(valid, raw64 * spec.scale + spec.offset, np.nan)
    with np.errstate(invalid="ignore"):
        if spec.kind == "depth":
            valid &= value > 0
            if spec.min_depth is not None:
                valid &= value >= spec.min_depth
            if spec.max_depth is not None:
                valid &= value <= spec.max_depth
        else:
            if spec.max_depth is not None:
                valid &= value >= 1.0 / spec.max_depth
            if spec.min_depth is not None:
                valid &= value <= 1.0 / spec.min_depth
    return value, valid


def target_to_disparity(raw: np.ndarray, spec: LabelledSpec) -> tuple[np.ndarray, np.ndarray]:
    """Raw stored values (H, W) -> (disparity float32 (H, W), valid bool (H, W)), not normalised.

    Invalid pixels get disparity 0.
    """
    value, valid = _checked_values(raw, spec)
    with np.errstate(divide="ignore", invalid="ignore"):
        disparity = 1.0 / value if spec.kind == "depth" else value
    valid &= np.isfinite(disparity)
    return np.where(valid, disparity, 0.0).astype(np.float32), valid


def target_to_depth(raw: np.ndarray, spec: LabelledSpec) -> tuple[np.ndarray, np.ndarray]:
    """Raw stored values (H, W) -> (metric depth float32 (H, W) in metres, valid bool (H, W)).

    Needs `spec.kind == "depth"` (disparity ground truth is only known up to scale and shift);
    invalid pixels get depth 0. Raises `ValueError` otherwise.
    """
    if spec.kind != "depth":
        raise ValueError(f"metric depth needs a LabelledSpec of kind 'depth', got {spec.kind!r}")
    value, valid = _checked_values(raw, spec)
    valid &= np.isfinite(value)
    return np.where(valid, value, 0.0).astype(np.float32), valid
