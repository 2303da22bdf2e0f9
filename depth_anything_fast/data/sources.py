"""Where training samples come from: labelled image/ground-truth pairs and training targets.

The storage conventions they read (tar member paths, folder layouts, `LabelledSpec`, list
files, ground-truth files, pseudo-label manifests) live in `depth_anything_fast.formats`.
Ground truth becomes the training target by `load_target`: raw values -> metric depth or
disparity (per `LabelledSpec`) -> disparity `1/z` -> min-max normalised to 0..1 over the valid
pixels of the image; invalid pixels are masked and set to 0.
"""

from __future__ import annotations

import glob
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
    split_component,
    tar_index,
)
from depth_anything_fast.formats.spec import PSEUDO_LABEL_SPEC, LabelledSpec, spec_from_folder
from depth_anything_fast.formats.targets import (
    read_raw_target,
    target_to_depth,
    target_to_disparity,
)

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
# Training targets


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
    if not path_exists(path):
        raise FileNotFoundError(f"ground truth not found: {path}")
    return target_to_depth(read_raw_target(path), spec)
