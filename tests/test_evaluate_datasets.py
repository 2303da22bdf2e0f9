"""Benchmark readers on tiny fixtures written in each dataset's own format, and real RGB-D data."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from depth_anything_fast.evaluate import datasets
from depth_anything_fast.evaluate.datasets import DatasetLayoutError, crop_mask, get_reader, nyuv2
from depth_anything_fast.evaluate.nyu_split import NYU_TEST_INDICES

rng: np.random.Generator  # this test's generator (conftest's seed), set by _seeded_rng


@pytest.fixture(autouse=True)
def _seeded_rng(np_rng: np.random.Generator) -> None:
    global rng
    rng = np_rng


def write_rgb(path: Path, h: int, w: int, fmt: str | None = None) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    Image.fromarray(image).save(path, format=fmt)
    return image


def write_png16(path: Path, values: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(values.astype(np.uint16)).save(path)


# ---------------------------------------------------------------------------------------- KITTI
def make_kitti(root: Path, h: int = 30, w: int = 50) -> dict[str, np.ndarray]:
    lines, truth = [], {}
    for frame in ("0000000005", "0000000069"):
        image_rel = f"2011_09_26/2011_09_26_drive_0002_sync/image_02/data/{frame}.png"
        depth_rel = f"2011_09_26_drive_0002_sync/proj_depth/groundtruth/image_02/{frame}.png"
        write_rgb(root / "raw" / image_rel, h, w)
        raw = rng.integers(1, 80 * 256, (h, w))
        raw[rng.random((h, w)) < 0.5] = 0  # LiDAR holes
        write_png16(root / "gt" / "val" / depth_rel, raw)
        truth[image_rel[:-4]] = raw
        lines.append(f"{image_rel} {depth_rel} 721.5377")
    lines.append("2011_09_26/2011_09_26_drive_0009_sync/image_02/data/0000000001.png None 721.5377")
    (root / "eigen_test_files_with_gt.txt").write_text("\n".join(lines) + "\n")
    return truth


def test_kitti_reader(tmp_path):
    truth = make_kitti(tmp_path)
    reader = get_reader("kitti", tmp_path, image_root=tmp_path / "raw", depth_root=tmp_path / "gt")
    assert len(reader) == 2 and len(reader.skipped) == 1
    assert (reader.min_depth, reader.max_depth) == (1e-3, 80.0)
    for sample in reader:
        raw = truth[sample.name]
        garg = np.zeros(raw.shape, bool)
        h, w = raw.shape
        garg[
            int(0.40810811 * h) : int(0.99189189 * h), int(0.03594771 * w) : int(0.96405229 * w)
        ] = True
        expected_mask = (raw > 0) & garg & (raw / 256.0 <= 80.0)
        np.testing.assert_array_equal(sample.mask, expected_mask)
        np.testing.assert_allclose(sample.depth[sample.mask], raw[expected_mask] / 256.0, rtol=1e-7)
        assert sample.image.shape == (h, w, 3) and sample.image.dtype == np.uint8
    eigen = get_reader(
        "kitti",
        tmp_path,
        image_root=tmp_path / "raw",
        depth_root=tmp_path / "gt",
        crop="eigen",
        load_images=False,
    )
    sample = next(iter(eigen))
    assert sample.image is None and sample.mask[int(0.35 * 30)].any()


def test_kitti_layout_errors(tmp_path):
    with pytest.raises(DatasetLayoutError, match="expected an Eigen test split file.*found"):
        get_reader("kitti", tmp_path)
    make_kitti(tmp_path)
    with pytest.raises(DatasetLayoutError, match="2 of 2 missing"):
        get_reader("kitti", tmp_path)  # images are under raw/, not the root


# ---------------------------------------------------------------------------------------- NYUv2
def test_nyu_test_split_is_the_official_one():
    assert len(NYU_TEST_INDICES) == 654 and len(set(NYU_TEST_INDICES)) == 654
    assert NYU_TEST_INDICES[:6] == (0, 1, 8, 13, 14, 15) and NYU_TEST_INDICES[-1] == 1448
    assert all(a < b for a, b in zip(NYU_TEST_INDICES, NYU_TEST_INDICES[1:]))


def test_nyu_reader_layout_logic(tmp_path, monkeypatch):
    # the .mat decoding needs h5py/scipy; the split, crop and range logic is checked on arrays
    (tmp_path / "nyu_depth_v2_labeled.mat").write_bytes(b"placeholder")
    depths = {
        i: rng.uniform(0.5, 12.0, (480, 640)).astype(np.float32) for i in NYU_TEST_INDICES[:3]
    }
    monkeypatch.setattr(
        nyuv2,
        "_open_nyu_mat",
        lambda path, key: (
            lambda i: np.full((480, 640, 3), i % 256, np.uint8),
            lambda i: depths[i],
            1449,
        ),
    )
    reader = get_reader("nyuv2", tmp_path, limit=3)
    samples = list(reader)
    assert [s.name for s in samples] == ["00000", "00001", "00008"]
    eigen = np.zeros((480, 640), bool)
    eigen[45:471, 41:601] = True
    for s, index in zip(samples, NYU_TEST_INDICES):
        np.testing.assert_array_equal(s.mask, eigen & (depths[index] <= 10.0))
        assert s.image[0, 0, 0] == index % 256
    monkeypatch.setattr(nyuv2, "_open_nyu_mat", lambda path, key: (None, None, 10))
    with pytest.raises(DatasetLayoutError, match="1449-image labelled set.*holds 10 images"):
        get_reader("nyuv2", tmp_path)


def test_nyu_missing_decoder_is_named(tmp_path):
    mat = tmp_path / "nyu_depth_v2_labeled.mat"
    if importlib.util.find_spec("h5py") is None:
        mat.write_bytes(b"MATLAB 7.3 MAT-file".ljust(512, b" ") + b"\x89HDF\r\n\x1a\n" + bytes(64))
        with pytest.raises(ImportError, match="h5py"):
            get_reader("nyuv2", tmp_path)
    if importlib.util.find_spec("scipy") is None:
        mat.write_bytes(b"MATLAB 5.0 MAT-file".ljust(600, b" "))
        with pytest.raises(ImportError, match="scipy"):
            get_reader("nyuv2", tmp_path)
    with pytest.raises(DatasetLayoutError, match="nyu_depth_v2_labeled.mat"):
        get_reader("nyuv2", tmp_path / "elsewhere")


def test_nyu_v5_mat_file(tmp_path):
    scipy_io = pytest.importorskip("scipy.io")
    images = rng.integers(0, 256, (480, 640, 3, 2), dtype=np.uint8)
    depths = rng.uniform(0.5, 9.0, (480, 640, 2)).astype(np.float32)
    scipy_io.savemat(tmp_path / "nyu_depth_v2_labeled.mat", {"images": images, "depths": depths})
    samples = list(get_reader("nyuv2", tmp_path, split="all"))
    assert len(samples) == 2
    np.testing.assert_array_equal(samples[1].image, images[..., 1])
    np.testing.assert_array_equal(samples[1].depth[samples[1].mask], depths[..., 1][samples[1].mask])
    with pytest.raises(DatasetLayoutError, match="1449"):
        get_reader("nyuv2", tmp_path)  # split="test" needs the whole labelled set


def test_nyu_v73_hdf5_mat_file(tmp_path):
    h5py = pytest.importorskip("h5py")
    images = rng.integers(0, 256, (480, 640, 3, 2), dtype=np.uint8)
    depths = rng.uniform(0.5, 9.0, (480, 640, 2)).astype(np.float32)
    # MATLAB v7.3 = HDF5 behind a 512-byte header; MATLAB writes arrays transposed (N, C, W, H).
    with h5py.File(tmp_path / "nyu_depth_v2_labeled.mat", "w", userblock_size=512) as f:
        f["images"] = images.transpose(3, 2, 1, 0)
        f["depths"] = depths.transpose(2, 1, 0)
    samples = list(get_reader("nyuv2", tmp_path, split="all", crop=None))
    assert len(samples) == 2
    for i, sample in enumerate(samples):
        np.testing.assert_array_equal(sample.image, images[..., i])
        np.testing.assert_array_equal(sample.depth, depths[..., i])


# --------------------------------------------------------------------------------------- Sintel
def write_dpt(path: Path, depth: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = depth.shape
    with open(path, "wb") as f:
        np.array([202021.25], "<f4").tofile(f)
        np.array([w, h], "<i4").tofile(f)
        depth.astype("<f4").tofile(f)


def test_sintel_reader(tmp_path):
    depth = rng.uniform(0.1, 100.0, (12, 16)).astype(np.float32)
    write_dpt(tmp_path / "training" / "depth" / "alley_1" / "frame_0001.dpt", depth)
    write_rgb(tmp_path / "training" / "final" / "alley_1" / "frame_0001.png", 12, 16)
    (sample,) = list(get_reader("sintel", tmp_path))
    assert sample.name == "alley_1/frame_0001"
    np.testing.assert_array_equal(sample.mask, depth <= 72.0)
    np.testing.assert_array_equal(sample.depth[sample.mask], depth[depth <= 72.0])
    with pytest.raises(DatasetLayoutError, match="clean/"):
        get_reader("sintel", tmp_path, pass_name="clean")
    (tmp_path / "bad.dpt").write_bytes(np.array([1.0], "<f4").tobytes())
    with pytest.raises(ValueError, match="not a Sintel"):
        datasets.read_dpt(tmp_path / "bad.dpt")


# ---------------------------------------------------------------------------------------- DIODE
def test_diode_reader_splits(tmp_path):
    expected = {}
    for split, scene in (("indoors", "scene_00019"), ("outdoor", "scene_00022")):
        scan = tmp_path / "val" / split / scene / "scan_00183"
        stem = f"00019_00183_{split}_000_010"
        write_rgb(scan / f"{stem}.png", 8, 10)
        depth = rng.uniform(0.0, 60.0, (8, 10, 1)).astype(np.float32)
        valid = rng.random((8, 10)) > 0.3
        np.save(scan / f"{stem}_depth.npy", depth)
        np.save(scan / f"{stem}_depth_mask.npy", valid.astype(np.float32))
        expected[f"{split}/{scene}/scan_00183/{stem}"] = (depth[..., 0], valid)
    assert len(get_reader("diode", tmp_path, split="indoor")) == 1
    assert len(get_reader("diode", tmp_path / "val", split="outdoor")) == 1
    samples = list(get_reader("diode", tmp_path, split="all"))
    assert sorted(s.name for s in samples) == sorted(expected)
    for s in samples:
        depth, valid = expected[s.name]
        np.testing.assert_array_equal(s.mask, valid & (depth >= 0.6) & (depth <= 350.0))
        np.testing.assert_array_equal(s.depth[s.mask], depth[s.mask])
    with pytest.raises(ValueError, match="split"):
        get_reader("diode", tmp_path, split="both")


# ---------------------------------------------------------------------------------------- ETH3D
def test_eth3d_reader(tmp_path):
    h, w = 9, 14
    image = write_rgb(
        tmp_path / "courtyard" / "images" / "dslr_images_undistorted" / "DSC_0286.JPG",
        h,
        w,
        fmt="JPEG",
    )
    depth = rng.uniform(0.5, 30.0, (h, w)).astype(np.float32)
    depth[0, :5] = np.inf
    depth_path = tmp_path / "courtyard" / "ground_truth_depth" / "dslr_images" / "DSC_0286.JPG"
    depth_path.parent.mkdir(parents=True)
    depth.astype("<f4").tofile(depth_path)
    for load_images in (True, False):
        (sample,) = list(get_reader("eth3d", tmp_path, load_images=load_images))
        assert sample.name == "courtyard/DSC_0286"
        np.testing.assert_array_equal(sample.mask, np.isfinite(depth))
        np.testing.assert_array_equal(sample.depth[sample.mask], depth[np.isfinite(depth)])
    assert sample.image is None and image.shape == (h, w, 3)
    with pytest.raises(ValueError, match="expected 10x14"):
        next(iter(get_reader("eth3d", tmp_path, image_size=(10, 14))))


# ----------------------------------------------------------------------------------------- DDAD
@pytest.mark.parametrize("layout", ["suffix", "folders"])
def test_ddad_reader(tmp_path, layout):
    depth = rng.uniform(0.0, 120.0, (6, 9)).astype(np.float32)
    depth[2] = 0.0
    if layout == "suffix":
        write_rgb(tmp_path / "000150_CAMERA_01_rgb.png", 6, 9)
        np.savez_compressed(tmp_path / "000150_CAMERA_01_depth.npz", depth=depth)
        name = "000150_CAMERA_01"
    else:
        write_rgb(tmp_path / "rgb" / "000150.jpg", 6, 9)
        (tmp_path / "depth").mkdir()
        np.savez(tmp_path / "depth" / "000150.npz", lidar=depth)  # single array, any key
        name = "000150"
    (sample,) = list(get_reader("ddad", tmp_path))
    assert sample.name == name
    expected = (depth > 0) & (depth <= 80.0)
    np.testing.assert_array_equal(sample.mask, expected)
    np.testing.assert_array_equal(sample.depth[expected], depth[expected])


def test_ddad_empty_root_says_what_was_found(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(DatasetLayoutError, match=r"X_rgb.png.*found: .*contains: notes.txt"):
        get_reader("ddad", tmp_path)


# -------------------------------------------------------------------------------------- generic
def test_generic_layouts(tmp_path):
    depth_mm = rng.integers(0, 5000, (7, 11))
    for sub in ("a", "b"):
        write_rgb(tmp_path / "dirs" / "color" / f"{sub}.jpg", 7, 11)
        write_png16(tmp_path / "dirs" / "depth" / f"{sub}.png", depth_mm)
    write_rgb(tmp_path / "flat" / "x_rgb.png", 7, 11)
    write_png16(tmp_path / "flat" / "x_depth.png", depth_mm)
    (tmp_path / "list.txt").write_text("dirs/color/a.jpg dirs/depth/a.png\n# comment\n")
    readers = [
        get_reader("generic", tmp_path / "dirs", encoding="mm"),
        get_reader("generic", tmp_path / "flat", encoding="mm"),
        get_reader("generic", tmp_path / "list.txt", encoding="mm"),
    ]
    assert [len(r) for r in readers] == [2, 1, 1]
    assert [s.name for s in readers[0]] == ["color/a", "color/b"]
    for reader in readers:
        for s in reader:
            np.testing.assert_array_equal(s.mask, depth_mm > 0)
            np.testing.assert_allclose(s.depth[s.mask], depth_mm[depth_mm > 0] / 1000.0, rtol=1e-6)
    with pytest.raises(DatasetLayoutError, match="color"):
        get_reader("generic", tmp_path)
    with pytest.raises(ValueError, match="unknown depth encoding"):
        get_reader("generic", tmp_path / "flat", encoding="feet")
    with pytest.raises(ValueError, match="unknown dataset"):
        get_reader("scannet", tmp_path)


def _read_u16(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path)).astype(np.int64)


def test_generic_on_real_rgbd(shared_data):
    rgbd = shared_data / "rgbd"
    # oracles: each encoding written out independently of the reader
    tum = _read_u16(rgbd / "TUM_depth.png")
    sun = _read_u16(rgbd / "SUN_depth.png")
    sun = ((sun >> 3) | (sun << 13)) & 0xFFFF
    with open(rgbd / "NYU_depth.pgm", "rb") as f:
        header = [f.readline() for _ in range(1)][0].split()
        w, h = int(header[1]), int(header[2])
        f.seek(-w * h * 2, 2)
        kinect = (
            np.frombuffer(f.read(), "<u2").reshape(h, w).astype(np.float64)
        )  # toolbox swapbytes
    nyu_valid = kinect != 2047
    nyu = np.where(nyu_valid, 351.3 / (1092.5 - kinect), 0.0)
    nyu_valid &= (nyu > 0) & (nyu <= 10.0)
    cases = [
        ("tum", "TUM_color.png", "TUM_depth.png", tum / 5000.0, tum > 0),
        ("sun3d", "SUN_color.jpg", "SUN_depth.png", sun / 1000.0, sun > 0),
        ("nyu_kinect", "NYU_color.ppm", "NYU_depth.pgm", nyu, nyu_valid),
    ]
    for encoding, image, depth, metres, valid in cases:
        reader = get_reader(
            "generic", rgbd, encoding=encoding, pairs=[(rgbd / image, rgbd / depth)]
        )
        (sample,) = list(reader)
        assert sample.image.shape == (480, 640, 3)
        np.testing.assert_array_equal(sample.mask, valid)
        np.testing.assert_allclose(sample.depth[valid], metres[valid], rtol=1e-6)
        assert 0.3 < np.median(sample.depth[valid]) < 10.0  # plausible indoor metres
    redwood = list(get_reader("generic", rgbd / "redwood", encoding="redwood", limit=2))
    raw = _read_u16(rgbd / "redwood" / "depth" / "00000.png")
    assert redwood[0].name == "color/00000"
    np.testing.assert_allclose(redwood[0].depth[raw > 0], raw[raw > 0] / 1000.0, rtol=1e-6)


def test_crop_mask_rejects_unknown_and_wrong_size():
    with pytest.raises(ValueError, match="unknown crop"):
        crop_mask((10, 10), "center")
    with pytest.raises(ValueError, match="480x640"):
        crop_mask((10, 10), "eigen_nyu")
