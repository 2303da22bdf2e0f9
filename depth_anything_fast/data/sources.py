"""Where training samples come from: labelled image/ground-truth pairs and target readers.

The storage conventions they read (tar member paths, folder layouts, `LabelledSpec`, list
files, pseudo-label manifests) live in `depth_anything_fast.formats`.
Ground truth becomes the training target by `load_target`: raw values -> metric depth or
disparity (per `LabelledSpec`) -> disparity `1/z` -> min-max normalised to 0..1 over the valid
pixels of the image; invalid pixels are masked and set to 0.
"""

from __future__ import annotations

import glob
import io
import os
from dataclasses import dataclass

import numpy as np

from depth_anything_fast.formats.images import Source, is_image, list_images
from depth_anything_fast.formats.layout import (
    LABELLED_IMAGE_DIR,
    TARGET_COMPONENT_PREFIXES,
    TARGET_DIRS,
    TARGET_EXTENSIONS,
)
from depth_anything_fast.formats.list_files import read_list_file
from depth_anything_fast.formats.manifest import MANIFEST_GLOB, finished_records
from depth_anything_fast.formats.paths import (
    TAR_SEP,
    path_exists,
    read_bytes,
    split_component,
    tar_index,
)
from depth_anything_fast.formats.spec import PSEUDO_LABEL_SPEC, LabelledSpec, spec_from_folder

# ---------------------------------------------------------------------------------------------
# Labelled pairs


@dataclass
class LabelledSource:
    """Image / ground-truth pairs and the spec to read the ground truth."""

    pairs: list[tuple[str, str]]
    spec: LabelledSpec

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> tuple[str, str]:
        return self.pairs[i]

    @classmethod
    def from_path(cls, root: Source, spec: LabelledSpec | None = None) -> LabelledSource:
        """Pairs from a dataset folder, a list file ("image target" per line), tar shard(s) or a
        pseudo-label output folder.

        Folder layouts: a pseudo-label output folder, recognised by `root/manifest*.jsonl`
        whatever else it holds (spec defaults to kind "disparity", all values valid; the items
        are those of `formats.manifest.finished_records`: the newest record of each output
        whose file is intact, sorted by output name); otherwise `root/images/<rel>.<img>` with
        `root/{depth,disparity,...}/<rel>.<ext>` (ext one of .png .npy .pfm .tif .tiff .pgm) and
        `root/spec.json` when `spec` is None. Raises `FileNotFoundError` naming the image whose
        ground truth is missing, or the pseudo-label folder without any intact output.
        """
        if isinstance(root, (list, tuple)):
            parts = [cls.from_path(r, spec) for r in root]
            if not parts:
                raise ValueError("LabelledSource.from_path got an empty list of sources")
            return cls([p for part in parts for p in part.pairs], parts[0].spec)
        s = os.fspath(root)
        if os.path.isdir(s):
            manifests = sorted(glob.glob(os.path.join(s, MANIFEST_GLOB)))
            # A manifest decides, even when the outputs themselves lie under images/ (the
            # pseudo-labels of root/unlabelled/ keep the inputs' relative paths).
            if manifests:
                return cls(_pseudo_label_pairs(s), spec or spec_from_folder(s, PSEUDO_LABEL_SPEC))
            return cls(_folder_pairs(s), spec or spec_from_folder(s, None))
        if s.lower().endswith(".tar"):  # one shard or a glob of shards
            shards = sorted(glob.glob(s)) if glob.has_magic(s) else [s]
            if not shards:
                raise FileNotFoundError(f"no tar shards match {s}")
            pairs = [p for t in shards for p in _tar_pairs(t)]
            return cls(pairs, spec or spec_from_folder(os.path.dirname(shards[0]), None))
        if os.path.isfile(s):
            pairs = []
            for row in read_list_file(s, ("image", "target")):
                if not path_exists(row[1]):
                    raise FileNotFoundError(f"ground truth {row[1]} for image {row[0]} not found")
                pairs.append((row[0], row[1]))
            return cls(pairs, spec or spec_from_folder(os.path.dirname(s), None))
        raise FileNotFoundError(f"labelled source not found: {s}")


def _folder_pairs(root: str) -> list[tuple[str, str]]:
    image_dir = os.path.join(root, LABELLED_IMAGE_DIR)
    if not os.path.isdir(image_dir):
        raise FileNotFoundError(f"labelled folder {root} has no images/ sub-folder")
    target_dirs = [os.path.join(root, d) for d in TARGET_DIRS if os.path.isdir(os.path.join(root, d))]
    if not target_dirs:
        raise FileNotFoundError(f"labelled folder {root} has none of {'/, '.join(TARGET_DIRS)}/")
    pairs = []
    for image in list_images(image_dir):
        stem = os.path.splitext(os.path.relpath(image, image_dir))[0]
        candidates = [os.path.join(d, stem + ext) for d in target_dirs for ext in TARGET_EXTENSIONS]
        target = next((c for c in candidates if os.path.isfile(c)), None)
        if target is None:
            raise FileNotFoundError(
                f"no ground truth for image {image}: expected "
                f"{os.path.join(target_dirs[0], stem)}{{{','.join(TARGET_EXTENSIONS)}}}"
            )
        pairs.append((image, target))
    return pairs


def _tar_pairs(tar_path: str) -> list[tuple[str, str]]:
    by_key: dict[str, dict[str, str]] = {}
    for member in sorted(tar_index(tar_path)):
        key, component = split_component(member)
        by_key.setdefault(key, {})[component] = member
    pairs = []
    for key, comps in by_key.items():
        images = [m for c, m in comps.items() if "." not in c and is_image("." + c)]
        targets = [m for c, m in comps.items() if c.startswith(TARGET_COMPONENT_PREFIXES)]
        if not images:
            continue
        if not targets:
            raise FileNotFoundError(
                f"no ground truth for image {tar_path}{TAR_SEP}{images[0]}: expected a "
                f"{key}.depth.<ext> (or disparity./target./label.) member"
            )
        pairs.append((f"{tar_path}{TAR_SEP}{images[0]}", f"{tar_path}{TAR_SEP}{targets[0]}"))
    return pairs


def _pseudo_label_pairs(folder: str) -> list[tuple[str, str]]:
    """(input image, output path) of the finished outputs of a pseudo-label output folder."""
    records = finished_records(folder)
    if not records:
        raise FileNotFoundError(f"pseudo-label folder {folder} has no output left on disk")
    return [(records[key].input, os.path.join(folder, key)) for key in sorted(records)]


# ---------------------------------------------------------------------------------------------
# Target readers


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


def normalise_disparity(disparity: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Min-max normalise to 0..1 over valid pixels (float32); invalid -> 0; constant -> 0."""
    out = np.zeros(disparity.shape, np.float32)
    if not valid.any():
        return out
    d = disparity[valid].astype(np.float64)
    lo, hi = d.min(), d.max()
    if hi > lo:
        out[valid] = ((d - lo) / (hi - lo)).astype(np.float32)
    return out


def load_target(path: str, spec: LabelledSpec) -> tuple[np.ndarray, np.ndarray]:
    """Ground truth file -> (disparity float32 (H, W) in 0..1, mask bool (H, W)).

    Disparity is normalised per image over the valid pixels; sky pixels (from the
    `spec.sky_mask` file) are valid with disparity 0. Raises `FileNotFoundError` for a missing
    file or sky mask, `ValueError`/`TypeError` for unreadable content.
    """
    if not path_exists(path):
        raise FileNotFoundError(f"ground truth not found: {path}")
    disparity, valid = target_to_disparity(read_raw_target(path), spec)
    if spec.sky_mask is None:
        return normalise_disparity(disparity, valid), valid
    sky_path = os.path.splitext(path)[0] + spec.sky_mask
    if not path_exists(sky_path):
        raise FileNotFoundError(f"sky mask {sky_path} for ground truth {path} not found")
    sky = read_raw_target(sky_path) != 0
    if sky.shape != valid.shape:
        raise ValueError(f"sky mask {sky_path} has shape {sky.shape}, target has {valid.shape}")
    ground = valid & ~sky
    out = normalise_disparity(disparity, ground)
    out[sky] = 0.0
    return out, ground | sky


def load_depth(path: str, spec: LabelledSpec) -> tuple[np.ndarray, np.ndarray]:
    """Ground truth file -> (metric depth float32 (H, W) in metres, 0 where invalid; mask bool
    (H, W)), for metric fine-tuning. `spec.sky_mask` is not read: sky has no metric depth, so
    only the stored values decide validity. Raises `FileNotFoundError` for a missing file,
    `ValueError` for a spec that is not of kind "depth" or unreadable content, `TypeError` for
    a non-numeric file.
    """
    if not path_exists(path):
        raise FileNotFoundError(f"ground truth not found: {path}")
    return target_to_depth(read_raw_target(path), spec)
