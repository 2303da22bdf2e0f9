"""Readers for the zero-shot benchmarks, each in that benchmark's own file layout.

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

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from depth_anything_fast.evaluate.nyu_split import NYU_NUM_LABELLED, NYU_TEST_INDICES
from depth_anything_fast.formats.images import first_existing_image
from depth_anything_fast.formats.layout import (
    RGBD_DEPTH_DIRS,
    RGBD_DEPTH_SUFFIX,
    RGBD_IMAGE_DIRS,
    RGBD_IMAGE_SUFFIXES,
)
from depth_anything_fast.formats.list_files import read_list_file
from depth_anything_fast.formats.spec import LabelledSpec
from depth_anything_fast.formats.targets import read_raw_target, target_to_disparity

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


def _listing(path: Path, limit: int = 8) -> str:
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


def _layout_error(
    reader: str, root: Path, expected: str, found: str | None = None
) -> DatasetLayoutError:
    return DatasetLayoutError(
        f"{reader}: expected {expected}; found: {found if found is not None else _listing(root)}"
    )


def read_rgb(path: PathLike) -> np.ndarray:
    """(H, W, 3) uint8 RGB of an image file (any PIL format; grey/RGBA converted).

    Unlike `data.decode.decode_rgb`, EXIF orientation is NOT applied: benchmark ground truth is
    aligned with the stored pixel grid.
    """
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def _image_size(path: Path) -> tuple[int, int]:
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


# --------------------------------------------------------------------------------------- KITTI
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
        if split_file is None:
            candidates = [self.root / n for n in KITTI_SPLIT_FILES]
            split_path = next((p for p in candidates if p.is_file()), None)
            if split_path is None:
                raise _layout_error(
                    "kitti",
                    self.root,
                    f"an Eigen test split file ({' or '.join(KITTI_SPLIT_FILES)}) in {self.root} "
                    "or split_file=",
                )
        else:
            split_path = Path(split_file)
            if not split_path.is_file():
                raise _layout_error("kitti", split_path.parent, f"split file {split_path}")
        image_root = Path(image_root) if image_root is not None else self.root
        depth_root = Path(depth_root) if depth_root is not None else self.root
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
        if missing:
            raise _layout_error(
                "kitti",
                self.root,
                f"every file listed in {split_path.name} under image_root={image_root} and "
                f"depth_root={depth_root}[/val|/train]",
                f"{len(missing)} of {len(missing) + len(self.entries)} missing, e.g. {missing[0]}",
            )

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


# -------------------------------------------------------------------------------------- NYUv2
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
            raise _layout_error(
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
                raise _layout_error(
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


# ------------------------------------------------------------------------------------- Sintel
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
            raise _layout_error(
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
            raise _layout_error(
                "sintel",
                image_dir,
                "an image for every .dpt file",
                f"{len(missing)} missing, e.g. {missing[0]}",
            )
        if not self.entries:
            raise _layout_error("sintel", depth_dir, "<scene>/frame_NNNN.dpt files")

    def _load(self, entry: tuple[str, Path, Path]) -> Sample:
        name, image_path, depth_path = entry
        depth = read_dpt(depth_path)
        return self._sample(name, image_path, self._image(image_path), depth, np.isfinite(depth))


# -------------------------------------------------------------------------------------- DIODE
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
            raise _layout_error("diode", base, f"directories {[d.name for d in dirs]} in {base}")
        for split_dir in dirs:
            for depth_path in sorted(split_dir.rglob("*_depth.npy")):
                stem = depth_path.name[: -len("_depth.npy")]
                image_path = depth_path.with_name(stem + ".png")
                mask_path = depth_path.with_name(stem + "_depth_mask.npy")
                if not image_path.is_file() or not mask_path.is_file():
                    raise _layout_error(
                        "diode", depth_path.parent, f"{image_path.name} and {mask_path.name}"
                    )
                name = image_path.relative_to(base).with_suffix("").as_posix()
                self.entries.append((name, image_path, depth_path, mask_path))
        if not self.entries:
            raise _layout_error(
                "diode", base, f"scene_*/scan_*/*_depth.npy files under {[d.name for d in dirs]}"
            )

    def _load(self, entry: tuple[str, Path, Path, Path]) -> Sample:
        name, image_path, depth_path, mask_path = entry
        depth = read_depth_file(depth_path)
        valid = np.load(mask_path).astype(bool)
        if valid.shape != depth.shape:
            raise ValueError(f"{mask_path}: mask shape {valid.shape} != depth {depth.shape}")
        return self._sample(name, image_path, self._image(image_path), depth, valid)


# -------------------------------------------------------------------------------------- ETH3D
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
            raise _layout_error(
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
                raise _layout_error(
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
            h, w = _image_size(image_path)
        depth = np.fromfile(depth_path, dtype="<f4")
        if depth.size != h * w:
            raise ValueError(
                f"{depth_path}: {depth.size} float32 values, expected {h}x{w} "
                f"(the size of {image_path.name})"
            )
        depth = depth.reshape(h, w)
        return self._sample(name, image_path, image, depth, np.isfinite(depth))


# --------------------------------------------------------------------------------------- DDAD
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
                raise _layout_error(
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
                    raise _layout_error(
                        "ddad", self.root / "rgb", f"rgb/{rel}.png for {depth_path}"
                    )
                self.entries.append((rel.as_posix(), image_path, depth_path))
        if not self.entries:
            raise _layout_error(
                "ddad", self.root, "X_rgb.png + X_depth.npz pairs, or rgb/X.png + depth/X.npz"
            )

    def _load(self, entry: tuple[str, Path, Path]) -> Sample:
        name, image_path, depth_path = entry
        depth = read_depth_file(depth_path).astype(np.float32)
        return self._sample(name, image_path, self._image(image_path), depth, depth > 0)


# ------------------------------------------------------------------------------------ generic
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
            raise _layout_error("generic", self.root, "a directory or a list file")
        for image_path, depth_path in found:
            for p in (image_path, depth_path):
                if not p.is_file():
                    raise _layout_error("generic", p.parent, f"file {p}")
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
            raise _layout_error(
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


# ----------------------------------------------------------------------------------- registry
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
