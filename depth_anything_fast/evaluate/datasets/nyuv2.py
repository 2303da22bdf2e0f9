"""Reader of NYUv2 (the labelled .mat, Eigen test images): see `evaluate.datasets`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from depth_anything_fast.evaluate.nyu_split import NYU_NUM_LABELLED, NYU_TEST_INDICES

from .base import (
    DatasetReader,
    PathLike,
    Sample,
    crop_mask,
    layout_error,
)

NYU_MAT_NAME = "nyu_depth_v2_labeled.mat"
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def _open_nyu_mat(
    path: Path, depth_key: str
) -> tuple[Callable[[int], np.ndarray], Callable[[int], np.ndarray], int]:
    """(image(i) -> (480,640,3) uint8, depth(i) -> (480,640) float32, count) of the .mat.

    v7.3 files are HDF5 (read lazily with h5py, arrays stored transposed); older v5 files are
    read whole with scipy.io.loadmat.
    """
    with open(path, "rb") as f:
        f.seek(512)
        is_hdf5 = f.read(8) == _HDF5_SIGNATURE
    if is_hdf5:
        try:
            import h5py
        except ImportError as e:
            raise ImportError(
                f"{path} is a MATLAB v7.3 (HDF5) file: reading it needs h5py (pip install h5py)"
            ) from e
        handle = h5py.File(path, "r")
        images, depths = handle["images"], handle[depth_key]
        return (
            lambda i: np.ascontiguousarray(np.asarray(images[i]).transpose(2, 1, 0)),
            lambda i: np.ascontiguousarray(np.asarray(depths[i]).T, dtype=np.float32),
            int(images.shape[0]),
        )
    try:
        import scipy.io
    except ImportError as e:
        raise ImportError(
            f"{path} is a MATLAB v5 file: reading it needs scipy (pip install scipy)"
        ) from e
    data = scipy.io.loadmat(path, variable_names=["images", depth_key])
    if "images" not in data or depth_key not in data:
        raise ValueError(f"{path}: expected variables 'images' and {depth_key!r}")
    images_v5, depths_v5 = data["images"], data[depth_key]  # (H, W, 3, N), (H, W, N)
    return (
        lambda i: np.ascontiguousarray(images_v5[..., i]),
        lambda i: np.ascontiguousarray(depths_v5[..., i], dtype=np.float32),
        int(images_v5.shape[-1]),
    )


class NyuV2Reader(DatasetReader):
    """NYUv2 labelled set: `root/nyu_depth_v2_labeled.mat` (or root = the .mat file).

    `split="test"`: the official 654 test images (`nyu_split.NYU_TEST_INDICES`); "all": all 1449.
    `depth_key`: "depths" (in-painted, the standard) or "rawDepths". Eigen crop by default.
    Sample names are the 0-based index, 5 digits (the BTS/ZoeDepth `rgb_<index>` numbering).
    h5py (v7.3 files) or scipy (v5 files) is imported only when the file is opened.
    """

    name = "nyuv2"
    default_min_depth = 1e-3
    default_max_depth = 10.0

    def __init__(
        self,
        root: PathLike,
        *,
        split: str = "test",
        depth_key: str = "depths",
        crop: str | None = "eigen_nyu",
        **kwargs: Any,
    ) -> None:
        super().__init__(root, **kwargs)
        self.mat_path = self.root if self.root.is_file() else self.root / NYU_MAT_NAME
        if not self.mat_path.is_file():
            raise layout_error(
                "nyuv2", self.root, f"the labelled set {NYU_MAT_NAME} in {self.root}"
            )
        if split not in ("test", "all"):
            raise ValueError(f"nyuv2 split must be 'test' or 'all', got {split!r}")
        if crop not in ("eigen_nyu", None):
            raise ValueError(f"nyuv2 crop must be 'eigen_nyu' or None, got {crop!r}")
        self.split, self.depth_key, self.crop = split, depth_key, crop
        self._image_at, self._depth_at, count = _open_nyu_mat(self.mat_path, depth_key)
        if split == "test":
            if count != NYU_NUM_LABELLED:
                raise layout_error(
                    "nyuv2",
                    self.root,
                    f"the {NYU_NUM_LABELLED}-image labelled set for split='test'",
                    f"{self.mat_path} holds {count} images",
                )
            self.entries = list(NYU_TEST_INDICES)
        else:
            self.entries = list(range(count))

    def _load(self, index: int) -> Sample:
        depth = self._depth_at(index)
        image = self._image_at(index) if self.load_images else None
        return self._sample(
            f"{index:05d}", None, image, depth, depth > 0, crop_mask(depth.shape, self.crop)
        )
