"""Reader of ETH3D (undistorted DSLR images, raw float depth): see `evaluate.datasets`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .base import (
    DatasetReader,
    PathLike,
    Sample,
    image_size,
    layout_error,
)


class Eth3dReader(DatasetReader):
    """ETH3D high-res multi-view training set (undistorted DSLR images + ground-truth depth).

    `<scene>/ground_truth_depth/dslr_images/X.JPG` is raw row-major float32 (despite the name),
    the size of `<scene>/images/dslr_images_undistorted/X.JPG` (or `.../dslr_images/X.JPG`);
    infinite = invalid. `image_size=(H, W)` overrides reading the size from the image.
    """

    name = "eth3d"
    default_min_depth = 1e-3
    default_max_depth = None

    def __init__(
        self, root: PathLike, *, image_size: tuple[int, int] | None = None, **kwargs: Any
    ) -> None:
        super().__init__(root, **kwargs)
        self.image_size = image_size
        depth_files = sorted(self.root.glob("*/ground_truth_depth/dslr_images/*"))
        if not depth_files:
            raise layout_error(
                "eth3d", self.root, "<scene>/ground_truth_depth/dslr_images/<image> depth files"
            )
        for depth_path in depth_files:
            scene_dir = depth_path.parents[2]
            candidates = [
                scene_dir / "images" / d / depth_path.name
                for d in ("dslr_images_undistorted", "dslr_images")
            ]
            image_path = next((p for p in candidates if p.is_file()), None)
            if image_path is None:
                raise layout_error(
                    "eth3d", scene_dir / "images", f"{candidates[0]} (or {candidates[1]})"
                )
            name = f"{scene_dir.name}/{Path(depth_path.name).stem}"
            self.entries.append((name, image_path, depth_path))

    def _load(self, entry: tuple[str, Path, Path]) -> Sample:
        name, image_path, depth_path = entry
        image = self._image(image_path)
        if self.image_size is not None:
            h, w = self.image_size
        elif image is not None:
            h, w = image.shape[:2]
        else:
            h, w = image_size(image_path)
        depth = np.fromfile(depth_path, dtype="<f4")
        if depth.size != h * w:
            raise ValueError(
                f"{depth_path}: {depth.size} float32 values, expected {h}x{w} "
                f"(the size of {image_path.name})"
            )
        depth = depth.reshape(h, w)
        return self._sample(name, image_path, image, depth, np.isfinite(depth))
