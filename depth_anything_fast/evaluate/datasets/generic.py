"""Reader of Generic RGB-D folders and list files (any `LabelledSpec` depth encoding): see `evaluate.datasets`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from depth_anything_fast.formats.layout import (
    RGBD_DEPTH_DIRS,
    RGBD_DEPTH_SUFFIX,
    RGBD_IMAGE_DIRS,
    RGBD_IMAGE_SUFFIXES,
)
from depth_anything_fast.formats.list_files import read_list_file
from depth_anything_fast.formats.spec import LabelledSpec
from depth_anything_fast.formats.targets import target_to_disparity

from .base import (
    DatasetReader,
    PathLike,
    Sample,
    layout_error,
    read_depth_file,
)

# name -> `formats.spec.LabelledSpec` fields of common RGB-D depth encodings
DEPTH_ENCODINGS: dict[str, dict[str, Any]] = {
    "metres": {},
    "mm": {"scale": 1e-3},
    "kitti": {"scale": 1 / 256},
    "tum": {"scale": 1 / 5000},
    "redwood": {"scale": 1e-3},
    # SUN3D / SUN RGB-D: 16-bit values rotated by 3 bits, millimetres
    "sun3d": {"scale": 1e-3, "bit_rotate": 3},
    # NYU raw Kinect PGM: little-endian (the toolbox swapbytes; PIL reads PGM big-endian, hence
    # the 8-bit rotation), raw disparity with depth = 351.3 / (1092.5 - raw), i.e. disparity
    # 1/z = (1092.5 - raw) / 351.3; 2047 = no reading; the toolbox caps depth at 10 m
    "nyu_kinect": {
        "kind": "disparity",
        "scale": -1 / 351.3,
        "offset": 1092.5 / 351.3,
        "invalid": (2047,),
        "max_depth": 10.0,
        "bit_rotate": 8,
    },
}


def _stem_files(directory: Path) -> dict[str, Path]:
    return {p.stem: p for p in sorted(directory.iterdir()) if p.is_file()}


class GenericReader(DatasetReader):
    """Image + depth-file pairs with a configurable ground-truth encoding.

    Pairs come from `pairs=[(image, depth), ...]`, from a list file (root is a file with
    `image depth` per line, relative to its directory), from `color|rgb|image|images/` +
    `depth|depths/` sub-directories matched by stem, or from `X_color|X_rgb|X_image.*` +
    `X_depth.*` files in one directory. `encoding`: a `formats.spec.LabelledSpec` (scale,
    offset, invalid values, bit rotation, depth or disparity, depth range) or a name in
    `DEPTH_ENCODINGS` (metres, mm, kitti, tum, redwood, sun3d, nyu_kinect). Its depth range
    is also the evaluation range unless min_depth/max_depth are given.
    """

    name = "generic"

    def __init__(
        self,
        root: PathLike,
        *,
        encoding: LabelledSpec | str = "metres",
        pairs: Sequence[tuple[PathLike, PathLike]] | None = None,
        **kwargs: Any,
    ) -> None:
        if isinstance(encoding, str):
            if encoding not in DEPTH_ENCODINGS:
                raise ValueError(f"unknown depth encoding {encoding!r}: {sorted(DEPTH_ENCODINGS)}")
            encoding = LabelledSpec(**DEPTH_ENCODINGS[encoding])
        kwargs.setdefault("min_depth", encoding.min_depth)
        kwargs.setdefault("max_depth", encoding.max_depth)
        super().__init__(root, **kwargs)
        self.encoding = encoding
        base = self.root.parent if self.root.is_file() else self.root
        if pairs is not None:
            found = [(Path(i), Path(d)) for i, d in pairs]
        elif self.root.is_file():
            found = self._from_list_file(self.root)
        elif self.root.is_dir():
            found = self._from_directory(self.root)
        else:
            raise layout_error("generic", self.root, "a directory or a list file")
        for image_path, depth_path in found:
            for p in (image_path, depth_path):
                if not p.is_file():
                    raise layout_error("generic", p.parent, f"file {p}")
            try:
                name = image_path.relative_to(base).with_suffix("").as_posix()
            except ValueError:
                name = image_path.with_suffix("").name
            self.entries.append((name, image_path, depth_path))

    @staticmethod
    def _from_list_file(list_file: Path) -> list[tuple[Path, Path]]:
        rows = read_list_file(list_file, ("image", "depth"))
        return [(Path(row[0]), Path(row[1])) for row in rows]

    @staticmethod
    def _from_directory(root: Path) -> list[tuple[Path, Path]]:
        image_dir = next((root / d for d in RGBD_IMAGE_DIRS if (root / d).is_dir()), None)
        depth_dir = next((root / d for d in RGBD_DEPTH_DIRS if (root / d).is_dir()), None)
        if image_dir is not None and depth_dir is not None:
            images, depths = _stem_files(image_dir), _stem_files(depth_dir)
            return [(images[s], depths[s]) for s in sorted(images) if s in depths]
        files = _stem_files(root)
        out = []
        for stem, path in files.items():
            for suffix in RGBD_IMAGE_SUFFIXES:
                depth_stem = stem[: -len(suffix)] + RGBD_DEPTH_SUFFIX
                if stem.endswith(suffix) and depth_stem in files:
                    out.append((path, files[depth_stem]))
        if not out:
            raise layout_error(
                "generic",
                root,
                "sub-directories color|rgb|image(s)/ and depth(s)/ with matching stems, or "
                "X_color.* + X_depth.* pairs, or a list file",
            )
        return out

    def _load(self, entry: tuple[str, Path, Path]) -> Sample:
        name, image_path, depth_path = entry
        disparity, valid = target_to_disparity(read_depth_file(depth_path), self.encoding)
        depth = np.where(valid, 1.0 / np.where(valid, disparity.astype(np.float64), 1.0), 0.0)
        return self._sample(name, image_path, self._image(image_path), depth, valid)
