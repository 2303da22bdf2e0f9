"""Readers for the zero-shot benchmarks, each in that benchmark's own file layout: one module per
reader (`kitti`, `nyuv2`, `sintel`, `diode`, `eth3d`, `ddad`, `generic`) on `base`, and the
registry `READERS` / `get_reader` here.

Every reader validates its root when constructed (raising `DatasetLayoutError` that says what was
expected and what was found), knows its evaluation depth range (`min_depth`, `max_depth`, metres)
and yields `Sample`s:

| name    | layout under `root`                                                          | GT encoding          |
|---------|------------------------------------------------------------------------------|----------------------|
| kitti   | Eigen test split file (BTS format: `image depth focal`, `None` = no GT);     | uint16 PNG / 256     |
|         | raw images under `image_root`, annotated depth under `depth_root[/val|/train]`|                     |
| nyuv2   | `nyu_depth_v2_labeled.mat` (v7.3 HDF5 via h5py, v5 via scipy), 654 test imgs | float metres         |
| sintel  | `training/<pass>/<scene>/frame_*.png` + `training/depth/<scene>/frame_*.dpt` | .dpt float32         |
| diode   | `[val/]{indoors,outdoor}/scene_*/scan_*/X.png`, `X_depth.npy`, `X_depth_mask.npy` | float32 metres  |
| eth3d   | `<scene>/images/dslr_images_undistorted/X.JPG` + `<scene>/ground_truth_depth/dslr_images/X.JPG` | raw float32, inf invalid |
| ddad    | `X_rgb.png` + `X_depth.npz|npy`, or `rgb/X.png` + `depth/X.npz|npy`          | float metres, 0 invalid |
| generic | list file `image depth` per line, `color|rgb|image(s)/` + `depth(s)/` by stem, | `LabelledSpec`     |
|         | `X_color|X_rgb.*` + `X_depth.*` pairs, or explicit `pairs=`                  |                      |

Evaluation crops (KITTI Garg/Eigen, NYUv2 Eigen) are applied as masks, so samples keep the full
image. Depth ranges follow the common zero-shot protocols (MiDaS / ZoeDepth / Marigold): KITTI
1e-3..80, NYUv2 1e-3..10, Sintel 1e-3..72, DIODE 0.6..350, ETH3D 1e-3..(per-image GT max),
DDAD 1e-3..80.
"""

from __future__ import annotations

from typing import Any

from .base import (
    DatasetLayoutError,
    DatasetReader,
    PathLike,
    Sample,
    crop_mask,
    read_depth_file,
    read_rgb,
)
from .ddad import DdadReader
from .diode import DiodeReader
from .eth3d import Eth3dReader
from .generic import DEPTH_ENCODINGS, GenericReader
from .kitti import KittiReader
from .nyuv2 import NyuV2Reader
from .sintel import SintelReader, read_dpt

# One module per reader; the registry maps each reader's `name` to its class.
READERS: dict[str, type[DatasetReader]] = {
    cls.name: cls
    for cls in (
        KittiReader,
        NyuV2Reader,
        SintelReader,
        DiodeReader,
        Eth3dReader,
        DdadReader,
        GenericReader,
    )
}


def get_reader(name: str, root: PathLike, **options: Any) -> DatasetReader:
    """The reader `name` (kitti, nyuv2, sintel, diode, eth3d, ddad, generic) over `root`.

    `options` go to the reader (common: load_images, limit, min_depth, max_depth; see each
    reader class). Raises `DatasetLayoutError` when root lacks the expected layout.
    """
    key = name.lower().replace("-", "").replace("_", "")
    key = {"nyu": "nyuv2", "nyudepthv2": "nyuv2"}.get(key, key)
    if key not in READERS:
        raise ValueError(f"unknown dataset {name!r}: expected one of {sorted(READERS)}")
    return READERS[key](root, **options)


__all__ = [
    "DEPTH_ENCODINGS",
    "READERS",
    "DatasetLayoutError",
    "DatasetReader",
    "Sample",
    "crop_mask",
    "get_reader",
    "read_depth_file",
    "read_dpt",
    "read_rgb",
]
