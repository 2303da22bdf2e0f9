"""Reader of KITTI (Eigen test split, annotated depth): see `evaluate.datasets`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from .base import (
    DatasetReader,
    PathLike,
    Sample,
    crop_mask,
    layout_error,
    read_depth_file,
)

KITTI_SPLIT_FILES = ("eigen_test_files_with_gt.txt", "kitti_eigen_test_files_with_gt.txt")


class KittiReader(DatasetReader):
    """KITTI Eigen test split with the annotated (projected, densified) ground truth.

    The split file has one `image_rel depth_rel [focal]` line per image (BTS/ZoeDepth format;
    `depth_rel` "None" = no ground truth, skipped and listed in `skipped`). Images are looked up
    under `image_root` (default root), depth PNGs under `depth_root`, `depth_root/val`,
    `depth_root/train` (the annotated-depth download splits its drives in train/ and val/).
    Depth = uint16 / 256 metres, 0 invalid. `crop`: "garg" (default), "eigen" or None.
    """

    name = "kitti"
    default_min_depth = 1e-3
    default_max_depth = 80.0

    def __init__(
        self,
        root: PathLike,
        *,
        split_file: PathLike | None = None,
        image_root: PathLike | None = None,
        depth_root: PathLike | None = None,
        crop: str | None = "garg",
        **kwargs: Any,
    ) -> None:
        super().__init__(root, **kwargs)
        self.crop = crop
        if crop not in ("garg", "eigen", None):
            raise ValueError(f"kitti crop must be 'garg', 'eigen' or None, got {crop!r}")
        split_path = self._split_path(split_file)
        image_root = Path(image_root) if image_root is not None else self.root
        depth_root = Path(depth_root) if depth_root is not None else self.root
        missing = self._read_split(split_path, image_root, depth_root)
        if missing:
            raise layout_error(
                "kitti",
                self.root,
                f"every file listed in {split_path.name} under image_root={image_root} and "
                f"depth_root={depth_root}[/val|/train]",
                f"{len(missing)} of {len(missing) + len(self.entries)} missing, e.g. {missing[0]}",
            )

    def _split_path(self, split_file: PathLike | None) -> Path:
        """The split file given, or the first of `KITTI_SPLIT_FILES` in the root."""
        if split_file is not None:
            split_path = Path(split_file)
            if not split_path.is_file():
                raise layout_error("kitti", split_path.parent, f"split file {split_path}")
            return split_path
        candidates = [self.root / n for n in KITTI_SPLIT_FILES]
        split_path = next((p for p in candidates if p.is_file()), None)
        if split_path is None:
            raise layout_error(
                "kitti",
                self.root,
                f"an Eigen test split file ({' or '.join(KITTI_SPLIT_FILES)}) in {self.root} "
                "or split_file=",
            )
        return split_path

    def _read_split(self, split_path: Path, image_root: Path, depth_root: Path) -> list[str]:
        """Fill `entries` (and `skipped`) from the split file; returns the listed files that are
        missing."""
        depth_dirs = [depth_root, depth_root / "val", depth_root / "train"]
        missing: list[str] = []
        for line_no, line in enumerate(split_path.read_text().splitlines(), 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) < 2:
                raise ValueError(
                    f"{split_path}:{line_no}: expected 'image depth [focal]', got {line!r}"
                )
            image_rel, depth_rel = parts[0].lstrip("/"), parts[1].lstrip("/")
            if depth_rel == "None":
                self.skipped.append(image_rel)
                continue
            image_path = image_root / image_rel
            depth_path = next(
                (d / depth_rel for d in depth_dirs if (d / depth_rel).is_file()), None
            )
            if depth_path is None or not image_path.is_file():
                missing.append(
                    str(image_path if depth_path is not None else depth_root / depth_rel)
                )
                continue
            self.entries.append((image_rel, image_path, depth_path))
        return missing

    def _load(self, entry: tuple[str, Path, Path]) -> Sample:
        image_rel, image_path, depth_path = entry
        raw = read_depth_file(depth_path)
        if raw.dtype != np.uint16:
            raise ValueError(f"{depth_path}: KITTI depth must be a 16-bit PNG, got {raw.dtype}")
        depth = raw.astype(np.float32) / 256.0
        return self._sample(
            os.path.splitext(image_rel)[0],
            image_path,
            self._image(image_path),
            depth,
            raw > 0,
            crop_mask(depth.shape, self.crop),
        )
