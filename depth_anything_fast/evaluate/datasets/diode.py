"""Reader of DIODE (indoor / outdoor scans): see `evaluate.datasets`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .base import (
    DatasetReader,
    PathLike,
    Sample,
    layout_error,
    read_depth_file,
)

DIODE_SPLITS = {"indoor": ("indoors",), "outdoor": ("outdoor",), "all": ("indoors", "outdoor")}


class DiodeReader(DatasetReader):
    """DIODE validation set: `[val/]{indoors,outdoor}/scene_*/scan_*/X.png` + `X_depth.npy`
    ((H, W, 1) float32 metres) + `X_depth_mask.npy` (validity). `split`: indoor|outdoor|all.
    """

    name = "diode"
    default_min_depth = 0.6
    default_max_depth = 350.0

    def __init__(self, root: PathLike, *, split: str = "all", **kwargs: Any) -> None:
        super().__init__(root, **kwargs)
        aliases = {"indoors": "indoor", "outdoors": "outdoor"}
        split = aliases.get(split, split)
        if split not in DIODE_SPLITS:
            raise ValueError(f"diode split must be one of {sorted(DIODE_SPLITS)}, got {split!r}")
        base = self.root / "val" if (self.root / "val").is_dir() else self.root
        dirs = [base / d for d in DIODE_SPLITS[split]]
        if not all(d.is_dir() for d in dirs):
            raise layout_error("diode", base, f"directories {[d.name for d in dirs]} in {base}")
        for split_dir in dirs:
            for depth_path in sorted(split_dir.rglob("*_depth.npy")):
                stem = depth_path.name[: -len("_depth.npy")]
                image_path = depth_path.with_name(stem + ".png")
                mask_path = depth_path.with_name(stem + "_depth_mask.npy")
                if not image_path.is_file() or not mask_path.is_file():
                    raise layout_error(
                        "diode", depth_path.parent, f"{image_path.name} and {mask_path.name}"
                    )
                name = image_path.relative_to(base).with_suffix("").as_posix()
                self.entries.append((name, image_path, depth_path, mask_path))
        if not self.entries:
            raise layout_error(
                "diode", base, f"scene_*/scan_*/*_depth.npy files under {[d.name for d in dirs]}"
            )

    def _load(self, entry: tuple[str, Path, Path, Path]) -> Sample:
        name, image_path, depth_path, mask_path = entry
        depth = read_depth_file(depth_path)
        valid = np.load(mask_path).astype(bool)
        if valid.shape != depth.shape:
            raise ValueError(f"{mask_path}: mask shape {valid.shape} != depth {depth.shape}")
        return self._sample(name, image_path, self._image(image_path), depth, valid)
