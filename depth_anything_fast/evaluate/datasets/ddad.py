"""Reader of DDAD (RGB + projected LiDAR depth): see `evaluate.datasets`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from depth_anything_fast.formats.images import first_existing_image

from .base import (
    DatasetReader,
    PathLike,
    Sample,
    layout_error,
    read_depth_file,
)


class DdadReader(DatasetReader):
    """DDAD validation frames exported from the DGP SDK to files.

    Pairs `X_rgb.{png,jpg}` + `X_depth.{npz,npy}` anywhere under root, or `rgb/X.{png,jpg}` +
    `depth/X.{npz,npy}`. Depth in metres (npz key `depth`, or its only array), 0 = no LiDAR.
    """

    name = "ddad"
    default_min_depth = 1e-3
    default_max_depth = 80.0

    def __init__(self, root: PathLike, **kwargs: Any) -> None:
        super().__init__(root, **kwargs)
        depth_files = sorted(p for ext in ("npz", "npy") for p in self.root.rglob(f"*_depth.{ext}"))
        for depth_path in depth_files:
            stem = depth_path.name.rsplit("_depth.", 1)[0]
            image_path = first_existing_image(depth_path.parent, stem + "_rgb")
            if image_path is None:
                raise layout_error(
                    "ddad", depth_path.parent, f"{stem}_rgb.png beside {depth_path.name}"
                )
            name = (depth_path.parent / stem).relative_to(self.root).as_posix()
            self.entries.append((name, image_path, depth_path))
        if not self.entries and (self.root / "depth").is_dir():
            for depth_path in sorted(
                p for ext in ("npz", "npy") for p in (self.root / "depth").rglob(f"*.{ext}")
            ):
                rel = depth_path.relative_to(self.root / "depth").with_suffix("")
                image_path = first_existing_image((self.root / "rgb" / rel).parent, rel.name)
                if image_path is None:
                    raise layout_error(
                        "ddad", self.root / "rgb", f"rgb/{rel}.png for {depth_path}"
                    )
                self.entries.append((rel.as_posix(), image_path, depth_path))
        if not self.entries:
            raise layout_error(
                "ddad", self.root, "X_rgb.png + X_depth.npz pairs, or rgb/X.png + depth/X.npz"
            )

    def _load(self, entry: tuple[str, Path, Path]) -> Sample:
        name, image_path, depth_path = entry
        depth = read_depth_file(depth_path).astype(np.float32)
        return self._sample(name, image_path, self._image(image_path), depth, depth > 0)
