"""The runtimes behind `Predictor` (`inference.runtimes`): how "auto" resolves, every runtime's
outputs against a float64 oracle, pseudo-labelling through each, the conversion cache and the
guard against stale weights.

The model is a tiny *metric* one (sigmoid head x max_depth), so the metric path goes through
every runtime (the relative head runs through them in the other inference tests). Tolerances,
against the model run in float64:
* fp32 paths (torch, OpenVINO f32, ONNX Runtime): max |x - oracle| <= 1e-4 max |oracle|
  (float32 summation order);
* bf16 paths (torch autocast, OpenVINO bf16): aligned AbsRel (least-squares scale and shift,
  as `evaluate.metrics`) <= 1e-2 and max |x - oracle| <= 5e-2 max |oracle| on this random
  tiny model (8-bit mantissas; measured 1e-3 / 1e-2 at most over 200 seeds); on real photos
  with the shipped sizes the budget is 1e-3 (benchmarks/results/inference_accuracy.md).
"""

from __future__ import annotations

import copy
import logging
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from depth_anything_fast.cli import main
from depth_anything_fast.evaluate.metrics import align_scale_shift
from depth_anything_fast.inference import runtimes
from depth_anything_fast.inference.predictor import Predictor
from depth_anything_fast.inference.pseudo_label import pseudo_label
from depth_anything_fast.models import DepthAnything, DepthAnythingConfig

FP32_TOL = 1e-4
BF16_ABS_REL, BF16_MAX = 1e-2, 5e-2
CASES = [("torch", "fp32"), ("torch", "bf16"), ("openvino", "fp32"), ("openvino", "bf16"),
         ("onnxruntime", "fp32")]
CPU = torch.device("cpu")


def _skip_unless_installed(runtime: str) -> None:
    if not runtimes.runtime_available(runtime):
        pytest.skip(f"{runtime} is not installed")


@pytest.fixture(scope="module")
def metric_model() -> DepthAnything:
    """A tiny metric model whose maps vary (scaled normal weights, positive biases)."""
    config = DepthAnythingConfig.preset("custom", "v2", embed_dim=32, depth=4, num_heads=2,
                                        features=16, metric=True, max_depth=20.0)
    generator = torch.Generator().manual_seed(0)  # one model: its conversions are cached
    model = DepthAnything(config=config).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim > 1:
                p.copy_(torch.randn(p.shape, generator=generator) * p[0].numel() ** -0.5)
            else:
                p.copy_(torch.rand(p.shape, generator=generator) * 0.2)
    return model


def _oracle(model: DepthAnything, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return copy.deepcopy(model).double()(x.double()).numpy()


def _aligned_abs_rel(got: np.ndarray, reference: np.ndarray) -> float:
    """AbsRel of `got` aligned to `reference` by least squares (per image), in float64."""
    scale, shift = align_scale_shift(torch.from_numpy(got).double(),
                                     torch.from_numpy(reference).double())
    aligned = got * scale.numpy()[:, None, None] + shift.numpy()[:, None, None]
    return float(np.mean(np.abs(aligned - reference) / np.abs(reference)))


def _assert_matches(got: np.ndarray, oracle: np.ndarray, precision: str) -> None:
    assert got.shape == oracle.shape and got.dtype == np.float32
    assert oracle.std() > 0  # a varied map: the comparison can fail
    max_rel = float(np.abs(got - oracle).max() / np.abs(oracle).max())
    if precision == "fp32":
        assert max_rel <= FP32_TOL, max_rel
    else:
        assert max_rel <= BF16_MAX, max_rel
        assert _aligned_abs_rel(got, oracle) <= BF16_ABS_REL


@pytest.mark.parametrize(("runtime", "precision"), CASES)
def test_every_runtime_matches_the_float64_model(
    metric_model: DepthAnything, runtime: str, precision: str
) -> None:
    _skip_unless_installed(runtime)
    predictor = Predictor(metric_model, runtime=runtime, precision=precision, device="cpu")
    assert (predictor.runtime, predictor.precision) == (runtime, precision)
    # two shapes (OpenVINO compiles each), batch 2 then 1
    for x in (torch.randn(2, 3, 56, 84), torch.randn(1, 3, 42, 70)):
        out = predictor.predict_tensor(x)
        assert out.device.type == "cpu"
        got = out.numpy()
        assert got.min() >= 0 and got.max() <= 20.0  # metric: sigmoid x max_depth
        _assert_matches(got, _oracle(metric_model, x), precision)


def test_openvino_bf16_runs_the_encoder_in_bf16_and_the_head_in_f32(
    metric_model: DepthAnything,
) -> None:
    """OpenVINO bf16 is two compiled models: the encoder (hint bf16) and the head converted
    alone (hint f32). The head's output for the encoder's tokens matches the float64 head on
    the same tokens within the fp32 tolerance; on a CPU with native bf16 the tokens differ from
    the fp32 encoder's by bf16 rounding (the encoder does run in bf16)."""
    _skip_unless_installed("openvino")
    encoder, head = runtimes.OpenVINORuntime(metric_model, "bf16")._stages
    oracle = copy.deepcopy(metric_model).double()
    for x in (torch.randn(2, 3, 56, 84), torch.randn(1, 3, 42, 70)):
        tokens = encoder([x.numpy()])
        (got,) = head([*tokens, x.numpy()])
        with torch.no_grad():
            expected = runtimes.decode(oracle, [torch.from_numpy(t).double() for t in tokens],
                                       x).numpy()
            fp32_tokens = metric_model.encode(x)
        _assert_matches(got, expected, "fp32")
        token_diff = max(float((torch.from_numpy(t) - f).abs().max() / f.abs().max())
                         for t, f in zip(tokens, fp32_tokens, strict=True))
        assert token_diff <= BF16_MAX
        if runtimes.cpu_has_native_bf16():
            assert token_diff > FP32_TOL


@pytest.mark.parametrize(("runtime", "precision"),
                         [("openvino", "fp32"), ("openvino", "bf16"), ("onnxruntime", "fp32")])
def test_pseudo_label_through_a_converted_runtime(
    metric_model: DepthAnything, runtime: str, precision: str, tmp_path: Path
) -> None:
    """Batching, bucketing and the writer threads with a converted runtime: the stored maps
    equal torch fp32's within the tolerance of the precision."""
    _skip_unless_installed(runtime)
    from PIL import Image

    src = tmp_path / "src"
    src.mkdir()
    for i, (h, w) in enumerate([(48, 64), (48, 64), (75, 40), (48, 64), (30, 90)]):
        rgb = (torch.rand(h, w, 3) * 255).to(torch.uint8).numpy()
        Image.fromarray(rgb).save(src / f"im{i}.png")
    outputs = {}
    for name, dtype in (("torch", "fp32"), (runtime, precision)):
        summary = pseudo_label(metric_model, src, tmp_path / name, runtime=name,
                               precision=dtype, batch_size=2, input_size=42, format="npy",
                               device="cpu", handle_signals=False)
        assert (summary.succeeded, summary.failed) == (5, 0)
        outputs[name] = {p.name: np.load(p) for p in (tmp_path / name).glob("*.npy")}
    assert outputs[runtime].keys() == outputs["torch"].keys() and len(outputs["torch"]) == 5
    for key, expected in outputs["torch"].items():
        got = outputs[runtime][key]
        assert got.shape == expected.shape, key
        _assert_matches(got[None], expected[None], precision)


# -------------------------------------------------------------------------- resolution
def _installed(monkeypatch: pytest.MonkeyPatch, *, openvino: bool, onnxruntime: bool) -> None:
    """Pretend the runtimes are (not) installed: a None entry in sys.modules makes both
    `import` and `importlib.util.find_spec` find nothing."""
    for name, present in (("openvino", openvino), ("onnxruntime", onnxruntime)):
        if not present:
            monkeypatch.setitem(sys.modules, name, None)
        elif not runtimes.runtime_available(name):
            pytest.skip(f"{name} is not installed")


# (native bf16, openvino, onnxruntime) -> (precision auto, precision fp32, precision bf16)
AUTO = {
    (True, True, True): (("openvino", "bf16"), ("openvino", "fp32"), ("openvino", "bf16")),
    (True, True, False): (("openvino", "bf16"), ("openvino", "fp32"), ("openvino", "bf16")),
    (True, False, True): (("torch", "bf16"), ("onnxruntime", "fp32"), ("torch", "bf16")),
    (True, False, False): (("torch", "bf16"), ("torch", "fp32"), ("torch", "bf16")),
    (False, True, True): (("openvino", "fp32"), ("openvino", "fp32"), ("openvino", "bf16")),
    (False, False, True): (("onnxruntime", "fp32"), ("onnxruntime", "fp32"), ("torch", "bf16")),
    (False, False, False): (("torch", "fp32"), ("torch", "fp32"), ("torch", "bf16")),
}


@pytest.mark.parametrize(("native_bf16", "openvino", "onnxruntime"), list(AUTO))
def test_auto_resolves_as_documented(
    monkeypatch: pytest.MonkeyPatch, metric_model: DepthAnything, native_bf16: bool,
    openvino: bool, onnxruntime: bool,
) -> None:
    monkeypatch.setattr(runtimes, "cpu_has_native_bf16", lambda: native_bf16)
    _installed(monkeypatch, openvino=openvino, onnxruntime=onnxruntime)
    # a tiny model runs on torch (a conversion would cost more than it saves)
    assert runtimes.resolve_runtime("auto", "fp32", CPU, metric_model)[0] == "torch"
    monkeypatch.setattr(runtimes, "CONVERT_MIN_PARAMS", 0)  # as for ViT-S and larger
    for precision, expected in zip(("auto", "fp32", "bf16"),
                                   AUTO[native_bf16, openvino, onnxruntime], strict=True):
        got = runtimes.resolve_runtime("auto", precision, CPU, metric_model)
        assert got == expected, (precision, got)
    # torch whatever is installed: compile, a wrapped module, CUDA
    assert runtimes.resolve_runtime("auto", "fp32", CPU, metric_model, compile=True)[0] == "torch"
    wrapped = torch.nn.Sequential(metric_model)
    assert runtimes.resolve_runtime("auto", "fp32", CPU, wrapped)[0] == "torch"
    assert runtimes.resolve_runtime("auto", "auto", torch.device("cuda"), metric_model) == \
        ("torch", "bf16")


def test_explicit_runtimes_are_checked(
    monkeypatch: pytest.MonkeyPatch, metric_model: DepthAnything,
    caplog: pytest.LogCaptureFixture,
) -> None:
    resolve = runtimes.resolve_runtime
    with pytest.raises(ValueError, match="unknown runtime 'tensorrt'"):
        resolve("tensorrt", "auto", CPU, metric_model)
    with pytest.raises(ValueError, match="onnxruntime runs fp32 only"):
        resolve("onnxruntime", "bf16", CPU, metric_model)
    assert resolve("onnxruntime", "auto", CPU, metric_model) == ("onnxruntime", "fp32")
    with pytest.raises(ValueError, match="fp16 is not supported on CPU"):
        resolve("openvino", "fp16", CPU, metric_model)
    with pytest.raises(ValueError, match="compile applies to the torch runtime"):
        resolve("openvino", "fp32", CPU, metric_model, compile=True)
    with pytest.raises(ValueError, match="converts a DepthAnything model; got a Sequential"):
        resolve("openvino", "fp32", CPU, torch.nn.Sequential(metric_model))
    with pytest.raises(ValueError, match="openvino runs on the CPU"):
        resolve("openvino", "fp32", torch.device("cuda"), metric_model)
    monkeypatch.setitem(sys.modules, "openvino", None)
    with pytest.raises(ImportError, match=r"pip install 'depth_anything_fast\[openvino\]'"):
        resolve("openvino", "auto", CPU, metric_model)
    monkeypatch.setattr(runtimes, "cpu_has_native_bf16", lambda: False)
    with caplog.at_level(logging.WARNING):
        assert resolve("torch", "bf16", CPU, metric_model) == ("torch", "bf16")
    assert "without native bf16" in caplog.text


def test_cli_runtime_errors(tmp_path: Path, metric_model: DepthAnything,
                            capsys: pytest.CaptureFixture[str]) -> None:
    weights = metric_model.save_pretrained(tmp_path / "m.safetensors")
    image = tmp_path / "a.png"
    from PIL import Image

    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(image)
    assert main(["predict", "--weights", str(weights), str(image), "--outdir",
                 str(tmp_path / "out"), "--device", "cpu", "--runtime", "onnxruntime",
                 "--precision", "bf16", "--no-progress"]) == 2
    assert "onnxruntime runs fp32 only" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["predict", "--weights", str(weights), str(image), "--runtime", "tensorrt"])


# ------------------------------------------------------------------- conversions, cache
def _text_converter(
    calls: list[Path],
) -> tuple[Callable[[torch.nn.Module, Path], None], Callable[[Path], str]]:
    """A fake (convert, load) pair: writes "converted", reads it back (ValueError otherwise)."""
    def convert(model: torch.nn.Module, path: Path) -> None:
        calls.append(path)
        path.write_text("converted")

    def load(path: Path) -> str:
        text = path.read_text()
        if text != "converted":
            raise ValueError("damaged")
        return text

    return convert, load


def test_conversion_cache_hits_misses_and_damage(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, metric_model: DepthAnything,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv("DAF_CACHE_DIR", str(tmp_path))
    calls: list[Path] = []
    convert, load = _text_converter(calls)
    model = copy.deepcopy(metric_model)
    assert runtimes._converted(model, "openvino", "model", "model.xml", convert, load) == "converted"
    assert runtimes._converted(model, "openvino", "model", "model.xml", convert, load) == "converted"
    assert len(calls) == 1  # the second came from the cache
    (entry,) = (tmp_path / "openvino").iterdir()
    assert entry.name == runtimes.conversion_key(model, "openvino")
    assert sorted(p.name for p in entry.iterdir()) == ["meta.json", "model.xml"]
    # other weights: another key, converted again
    with torch.no_grad():
        model.head.scratch.output_conv2[2].bias.add_(0.25)
    assert runtimes.conversion_key(model, "openvino") != entry.name
    runtimes._converted(model, "openvino", "model", "model.xml", convert, load)
    assert len(calls) == 2 and len(list((tmp_path / "openvino").iterdir())) == 2
    # a damaged entry is reported and converted again
    (entry / "model.xml").write_text("truncat")
    with caplog.at_level(logging.WARNING):
        runtimes._converted(metric_model, "openvino", "model", "model.xml", convert, load)
    assert len(calls) == 3 and "unreadable" in caplog.text
    assert (entry / "model.xml").read_text() == "converted"


def test_conversion_cache_is_pruned_and_optional(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, metric_model: DepthAnything,
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls: list[Path] = []
    convert, load = _text_converter(calls)
    monkeypatch.setenv("DAF_CACHE_DIR", str(tmp_path / "cache"))
    keys = iter(f"{i:064x}" for i in range(100))
    monkeypatch.setattr(runtimes, "conversion_key", lambda *args: next(keys))
    for _ in range(runtimes.CACHE_ENTRIES + 2):
        runtimes._converted(metric_model, "onnxruntime", "model", "model.onnx", convert, load)
    kept = sorted(p.name for p in (tmp_path / "cache" / "onnxruntime").iterdir())
    assert len(kept) == runtimes.CACHE_ENTRIES
    assert f"{runtimes.CACHE_ENTRIES + 1:064x}" in kept  # the newest stays
    # no cache: nothing written anywhere
    monkeypatch.setenv("DAF_CACHE_DIR", "")
    assert runtimes.cache_root() is None
    assert runtimes._converted(metric_model, "onnxruntime", "model", "model.onnx", convert, load)
    assert not calls[-1].exists()  # converted in a temporary folder, removed
    # a cache that cannot be written (a file in the way): reported, converted all the same
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("DAF_CACHE_DIR", str(blocker))
    with caplog.at_level(logging.WARNING):
        assert runtimes._converted(metric_model, "onnxruntime", "model", "model.onnx",
                                   convert, load) == "converted"
    assert "cannot keep the onnxruntime conversion" in caplog.text


def test_openvino_reads_its_conversion_back_and_refuses_stale_weights(
    monkeypatch: pytest.MonkeyPatch, metric_model: DepthAnything,
) -> None:
    _skip_unless_installed("openvino")
    model = copy.deepcopy(metric_model)
    x = torch.randn(1, 3, 42, 56)
    first = Predictor(model, runtime="openvino", precision="fp32", device="cpu")

    def refuse(*args: object) -> None:
        raise AssertionError("converted again")

    monkeypatch.setattr(runtimes, "_convert_openvino", refuse)
    again = Predictor(model, runtime="openvino", precision="fp32", device="cpu")  # cached
    torch.testing.assert_close(again.predict_tensor(x), first.predict_tensor(x))
    with torch.no_grad():
        model.head.scratch.output_conv2[2].bias.add_(0.25)  # e.g. an optimiser step
    with pytest.raises(RuntimeError, match="weights changed after runtime openvino"):
        first.predict_tensor(x)
    with pytest.raises(AssertionError, match="converted again"):
        Predictor(model, runtime="openvino", precision="fp32", device="cpu")  # new weights
