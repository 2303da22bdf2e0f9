"""End-to-end pseudo-labelling throughput: ours vs an official-style one-image fp32 loop.

Both implementations do the same work on the same files with the same weights: read the file,
decode, preprocess (official lower-bound resize to 518), predict, store a 16-bit PNG.

* `official-loop`: `run.py` style: for each file, decode, `model.infer_image(image, 518)` in
  fp32 (one image, synchronous), resize back to the original size, encode and write, in turn.
* `pseudo-label`: `depth_anything_fast.inference.pseudo_label` (batched, bucketed, loader and
  writer threads, bf16 autocast on CUDA), storing at network resolution (its default);
  `pseudo-label-original-size`: the same with `original_size=True`, i.e. exactly the output of
  the official loop (maps resized back to the photo's size).

CPU: vits with random weights on the 20 real images of ../shared/data/images.
GPU (skipped without CUDA): vits and vitl, bf16, batch 16, on those 20 images copied
`CUDA_REPEAT` times under other names (seconds of work, not only start-up), decode threads as
`pseudo-label` chooses them; `extra_info["gpu_busy"]` is the fraction of the wall time during
which at least one CUDA kernel or copy ran, from a torch.profiler trace of one extra run (the
union of their [start, end) intervals over the wall time).

Before timing, the warm-up run's outputs (two images) are checked against the reference
`model.infer_image` (`check_outputs`): network-size maps against the same forward before the
resize back, and each map to 1e-3 of its std in fp32 (bf16 on CUDA: 0.1 of the std, an
estimate not yet measured on a GPU), so a fast run that writes wrong maps fails.

Run: `.venv/bin/python -m pytest benchmarks/bench_inference.py --benchmark-only
--benchmark-json benchmarks/results/inference_cpu.json`.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from benchmark_support import SHARED_IMAGES

from depth_anything_fast.formats.codec import decode_png16, encode_png16
from depth_anything_fast.formats.manifest import read_records
from depth_anything_fast.inference.pseudo_label import pseudo_label
from depth_anything_fast.inference.writers import atomic_write
from depth_anything_fast.models import DepthAnything
from depth_anything_fast.transforms import preprocess

INPUT_SIZE = 518
CUDA_REPEAT = 10

CASES = [
    pytest.param("cpu", "vits", id="cpu-vits"),
    pytest.param(
        "cuda",
        "vits",
        id="cuda-vits",
        marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
    ),
    pytest.param(
        "cuda",
        "vitl",
        id="cuda-vitl",
        marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
    ),
]


def _images() -> list[Path]:
    if not SHARED_IMAGES.is_dir():
        pytest.skip(f"real images not found at {SHARED_IMAGES}")
    return sorted(SHARED_IMAGES.glob("*.jpg"))


def official_loop(model: DepthAnything, paths: list[Path], out: Path) -> None:
    """One image at a time in fp32, as the official run.py (PIL decode: no OpenCV here)."""
    from depth_anything_fast.data.decode import decode_rgb

    for path in paths:
        image = decode_rgb(path.read_bytes(), str(path))
        depth = model.infer_image(image, INPUT_SIZE)
        atomic_write(out / (path.stem + ".png"), encode_png16(depth).data)


def ours(model: DepthAnything, src: Path, out: Path, device: str, original_size: bool) -> None:
    batch = 16 if device == "cuda" else 4
    summary = pseudo_label(
        model,
        src,
        out,
        batch_size=batch,
        input_size=INPUT_SIZE,
        device=device,
        original_size=original_size,
        handle_signals=False,
    )
    n_images = sum(1 for p in src.iterdir() if p.suffix == ".jpg")
    assert (summary.succeeded, summary.failed, summary.skipped) == (n_images, 0, 0), summary


def check_outputs(model: DepthAnything, impl: str, out: Path, paths: list[Path],
                  device: str) -> None:
    """The maps `impl` stored for `paths` against the fp32 reference (`infer_image`; before
    its resize back for maps stored at the network size), to a share of each map's std."""
    from depth_anything_fast.data.decode import decode_rgb

    if impl == "official-loop":  # the reference itself
        return
    reference = model  # fp32 weights (pseudo-label autocasts to bf16 on CUDA)
    tolerance = 0.1 if device == "cuda" else 1e-3  # bf16 autocast on CUDA: an estimate
    records = {Path(r.input).name: r for r in read_records(out / "manifest.jsonl")}
    assert sorted(records) == sorted(p.name for p in paths)
    for path in paths:
        record = records[path.name]
        image = decode_rgb(path.read_bytes(), str(path))
        with torch.no_grad():
            if impl.endswith("original-size"):
                expected = reference.infer_image(image, INPUT_SIZE)
            else:
                x = preprocess(image, INPUT_SIZE, device=device)
                expected = reference(x)[0].cpu().numpy()
        stored = decode_png16(str(out / record.output), record.min, record.max)
        assert stored.shape == expected.shape and expected.std() > 0, (path, stored.shape)
        error = float(np.abs(stored - expected).max()) / float(expected.std())
        assert error <= tolerance, f"{path.name}: max error {error:.3g} x std > {tolerance}"


def gpu_busy_fraction(fn: Callable[[], None]) -> float:
    """Fraction of `fn`'s wall time with at least one CUDA kernel running (profiler trace)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        wall_us = (time.perf_counter() - start) * 1e6
    intervals = sorted(
        (e.time_range.start, e.time_range.end)
        for e in prof.events()
        if e.device_type == torch.autograd.DeviceType.CUDA
    )
    busy, cur_start, cur_end = 0.0, None, None
    for s, e in intervals:
        if cur_end is None or s > cur_end:
            if cur_end is not None:
                busy += cur_end - cur_start
            cur_start, cur_end = s, e
        else:
            cur_end = max(cur_end, e)
    if cur_end is not None:
        busy += cur_end - cur_start
    return busy / wall_us


@pytest.mark.parametrize("impl", ["official-loop", "pseudo-label", "pseudo-label-original-size"])
@pytest.mark.parametrize(("device", "encoder"), CASES)
def test_inference_throughput(benchmark, impl: str, device: str, encoder: str) -> None:
    paths = _images()
    torch.manual_seed(0)
    model = DepthAnything(encoder=encoder).eval().to(device)
    if device == "cuda" and impl == "official-loop":
        model = model.float()  # the official loop runs in fp32
    work = Path(tempfile.mkdtemp(prefix="daf-bench-"))
    src = work / "src"
    src.mkdir()
    for k in range(CUDA_REPEAT if device == "cuda" else 1):
        for path in paths:
            shutil.copy(path, src / f"{path.stem}_{k}{path.suffix}")
    n_images = len(paths) * (CUDA_REPEAT if device == "cuda" else 1)
    warm = work / "warm"  # two images: first-call allocations, kernel selection, page cache
    warm.mkdir()
    for path in paths[:2]:
        shutil.copy(path, warm / path.name)
    runs = iter(range(10**6))

    def run(source: Path = src) -> Path:
        out = work / f"out{next(runs)}"  # fresh output: nothing is skipped as already done
        if impl == "official-loop":
            official_loop(model, sorted(source.glob("*.jpg")), out)
        else:
            ours(model, source, out, device, original_size=impl.endswith("original-size"))
        if device == "cuda":
            torch.cuda.synchronize()
        return out

    check_outputs(model, impl, run(warm), sorted(warm.glob("*.jpg")), device)
    benchmark.group = f"inference {device} {encoder} ({n_images} images, {INPUT_SIZE})"
    # CPU: one round (minutes on 2 cores); the official/ours ratio is what is reported
    benchmark.pedantic(run, rounds=1 if device == "cpu" else 3, iterations=1)
    benchmark.extra_info["images"] = n_images
    benchmark.extra_info["images_per_s"] = n_images / benchmark.stats.stats.mean
    benchmark.extra_info["torch"] = torch.__version__
    if device == "cuda":
        benchmark.extra_info["gpu_busy"] = gpu_busy_fraction(run)
        benchmark.extra_info["gpu"] = torch.cuda.get_device_name()
    shutil.rmtree(work, ignore_errors=True)
    assert np.isfinite(benchmark.stats.stats.mean)
