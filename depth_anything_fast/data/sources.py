"""Where samples come from: image lists, labelled image/ground-truth pairs, target readers.

Paths inside webdataset tar shards are written `shard.tar::member` and read with `read_bytes`.
Ground truth becomes the training target by `load_target`: raw values -> metric depth or
disparity (per `LabelledSpec`) -> disparity `1/z` -> min-max normalised to 0..1 over the valid
pixels of the image; invalid pixels are masked and set to 0.
"""

from __future__ import annotations

import glob
import io
import json
import os
import tarfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".ppm", ".tif", ".tiff")
TARGET_EXTS = (".png", ".npy", ".pfm", ".tif", ".tiff", ".pgm")
LIST_EXTS = (".txt", ".lst", ".list", ".csv")
TAR_SEP = "::"
# Folder names tried, in order, for the ground truth of root/images/<rel>.
TARGET_DIRS = ("depth", "disparity", "targets", "labels")
# webdataset component names (after the key) holding ground truth, e.g. "0001.depth.png".
TARGET_COMPONENT_PREFIXES = ("depth.", "disparity.", "target.", "label.")

Source = str | os.PathLike | Sequence[str | os.PathLike]


@dataclass(frozen=True)
class LabelledSpec:
    """How to read a dataset's ground truth.

    value = raw * scale + offset, where raw is the stored number (after `bit_rotate`: rotate each
    16-bit value right by that many bits; SUN RGB-D needs 3, a little-endian PGM read as the
    standard big-endian needs 8). `kind="depth"`: value is metric depth (metres) and disparity is
    1/value; `kind="disparity"`: value is (affine) disparity already. Raw values in `invalid`,
    non-finite values, non-positive depth and depth outside [min_depth, max_depth] are masked.
    `sky_mask`: suffix of a mask file next to each target (`<target stem><suffix>`, nonzero = sky);
    sky pixels become valid with disparity 0.
    """

    kind: str = "depth"
    scale: float = 1.0
    offset: float = 0.0
    invalid: tuple[float, ...] = (0,)
    min_depth: float | None = None
    max_depth: float | None = None
    sky_mask: str | None = None
    bit_rotate: int = 0

    def __post_init__(self) -> None:
        if self.kind not in ("depth", "disparity"):
            raise ValueError(f"LabelledSpec.kind must be 'depth' or 'disparity', got {self.kind!r}")
        if not np.isfinite(self.scale) or self.scale == 0:
            raise ValueError(f"LabelledSpec.scale must be finite and nonzero, got {self.scale}")
        if not 0 <= self.bit_rotate < 16:
            raise ValueError(f"LabelledSpec.bit_rotate must be in [0, 16), got {self.bit_rotate}")
        object.__setattr__(self, "invalid", tuple(float(v) for v in self.invalid))

    def dumps(self) -> str:
        """The spec as JSON text (what `to_json` writes)."""
        return json.dumps(asdict(self), indent=2) + "\n"

    def to_json(self, path: str | os.PathLike) -> None:
        """Write the spec as JSON (the `spec.json` of a dataset folder)."""
        Path(path).write_text(self.dumps())

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> LabelledSpec:
        """Read a spec written by `to_json`; unknown fields are an error naming the file."""
        data = json.loads(Path(path).read_text())
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"{path}: unknown LabelledSpec fields {sorted(unknown)}")
        return cls(**data)


# ---------------------------------------------------------------------------------------------
# Reading bytes (files and tar members)


@lru_cache(maxsize=64)
def _tar_index(tar_path: str) -> dict[str, tuple[int, int]]:
    """member name -> (data offset, size) of the regular files in a tar, read once."""
    with tarfile.open(tar_path, "r:") as tar:
        return {m.name: (m.offset_data, m.size) for m in tar.getmembers() if m.isfile()}


def read_bytes(path: str) -> bytes:
    """Bytes of a file or of a tar member `shard.tar::member`."""
    if TAR_SEP in path:
        tar_path, member = path.split(TAR_SEP, 1)
        index = _tar_index(tar_path)
        if member not in index:
            raise FileNotFoundError(f"{member} not found in tar shard {tar_path}")
        offset, size = index[member]
        with open(tar_path, "rb") as f:
            f.seek(offset)
            return f.read(size)
    with open(path, "rb") as f:
        return f.read()


def _exists(path: str) -> bool:
    if TAR_SEP in path:
        tar_path, member = path.split(TAR_SEP, 1)
        return member in _tar_index(tar_path)
    return os.path.isfile(path)


# ---------------------------------------------------------------------------------------------
# Listing images


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTS)


def _split_component(member: str) -> tuple[str, str]:
    """webdataset key and component: 'a/b/0001.depth.png' -> ('a/b/0001', 'depth.png')."""
    directory, base = os.path.split(member)
    key, _, component = base.partition(".")
    return os.path.join(directory, key), component.lower()


def _tar_images(tar_path: str) -> list[str]:
    members = sorted(_tar_index(tar_path))
    out = []
    for m in members:
        _, component = _split_component(m)
        if "." not in component and _is_image("." + component):
            out.append(f"{tar_path}{TAR_SEP}{m}")
    return out


def _read_list_file(path: Path) -> list[list[str]]:
    """Rows of whitespace/comma separated paths, relative ones resolved against the list's dir."""
    rows = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        cols = line.replace(",", " ").split()
        rows.append([c if os.path.isabs(c) else str(path.parent / c) for c in cols])
    return rows


def list_images(src: Source) -> list[str]:
    """Image paths from a directory (recursive, sorted), a list file (first column), a glob,
    a webdataset `.tar` shard, a single image, or a sequence of any of these.

    Raises `FileNotFoundError` naming `src` when it matches nothing.
    """
    if isinstance(src, (list, tuple)):
        return [p for s in src for p in list_images(s)]
    s = os.fspath(src)
    if os.path.isdir(s):
        found = []
        for dirpath, _, files in os.walk(s):
            found.extend(os.path.join(dirpath, f) for f in files if _is_image(f))
        return sorted(found)
    if os.path.isfile(s):
        low = s.lower()
        if low.endswith(".tar"):
            return _tar_images(s)
        if low.endswith(LIST_EXTS):
            return [row[0] for row in _read_list_file(Path(s))]
        return [s]
    if TAR_SEP in s and _exists(s):
        return [s]
    if glob.has_magic(s):
        matches = sorted(glob.glob(s, recursive=True))
        if matches:
            return [p for m in matches if os.path.isfile(m) for p in list_images(m)]
    raise FileNotFoundError(f"no images found: {s} is not a directory, list file, tar or glob match")


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
        are those of `inference.manifest.finished_records`: the newest record of each output
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
            manifests = sorted(glob.glob(os.path.join(s, "manifest*.jsonl")))
            # A manifest decides, even when the outputs themselves lie under images/ (the
            # pseudo-labels of root/unlabelled/ keep the inputs' relative paths).
            if manifests:
                return cls(_pseudo_label_pairs(s), spec or _spec_from_folder(s, PSEUDO_LABEL_SPEC))
            return cls(_folder_pairs(s), spec or _spec_from_folder(s, None))
        if s.lower().endswith(".tar"):  # one shard or a glob of shards
            shards = sorted(glob.glob(s)) if glob.has_magic(s) else [s]
            if not shards:
                raise FileNotFoundError(f"no tar shards match {s}")
            pairs = [p for t in shards for p in _tar_pairs(t)]
            return cls(pairs, spec or _spec_from_folder(os.path.dirname(shards[0]), None))
        if os.path.isfile(s):
            pairs = []
            for row in _read_list_file(Path(s)):
                if len(row) < 2:
                    raise ValueError(f"{s}: list line for {row[0]} needs 'image target' columns")
                if not _exists(row[1]):
                    raise FileNotFoundError(f"ground truth {row[1]} for image {row[0]} not found")
                pairs.append((row[0], row[1]))
            return cls(pairs, spec or _spec_from_folder(os.path.dirname(s), None))
        raise FileNotFoundError(f"labelled source not found: {s}")


# Pseudo-labels are normalised teacher disparity: every stored value is valid.
PSEUDO_LABEL_SPEC = LabelledSpec(kind="disparity", scale=1.0 / 65535.0, invalid=())

SPEC_FILE = "spec.json"  # a dataset folder's LabelledSpec


def folder_spec(folder: str | os.PathLike) -> LabelledSpec | None:
    """The `LabelledSpec` in `folder/spec.json`, or None when the folder has none."""
    path = os.path.join(folder or ".", SPEC_FILE)
    return LabelledSpec.from_json(path) if os.path.isfile(path) else None


def _spec_from_folder(folder: str, default: LabelledSpec | None) -> LabelledSpec:
    spec = folder_spec(folder) or default
    if spec is None:
        path = os.path.join(folder or ".", SPEC_FILE)
        raise FileNotFoundError(f"no LabelledSpec given and {path} does not exist")
    return spec


def _folder_pairs(root: str) -> list[tuple[str, str]]:
    image_dir = os.path.join(root, "images")
    if not os.path.isdir(image_dir):
        raise FileNotFoundError(f"labelled folder {root} has no images/ sub-folder")
    target_dirs = [os.path.join(root, d) for d in TARGET_DIRS if os.path.isdir(os.path.join(root, d))]
    if not target_dirs:
        raise FileNotFoundError(f"labelled folder {root} has none of {'/, '.join(TARGET_DIRS)}/")
    pairs = []
    for image in list_images(image_dir):
        stem = os.path.splitext(os.path.relpath(image, image_dir))[0]
        candidates = [os.path.join(d, stem + ext) for d in target_dirs for ext in TARGET_EXTS]
        target = next((c for c in candidates if os.path.isfile(c)), None)
        if target is None:
            raise FileNotFoundError(
                f"no ground truth for image {image}: expected "
                f"{os.path.join(target_dirs[0], stem)}{{{','.join(TARGET_EXTS)}}}"
            )
        pairs.append((image, target))
    return pairs


def _tar_pairs(tar_path: str) -> list[tuple[str, str]]:
    by_key: dict[str, dict[str, str]] = {}
    for member in sorted(_tar_index(tar_path)):
        key, component = _split_component(member)
        by_key.setdefault(key, {})[component] = member
    pairs = []
    for key, comps in by_key.items():
        images = [m for c, m in comps.items() if "." not in c and _is_image("." + c)]
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
    # imported here: inference.manifest imports this module (TAR_SEP)
    from depth_anything_fast.inference.manifest import finished_records

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


def normalise_disparity(
    disparity: np.ndarray, valid: np.ndarray, floor: float | None = None
) -> np.ndarray:
    """Min-max normalise to 0..1 over valid pixels (float32); invalid -> 0; constant -> 0.

    `floor`: the disparity mapped to 0 (default: the minimum over the valid pixels); it must
    not exceed that minimum."""
    out = np.zeros(disparity.shape, np.float32)
    if not valid.any():
        return out
    d = disparity[valid].astype(np.float64)
    lo, hi = d.min(), d.max()
    if floor is not None:
        if floor > lo:
            raise ValueError(f"normalise_disparity: floor {floor} is above the minimum {lo}")
        lo = floor
    if hi > lo:
        out[valid] = ((d - lo) / (hi - lo)).astype(np.float32)
    return out


def load_target(path: str, spec: LabelledSpec) -> tuple[np.ndarray, np.ndarray]:
    """Ground truth file -> (disparity float32 (H, W) in 0..1, mask bool (H, W)).

    Disparity is normalised per image over the valid pixels; sky pixels (from the
    `spec.sky_mask` file) are valid with disparity 0 and stay strictly farthest: the ground is
    normalised from the sky's disparity (0 for depth, see `_sky_floor`), so its farthest pixel
    keeps a positive value. Raises `FileNotFoundError` for a missing
    file or sky mask, `ValueError`/`TypeError` for unreadable content.
    """
    if not _exists(path):
        raise FileNotFoundError(f"ground truth not found: {path}")
    disparity, valid = target_to_disparity(read_raw_target(path), spec)
    if spec.sky_mask is None:
        return normalise_disparity(disparity, valid), valid
    sky_path = os.path.splitext(path)[0] + spec.sky_mask
    if not _exists(sky_path):
        raise FileNotFoundError(f"sky mask {sky_path} for ground truth {path} not found")
    sky = read_raw_target(sky_path) != 0
    if sky.shape != valid.shape:
        raise ValueError(f"sky mask {sky_path} has shape {sky.shape}, target has {valid.shape}")
    ground = valid & ~sky
    out = normalise_disparity(disparity, ground, _sky_floor(disparity[ground]))
    out[sky] = 0.0
    return out, ground | sky


# Affine disparity with sky: the sky sits this fraction of the ground's range below its minimum.
SKY_GAP = 0.05


def _sky_floor(ground: np.ndarray) -> float | None:
    """Disparity that sky takes before normalisation, strictly below every ground pixel: 0 (the
    true disparity of infinite depth) when all ground disparity is positive, as it is for
    depth; otherwise (affine disparity reaching 0 or below) `SKY_GAP` of the ground's range
    below its minimum. Min-max over the ground alone would map its farthest pixel to 0, the
    sky's value."""
    if ground.size == 0:
        return None
    lo, hi = float(ground.min()), float(ground.max())
    if lo > 0:
        return 0.0
    return lo - SKY_GAP * (hi - lo if hi > lo else 1.0)


def load_depth(path: str, spec: LabelledSpec) -> tuple[np.ndarray, np.ndarray]:
    """Ground truth file -> (metric depth float32 (H, W) in metres, 0 where invalid; mask bool
    (H, W)), for metric fine-tuning. `spec.sky_mask` is not read: sky has no metric depth, so
    only the stored values decide validity. Raises `FileNotFoundError` for a missing file,
    `ValueError` for a spec that is not of kind "depth" or unreadable content, `TypeError` for
    a non-numeric file.
    """
    if not _exists(path):
        raise FileNotFoundError(f"ground truth not found: {path}")
    return target_to_depth(read_raw_target(path), spec)
