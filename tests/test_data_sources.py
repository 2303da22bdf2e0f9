"""Data sources, target readers, geometry, CutMix and the synthetic generator (no pipelines)."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from depth_anything_fast.data import LabelledSpec, cutmix, list_images
from depth_anything_fast.data.geometry import (
    crop_nearest,
    lower_bound_size,
    nearest_indices,
    sample_crop,
    sample_rng,
)
from depth_anything_fast.data.sources import LabelledSource, load_target
from depth_anything_fast.formats.targets import read_pfm, read_raw_target
from depth_anything_fast.recipe.synthetic import (
    KINDS,
    MAX_DEPTH,
    SEMANTIC_CLASSES,
    generate_dataset,
    read_kinds,
    render,
    render_scene,
)


def _fresh_rng() -> np.random.Generator:
    seed = int(torch.randint(0, 2**31 - 1, ()).item())  # follows conftest's test seed
    return np.random.default_rng(seed)


def _oracle(depth: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """float64 reference: disparity 1/z, min-max over valid pixels, 0 elsewhere."""
    disp = np.zeros(depth.shape)
    disp[valid] = 1.0 / depth[valid].astype(np.float64)
    lo, hi = disp[valid].min(), disp[valid].max()
    out = np.zeros(depth.shape)
    out[valid] = (disp[valid] - lo) / (hi - lo)
    return out


def _write_pfm(path: Path, arr: np.ndarray) -> None:
    h, w = arr.shape
    with open(path, "wb") as f:
        f.write(b"Pf\n%d %d\n-1.0\n" % (w, h))
        f.write(np.ascontiguousarray(arr[::-1]).astype("<f4").tobytes())


@pytest.mark.parametrize("fmt", ["png16", "npy", "pfm", "tiff"])
def test_load_target_formats_against_oracle(tmp_path: Path, fmt: str) -> None:
    rng = _fresh_rng()
    h, w = 23, 31
    depth = rng.uniform(0.5, 20.0, (h, w))
    spec = LabelledSpec(kind="depth", scale=1.0, invalid=(0,), min_depth=1.0, max_depth=15.0)
    if fmt == "png16":
        raw = np.round(depth * 1000).astype(np.uint16)
        raw[rng.random((h, w)) < 0.1] = 0
        path = tmp_path / "t.png"
        Image.fromarray(raw).save(path)
        spec = LabelledSpec(kind="depth", scale=0.001, invalid=(0,), min_depth=1.0, max_depth=15.0)
        metres = raw * 0.001
    else:
        raw = depth.astype(np.float32)
        holes = rng.random((h, w))
        raw[holes < 0.05] = 0
        raw[(holes >= 0.05) & (holes < 0.1)] = np.nan
        raw[(holes >= 0.1) & (holes < 0.12)] = np.inf
        raw[(holes >= 0.12) & (holes < 0.14)] = -3.0
        metres = raw.astype(np.float64)
        path = tmp_path / f"t.{fmt}"
        if fmt == "npy":
            np.save(path, raw)
        elif fmt == "pfm":
            _write_pfm(path, raw)
        else:
            Image.fromarray(raw, mode="F").save(path)
    valid = np.isfinite(metres) & (metres > 0) & (metres >= 1.0) & (metres <= 15.0)
    disparity, mask = load_target(str(path), spec)
    assert disparity.dtype == np.float32 and mask.dtype == bool
    np.testing.assert_array_equal(mask, valid)
    np.testing.assert_allclose(disparity, _oracle(metres, valid), atol=1e-6)
    assert np.all(disparity[~mask] == 0) and np.isfinite(disparity).all()


def test_disparity_kind_sky_mask_and_empty(tmp_path: Path) -> None:
    rng = _fresh_rng()
    disp = rng.uniform(-1, 3, (9, 13)).astype(np.float32)
    np.save(tmp_path / "d.npy", disp)
    sky = np.zeros((9, 13), np.uint8)
    sky[:2] = 255
    Image.fromarray(sky).save(tmp_path / "d_sky.png")
    spec = LabelledSpec(kind="disparity", scale=2.0, offset=1.0, invalid=(), sky_mask="_sky.png")
    out, mask = load_target(str(tmp_path / "d.npy"), spec)
    value = disp.astype(np.float64) * 2 + 1
    ground = ~sky.astype(bool)
    # affine disparity reaching below 0: sky sits 5% of the ground's range below its minimum
    lo, hi = value[ground].min(), value[ground].max()
    assert lo < 0
    floor = lo - 0.05 * (hi - lo)
    expected = (value - floor) / (hi - floor)
    np.testing.assert_allclose(out[ground], expected[ground], atol=1e-6)
    assert mask.all() and np.all(out[:2] == 0) and out[ground].min() > 0.04
    # Nothing valid: zeros and an empty mask, never NaN.
    np.save(tmp_path / "z.npy", np.zeros((4, 4), np.float32))
    out, mask = load_target(str(tmp_path / "z.npy"), LabelledSpec())
    assert not mask.any() and np.all(out == 0)
    with pytest.raises(FileNotFoundError, match="nope.npy"):
        load_target(str(tmp_path / "nope.npy"), LabelledSpec())


@pytest.mark.parametrize("far", [40.0, 400.0])
def test_sky_stays_strictly_farthest_after_normalisation(tmp_path: Path, far: float) -> None:
    """Depth ground truth with a sky mask: sky gets disparity 0 and every ground pixel, the
    farthest included, stays strictly above it (the ground is normalised from disparity 0, the
    sky's, not from its own minimum, which would also map the farthest ground pixel to 0)."""
    rng = _fresh_rng()
    depth = rng.uniform(0.5, far, (12, 16))
    depth[5, 7] = far  # the farthest ground pixel
    raw = np.round(depth * 1000).astype(np.uint16) if far < 65 else depth.astype(np.float32)
    name = "d.png" if far < 65 else "d.npy"
    metres = raw * 0.001 if far < 65 else raw.astype(np.float64)
    sky = np.zeros((12, 16), np.uint8)
    sky[:3] = 255
    raw[:3] = 0  # no depth in the sky, as sensors give
    if far < 65:
        Image.fromarray(raw).save(tmp_path / name)
    else:
        np.save(tmp_path / name, raw)
    Image.fromarray(sky).save(tmp_path / "d_sky.png")
    scale = 0.001 if far < 65 else 1.0
    out, mask = load_target(str(tmp_path / name), LabelledSpec(scale=scale, sky_mask="_sky.png"))
    ground = ~sky.astype(bool)
    assert mask.all() and np.all(out[~ground] == 0)
    assert out[ground].min() > 0 and out[5, 7] == out[ground].min()
    # exactly disparity / max disparity of the ground (float64 oracle)
    disparity = 1.0 / metres
    np.testing.assert_allclose(out[ground], disparity[ground] / disparity[ground].max(),
                               rtol=1e-6)
    np.testing.assert_allclose(out[5, 7], (1 / metres[5, 7]) / disparity[ground].max(), rtol=1e-6)


def test_pfm_orientation_and_spec_json(tmp_path: Path) -> None:
    arr = np.arange(12, dtype=np.float32).reshape(3, 4)
    _write_pfm(tmp_path / "a.pfm", arr)
    np.testing.assert_array_equal(read_pfm((tmp_path / "a.pfm").read_bytes()), arr)
    with pytest.raises(ValueError, match="not a PFM"):
        read_pfm(b"P6\n1 1\n255\n\x00\x00\x00", "x.pfm")
    spec = LabelledSpec(kind="disparity", scale=0.5, invalid=(0, 65535), sky_mask="_sky.png")
    spec.to_json(tmp_path / "spec.json")
    assert LabelledSpec.from_json(tmp_path / "spec.json") == spec
    (tmp_path / "bad.json").write_text(json.dumps({"kind": "depth", "scael": 1}))
    with pytest.raises(ValueError, match="scael"):
        LabelledSpec.from_json(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="kind"):
        LabelledSpec(kind="metric")


def test_real_depth_files(shared_data: Path) -> None:
    rgbd = shared_data / "rgbd"
    cases = {
        "TUM_depth.png": LabelledSpec(scale=1 / 5000),
        "SUN_depth.png": LabelledSpec(scale=1 / 1000, bit_rotate=3),
        "redwood/depth/00000.png": LabelledSpec(scale=1 / 1000),
        # Kinect raw disparity, stored little-endian in a (big-endian) P5 PGM.
        "NYU_depth.pgm": LabelledSpec(
            kind="disparity", scale=-1 / 351.3, offset=1092.5 / 351.3, invalid=(2047,),
            max_depth=10.0, bit_rotate=8,
        ),
    }
    for name, spec in cases.items():
        raw = read_raw_target(str(rgbd / name))
        assert raw.shape == (480, 640) and raw.dtype == np.uint16, name
        disparity, mask = load_target(str(rgbd / name), spec)
        assert 0.3 < mask.mean() <= 1.0, name
        assert disparity[mask].min() == 0.0 and disparity[mask].max() == 1.0, name
        # Metric depth of real indoor scenes: metres, mostly 0.3..10.
        if spec.kind == "depth":
            r = raw
            if spec.bit_rotate:
                r = ((r >> 3) | (r << 13)).astype(np.uint16)
            metres = r[mask] * spec.scale
        else:
            swapped = raw.byteswap()[mask].astype(np.float64)
            metres = 351.3 / (1092.5 - swapped)
        assert 0.2 < np.median(metres) < 10.0, (name, np.median(metres))
    # Without the bit rotation SUN's values are not metric depth in millimetres.
    raw = read_raw_target(str(rgbd / "SUN_depth.png"))
    assert np.median(raw[raw > 0]) / 1000 > 10


def _png(path: Path, h: int = 8, w: int = 8) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(path)


def test_list_images_and_labelled_layouts(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    for rel in ("a/1.png", "a/2.png", "b/3.png"):
        _png(root / "images" / rel)
        (root / "depth" / rel).parent.mkdir(parents=True, exist_ok=True)
        np.save((root / "depth" / rel).with_suffix(".npy"), np.ones((8, 8), np.float32))
    (root / "images" / "notes.txt").write_text("x")
    LabelledSpec().to_json(root / "spec.json")
    images = list_images(root / "images")
    assert [Path(p).name for p in images] == ["1.png", "2.png", "3.png"]
    assert list_images(str(root / "images" / "**" / "*.png")) == images
    src = LabelledSource.from_path(root)
    assert [Path(t).name for _, t in src.pairs] == ["1.npy", "2.npy", "3.npy"]

    listing = root / "train.txt"
    listing.write_text("# comment\nimages/a/1.png depth/a/1.npy\n\nimages/b/3.png,depth/b/3.npy\n")
    assert list_images(listing) == [str(root / "images/a/1.png"), str(root / "images/b/3.png")]
    assert len(LabelledSource.from_path(listing)) == 2

    # webdataset shard: key.png + key.depth.npy
    shard = tmp_path / "shard-000.tar"
    with tarfile.open(shard, "w") as tar:
        for key in ("s0", "s1"):
            buf = io.BytesIO()
            Image.fromarray(np.full((8, 8, 3), 7, np.uint8)).save(buf, "PNG")
            npy = io.BytesIO()
            np.save(npy, np.ones((8, 8), np.float32))
            for name, data in ((f"{key}.png", buf.getvalue()), (f"{key}.depth.npy", npy.getvalue())):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    assert len(list_images(shard)) == 2
    tsrc = LabelledSource.from_path(shard, LabelledSpec())
    disparity, mask = load_target(tsrc.pairs[1][1], tsrc.spec)
    assert mask.all() and tsrc.pairs[1][0].endswith("::s1.png")

    # A missing ground truth names the image.
    _png(root / "images" / "c" / "4.png")
    with pytest.raises(FileNotFoundError, match="4.png"):
        LabelledSource.from_path(root)
    listing.write_text("images/a/1.png depth/a/missing.npy\n")
    with pytest.raises(FileNotFoundError, match="missing.npy"):
        LabelledSource.from_path(listing)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        list_images(tmp_path / "nowhere")


def _pseudo_label(out: Path, image: str, name: str, disparity: np.ndarray) -> dict:
    """Write `disparity` as the pseudo-label CLI does (16-bit PNG + manifest record fields)."""
    from depth_anything_fast.formats.codec import encode
    from depth_anything_fast.formats.manifest import ManifestRecord, checksum

    encoded = encode(disparity, "png16")
    (out / name).parent.mkdir(parents=True, exist_ok=True)
    (out / name).write_bytes(encoded.data)
    record = ManifestRecord(
        input=image, output=name, shape=list(encoded.shape), min=encoded.min, max=encoded.max,
        checksum=checksum(encoded.data), bytes=len(encoded.data), format="png16",
    )
    return {k: v for k, v in record.__dict__.items() if k != "extra"}


def _write_manifest(path: Path, records: list[dict], tail: str = "") -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + tail)


def test_pseudo_label_manifest(tmp_path: Path) -> None:
    out = tmp_path / "pl"
    disparity = np.arange(64, dtype=np.float32).reshape(8, 8)
    rec = _pseudo_label(out, str(tmp_path / "img" / "x.png"), "x.png", disparity)
    _write_manifest(out / "manifest.jsonl", [rec])
    src = LabelledSource.from_path(out)
    assert src.spec.kind == "disparity" and src.pairs == [(rec["input"], str(out / "x.png"))]
    target, mask = load_target(src.pairs[0][1], src.spec)
    assert mask.all()
    np.testing.assert_allclose(target, disparity / 63, rtol=0, atol=1e-4)  # 16-bit codes


def test_pseudo_label_manifest_outputs_under_images(tmp_path: Path) -> None:
    """Pseudo-labels of root/unlabelled/ keep the inputs' images/ prefix: the folder then has
    images/ (and here even depth/) like a labelled layout, but its manifest decides."""
    out = tmp_path / "pl"
    rng = _fresh_rng()
    maps = {n: rng.random((5, 7)).astype(np.float32) for n in ("a", "b")}
    recs = [_pseudo_label(out, f"in/images/{n}.jpg", f"images/{n}.png", m) for n, m in maps.items()]
    (out / "depth").mkdir()
    _write_manifest(out / "manifest.jsonl", recs)
    src = LabelledSource.from_path(out)
    assert src.spec.kind == "disparity"
    assert src.pairs == [(f"in/images/{n}.jpg", str(out / "images" / f"{n}.png")) for n in "ab"]
    for (_, target), m in zip(src.pairs, maps.values(), strict=True):
        got, mask = load_target(target, src.spec)
        m64 = m.astype(np.float64)
        assert mask.all()
        np.testing.assert_allclose(got, (m64 - m64.min()) / np.ptp(m64), rtol=0, atol=1e-4)


def test_pseudo_label_manifest_killed_redone_and_deleted(tmp_path: Path, caplog) -> None:
    """The data reader is the pseudo-label resume reader: a half-written last line (kill) is
    ignored, a record whose output is gone is dropped (warned), a redone item is listed once
    with its newest record, also across rank files (newest file wins)."""
    out = tmp_path / "pl"
    rng = _fresh_rng()
    maps = {n: rng.random((6, 9)).astype(np.float32) for n in ("a", "b", "c", "d")}
    recs = {n: _pseudo_label(out, f"in/{n}.jpg", f"sub/{n}.png", m) for n, m in maps.items()}
    old_a = dict(recs["a"], input="old/a.jpg")  # the same output, written by an earlier run
    _write_manifest(out / "manifest.rank1.jsonl", [dict(recs["d"], input="old/d.jpg")])
    _write_manifest(
        out / "manifest.jsonl",
        [old_a, recs["b"], recs["c"], recs["a"], recs["d"]],
        tail=json.dumps(recs["b"])[:25],  # killed while appending
    )
    # manifest.jsonl sorts first by name but was appended to last: its record of d is newer
    os.utime(out / "manifest.rank1.jsonl", ns=(1, 10**18))
    os.utime(out / "manifest.jsonl", ns=(1, 2 * 10**18))
    (out / "sub" / "c.png").unlink()
    with caplog.at_level("WARNING"):
        src = LabelledSource.from_path(out)
    assert src.pairs == [
        ("in/a.jpg", str(out / "sub" / "a.png")),
        ("in/b.jpg", str(out / "sub" / "b.png")),
        ("in/d.jpg", str(out / "sub" / "d.png")),
    ]
    assert "1 of 4 manifest records" in caplog.text and "sub/c.png" in caplog.text
    for (_, target), name in zip(src.pairs, "abd", strict=True):
        m = maps[name].astype(np.float64)
        got, mask = load_target(target, src.spec)
        assert mask.all()
        np.testing.assert_allclose(got, (m - m.min()) / (m.max() - m.min()), rtol=0, atol=1e-4)
    for name in "abd":
        (out / "sub" / f"{name}.png").unlink()
    with pytest.raises(FileNotFoundError, match="no output left"):
        LabelledSource.from_path(out)


def test_pseudo_label_manifest_tar_outputs(tmp_path: Path) -> None:
    out = tmp_path / "pl"
    out.mkdir()
    rec = _pseudo_label(tmp_path / "tmp", "in/x.jpg", "x.png", np.eye(5, dtype=np.float32))
    with tarfile.open(out / "shard-r0-000000.tar", "w") as tar:
        tar.add(tmp_path / "tmp" / "x.png", arcname="x.png")
    rec["output"] = "shard-r0-000000.tar::x.png"
    _write_manifest(out / "manifest.jsonl", [rec])
    src = LabelledSource.from_path(out)
    assert src.pairs == [("in/x.jpg", str(out / "shard-r0-000000.tar") + "::x.png")]
    target, mask = load_target(src.pairs[0][1], src.spec)
    assert mask.all() and (target == np.eye(5)).all()


# ---------------------------------------------------------------------------------------------
# Geometry


def test_crop_geometry_against_float64_oracle() -> None:
    rng = _fresh_rng()
    for _ in range(20):
        h, w = (int(v) for v in rng.integers(20, 300, 2))
        crop = 14 * int(rng.integers(1, 5))
        box = sample_crop(h, w, crop, rng)
        nh, nw = lower_bound_size(h, w, crop)
        assert min(nh, nw) >= crop and nh % 14 == 0 and nw % 14 == 0
        assert 0 <= box.y0 < box.y1 <= h + 1e-9 and 0 <= box.x0 < box.x1 <= w + 1e-9
        np.testing.assert_allclose((box.y1 - box.y0) * nh / h, crop)
        rows, cols = nearest_indices(box, h, w)
        # Oracle: nearest source pixel of each output pixel centre (resize then crop then flip).
        # Exact integer arithmetic: floor((top + i + 1/2) * h / nh).
        i = np.arange(crop)
        top, left = round(box.y0 * nh / h), round(box.x0 * nw / w)
        exp_rows = ((2 * (top + i) + 1) * h) // (2 * nh)
        exp_cols = ((2 * (left + i) + 1) * w) // (2 * nw)
        if box.flip:
            exp_cols = exp_cols[::-1]
        np.testing.assert_array_equal(rows, np.clip(exp_rows, 0, h - 1))
        np.testing.assert_array_equal(cols, np.clip(exp_cols, 0, w - 1))
        target = rng.random((2 * h, 2 * w))  # a target at twice the image resolution
        assert crop_nearest(target, box, (h, w)).shape == (crop, crop)
    flips = [sample_crop(50, 80, 28, sample_rng(1, 0, i)).flip for i in range(200)]
    assert 60 < sum(flips) < 140
    assert sample_crop(50, 80, 28, sample_rng(5, 2, 9)) == sample_crop(50, 80, 28, sample_rng(5, 2, 9))


# ---------------------------------------------------------------------------------------------
# CutMix


@pytest.mark.parametrize("batch", [1, 2, 7])
def test_cutmix_masks_and_partners(batch: int) -> None:
    images = torch.randn(batch, 3, 17, 23, dtype=torch.float64)
    mixed, box, partner = cutmix(images, p=1.0)
    assert mixed.shape == images.shape and mixed.dtype == images.dtype
    assert box.shape == (batch, 17, 23) and box.dtype == torch.bool and partner.dtype == torch.int64
    rows = torch.arange(batch)
    if batch > 1:
        assert torch.all(partner != rows) and len(set(((partner - rows) % batch).tolist())) == 1
    else:
        assert torch.all(box)
    for i in range(batch):
        inside = ~box[i]
        torch.testing.assert_close(mixed[i][:, box[i]], images[i][:, box[i]], rtol=0, atol=0)
        torch.testing.assert_close(
            mixed[i][:, inside], images[partner[i]][:, inside], rtol=0, atol=0
        )
        if inside.any():  # the pasted region is one axis-aligned rectangle
            ys, xs = torch.nonzero(inside, as_tuple=True)
            area = (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)
            assert area == inside.sum()
    unmixed, ubox, upartner = cutmix(images, p=0.0)
    assert torch.equal(unmixed, images) and ubox.all() and torch.equal(upartner, rows)


def _unimatch_box_reference(size: tuple[int, int], p: float,
                            rng: np.random.Generator) -> tuple[int, int, int, int]:
    """UniMatch's `obtain_cutmix_box` loop for one box (the oracle): (y0, y1, x0, x1), empty
    when not applied; generalised from square images to (H, W) as our sampler is."""
    h, w = size
    if rng.random() > p:
        return 0, 0, 0, 0
    area = rng.uniform(0.02, 0.4) * h * w
    while True:
        ratio = rng.uniform(0.3, 1 / 0.3)
        cut_w, cut_h = int(np.sqrt(area / ratio)), int(np.sqrt(area * ratio))
        x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
        if x + cut_w <= w and y + cut_h <= h:
            return y, y + cut_h, x, x + cut_w


def _ks_statistic(a: np.ndarray, b: np.ndarray) -> float:
    grid = np.sort(np.concatenate([a, b]))
    cdf_a = np.searchsorted(np.sort(a), grid, side="right") / a.size
    cdf_b = np.searchsorted(np.sort(b), grid, side="right") / b.size
    return float(np.abs(cdf_a - cdf_b).max())


@pytest.mark.parametrize("size", [(40, 40), (30, 50)])
def test_cutmix_unimatch_box_distribution(size: tuple[int, int]) -> None:
    """The default sampler draws the authors' boxes: p = 0.5, every box fully inside (never
    clipped), area fraction and aspect distributed as UniMatch's rejection loop (two-sample
    Kolmogorov-Smirnov against the plain-Python oracle: ~2000 applied boxes vs 4000, the
    threshold 0.07 is the critical value at p ~ 1e-5, so a correct sampler fails about once in
    20000 runs; Yun et al.'s boxes are rejected by the same test)."""
    n, (h, w) = 4000, size
    seed = int(_fresh_rng().integers(0, 2**31))
    images = torch.randn(n, 1, h, w)
    _, keep, _ = cutmix(images, p=0.5, generator=torch.Generator().manual_seed(seed))
    pasted = ~keep
    applied = pasted.view(n, -1).any(dim=1)
    assert 0.46 < applied.float().mean() < 0.54, seed
    ys, xs = pasted.any(dim=2), pasted.any(dim=1)  # rows / columns touched, (n, h) / (n, w)
    box_h, box_w = ys.sum(1)[applied].numpy(), xs.sum(1)[applied].numpy()
    # one rectangle, inside the image: its pixel count is height x width
    assert torch.equal(pasted.view(n, -1).sum(1)[applied], torch.from_numpy(box_h * box_w))
    rng = np.random.default_rng(seed)
    ref = [_unimatch_box_reference(size, 1.0, rng) for _ in range(n)]
    ref_h = np.array([r[1] - r[0] for r in ref])
    ref_w = np.array([r[3] - r[2] for r in ref])
    area, ref_area = box_h * box_w / (h * w), ref_h * ref_w / (h * w)
    assert area.min() > 0.008 and area.max() <= 0.4, seed  # U(0.02, 0.4), sides truncated
    assert _ks_statistic(area, ref_area) < 0.07, seed
    keep_ref = (ref_h > 0) & (ref_w > 0)
    assert _ks_statistic(box_h / np.maximum(box_w, 1), ref_h[keep_ref] / ref_w[keep_ref]) < 0.07
    # where boxes sit: the corner is uniform over the places where the box fits
    top = ys.float().argmax(1)[applied].numpy()
    assert _ks_statistic(top / h, np.array([r[0] for r in ref]) / h) < 0.07, seed
    # the test tells samplers apart: Yun et al.'s boxes fail it
    _, yun_keep, _ = cutmix(images, p=1.0, box="yun", generator=torch.Generator().manual_seed(seed))
    yun_area = (~yun_keep).view(n, -1).float().mean(1).numpy()
    assert _ks_statistic(yun_area[yun_area > 0], ref_area) > 0.15, seed


def test_cutmix_yun_sampler_stays_selectable() -> None:
    images = torch.randn(4000, 1, 20, 20)
    _, box, _ = cutmix(images, p=0.5, box="yun")
    mixed_rows = ~box.view(4000, -1).all(dim=1)
    assert 0.42 < mixed_rows.float().mean() < 0.58  # p = 0.5 (minus boxes too small to exist)
    # lam ~ U(0,1), side sqrt(1-lam) before clipping: mean pasted fraction well under 0.5,
    # and boxes are clipped at the border (some touch it far more often than UniMatch's)
    frac = (~box[mixed_rows]).float().mean()
    assert 0.15 < frac < 0.45
    with pytest.raises(ValueError, match="box sampler"):
        cutmix(images, box="square")


def test_cutmix_generator_and_errors() -> None:
    images = torch.randn(8, 1, 20, 20)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    a, b = cutmix(images, generator=g1), cutmix(images, generator=g2)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    with pytest.raises(ValueError, match="B, C, H, W"):
        cutmix(torch.zeros(3, 4, 4))
    for p in (1.5, -0.1, 2.0):
        with pytest.raises(ValueError, match=rf"^cutmix probability p must be in \[0, 1\], got {p}$"):
            cutmix(images, p=p)
    with pytest.raises(ValueError, match="box sampler must be one of"):
        cutmix(images, box="square")


# ---------------------------------------------------------------------------------------------
# Synthetic scenes


def test_render_scene_deterministic_and_plausible() -> None:
    seed = int(_fresh_rng().integers(0, 2**31))
    rgb, depth = render_scene(seed, (60, 80))
    rgb2, depth2 = render_scene(seed, (60, 80))
    assert np.array_equal(rgb, rgb2) and np.array_equal(depth, depth2)
    assert rgb.shape == (60, 80, 3) and rgb.dtype == np.uint8 and depth.dtype == np.float32
    assert not np.array_equal(render_scene(seed + 1, (60, 80))[1], depth)
    lower_is_nearer, contrast = 0, []
    for s in range(40):
        rgb, depth = render_scene([seed, s], (48, 64))
        valid = depth > 0
        assert np.isfinite(depth).all() and depth.max() <= MAX_DEPTH
        # Per scene only "not flat": over 15000 seeds the lowest RGB std was 5.5 (dim noise
        # textures), the median 42; a broken shader gives ~0.
        assert valid.mean() > 0.3 and rgb.std() > 3
        contrast.append(rgb.std())
        # A camera looking down at a floor: the bottom rows are nearer than the upper rows.
        top, bottom = depth[:16][valid[:16]], depth[-16:][valid[-16:]]
        lower_is_nearer += int(top.size > 0 and np.median(bottom) < np.median(top))
    # 88% of 4000 scenes (100 seeds x 40, worst seed 31 of 40): fewer than 24 of 40 has
    # binomial probability ~1e-6; a renderer with depth unrelated to height gives ~20 of 40.
    assert lower_is_nearer >= 24
    assert np.median(contrast) > 25  # 1% of single scenes are below 15; medians of 40: >= 36.5


def test_generate_dataset_roundtrip(tmp_path: Path) -> None:
    layout = generate_dataset(tmp_path, n_labelled=3, n_unlabelled=2, n_val=1, size=(30, 40), seed=7)
    src = LabelledSource.from_path(layout.labelled)
    assert len(src) == 3 and src.spec.kind == "depth" and src.spec.scale == 0.001
    assert len(LabelledSource.from_path(layout.val)) == 1
    assert [Path(p).suffix for p in list_images(layout.unlabelled)] == [".jpg", ".jpg"]
    with Image.open(src.pairs[0][1]) as img:
        assert img.mode == "I;16" and img.size == (40, 30)
    with Image.open(src.pairs[0][0]) as img:
        assert img.size == (40, 30)
    raw = read_raw_target(src.pairs[0][1])
    scene = render(np.random.SeedSequence([7, 0, 0]), (30, 40), KINDS[0])
    kept = raw > 0  # holes only remove pixels
    assert kept.mean() > 0.3
    np.testing.assert_allclose(raw[kept] / 1000.0, scene.depth[kept], atol=5e-4 + 1e-6)
    assert np.all(raw[scene.depth == 0] == 0)
    # kinds in turn, semantic maps for every split, sky masks beside the labelled depth
    assert read_kinds(tmp_path, "labelled") == {"00000": KINDS[0], "00001": KINDS[1],
                                                "00002": KINDS[2]}
    assert read_kinds(tmp_path, "val") == {"00000": KINDS[0]}
    with Image.open(tmp_path / "semantic" / "labelled" / "00000.png") as img:
        np.testing.assert_array_equal(np.array(img), scene.semantic)
    street = render(np.random.SeedSequence([7, 0, 2]), (30, 40), KINDS[2])
    with Image.open(tmp_path / "labelled" / "depth" / "00002_sky.png") as img:
        np.testing.assert_array_equal(np.array(img) > 0, street.semantic == 0)
    assert (street.semantic == 0).any() and src.spec.sky_mask == "_sky.png"
    with pytest.raises(ValueError, match="scene kinds"):
        generate_dataset(tmp_path / "x", n_labelled=1, n_unlabelled=0, n_val=0,
                         labelled_kinds=["moon"])


def test_generate_dataset_on_worker_processes_writes_the_same_files(tmp_path: Path) -> None:
    """Every image depends on (seed, split, index) only: rendering on two processes writes
    byte-identical files, and the same kinds index, as one process."""
    sizes = dict(n_labelled=5, n_unlabelled=4, n_val=4, size=(24, 32), seed=3)
    generate_dataset(tmp_path / "one", **sizes)
    generate_dataset(tmp_path / "two", **sizes, workers=2)
    one = sorted(p.relative_to(tmp_path / "one") for p in (tmp_path / "one").rglob("*")
                 if p.is_file())
    two = sorted(p.relative_to(tmp_path / "two") for p in (tmp_path / "two").rglob("*")
                 if p.is_file())
    assert one == two and len(one) == 5 * 4 + 4 * 2 + 4 * 3 + 3  # + 2 specs, kinds.json
    for name in one:
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()


def test_scene_kinds_differ_and_semantics_follow_geometry() -> None:
    """Each kind has its own depth range and classes; semantic classes come from what the ray
    hit (sky exactly where depth is missing above the horizon, never on a valid pixel)."""
    seed = int(_fresh_rng().integers(0, 2**31))
    stats = {}
    for kind in KINDS:
        scenes = [render([seed, i], (48, 64), kind) for i in range(12)]
        for sc in scenes:
            assert sc.kind == kind and sc.semantic.shape == (48, 64)
            sky = sc.semantic == SEMANTIC_CLASSES.index("sky")
            assert np.all(sc.depth[sky] == 0), (kind, seed)
        stats[kind] = (np.median([np.median(sc.depth[sc.depth > 0]) for sc in scenes]),
                       np.mean([(sc.semantic == 0).mean() for sc in scenes]))
    # Medians of 12 scenes. With 6, over 2000 seeds: closeup 0.65 (max 1.14), room 2.74 (min
    # 1.31), and resampling 15000 single-scene medians per kind put a median of 6 across 1.25 in
    # ~9e-5 of runs (room 8e-5, closeup 6e-6). With 12: none in 2e6 resamples (closeup max
    # 1.16, room min 1.29). Street medians exceed room's by 1.4 at least (2000 seeds); a kind
    # that rendered another's geometry gives the other's median (0.65 vs 2.7 vs 7+).
    assert stats["closeup"][0] < 1.25 < stats["room"][0] < stats["street"][0], (stats, seed)
    assert stats["room"][1] == stats["closeup"][1] == 0  # no sky indoors
    assert stats["street"][1] > 0.01 and stats["field"][1] > 0.01, (stats, seed)
    with pytest.raises(ValueError, match="unknown scene kind"):
        render(0, (8, 8), "moon")


@pytest.mark.parametrize("sampler", ["unimatch", "yun"])
def test_cutmix_is_replayed_by_its_generator(sampler: str) -> None:
    images = torch.randn(6, 2, 15, 19)
    first = cutmix(images, p=0.7, box=sampler, generator=torch.Generator().manual_seed(5))
    torch.rand(100)  # the global generator moves on: the draws come from the one given
    again = cutmix(images, p=0.7, box=sampler, generator=torch.Generator().manual_seed(5))
    for a, b in zip(first, again, strict=True):
        assert torch.equal(a, b)


def _box_edges(keep: torch.Tensor) -> tuple[np.ndarray, ...]:
    """(applied, top, bottom, left, right) of the pasted rectangle of each row of `keep`."""
    pasted = ~keep
    applied = pasted.flatten(1).any(1)
    rows, cols = pasted.any(2)[applied], pasted.any(1)[applied]
    top = rows.float().argmax(1)
    left = cols.float().argmax(1)
    bottom = top + rows.sum(1)  # one rectangle: its rows are contiguous
    right = left + cols.sum(1)
    return tuple(t.numpy() for t in (applied, top, bottom, left, right))


def test_cutmix_unimatch_boxes_reach_every_edge_and_the_fallback_stays_inside(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Corners are uniform over where the box fits: boxes start at row/column 0 and end on the
    last row/column; with a single try per box (none fitting is then common) the try is
    shifted inside, never clipped."""
    import importlib

    cutmix_module = importlib.import_module("depth_anything_fast.data.cutmix")  # not the function
    h, w = 16, 20
    images = torch.randn(3000, 1, h, w)
    for candidates in (cutmix_module._CANDIDATES, 1):
        monkeypatch.setattr(cutmix_module, "_CANDIDATES", candidates)
        _, keep, _ = cutmix(images, p=1.0, generator=torch.Generator().manual_seed(3))
        applied, top, bottom, left, right = _box_edges(keep)
        assert applied.mean() > 0.9
        area = (bottom - top) * (right - left)
        assert torch.equal((~keep[torch.from_numpy(applied)]).flatten(1).sum(1),
                           torch.from_numpy(area))  # a full rectangle, inside the image
        assert top.min() == 0 and left.min() == 0 and bottom.max() == h and right.max() == w
        assert area.max() <= 0.4 * h * w
    # one try: its sides whatever the placement (shifted inside, so never cut down), as
    # drawn: area U(0.02, 0.4), ratio U(0.3, 1/0.3), sides truncated and at most the image's
    rng = _fresh_rng()
    fraction, ratio = rng.uniform(0.02, 0.4, 4000) * h * w, rng.uniform(0.3, 1 / 0.3, 4000)
    ref_area = (np.minimum(np.sqrt(fraction / ratio).astype(int), w)
                * np.minimum(np.sqrt(fraction * ratio).astype(int), h))
    ref_area = ref_area[ref_area > 0]
    assert _ks_statistic(area.astype(float), ref_area.astype(float)) < 0.07  # p ~ 1e-5


def _yun_reference(h: int, w: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """Yun et al.'s `rand_bbox` (the CutMix paper's code) for one box: (y0, y1, x0, x1)."""
    lam = rng.uniform()
    cut_rat = np.sqrt(1.0 - lam)
    cut_h, cut_w = int(h * cut_rat), int(w * cut_rat)
    cy, cx = int(rng.integers(h)), int(rng.integers(w))
    return (int(np.clip(cy - cut_h // 2, 0, h)), int(np.clip(cy + cut_h // 2, 0, h)),
            int(np.clip(cx - cut_w // 2, 0, w)), int(np.clip(cx + cut_w // 2, 0, w)))


def test_cutmix_yun_boxes_match_the_papers_sampler() -> None:
    """Two-sample KS tests (0.07: p ~ 1e-5 at these sizes) of the pasted fraction and of each
    edge against the paper's sampler; unclipped boxes have even sides (centre +- half); position
    and size relate as in the paper's sampler."""
    n, (h, w) = 4000, (24, 18)
    seed = int(_fresh_rng().integers(0, 2**31))
    _, keep, _ = cutmix(torch.randn(n, 1, h, w), p=1.0, box="yun",
                        generator=torch.Generator().manual_seed(seed))
    applied, top, bottom, left, right = _box_edges(keep)
    rng = np.random.default_rng(seed)
    ref = np.array([_yun_reference(h, w, rng) for _ in range(n)])
    ref = ref[(ref[:, 1] > ref[:, 0]) & (ref[:, 3] > ref[:, 2])]
    ref_area = (ref[:, 1] - ref[:, 0]) * (ref[:, 3] - ref[:, 2]) / (h * w)
    area = (bottom - top) * (right - left) / (h * w)
    assert _ks_statistic(area, ref_area) < 0.07, seed
    for got, expected in ((top, ref[:, 0]), (bottom, ref[:, 1]), (left, ref[:, 2]),
                          (right, ref[:, 3])):
        assert _ks_statistic(got.astype(float), expected.astype(float)) < 0.07, seed
    inside = (top > 0) & (bottom < h)
    assert inside.sum() > 100 and ((bottom - top)[inside] % 2 == 0).all()
    inside = (left > 0) & (right < w)
    assert inside.sum() > 100 and ((right - left)[inside] % 2 == 0).all()
    # one-row or one-column images: the paper's box has a side of int(1 * cut) = 0 there
    for shape in ((50, 1, 1, 9), (50, 1, 9, 1)):
        _, keep, _ = cutmix(torch.randn(shape), p=1.0, box="yun",
                            generator=torch.Generator().manual_seed(seed))
        assert keep.all()
    # joint placement as the paper's: correlations within 0.1 (4.5 sigma at n = 4000)
    centre, size = top + bottom, bottom - top
    ref_centre, ref_size = ref[:, 0] + ref[:, 1], ref[:, 1] - ref[:, 0]
    for ours, theirs in (((top, left), (ref[:, 0], ref[:, 2])),
                         ((centre, size), (ref_centre, ref_size))):
        assert abs(np.corrcoef(*ours)[0, 1] - np.corrcoef(*theirs)[0, 1]) < 0.1, seed
