"""Loaders on both backends: geometry alignment, DALI vs PIL, bad files, sharding, inference."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from depth_anything_fast.data import (
    LabelledSource,
    LabelledSpec,
    inference_loader,
    labelled_loader,
    unlabelled_loader,
)
from depth_anything_fast.data.augment import apply_strong, sample_strong
from depth_anything_fast.data.dali_pipelines import dali_available
from depth_anything_fast.data.geometry import lower_bound_size
from depth_anything_fast.recipe.synthetic import generate_dataset

BACKENDS = [
    "pil",
    pytest.param("dali", marks=pytest.mark.skipif(not dali_available(), reason="no DALI")),
]
# Inference batches for a CUDA device are decoded only and resampled on the GPU (both backends).
DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                  reason="needs CUDA")),
]
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
SIZES = [(70, 100), (100, 70), (84, 84), (60, 130), (95, 61), (77, 77)]


def _denormalise(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, h, w) normalised -> 0..255 float64."""
    return (x.double() * STD.double() + MEAN.double()) * 255


def _blocks(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """(h, w, 3) uint8 of large constant rectangles; the channels differ (not greyscale) and
    every rectangle has its own red value, so red-channel edges are all the edges."""
    colours = rng.integers(0, 256, (7, 3))
    colours[:, 0] = rng.choice(256, 7, replace=False)
    img = np.empty((h, w, 3), np.uint8)
    img[:] = colours[0]
    for colour in colours[1:]:
        y, x = rng.integers(0, h - 20), rng.integers(0, w - 20)
        bh, bw = rng.integers(20, max(21, h // 2)), rng.integers(20, max(21, w // 2))
        img[y : y + bh, x : x + bw] = colour
    return img


@pytest.fixture
def blocks(tmp_path: Path) -> tuple[LabelledSource, dict[str, np.ndarray]]:
    """Images of constant blocks; the target is the image's red channel (kind disparity)."""
    rng = np.random.default_rng(int(torch.randint(0, 2**31 - 1, ()).item()))
    (tmp_path / "images").mkdir()
    (tmp_path / "depth").mkdir()
    images = {}
    for i, (h, w) in enumerate(SIZES):
        img = _blocks(rng, h, w)
        path = tmp_path / "images" / f"{i}.png"
        Image.fromarray(img).save(path)
        np.save(tmp_path / "depth" / f"{i}.npy", img[..., 0].astype(np.float32))
        images[str(path)] = img
    spec = LabelledSpec(kind="disparity", scale=1.0, invalid=())
    return LabelledSource.from_path(tmp_path, spec), images


def _interior(t: np.ndarray, radius: int = 3) -> np.ndarray:
    """Pixels whose (2r+1)^2 neighbourhood in `t` (h, w) is constant and inside the crop (the
    resampling filter also reads source pixels just outside the crop box)."""
    h, w = t.shape
    pad = np.pad(t.astype(np.float64), radius, constant_values=np.nan)
    same = np.ones((h, w), bool)
    for dy in range(2 * radius + 1):
        for dx in range(2 * radius + 1):
            same &= pad[dy : dy + h, dx : dx + w] == t
    return same


def _check_alignment(batch: dict, images: dict[str, np.ndarray]) -> float:
    """Image red channel must match the (nearest-sampled) target away from block edges."""
    red = _denormalise(batch["image"])[:, 0].numpy()
    checked = 0
    for k, path in enumerate(batch["paths"]):
        source_red = images[path][..., 0].astype(np.float64)
        lo, hi = source_red.min(), source_red.max()
        t = batch["disparity"][k].numpy().astype(np.float64)
        assert batch["mask"][k].all()
        expected = t * (hi - lo) + lo if hi > lo else np.full_like(t, lo)
        inner = _interior(t)
        checked += inner.mean()
        np.testing.assert_allclose(red[k][inner], expected[inner], atol=2.5)
    return checked / len(batch["paths"])


@pytest.mark.parametrize("backend", BACKENDS)
def test_labelled_geometry_aligned(blocks, backend: str) -> None:
    source, images = blocks
    seed = int(torch.randint(0, 2**31 - 1, ()).item())
    loader = labelled_loader(source, batch_size=3, crop_size=42, seed=seed, backend=backend)
    assert len(loader) == 2
    coverage = []
    for _ in range(2):  # two epochs: new crops and flips
        batches = list(loader)
        assert len(batches) == 2
        for batch in batches:
            assert batch["image"].shape == (3, 3, 42, 42) and batch["image"].dtype == torch.float32
            assert batch["disparity"].shape == (3, 42, 42) and batch["mask"].dtype == torch.bool
            coverage.append(_check_alignment(batch, images))
    assert np.mean(coverage) > 0.2  # enough block interiors were compared
    # An abandoned epoch leaves batches in flight; the next epoch must not receive them.
    partial = iter(loader)
    next(partial)
    del partial
    fresh = list(loader)  # epoch 3
    reference = labelled_loader(source, batch_size=3, crop_size=42, seed=seed, backend=backend)
    reference.set_epoch(3)
    for got, want in zip(fresh, list(reference), strict=True):
        assert got["paths"] == want["paths"] and torch.equal(got["image"], want["image"])


@pytest.mark.parametrize("backend", BACKENDS)
def test_resume_at_position_gives_the_remaining_batches(blocks, backend: str) -> None:
    source, _ = blocks
    seed = int(torch.randint(0, 2**31 - 1, ()).item())

    def loader():
        return labelled_loader(source, batch_size=2, crop_size=28, seed=seed, backend=backend)

    epoch = list(loader())
    assert len(epoch) == 3
    first = loader()
    batches = iter(first)
    next(batches)
    position = first.position
    assert position == 2
    resumed = loader()
    resumed.set_epoch(0, position)
    for got, want in zip(resumed, epoch[1:], strict=True):
        assert got["paths"] == want["paths"] and torch.equal(got["image"], want["image"])
    resumed.set_epoch(0, 7)  # past the 6 samples of the shard
    with pytest.raises(ValueError, match="cannot start epoch 0 at position 7"):
        next(iter(resumed))


@pytest.mark.skipif(not dali_available(), reason="no DALI")
def test_dali_and_pil_same_geometry(blocks) -> None:
    source, _ = blocks
    seed = int(torch.randint(0, 2**31 - 1, ()).item())
    runs = {
        b: list(labelled_loader(source, batch_size=2, crop_size=28, seed=seed, backend=b))
        for b in ("dali", "pil")
    }
    for d, p in zip(runs["dali"], runs["pil"]):
        assert d["paths"] == p["paths"]
        assert torch.equal(d["disparity"], p["disparity"]) and torch.equal(d["mask"], p["mask"])
        di, pi = _denormalise(d["image"]), _denormalise(p["image"])
        for k in range(di.shape[0]):
            inner = torch.from_numpy(_interior(d["disparity"][k].numpy()))
            assert (di[k][:, inner] - pi[k][:, inner]).abs().max() <= 2.5
        assert (di - pi).abs().mean() < 6.0  # edges: DALI's cubic is Catmull-Rom, uint8
    paths = [p for p, _ in source.pairs]
    views = {
        b: list(unlabelled_loader(paths, batch_size=3, crop_size=28, seed=seed, backend=b))
        for b in ("dali", "pil")
    }
    for d, p in zip(views["dali"], views["pil"]):
        assert d["paths"] == p["paths"]
        for key in ("clean", "strong"):  # same colour ops and blur up to filter details
            assert (_denormalise(d[key]) - _denormalise(p[key])).abs().mean() < 6.0


@pytest.mark.parametrize("backend", BACKENDS)
def test_unlabelled_views_share_geometry(blocks, backend: str) -> None:
    source, images = blocks
    paths = [p for p, _ in source.pairs]
    seed = int(torch.randint(0, 2**31 - 1, ()).item())
    loader = unlabelled_loader(paths, batch_size=3, crop_size=42, seed=seed, backend=backend)
    n_perturbed = 0
    for batch in loader:
        clean = _denormalise(batch["clean"])
        strong = _denormalise(batch["strong"])
        for k, path in enumerate(batch["paths"]):
            params = loader._prepare(paths.index(path), 0).job.strong
            clean_u8 = np.clip(np.rint(clean[k].permute(1, 2, 0).numpy()), 0, 255).astype(np.uint8)
            expected = apply_strong(clean_u8, params).astype(np.float64)
            got = strong[k].permute(1, 2, 0).numpy()
            inner = _interior(clean_u8[..., 0]) & _interior(clean_u8[..., 1])
            np.testing.assert_allclose(got[inner], expected[inner], atol=2.5)
            if params.saturation == 0:  # greyscale view
                assert np.ptp(got[inner], axis=-1).max() <= 2.5
            n_perturbed += int(np.abs(got - clean[k].permute(1, 2, 0).numpy()).mean() > 1)
    assert n_perturbed >= 1


def _jpeg(rng: np.random.Generator, h: int, w: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def _write_bad_files(folder: Path, rng: np.random.Generator) -> set[str]:
    good = _jpeg(rng, 40, 56)
    scan = good.index(b"\xff\xda")
    bad = {
        "truncated.jpg": good[: len(good) // 2],
        "empty.jpg": b"",
        "text.jpg": b"this is not an image\n",
        # Complete headers and an end marker but no scan: passes the cheap checks and fails in
        # the decoder (DALI's failure path: rebuild, find the file with PIL, report it).
        "noscan.jpg": good[:scan] + b"\xff\xd9",
    }
    for name, data in bad.items():
        (folder / name).write_bytes(data)
    return {str(folder / n) for n in bad}


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_files_reported_and_skipped(tmp_path: Path, backend: str) -> None:
    rng = np.random.default_rng(0)
    good_paths = []
    for i in range(5):
        path = tmp_path / f"good{i}.jpg"
        path.write_bytes(_jpeg(rng, 40 + 14 * (i % 2), 56))
        good_paths.append(str(path))
    bad = _write_bad_files(tmp_path, rng)
    errors: list[tuple[str, str]] = []
    batches = list(
        inference_loader(
            tmp_path, batch_size=2, input_size=28, backend=backend,
            on_error=lambda p, r: errors.append((p, r)),
        )
    )
    seen = [p for b in batches for p in b["paths"]]
    assert sorted(seen) == sorted(good_paths)
    assert {p for p, _ in errors} == bad and all(r for _, r in errors)
    reasons = dict(errors)
    assert "empty" in reasons[str(tmp_path / "empty.jpg")]
    assert "truncated" in reasons[str(tmp_path / "truncated.jpg")]
    assert "not an image" in reasons[str(tmp_path / "text.jpg")]

    errors.clear()
    got = [p for b in unlabelled_loader(tmp_path, batch_size=1, crop_size=28, backend=backend,
                                        on_error=lambda p, r: errors.append((p, r)))
           for p in b["paths"]]
    assert sorted(got) == sorted(good_paths) and {p for p, _ in errors} == bad


@pytest.mark.parametrize("backend", BACKENDS)
def test_labelled_bad_image_skipped_missing_target_raises(tmp_path: Path, backend: str) -> None:
    layout = generate_dataset(tmp_path / "ds", n_labelled=4, n_unlabelled=0, n_val=0, size=(30, 40))
    first = sorted((layout.labelled / "images").iterdir())[0]
    first.write_bytes(b"")
    errors = []
    batches = list(labelled_loader(layout.labelled, batch_size=3, crop_size=28, backend=backend,
                                   on_error=lambda p, r: errors.append(p)))
    assert errors == [str(first)] and len(batches) == 1 and len(batches[0]["paths"]) == 3
    source = LabelledSource.from_path(layout.labelled)
    missing = source.pairs[2][1]
    Path(missing).unlink()
    with pytest.raises(FileNotFoundError, match=Path(missing).name):
        list(labelled_loader(source, batch_size=2, crop_size=28, backend=backend))


def test_sharding_disjoint_complete_and_deterministic(tmp_path: Path) -> None:
    layout = generate_dataset(tmp_path, n_labelled=10, n_unlabelled=0, n_val=0, size=(24, 32))
    source = LabelledSource.from_path(layout.labelled)
    shards = [
        labelled_loader(source, batch_size=2, crop_size=14, shard_id=r, num_shards=3, seed=5,
                        backend="pil")
        for r in range(3)
    ]
    for epoch in (0, 1):
        index_sets = [set(s.shard_indices(epoch).tolist()) for s in shards]
        assert set().union(*index_sets) == set(range(10))
        assert sum(len(s.shard_indices(epoch)) for s in shards) == 12  # padded to 3 x 4
        assert len({len(s) for s in shards}) == 1
    assert not np.array_equal(shards[0].shard_indices(0), shards[0].shard_indices(1))
    a = list(labelled_loader(source, batch_size=2, crop_size=14, seed=5, backend="pil"))
    b = list(labelled_loader(source, batch_size=2, crop_size=14, seed=5, backend="pil"))
    assert [x["paths"] for x in a] == [x["paths"] for x in b]
    assert all(torch.equal(x["disparity"], y["disparity"]) for x, y in zip(a, b))

    paths = [p for p, _ in source.pairs]
    names = [f"name-{i}" for i in range(len(paths))]  # each job carries its name through
    seen = []
    for r in range(3):
        for batch in inference_loader(paths, names=names, batch_size=3, input_size=14,
                                      shard_id=r, num_shards=3, backend="pil"):
            seen.extend(zip(batch["paths"], batch["names"], strict=True))
    assert sorted(seen) == sorted(zip(paths, names)) and len(seen) == len(set(seen))
    with pytest.raises(ValueError, match="2 names for"):
        inference_loader(paths, names=names[:2], batch_size=1)


def _check_matches_preprocess(
    got: torch.Tensor, rgb: np.ndarray, input_size: int, resize: str, backend: str
) -> None:
    """A loader's (3, h, w) inference input vs the official preprocessing of the same image.

    Both backends decode (PIL; DALI's CPU decoder, libjpeg-turbo like PIL) and then resample
    with `resample_bicubic` on the same pixels, so equal to float rounding. (Before DALI left
    inference resampling to it, its Catmull-Rom uint8 resize was 0.008-0.019 normalised units
    off on average, up to 0.8.)
    """
    from depth_anything_fast.transforms import preprocess

    ref = preprocess(rgb, input_size=input_size, resize=resize)[0]
    assert got.shape == ref.shape
    assert (got.cpu() - ref).abs().max() <= 1e-5, backend


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_inference_matches_preprocess_synthetic(tmp_path: Path, backend: str, device: str) -> None:
    rng = np.random.default_rng(int(torch.randint(0, 2**31 - 1, ()).item()))
    yy, xx = np.mgrid[0:131, 0:177] / 40.0
    smooth = np.stack([np.sin(xx + yy), np.cos(2 * xx), np.sin(3 * yy)], -1) * 100 + 128
    rgb = (smooth + rng.normal(0, 10, smooth.shape)).clip(0, 255).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "x.png")
    # on the CPU, "auto" takes PIL for inference (DALI would only decode)
    assert inference_loader(tmp_path, batch_size=1, backend="auto").backend == "pil"
    for input_size, resize in [(98, "keep-aspect"), (252, "keep-aspect"), (100, "square")]:
        (batch,) = inference_loader(tmp_path, batch_size=1, input_size=input_size,
                                    resize=resize, backend=backend, device=device)
        assert batch["sizes"] == [(131, 177)] and batch["image"].device.type == device
        _check_matches_preprocess(batch["image"][0], rgb, input_size, resize, backend)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_inference_buckets_and_preprocessing(shared_data: Path, backend: str, device: str) -> None:
    paths = [str(shared_data / "images" / f"demo0{i}.jpg") for i in (1, 2, 8)]
    paths += [str(shared_data / "rgbd" / "NYU_color.ppm"), str(shared_data / "rgbd" / "TUM_color.png")]
    for resize in ("keep-aspect", "square"):
        batches = list(inference_loader(paths, batch_size=2, input_size=518, resize=resize,
                                        backend=backend, device=device))
        assert sorted(p for b in batches for p in b["paths"]) == sorted(paths)
        for batch in batches:
            assert batch["image"].dim() == 4 and batch["image"].shape[0] == len(batch["paths"])
            for k, (path, (h, w)) in enumerate(zip(batch["paths"], batch["sizes"])):
                with Image.open(path) as img:
                    rgb = np.array(img.convert("RGB"))
                assert (h, w) == rgb.shape[:2]
                want = (518, 518) if resize == "square" else lower_bound_size(h, w, 518)
                assert tuple(batch["image"].shape[-2:]) == want
                _check_matches_preprocess(batch["image"][k], rgb, 518, resize, backend)


def test_pil_resample_on_device_matches_resampling_in_threads() -> None:
    """Decode-only jobs resampled by `BatchResampler` (the CUDA inference path, here on the
    CPU) give the batch of the thread-pool path exactly, and report the same bad files."""
    from depth_anything_fast.data.geometry import full_box
    from depth_anything_fast.data.jobs import ImageJob
    from depth_anything_fast.data.pil_pipelines import PilRunner

    rng = np.random.default_rng(int(torch.randint(0, 2**31 - 1, ()).item()))
    jobs = []
    for k, (h, w) in enumerate([(61, 90), (75, 107), (47, 70)]):  # one output shape, 28x42
        rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        jobs.append(ImageJob(f"{k}.png", _encode(Image.fromarray(rgb), "PNG"), full_box(h, w, 28, 42)))
    jobs.insert(1, ImageJob("bad.png", b"\x89PNG\r\n\x1a\n" + bytes(40), full_box(9, 9, 28, 42)))
    results = {}
    for on_device in (False, True):
        errors: list[tuple[str, str]] = []
        runner = PilRunner(num_threads=2, device=torch.device("cpu"), resample_on_device=on_device,
                           on_error=lambda p, r, errors=errors: errors.append((p, r)))
        runner.submit(jobs)
        (images,), kept = runner.collect()
        runner.close()
        assert [j.path for j in kept] == ["0.png", "1.png", "2.png"]
        assert [p for p, _ in errors] == ["bad.png"]
        results[on_device] = images
    assert results[True].shape == (3, 3, 28, 42)
    assert torch.equal(results[True], results[False])
    strong = ImageJob("s.png", jobs[0].encoded, jobs[0].box, sample_strong(rng))
    runner = PilRunner(num_threads=1, device=torch.device("cpu"), resample_on_device=True)
    with pytest.raises(ValueError, match="strong"):
        runner.submit([strong])
    runner.close()


def _encode(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


@pytest.mark.parametrize("backend", BACKENDS)
def test_image_formats_decode_alike(tmp_path: Path, backend: str) -> None:
    from depth_anything_fast.data.decode import decode_rgb

    yy, xx = np.mgrid[0:48, 0:64]
    smooth = np.stack([xx * 4, yy * 5, (xx + yy) * 2], axis=-1).clip(0, 255).astype(np.uint8)
    base = Image.fromarray(smooth)
    files = {
        "rgb.png": _encode(base, "PNG"),
        "grey.png": _encode(base.convert("L"), "PNG"),
        "rgba.png": _encode(base.convert("RGBA"), "PNG"),
        "grey16.png": _encode(Image.fromarray(smooth[..., 0].astype(np.uint16) * 257), "PNG"),
        # No dithering: dither noise would measure aliasing (DALI's resize), not decoding.
        "palette.png": _encode(base.quantize(256, dither=Image.Dither.NONE), "PNG"),
        "rgb.webp": _encode(base, "WEBP"),
        "rgb.bmp": _encode(base, "BMP"),
        "rgb.tiff": _encode(base, "TIFF"),
        "rgb.ppm": _encode(base, "PPM"),
        "cmyk.jpg": _encode(base.convert("CMYK"), "JPEG"),
        "animated.png": _encode(base.convert("P"), "GIF"),  # a GIF under a .png name
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    errors = []
    batches = list(inference_loader(tmp_path, batch_size=4, input_size=28, resize="square",
                                    backend=backend, on_error=lambda p, r: errors.append((p, r))))
    assert [Path(p).name for p, _ in errors] == ["animated.png"] and "gif" in errors[0][1]
    for batch in batches:
        for k, path in enumerate(batch["paths"]):
            ref = decode_rgb(Path(path).read_bytes(), path)
            ref = np.asarray(Image.fromarray(ref).resize((28, 28), Image.Resampling.BICUBIC))
            got = _denormalise(batch["image"][k : k + 1])[0].permute(1, 2, 0).numpy()
            assert np.abs(got - ref).mean() < 4.0, path


@pytest.mark.skipif(not dali_available(), reason="no DALI")
def test_dali_recovers_from_files_only_pil_decodes(monkeypatch: pytest.MonkeyPatch) -> None:
    from depth_anything_fast.data import dali_pipelines
    from depth_anything_fast.data.dali_pipelines import DaliRunner
    from depth_anything_fast.data.geometry import full_box
    from depth_anything_fast.data.jobs import ImageJob

    rng = np.random.default_rng(1)
    img = Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8))
    good = [ImageJob(f"good{i}.png", _encode(img, "PNG"), full_box(20, 30, 14, 28)) for i in range(3)]
    gif = ImageJob("x.gif", _encode(img.convert("P"), "GIF"), full_box(20, 30, 14, 28))
    # Host checks reject GIFs; pretend they passed, so that only DALI's decoder fails on it.
    monkeypatch.setattr(dali_pipelines, "_pil_reason", lambda job: None)
    errors = []
    runner = DaliRunner(batch_size=2, num_threads=1, device=torch.device("cpu"), strong=False,
                        on_error=lambda p, r: errors.append((p, r)))
    runner.submit([good[0], gif])
    runner.submit(good[1:])
    views_a, jobs_a = runner.collect()
    views_b, jobs_b = runner.collect()
    assert [j.path for j in jobs_a + jobs_b] == ["good0.png", "good1.png", "good2.png"]
    assert views_a[0].shape == (1, 3, 14, 28) and views_b[0].shape == (2, 3, 14, 28)
    assert [p for p, _ in errors] == ["x.gif"] and "DALI decoder failed" in errors[0][1]
    assert runner.collect() is None


@pytest.mark.parametrize("backend", BACKENDS)
def test_labelled_strong_view(blocks, backend: str) -> None:
    """strong_view=True adds the perturbed view of the same crop; crops, targets and the clean
    view are those of the plain loader with the same seed."""
    source, images = blocks
    paths = [p for p, _ in source.pairs]
    seed = int(torch.randint(0, 2**31 - 1, ()).item())
    loader = labelled_loader(source, batch_size=3, crop_size=42, seed=seed, backend=backend,
                             strong_view=True)
    plain = list(labelled_loader(source, batch_size=3, crop_size=42, seed=seed, backend=backend))
    batches = list(loader)
    assert len(batches) == len(plain) == 2
    n_perturbed = 0
    for batch, ref in zip(batches, plain, strict=True):
        assert list(batch) == ["image", "strong", "disparity", "mask", "paths"]
        assert batch["strong"].shape == (3, 3, 42, 42) and batch["strong"].dtype == torch.float32
        assert batch["paths"] == ref["paths"]
        for key in ("image", "disparity", "mask"):
            assert torch.equal(batch[key], ref[key]), key
        _check_alignment(batch, images)
        clean, strong = _denormalise(batch["image"]), _denormalise(batch["strong"])
        for k, path in enumerate(batch["paths"]):
            params = loader._prepare(paths.index(path), 0).job.strong
            clean_u8 = np.clip(np.rint(clean[k].permute(1, 2, 0).numpy()), 0, 255).astype(np.uint8)
            expected = apply_strong(clean_u8, params).astype(np.float64)
            got = strong[k].permute(1, 2, 0).numpy()
            # Away from edges of both the image and the target: the strong view is aligned.
            inner = (_interior(clean_u8[..., 0]) & _interior(clean_u8[..., 1])
                     & _interior(batch["disparity"][k].numpy()))
            np.testing.assert_allclose(got[inner], expected[inner], atol=2.5)
            n_perturbed += int(np.abs(got - clean[k].permute(1, 2, 0).numpy()).mean() > 1)
    assert n_perturbed >= 1


@pytest.fixture
def metric_blocks(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    """Block images with 16-bit millimetre depth 1000 + 20 * red, 0 (invalid) in one rectangle
    per image; spec.json: kind depth, scale 0.001, invalid [0]. Returns root, path -> raw depth."""
    rng = np.random.default_rng(int(torch.randint(0, 2**31 - 1, ()).item()))
    root = tmp_path / "metric"
    (root / "images").mkdir(parents=True)
    (root / "depth").mkdir()
    raw = {}
    for i, (h, w) in enumerate(SIZES):
        img = _blocks(rng, h, w)
        depth_mm = 1000 + 20 * img[..., 0].astype(np.uint16)
        y, x = rng.integers(0, h - 15), rng.integers(0, w - 15)
        depth_mm[y : y + 15, x : x + 15] = 0
        Image.fromarray(img).save(root / "images" / f"{i}.png")
        Image.fromarray(depth_mm).save(root / "depth" / f"{i}.png")
        raw[str(root / "images" / f"{i}.png")] = depth_mm
    LabelledSpec(kind="depth", scale=0.001, invalid=(0,)).to_json(root / "spec.json")
    return root, raw


@pytest.mark.parametrize("backend", BACKENDS)
def test_labelled_metric_depth(metric_blocks, backend: str) -> None:
    from depth_anything_fast.data.geometry import crop_nearest

    root, raw = metric_blocks
    seed = int(torch.randint(0, 2**31 - 1, ()).item())
    loader = labelled_loader(root, batch_size=3, crop_size=42, seed=seed, backend=backend,
                             target="depth", strong_view=True)
    plain = list(labelled_loader(root, batch_size=3, crop_size=42, seed=seed, backend=backend))
    paths = [p for p, _ in loader.source.pairs]
    n_valid = 0
    for batch, ref in zip(loader, plain, strict=True):
        assert list(batch) == ["image", "strong", "depth", "mask", "paths"]
        assert batch["depth"].shape == (3, 42, 42) and batch["depth"].dtype == torch.float32
        assert batch["paths"] == ref["paths"] and torch.equal(batch["image"], ref["image"])
        assert torch.equal(batch["mask"], ref["mask"])
        red = _denormalise(batch["image"])[:, 0].numpy()
        for k, path in enumerate(batch["paths"]):
            depth, mask = batch["depth"][k].numpy(), batch["mask"][k].numpy()
            # Oracle: the file's millimetres in float64, at the loader's sampled pixels.
            box = loader._prepare(paths.index(path), 0).job.box
            want = crop_nearest(raw[path].astype(np.float64) * 0.001, box, raw[path].shape)
            assert np.array_equal(mask, want > 0)
            np.testing.assert_allclose(depth[mask], want[mask], rtol=1e-7, atol=0)
            assert (depth[~mask] == 0).all()
            # Geometry independent of the oracle: the image's red channel encodes the depth.
            inner = _interior(np.where(mask, depth, -1.0)) & mask
            np.testing.assert_allclose(red[k][inner], (depth[inner] - 1.0) / 0.02, atol=2.5)
            n_valid += int(inner.sum())
    assert n_valid > 0


def test_labelled_target_option_errors(blocks, metric_blocks) -> None:
    source, _ = blocks  # kind "disparity": no metric depth
    with pytest.raises(ValueError, match="kind 'depth'"):
        labelled_loader(source, batch_size=2, crop_size=14, target="depth")
    with pytest.raises(ValueError, match="target must be one of"):
        labelled_loader(metric_blocks[0], batch_size=2, crop_size=14, target="metres")
