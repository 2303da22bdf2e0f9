"""What every benchmark reader shares: `Sample`, the `DatasetReader` base, layout errors, and
the image, depth-file and evaluation-crop readers.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from depth_anything_fast.formats.targets import read_raw_target

PathLike = str | os.PathLike[str]


class DatasetLayoutError(FileNotFoundError):
    """A dataset root does not have the layout its reader expects."""


@dataclass
class Sample:
    """One evaluation image.

    Attributes:
        name: identifier, the image path relative to the dataset root without extension (or an
            index for .mat datasets); predictions are matched by it.
        image: (H, W, 3) uint8 RGB, or None when the reader was built with load_images=False.
        depth: (H, W) float32 ground-truth depth in metres (0 where invalid).
        mask: (H, W) bool, True where the ground truth is valid and inside the evaluation crop.
        image_path: source image file, or None (NYUv2 .mat).
    """

    name: str
    image: np.ndarray | None
    depth: np.ndarray
    mask: np.ndarray
    image_path: str | None = None


def describe_path(path: Path, limit: int = 8) -> str:
    """Short description of what is at `path`, for layout errors."""
    if not path.exists():
        return f"{path} does not exist"
    if path.is_file():
        return f"{path} is a file"
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in path.iterdir())
    if not names:
        return f"{path} is empty"
    more = f", ... ({len(names)} entries)" if len(names) > limit else ""
    return f"{path} contains: {', '.join(names[:limit])}{more}"


def layout_error(
    reader: str, root: Path, expected: str, found: str | None = None
) -> DatasetLayoutError:
    return DatasetLayoutError(
        f"{reader}: expected {expected}; found: {found if found is not None else describe_path(root)}"
    )


def read_rgb(path: PathLike) -> np.ndarray:
    """(H, W, 3) uint8 RGB of an image file (any PIL format; grey/RGBA converted).

    Unlike `data.decode.decode_rgb`, EXIF orientation is NOT applied: benchmark ground truth is
    aligned with the stored pixel grid.
    """
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def image_size(path: Path) -> tuple[int, int]:
    """(H, W) of an image, reading only its header."""
    from PIL import Image

    with Image.open(path) as im:
        return im.height, im.width


def read_depth_file(path: PathLike, *, npz_key: str | None = None) -> np.ndarray:
    """(H, W) raw values of a depth file, as stored (no scale).

    .npz (key `npz_key`, else `depth`, else its only array) here; everything else (16-bit
    PNG/PGM -> uint16, float TIFF, .npy, .pfm) through `formats.targets.read_raw_target`.
    """
    path = Path(path)
    if path.suffix.lower() != ".npz":
        return read_raw_target(str(path))
    with np.load(path) as archive:
        keys = list(archive.keys())
        key = npz_key or ("depth" if "depth" in keys else keys[0] if len(keys) == 1 else None)
        if key is None or key not in keys:
            raise ValueError(f"{path}: no array {npz_key or 'depth'!r} (keys: {keys})")
        array = np.squeeze(archive[key])
    if array.ndim != 2:
        raise ValueError(f"{path}: expected a single-channel depth map, got shape {array.shape}")
    return array


class DatasetReader:
    """Base reader: a validated list of entries, loaded into `Sample`s one at a time.

    Subclasses set `name`, `default_min_depth`, `default_max_depth`, fill `self.entries` in
    `__init__` (checking the layout) and implement `_load(entry) -> Sample`.
    """

    name: ClassVar[str] = ""
    default_min_depth: ClassVar[float | None] = None
    default_max_depth: ClassVar[float | None] = None

    def __init__(
        self,
        root: PathLike,
        *,
        load_images: bool = True,
        limit: int | None = None,
        min_depth: float | None = None,
        max_depth: float | None = None,
    ) -> None:
        self.root = Path(root)
        self.load_images = load_images
        self.limit = limit
        self.min_depth = self.default_min_depth if min_depth is None else min_depth
        self.max_depth = self.default_max_depth if max_depth is None else max_depth
        self.entries: list[Any] = []
        self.skipped: list[str] = []  # entries listed by the dataset but without ground truth

    def __len__(self) -> int:
        n = len(self.entries)
        return n if self.limit is None else min(n, self.limit)

    def __iter__(self) -> Iterator[Sample]:
        for entry in self.entries[: len(self)]:
            yield self._load(entry)

    def _load(self, entry: Any) -> Sample:
        raise NotImplementedError

    def _image(self, path: Path) -> np.ndarray | None:
        return read_rgb(path) if self.load_images else None

    def _sample(
        self,
        name: str,
        image_path: Path | None,
        image: np.ndarray | None,
        depth: np.ndarray,
        valid: np.ndarray,
        crop: np.ndarray | None = None,
    ) -> Sample:
        """Sample with depth zeroed outside `valid` and the mask limited to the depth range."""
        depth = np.asarray(depth, dtype=np.float32)
        valid = valid & np.isfinite(depth) & (depth > 0)
        if self.min_depth is not None:
            valid &= depth >= self.min_depth
        if self.max_depth is not None:
            valid &= depth <= self.max_depth
        if crop is not None:
            valid &= crop
        if image is not None and image.shape[:2] != depth.shape:
            raise ValueError(
                f"{self.name} sample {name}: image {image.shape[:2]} and depth {depth.shape} "
                "sizes differ"
            )
        depth = np.where(valid, depth, 0.0).astype(np.float32)
        return Sample(name, image, depth, valid, None if image_path is None else str(image_path))


def crop_mask(shape: tuple[int, int], crop: str | None) -> np.ndarray | None:
    """Boolean (H, W) evaluation crop, or None for no crop.

    "garg": rows [0.40810811 H, 0.99189189 H), cols [0.03594771 W, 0.96405229 W) (KITTI);
    "eigen": rows [0.3324324 H, 0.91351351 H), same cols (KITTI);
    "eigen_nyu": rows 45:471, cols 41:601 of a 480x640 NYUv2 image.
    """
    if crop is None:
        return None
    h, w = shape
    mask = np.zeros(shape, dtype=bool)
    if crop == "garg":
        mask[
            int(0.40810811 * h) : int(0.99189189 * h), int(0.03594771 * w) : int(0.96405229 * w)
        ] = True
    elif crop == "eigen":
        mask[
            int(0.3324324 * h) : int(0.91351351 * h), int(0.03594771 * w) : int(0.96405229 * w)
        ] = True
    elif crop == "eigen_nyu":
        if shape != (480, 640):
            raise ValueError(f"the NYUv2 Eigen crop is defined on 480x640 images, got {h}x{w}")
        mask[45:471, 41:601] = True
    else:
        raise ValueError(f"unknown crop {crop!r}: expected 'garg', 'eigen', 'eigen_nyu' or None")
    return mask
