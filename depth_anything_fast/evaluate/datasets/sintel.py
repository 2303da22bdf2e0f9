"""Reader of MPI Sintel (training passes, .dpt depth): see `evaluate.datasets`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .base import (
    DatasetReader,
    PathLike,
    Sample,
    layout_error,
)

SINTEL_DPT_TAG = 202021.25


def read_dpt(path: PathLike) -> np.ndarray:
    """(H, W) float32 depth of an MPI Sintel .dpt file (tag 202021.25, int32 W, int32 H, data)."""
    with open(path, "rb") as f:
        tag = np.fromfile(f, dtype="<f4", count=1)
        if tag.size != 1 or tag[0] != SINTEL_DPT_TAG:
            raise ValueError(f"{path}: not a Sintel .dpt file (tag {tag})")
        width, height = (int(v) for v in np.fromfile(f, dtype="<i4", count=2))
        data = np.fromfile(f, dtype="<f4")
    if width <= 0 or height <= 0 or data.size != width * height:
        raise ValueError(f"{path}: {data.size} values for {width}x{height}")
    return data.reshape(height, width)


class SintelReader(DatasetReader):
    """MPI Sintel training set: `training/<pass>/<scene>/frame_NNNN.png` + `training/depth/...dpt`.

    `root` is the Sintel root (holding training/) or the training/ directory; `pass_name` is
    "final" (default) or "clean". Depth is capped at 72 m (MiDaS protocol).
    """

    name = "sintel"
    default_min_depth = 1e-3
    default_max_depth = 72.0

    def __init__(self, root: PathLike, *, pass_name: str = "final", **kwargs: Any) -> None:
        super().__init__(root, **kwargs)
        training = self.root / "training" if (self.root / "training").is_dir() else self.root
        depth_dir, image_dir = training / "depth", training / pass_name
        if not depth_dir.is_dir() or not image_dir.is_dir():
            raise layout_error(
                "sintel", training, f"directories depth/ and {pass_name}/ in {training}"
            )
        missing = []
        for depth_path in sorted(depth_dir.glob("*/*.dpt")):
            rel = depth_path.relative_to(depth_dir).with_suffix("")
            image_path = image_dir / rel.with_suffix(".png")
            if image_path.is_file():
                self.entries.append((rel.as_posix(), image_path, depth_path))
            else:
                missing.append(image_path)
        if missing:
            raise layout_error(
                "sintel",
                image_dir,
                "an image for every .dpt file",
                f"{len(missing)} missing, e.g. {missing[0]}",
            )
        if not self.entries:
            raise layout_error("sintel", depth_dir, "<scene>/frame_NNNN.dpt files")

    def _load(self, entry: tuple[str, Path, Path]) -> Sample:
        name, image_path, depth_path = entry
        depth = read_dpt(depth_path)
        return self._sample(name, image_path, self._image(image_path), depth, np.isfinite(depth))
