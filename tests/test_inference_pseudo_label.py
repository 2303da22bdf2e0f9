"""Predictor, pseudo-labelling engine and CLIs with a tiny random-weight model saved to disk.

The batched/bucketed paths are compared with the model's own one-image `infer_image`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import varied_tiny_model as _tiny_model
from PIL import Image

from depth_anything_fast.cli import main
from depth_anything_fast.formats.codec import decode_png16
from depth_anything_fast.formats.manifest import (
    finished_records,
    read_all_records,
    read_records,
)
from depth_anything_fast.inference.predictor import Predictor
from depth_anything_fast.inference.pseudo_label import pseudo_label
from depth_anything_fast.models import DepthAnything
from depth_anything_fast.transforms import lower_bound_size

INPUT_SIZE = 70
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[DepthAnything, Path]:
    model = _tiny_model()
    weights = model.save_pretrained(tmp_path_factory.mktemp("weights") / "tiny.safetensors")
    return model, weights


def _write_image(path: Path, h: int, w: int) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = (torch.rand(h, w, 3) * 255).to(torch.uint8).numpy()
    Image.fromarray(rgb).save(path)
    return rgb


def _source(root: Path) -> tuple[Path, list[str]]:
    """Synthetic photos (two sizes, nested dirs) + one corrupt and one empty file.

    Returns (source dir, relative stems of the good images).
    """
    from depth_anything_fast.recipe.synthetic import generate_dataset

    layout = generate_dataset(root / "gen", n_labelled=0, n_unlabelled=4, n_val=0, size=(48, 64))
    src = root / "src"
    shutil.copytree(layout.unlabelled / "images", src / "synthetic")
    _write_image(src / "tall" / "a.png", 75, 40)  # another aspect ratio -> another bucket
    _write_image(src / "tall" / "b.png", 75, 40)
    _write_image(src / "wide.png", 30, 90)
    good = sorted(str(p.relative_to(src).with_suffix("")) for p in src.rglob("*.*"))
    (src / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0" + os.urandom(300))
    (src / "empty.png").write_bytes(b"")
    return src, good


def _load_rgb(path: Path) -> np.ndarray:
    return np.array(Image.open(path).convert("RGB"))  # writable, as torch.from_numpy prefers


def _assert_close(actual: np.ndarray, expected: np.ndarray, tol: float) -> None:
    assert actual.shape == expected.shape
    scale = max(float(np.abs(expected).max()), 1e-6)
    err = float(np.abs(actual.astype(np.float64) - expected.astype(np.float64)).max())
    assert err <= tol * scale, f"max error {err:.3g} > {tol} x {scale:.3g}"


def _png16_values(path: Path, lo: float, hi: float, per_map: bool = True) -> np.ndarray:
    """A stored 16-bit PNG read with PIL and the documented code formula (`pseudo_label`'s
    docstring: codes 0..65535 = the manifest's min..max), float64; not our codec. Relative maps
    (`per_map`) span the whole code range."""
    with Image.open(path) as im:
        assert im.mode in ("I;16", "I;16B", "I") and im.format == "PNG", im.mode
        codes = np.asarray(im)
    assert codes.dtype == np.uint16 or (codes.min() >= 0 and codes.max() <= 65535)
    if per_map:
        assert (codes.min(), codes.max()) == (0, 65535)
    return lo + codes.astype(np.float64) / 65535.0 * (hi - lo)


def _one_by_one(model: DepthAnything, paths: list[str], backend: str) -> dict[str, np.ndarray]:
    """fp32 model output for each image alone (batch of 1), preprocessed by the same loader."""
    from depth_anything_fast.data import inference_loader

    out = {}
    with torch.no_grad():
        for batch in inference_loader(paths, batch_size=1, input_size=INPUT_SIZE, backend=backend):
            out[batch["paths"][0]] = model(batch["image"])[0].numpy()
    return out


def test_predictor_batched_matches_infer_image(tiny: tuple[DepthAnything, Path]) -> None:
    model, _ = tiny
    images = [
        (torch.rand(h, w, 3) * 255).to(torch.uint8).numpy()
        for h, w in [(48, 64), (75, 40), (48, 64), (30, 90), (96, 128), (48, 64)]
    ]
    predictor = Predictor(model, batch_size=2, input_size=INPUT_SIZE, precision="fp32")
    assert predictor.precision == "fp32" and predictor.device.type == "cpu"
    out = predictor.predict(images)
    for image, pred in zip(images, out, strict=True):
        expected = model.infer_image(image, INPUT_SIZE)
        assert pred.dtype == np.float32 and expected.std() > 0
        # fp32; batching changes only the summation order of the matmuls
        _assert_close(pred, expected, 1e-4)
    with pytest.raises(ValueError, match="multiples of 14"):
        predictor.predict_tensor(torch.zeros(1, 3, 15, 28))
    with pytest.raises(ValueError, match="precision"):
        Predictor(model, precision="fp8")


def test_predictor_leaves_the_callers_model_as_it_found_it(
    tiny: tuple[DepthAnything, Path],
) -> None:
    """A training loop validates with its own model: train/eval flags and requires_grad are
    the caller's before and after, and the forward runs in eval mode all the same."""
    import copy

    model = copy.deepcopy(tiny[0]).train()
    model.encoder.requires_grad_(False)  # e.g. a frozen encoder
    model.head.scratch.eval()  # a submodule the caller keeps in eval mode
    flags = {name: m.training for name, m in model.named_modules()}
    grads = {name: p.requires_grad for name, p in model.named_parameters()}
    image = (torch.rand(48, 64, 3) * 255).to(torch.uint8).numpy()
    out = Predictor(model, input_size=INPUT_SIZE).predict([image])[0]
    assert {name: m.training for name, m in model.named_modules()} == flags
    assert {name: p.requires_grad for name, p in model.named_parameters()} == grads
    np.testing.assert_array_equal(out, Predictor(tiny[0], input_size=INPUT_SIZE).predict([image])[0])


@pytest.mark.parametrize("backend", ["pil", "dali"])
def test_pseudo_label_outputs_errors_and_resume(
    tiny: tuple[DepthAnything, Path], tmp_path: Path, backend: str
) -> None:
    if backend == "dali":
        pytest.importorskip("nvidia.dali")
    model, weights = tiny
    src, good = _source(tmp_path)
    dst = tmp_path / "npy"
    opts = dict(batch_size=3, input_size=INPUT_SIZE, backend=backend, writer_threads=2,
                precision="fp32")
    summary = pseudo_label(weights, src, dst, format="npy", original_size=True, **opts)
    assert (summary.succeeded, summary.skipped, summary.failed) == (len(good), 0, 2)
    assert summary.exit_code == 1
    errors = [json.loads(line) for line in (dst / "errors.jsonl").read_text().splitlines()]
    assert sorted(Path(e["input"]).name for e in errors) == ["corrupt.jpg", "empty.png"]
    assert all(e["reason"] for e in errors)
    records = read_records(dst / "manifest.jsonl")
    assert sorted(r.output for r in records) == sorted(f"{g}.npy" for g in good)
    for r in records:
        pred = np.load(dst / r.output)
        image = _load_rgb(Path(r.input))
        assert pred.shape == image.shape[:2]
        assert r.shape == list(pred.shape) and r.min == pytest.approx(float(pred.min()))
        # the loader's inputs equal infer_image's preprocessing; batching changes only the
        # summation order of the matmuls
        _assert_close(pred, model.infer_image(image, INPUT_SIZE), 1e-4)

    # rerun: everything finished is skipped; a deleted output and a truncated manifest tail redo
    again = pseudo_label(weights, src, dst, format="npy", original_size=True, **opts)
    assert (again.succeeded, again.skipped, again.failed) == (0, len(good), 2)
    (dst / records[0].output).unlink()
    with open(dst / "manifest.jsonl", "a") as f:
        f.write('{"input": "x", "output": "wi')
    third = pseudo_label(weights, src, dst, format="npy", original_size=True, **opts)
    assert (third.succeeded, third.skipped) == (1, len(good) - 1)
    assert set(read_all_records(dst)) == {f"{g}.npy" for g in good}
    with pytest.raises(ValueError, match="other settings"):
        pseudo_label(weights, src, dst, format="npy", original_size=False, **opts)


def _other_weights(model: DepthAnything) -> DepthAnything:
    """The same architecture with other weights."""
    return _tiny_model()


def _other_architecture(model: DepthAnything) -> DepthAnything:
    """The same weights (the same fingerprint) in another architecture: exact position-embedding
    interpolation instead of the official +0.1 offset, which changes every map."""
    import dataclasses

    assert model.config.interpolate_offset == 0.1
    other = DepthAnything(config=dataclasses.replace(model.config, interpolate_offset=0.0))
    other.load_state_dict(model.state_dict())
    return other.eval()


# Every key of `run_config.json` that must match for a rerun to resume: the base run's options
# and how the rerun changes them (or the model it is given).
RESUME_BASE = dict(input_size=INPUT_SIZE, resize="keep-aspect", format="png16",
                   original_size=False, batch_size=2, backend="pil", handle_signals=False)
RESUME_CHANGES = {
    "weights_sha256": _other_weights,
    "model": _other_architecture,
    "input_size": {"input_size": INPUT_SIZE + 14},
    "resize": {"resize": "square"},
    "format": {"format": "npy"},
    "original_size": {"original_size": True},
}


def test_resume_changes_cover_every_resume_key() -> None:
    from depth_anything_fast.inference.resume import RESUME_KEYS

    assert set(RESUME_CHANGES) == set(RESUME_KEYS)


@pytest.fixture(scope="module")
def resumable(tiny: tuple[DepthAnything, Path],
              tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(input folder of three images, an output folder labelled with `RESUME_BASE`)."""
    root = tmp_path_factory.mktemp("resume")
    for name, (h, w) in {"a.png": (48, 64), "b.png": (75, 40), "c/d.png": (30, 90)}.items():
        _write_image(root / "src" / name, h, w)
    summary = pseudo_label(tiny[0], root / "src", root / "out", **RESUME_BASE)
    assert (summary.succeeded, summary.failed) == (3, 0)
    return root / "src", root / "out"


@pytest.mark.parametrize("key", list(RESUME_CHANGES))
def test_rerun_with_one_setting_changed_is_refused_naming_it(
    tiny: tuple[DepthAnything, Path], resumable: tuple[Path, Path], tmp_path: Path, key: str
) -> None:
    """Each resume key alone: the rerun is refused with a message naming what changed, and the
    folder is left as it was (no output, manifest line or run_config.json rewritten)."""
    src, labelled = resumable
    out = tmp_path / "out"
    shutil.copytree(labelled, out)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    change = RESUME_CHANGES[key]
    model, options = tiny[0], dict(RESUME_BASE)
    if callable(change):
        model = change(model)
    else:
        options.update(change)
    previous = json.loads((out / "run_config.json").read_text())
    if key == "weights_sha256":
        from depth_anything_fast.models.weights import weights_fingerprint

        message = re.escape(
            f"{out} holds labels made by other weights (then DepthAnything, {previous[key]}; now "
            f"DepthAnything, {weights_fingerprint(model)}): use another --output, the original "
            "weights, or --overwrite to label everything again")
    elif key == "model":
        message = re.escape(f"{out} holds outputs made with other settings (model: "
                            f"{previous[key]!r} -> {model.config.to_dict()!r}); use another")
    else:
        message = re.escape(f"{out} holds outputs made with other settings ({key}: "
                            f"{previous[key]!r} -> {options[key]!r}); use another --output "
                            "directory, the original settings, or --overwrite")
    with pytest.raises(ValueError, match=f"^{message}"):
        pseudo_label(model, src, out, **options)
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before
    # the same settings resume: everything is skipped, whatever the other options
    again = pseudo_label(tiny[0], src, out, **{**RESUME_BASE, "batch_size": 3,
                                               "writer_threads": 1, "num_workers": 1,
                                               "verify_checksum": True})
    assert (again.succeeded, again.skipped, again.failed) == (0, 3, 0)


def test_refusal_lists_every_changed_setting_and_badrun_config(
    tiny: tuple[DepthAnything, Path], resumable: tuple[Path, Path], tmp_path: Path
) -> None:
    src, labelled = resumable
    out = tmp_path / "out"
    shutil.copytree(labelled, out)
    options = {**RESUME_BASE, "input_size": INPUT_SIZE + 14, "resize": "square"}
    expected = (f"(input_size: {INPUT_SIZE} -> {INPUT_SIZE + 14}, "
                "resize: 'keep-aspect' -> 'square')")
    with pytest.raises(ValueError, match=re.escape(expected)):
        pseudo_label(tiny[0], src, out, **options)
    (out / "run_config.json").write_text("{not json")
    with pytest.raises(ValueError, match=re.escape(f"{out / 'run_config.json'}: not valid JSON (")
                       + r".*\); --overwrite starts afresh$"):
        pseudo_label(tiny[0], src, out, **RESUME_BASE)
    # --overwrite: every rank's old manifest and error list go, the new run's settings stay
    for name in ("manifest.rank1.jsonl", "errors.rank1.jsonl", "errors.jsonl"):
        (out / name).write_text("")
    again = pseudo_label(tiny[0], src, out, **options, overwrite=True)
    assert (again.succeeded, again.skipped) == (3, 0)
    assert sorted(p.name for p in out.glob("*.jsonl")) == ["errors.jsonl", "manifest.jsonl"]
    assert json.loads((out / "run_config.json").read_text())["resize"] == "square"


def test_run_config_records_the_weights_and_settings(tiny: tuple[DepthAnything, Path]) -> None:
    from dataclasses import asdict

    from depth_anything_fast.inference.pseudo_label import Options
    from depth_anything_fast.inference.resume import run_config
    from depth_anything_fast.models.weights import weights_fingerprint

    model, weights = tiny
    opts = asdict(Options(input_size=84, resize="square", format="npy", original_size=True))
    settings = {"input_size": 84, "resize": "square", "format": "npy", "original_size": True}
    assert run_config(model, model, opts) == {
        "weights": "DepthAnything", "weights_sha256": weights_fingerprint(model),
        "model": model.config.to_dict(), **settings}
    from_file = run_config(str(weights), model, opts)
    assert from_file["weights"] == os.path.abspath(weights)
    assert from_file["weights_sha256"] == weights_fingerprint(weights)
    hub_id = run_config("someone/a-model", model, opts)  # not a local file: the loaded weights
    assert hub_id["weights"] == "someone/a-model"
    assert hub_id["weights_sha256"] == weights_fingerprint(model)
    plain = torch.nn.Conv2d(3, 1, 1)  # a module without a DepthAnythingConfig
    assert run_config(plain, plain, opts)["model"] is None
    assert run_config(plain, plain, opts)["weights"] == "Conv2d"


def test_weights_fingerprint_is_the_sha256_of_the_bytes(tmp_path: Path) -> None:
    """A file: sha256 of its bytes. A folder: of each regular file's name, a NUL and its bytes,
    sorted by name. A module: its state dict (equal weights, equal fingerprints)."""
    import hashlib

    from depth_anything_fast.models.weights import weights_fingerprint

    data = os.urandom(3000)
    (tmp_path / "w.bin").write_bytes(data)
    assert weights_fingerprint(tmp_path / "w.bin") == "sha256:" + hashlib.sha256(data).hexdigest()
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "b.json").write_bytes(b'{"x": 1}')
    (folder / "a.safetensors").write_bytes(data)
    (folder / "sub").mkdir()  # not a regular file: not content
    expected = hashlib.sha256(b"a.safetensors\0" + data + b'b.json\0{"x": 1}').hexdigest()
    assert weights_fingerprint(folder) == "sha256:" + expected
    one, two = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    two.load_state_dict(one.state_dict())
    fingerprint = weights_fingerprint(one)
    assert fingerprint == weights_fingerprint(two) and re.fullmatch(r"sha256:[0-9a-f]{64}",
                                                                      fingerprint)
    with torch.no_grad():
        two.bias[0] += 1e-3
    assert weights_fingerprint(two) != fingerprint


def test_resume_checks_sizes_or_checksums_and_warns_on_a_small_disk(
    tiny: tuple[DepthAnything, Path], resumable: tuple[Path, Path], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    from depth_anything_fast.inference import pseudo_label as engine

    src, labelled = resumable
    out = tmp_path / "out"
    shutil.copytree(labelled, out)
    record = read_records(out / "manifest.jsonl")[0]
    stored = (out / record.output).read_bytes()
    (out / record.output).write_bytes(stored[:-1] + bytes([stored[-1] ^ 1]))  # same size
    assert pseudo_label(tiny[0], src, out, **RESUME_BASE).skipped == 3  # sizes only
    redo = pseudo_label(tiny[0], src, out, **RESUME_BASE, verify_checksum=True)
    assert (redo.succeeded, redo.skipped) == (1, 2)
    assert (out / record.output).read_bytes() == stored
    # the disk is checked against what the outputs still to write need
    need = 3 * engine._map_bytes(engine.Options(**RESUME_BASE))
    real = shutil.disk_usage
    for free, warned in ((need, False), (need - 1, True)):
        monkeypatch.setattr(shutil, "disk_usage",
                            lambda path, free=free: real(path)._replace(free=free))
        caplog.clear()
        with caplog.at_level("WARNING"):
            pseudo_label(tiny[0], src, tmp_path / f"fresh{free}", **RESUME_BASE)
        message = (f"{tmp_path / f'fresh{free}'}: {free / 1e6:.0f} MB free, the 3 outputs to "
                   f"write need about {need / 1e6:.0f} MB: the run will stop when the disk is "
                   "full")
        assert (message in caplog.text) == warned, caplog.text


def _tar_members(path: Path) -> list[str]:
    """Member names of a tar shard, or of every shard in a folder."""
    import tarfile

    names = []
    for shard in sorted(path.glob("*.tar")) if path.is_dir() else [path]:
        with tarfile.open(shard) as tar:
            names += tar.getnames()
    return names


def test_webdataset_rerun_skips_everything_and_duplicates_no_member(
    tiny: tuple[DepthAnything, Path], tmp_path: Path
) -> None:
    """A tar output resumes by member name: a rerun writes no shard and no manifest line; a lost
    shard's members (and only they) are labelled again, into a new shard."""
    _, weights = tiny
    src, good = _source(tmp_path)
    out = tmp_path / "wds"
    opts = dict(format="webdataset", shard_size=3, batch_size=2, input_size=INPUT_SIZE,
                backend="pil", handle_signals=False)
    first = pseudo_label(weights, src, out, **opts)
    assert first.succeeded == len(good)
    expected = sorted(f"{g}.png" for g in good)
    shards = sorted(p.name for p in out.glob("*.tar"))
    assert len(shards) == -(-len(good) // 3) and sorted(_tar_members(out)) == expected
    manifest = (out / "manifest.jsonl").read_bytes()

    again = pseudo_label(weights, src, out, **opts)
    assert (again.succeeded, again.skipped) == (0, len(good))
    assert sorted(p.name for p in out.glob("*.tar")) == shards
    assert (out / "manifest.jsonl").read_bytes() == manifest

    lost = _tar_members(out / shards[0])
    (out / shards[0]).unlink()
    third = pseudo_label(weights, src, out, **opts)
    assert (third.succeeded, third.skipped) == (len(lost), len(good) - len(lost))
    assert sorted(_tar_members(out)) == expected  # each exactly once over all shards
    new_shards = sorted(p.name for p in out.glob("*.tar"))
    assert new_shards == [*shards[1:], new_shards[-1]] and new_shards[-1] > shards[-1]
    assert sorted(_tar_members(out / new_shards[-1])) == sorted(lost)
    finished = finished_records(out).values()
    assert sorted(r.member for r in finished) == expected


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("backend", ["pil", "dali"])
def test_pseudo_label_on_cuda(tiny: tuple[DepthAnything, Path], tmp_path: Path, backend: str) -> None:
    """The CUDA path (GPU resampling, pinned copies back, writers waiting on an event) against
    the CPU model; fp32 up to cuDNN's TF32 convolutions, bf16 near fp32."""
    if backend == "dali":
        pytest.importorskip("nvidia.dali")
    model, weights = tiny
    src, good = _source(tmp_path)
    outputs = {}
    for precision in ("fp32", "bf16"):
        dst = tmp_path / precision
        summary = pseudo_label(weights, src, dst, format="npy", original_size=True, batch_size=3,
                               input_size=INPUT_SIZE, backend=backend, device="cuda",
                               precision=precision, handle_signals=False)
        assert (summary.succeeded, summary.failed) == (len(good), 2)
        outputs[precision] = {r.input: np.load(dst / r.output)
                              for r in read_records(dst / "manifest.jsonl")}
    assert len(outputs["fp32"]) == len(good)
    for path, pred in outputs["fp32"].items():
        _assert_close(pred, model.infer_image(_load_rgb(Path(path)), INPUT_SIZE), 1e-2)
        _assert_close(outputs["bf16"][path], pred, 0.1)


def test_default_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    from depth_anything_fast.inference.pseudo_label import default_threads

    cuda, cpu = torch.device("cuda", 0), torch.device("cpu")
    for cores, local_ranks, expected in [(16, 1, (16, 8)), (64, 1, (16, 8)), (16, 4, (4, 2)),
                                         (2, 8, (2, 2))]:
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid, n=cores: set(range(n)))
        monkeypatch.setenv("LOCAL_WORLD_SIZE", str(local_ranks))
        assert default_threads(cuda) == expected, (cores, local_ranks)
        assert default_threads(cpu) == (2, 2)  # the CPU's cores go to the model


def test_pseudo_label_png16_and_webdataset_network_size(
    tiny: tuple[DepthAnything, Path], tmp_path: Path
) -> None:
    model, weights = tiny
    src, good = _source(tmp_path)
    opts = dict(batch_size=4, input_size=INPUT_SIZE, backend="pil", precision="fp32")
    # bucketed batches of 4 (3 buckets: full, partial and single batches) vs one image at a time
    pseudo_label(weights, src, tmp_path / "png", format="png16", **opts)
    tar = pseudo_label(weights, src, tmp_path / "wds", format="webdataset", **opts)
    assert tar.succeeded == len(good)
    png_records = read_records(tmp_path / "png" / "manifest.jsonl")
    wds_records = {r.member: r for r in read_records(tmp_path / "wds" / "manifest.jsonl")}
    from depth_anything_fast.formats.paths import read_bytes

    singles = _one_by_one(model, [r.input for r in png_records], "pil")
    for r in png_records:
        image = _load_rgb(Path(r.input))
        expected = singles[r.input]
        assert tuple(r.shape) == lower_bound_size(*image.shape[:2], INPUT_SIZE)
        got = _png16_values(tmp_path / "png" / r.output, r.min, r.max)
        step = (r.max - r.min) / 65535
        assert np.abs(got - expected).max() <= 0.5 * step + 1e-4 * np.abs(expected).max()
        w = wds_records[r.output]
        assert w.file.endswith(".tar") and w.checksum == r.checksum  # same bytes in the shard
        assert read_bytes(str(tmp_path / "wds" / w.output)) == (tmp_path / "png" / r.output).read_bytes()
    # both layouts are training data for the student (data.LabelledSource over the output)
    from depth_anything_fast.data import LabelledSource, load_target

    for folder in ("png", "wds"):
        source = LabelledSource.from_path(tmp_path / folder)
        assert len(source) == len(good) and source.spec.kind == "disparity"
        disparity, mask = load_target(source.pairs[0][1], source.spec)
        assert mask.all() and disparity.min() == 0 and disparity.max() == 1


def test_metric_model_pseudo_labels_read_back_as_metric_depth(tmp_path: Path) -> None:
    """A metric teacher's outputs are depth in metres: png16 uses one fixed scale (0..max_depth)
    and spec.json tells LabelledSource they are depth, so training reads 1/depth as disparity
    and `load_depth` gets metres back (not min-max normalised values taken for disparity)."""
    from depth_anything_fast.data import LabelledSource, load_target
    from depth_anything_fast.data.sources import load_depth

    max_depth = 20.0
    model = _tiny_model(metric=True, max_depth=max_depth)
    weights = model.save_pretrained(tmp_path / "metric.safetensors")
    src, good = _source(tmp_path)
    opts = dict(batch_size=4, input_size=INPUT_SIZE, backend="pil", precision="fp32")
    for fmt, tol in (("png16", 0.5 * max_depth / 65535), ("npy", 0.0)):
        out = tmp_path / fmt
        summary = pseudo_label(weights, src, out, format=fmt, **opts)
        assert summary.succeeded == len(good)
        records = {r.input: r for r in read_records(out / "manifest.jsonl")}
        singles = _one_by_one(model, list(records), "pil")
        source = LabelledSource.from_path(out)
        assert source.spec.kind == "depth" and len(source) == len(good)
        for image, target in source.pairs:
            expected = singles[image].astype(np.float64)  # metres, in (0, max_depth)
            assert expected.min() > 0 and expected.max() < max_depth and expected.std() > 0
            depth, valid = load_depth(target, source.spec)
            assert valid.all()
            assert np.abs(depth - expected).max() <= tol + 1e-5 * max_depth
            if fmt == "png16":
                assert (records[image].min, records[image].max) == (0.0, max_depth)
                stored = _png16_values(out / records[image].output, 0.0, max_depth, False)
                assert np.abs(stored - expected).max() <= tol + 1e-5 * max_depth
            # relative training target: 1/depth min-max normalised, as for any depth dataset
            disparity, _ = load_target(target, source.spec)
            inv = 1.0 / expected
            oracle = (inv - inv.min()) / (inv.max() - inv.min())
            assert np.abs(disparity - oracle).max() < 1e-2


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "depth_anything_fast", *args]


def test_sigkill_mid_run_then_resume(tiny: tuple[DepthAnything, Path], tmp_path: Path) -> None:
    _, weights = tiny
    src = tmp_path / "src"
    for i in range(24):
        _write_image(src / f"{i:02d}.png", 60 + 7 * (i % 3), 80)
    dst = tmp_path / "dst"
    cmd = _cli(
        "pseudo-label",
        "--weights",
        str(weights),
        "--input",
        str(src),
        "--output",
        str(dst),
        "--batch-size",
        "1",
        "--input-size",
        "196",
        "--backend",
        "pil",
        "--no-progress",
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    manifest = dst / "manifest.jsonl"

    def start_and_signal(sig: int, lines: int) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            if manifest.exists() and manifest.read_bytes().count(b"\n") >= lines:
                break
            time.sleep(0.01)
        assert proc.poll() is None, f"run ended before the signal: {proc.communicate()[0]!r}"
        proc.send_signal(sig)
        proc.wait(timeout=60)
        return proc

    # Ctrl-C: stops after the current batch, manifest flushed, exit status 130
    interrupted = start_and_signal(signal.SIGINT, 2)
    assert interrupted.returncode == 130
    assert b"interrupted" in interrupted.stdout.read()  # type: ignore[union-attr]
    after_sigint = len(read_records(manifest))
    assert after_sigint >= 2
    killed = start_and_signal(signal.SIGKILL, after_sigint + 2)
    assert killed.returncode == -signal.SIGKILL
    done_before = len(read_records(manifest))
    assert after_sigint + 2 <= done_before < 24
    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert f"{24 - done_before} succeeded, {done_before} skipped" in rerun.stdout
    records = read_records(manifest)
    outputs = [r.output for r in records]
    assert sorted(outputs) == [f"{i:02d}.png" for i in range(24)]  # each exactly once
    for r in records:
        data = decode_png16(str(dst / r.output), r.min, r.max)
        assert data.shape == tuple(r.shape)
    leftovers = [p.name for p in dst.rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == []


def test_torchrun_two_ranks_disjoint(tiny: tuple[DepthAnything, Path], tmp_path: Path) -> None:
    _, weights = tiny
    src, good = _source(tmp_path)
    dst = tmp_path / "dst"
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [
        str(torchrun),
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "depth_anything_fast",
        "pseudo-label",
        "--weights",
        str(weights),
        "--input",
        str(src),
        "--output",
        str(dst),
        "--input-size",
        str(INPUT_SIZE),
        "--backend",
        "pil",
        "--no-progress",
    ]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    # the two bad files make the run "partly failed" (1) on every rank, after all ranks finished
    assert run.returncode == 1, run.stdout + run.stderr
    assert "rank 0/2" in run.stdout and "rank 1/2" in run.stdout
    assert f"all 2 ranks: {len(good)} succeeded, 0 skipped (already done), 2 failed" in run.stdout
    per_rank = [{r.output for r in read_records(dst / f"manifest.rank{k}.jsonl")} for k in (0, 1)]
    assert per_rank[0] and per_rank[1] and not per_rank[0] & per_rank[1]
    assert per_rank[0] | per_rank[1] == {f"{g}.png" for g in good}
    errors = [(dst / f"errors.rank{k}.jsonl").read_text().splitlines() for k in (0, 1)]
    assert sum(len(e) for e in errors) == 2
    assert not (dst / "manifest.jsonl").exists()


def test_rank_with_usage_error_does_not_strand_the_others(
    tiny: tuple[DepthAnything, Path], tmp_path: Path
) -> None:
    """Ranks started by hand (no torchrun to tear the group down): one rank cannot start (its
    input does not exist), the other finishes its shard; both meet in the final all-reduce and
    exit 2 with a clear message (before: the healthy rank died in gloo's all-reduce, exit 1)."""
    import socket

    _, weights = tiny
    src, good = _source(tmp_path)
    dst = tmp_path / "dst"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    procs = []
    for rank, source in ((0, src), (1, tmp_path / "nowhere")):
        env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2")
        env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        cmd = _cli("pseudo-label", "--weights", str(weights), "--input", str(source))
        cmd += ["--output", str(dst), "--input-size", str(INPUT_SIZE), "--backend", "pil"]
        procs.append(
            subprocess.Popen(
                [*cmd, "--no-progress"], env=env, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, text=True,
            )
        )
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [2, 2], outs
    assert "rank 0/2:" in outs[0][0] and "1 of 2 ranks stopped with an error" in outs[0][1]
    assert "nowhere" in outs[1][1]
    # the healthy rank's work is kept: its whole shard is written and recorded
    done = {r.output for r in read_records(dst / "manifest.rank0.jsonl")}
    assert len(done) == (len(good) + 3) // 2 - sum(
        1 for e in (dst / "errors.rank0.jsonl").read_text().splitlines() if e
    )


def test_predict_cli(
    tiny: tuple[DepthAnything, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model, weights = tiny
    image = _write_image(tmp_path / "in" / "x.png", 48, 64)
    _write_image(tmp_path / "in" / "sub" / "y.png", 30, 90)
    out = tmp_path / "out"
    argv = [
        "predict",
        "--weights",
        str(weights),
        str(tmp_path / "in"),
        "--outdir",
        str(out),
        "--input-size",
        str(INPUT_SIZE),
        "--precision",
        "fp32",
    ]
    assert main([*argv, "--save-npy"]) == 0
    combined = np.asarray(Image.open(out / "x.png"))
    assert combined.shape == (48, 64 + 50 + 64, 3) and (combined[:, :64] == image).all()
    assert (out / "sub" / "y.png").exists()
    _assert_close(np.load(out / "x.npy"), model.infer_image(image, INPUT_SIZE), 1e-4)
    (tmp_path / "in" / "bad.jpg").write_bytes(b"")
    assert main([*argv, "--pred-only", "--grayscale"]) == 1  # one input failed, others written
    pred = np.asarray(Image.open(out / "x.png"))
    assert pred.shape == (48, 64, 3) and (pred[..., 0] == pred[..., 1]).all()
    # the same name from two INPUTs would overwrite one output with the other
    _write_image(tmp_path / "other" / "x.png", 30, 90)
    assert main([*argv[:4], str(tmp_path / "other"), *argv[4:]]) == 2
    assert "several inputs map to the output names ['x']" in capsys.readouterr().err
    assert (np.asarray(Image.open(out / "x.png")) == pred).all()
    # near is red in both: Spectral_r on relative disparity, Spectral on a metric model's depth
    from depth_anything_fast.inference.visualize import colormap_lut

    red = colormap_lut("Spectral")[0]
    assert main([*argv, "--pred-only", "--save-npy"]) == 1
    disparity = np.load(out / "x.npy")
    near = np.unravel_index(disparity.argmax(), disparity.shape)
    assert (np.asarray(Image.open(out / "x.png"))[near] == red).all()
    metric = _tiny_model(metric=True, max_depth=20.0)
    metric_weights = metric.save_pretrained(tmp_path / "metric.safetensors")
    argv[2] = str(metric_weights)
    assert main([*argv, "--pred-only", "--save-npy"]) == 1
    depth = np.load(out / "x.npy")
    near = np.unravel_index(depth.argmin(), depth.shape)
    assert (np.asarray(Image.open(out / "x.png"))[near] == red).all()


def test_no_weights_refuses_with_instructions(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["pseudo-label", "--input", str(tmp_path), "--output", str(tmp_path / "o")]) == 2
    message = capsys.readouterr().err
    assert "depth_anything_v2_vits.pth" in message and "depth-anything-fast convert" in message
    assert main(["predict", str(tmp_path)]) == 2
    assert "huggingface.co" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_bad_weights_or_empty_input_touch_no_output(
    tiny: tuple[DepthAnything, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A wrong checkpoint or an input without images fail before the output directory is
    created (a typo'd input is not a silent "0 succeeded")."""
    _, weights = tiny
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad.pth").write_bytes(b"not a checkpoint")
    cases = [
        (str(tmp_path / "bad.pth"), tmp_path / "empty", "cannot read torch checkpoint"),
        (str(weights), tmp_path / "empty", "no images found"),
        (str(weights), tmp_path / "nowhere", "nowhere"),
    ]
    for weights_arg, source, message in cases:
        out = tmp_path / "out"
        argv = ["pseudo-label", "--weights", weights_arg, "--input", str(source)]
        assert main([*argv, "--output", str(out), "--no-progress"]) == 2
        assert message in capsys.readouterr().err
        assert not out.exists()


def test_real_images(tiny: tuple[DepthAnything, Path], shared_data: Path, tmp_path: Path) -> None:
    """Real photos through the engine (batched, bucketed) against the official one-image path
    `infer_image`, as 16-bit PNGs at the network size and at the photo's own size."""
    model, weights = tiny
    src = tmp_path / "real"
    src.mkdir()
    for name in ("demo01.jpg", "demo08.jpg", "demo12.jpg"):
        shutil.copy(shared_data / "images" / name, src / name)
    # fp32: precision "auto" is bf16 on CPUs with native bf16, which infer_image does not use
    opts = dict(input_size=INPUT_SIZE, backend="pil", batch_size=2, handle_signals=False,
                precision="fp32")
    summary = pseudo_label(weights, src, tmp_path / "out", **opts)
    assert (summary.succeeded, summary.failed) == (3, 0)
    for r in read_records(tmp_path / "out" / "manifest.jsonl"):
        with Image.open(r.input) as im:
            w, h = im.size
        assert tuple(r.shape) == lower_bound_size(h, w, INPUT_SIZE)
        stored = _png16_values(tmp_path / "out" / r.output, r.min, r.max)
        assert stored.shape == tuple(r.shape)
    full = pseudo_label(weights, src, tmp_path / "full", original_size=True, **opts)
    assert (full.succeeded, full.failed) == (3, 0)
    for r in read_records(tmp_path / "full" / "manifest.jsonl"):
        expected = model.infer_image(_load_rgb(Path(r.input)), INPUT_SIZE).astype(np.float64)
        assert expected.std() > 0.05 * np.abs(expected).mean()
        stored = _png16_values(tmp_path / "full" / r.output, r.min, r.max)
        step = (r.max - r.min) / 65535
        # half a code; batching changes only the summation order of the matmuls
        assert np.abs(stored - expected).max() <= 0.5 * step + 1e-4 * np.abs(expected).max()


def test_relative_input_manifest_readable_from_elsewhere(tiny, tmp_path, monkeypatch):
    """A run given a relative input directory records absolute inputs, so the output reads back
    as a labelled source (pseudo-labelled data) from any working directory."""
    from depth_anything_fast.data.sources import LabelledSource
    from depth_anything_fast.formats.spec import LabelledSpec

    _, weights = tiny
    src, good = _source(tmp_path)
    monkeypatch.chdir(tmp_path)
    pseudo_label(weights, "src", "labels", input_size=INPUT_SIZE, batch_size=2)
    monkeypatch.chdir(REPO)
    source = LabelledSource.from_path(tmp_path / "labels", LabelledSpec(kind="disparity"))
    assert len(source.pairs) == len(good)
    for image, target in source.pairs:
        assert os.path.isabs(image) and os.path.isfile(image)
        assert os.path.isfile(target)
