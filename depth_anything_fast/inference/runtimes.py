"""The runtimes behind `Predictor`: torch, OpenVINO and ONNX Runtime, and how "auto" picks one.

Every runtime computes the model's forward pass: x (B, 3, H, W) float32, ImageNet-normalised,
H and W multiples of 14, on the Predictor's device -> (B, H, W) float32 disparity (a metric
model's depth in metres) on that device.

* "torch": the model itself, under `torch.inference_mode` and autocast (bf16 / fp16), optionally
  `torch.compile`d; any module, any device.
* "openvino" (the `openvino` extra; CPU): the model's `torch.export` program (attention kept as
  `scaled_dot_product_attention`, which OpenVINO fuses) converted with `openvino.convert_model`,
  compiled once per input shape with `INFERENCE_PRECISION_HINT` bf16 or f32.

bf16 on the CPU (both runtimes) means the ViT encoder in bf16 and the DPT head in fp32 (for
OpenVINO two compiled models: the encoder converted alone at bf16, then the head converted
alone at f32): with the head in bf16 too, the maps miss the accuracy budget (least-squares-
aligned AbsRel against fp32 on real photos, random-init ViT-S: OpenVINO's whole-model bf16
1.4e-3; with the head in fp32, 4e-4). Keeping only the head's nodes in f32 inside one bf16
OpenVINO model (their `precise` runtime attribute) is not enough: the CPU plugin still runs the
head's bilinear upsamplings in bf16 (1.1e-3 on 4 photos). The f32 head costs about a quarter
more than OpenVINO's whole-model bf16 (benchmarks/results/inference_batch_cpu_run3.md). On
CUDA bf16 autocast covers the whole model, as before.
* "onnxruntime" (the `export` extra; CPU, or CUDA with onnxruntime-gpu): the model's ONNX export
  (`models.export`) in an `InferenceSession`, fp32.

"auto" (the default) takes the fastest runtime installed whose outputs stay within the accuracy
budget (aligned AbsRel against torch fp32 below 1e-3 on real photos; README, "Performance"):
on the CPU OpenVINO when installed, else torch where the precision is bf16, else ONNX Runtime
fp32 when installed, else torch; on CUDA torch. Precision "auto" means bf16 on CUDA and on
CPUs with native bf16 (AVX512-BF16 / AMX), fp32 elsewhere (emulated bf16 is slower than fp32);
ONNX Runtime runs fp32 only. A module that is not a plain `DepthAnything` (wrapped, sharded),
a model under `CONVERT_MIN_PARAMS` parameters (it runs in milliseconds on torch, where a
conversion would cost seconds: the demo's and the tests' tiny models) and `compile=True` run
on torch.

OpenVINO and ONNX Runtime run a copy of the weights taken when the runtime is built: a model
changed afterwards in place (an optimiser step, `load_state_dict`) is refused with an error
rather than predicted with stale weights.

Conversions (seconds for ViT-S, a minute for ViT-L on 2 cores) are cached on disk under
`$DAF_CACHE_DIR` (default `$XDG_CACHE_HOME/depth_anything_fast` or
`~/.cache/depth_anything_fast`; set it to "" to keep nothing on disk), one folder per model,
named by the sha256 of the weights' values, the architecture and the converter's versions, so
changed weights never reuse an old conversion. The files are data (OpenVINO IR xml/bin, ONNX
protobuf), never pickles. The most recently used `CACHE_ENTRIES` folders per runtime are kept
(OpenVINO bf16 uses two: the encoder's and the head's).
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from depth_anything_fast.runtime import cpu_has_native_bf16

logger = logging.getLogger(__name__)

RUNTIMES = ("auto", "torch", "openvino", "onnxruntime")
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
# what each runtime's extra installs (`runtime_available`)
_MODULES = {"openvino": ("openvino",), "onnxruntime": ("onnxruntime", "onnx", "onnxscript")}
_EXTRAS = {"openvino": "openvino", "onnxruntime": "export"}
CONVERT_MIN_PARAMS = 5_000_000  # "auto" converts ViT-S (24.8M) and larger
CACHE_ENTRIES = 4  # converted models kept per runtime (a ViT-L is 1.3 GB)
OPENVINO_SHAPES = 8  # compiled input shapes kept per model (each holds a copy of the weights)
_CACHE_FORMAT = 1  # bumped when the files or the conversion change


class Runtime(Protocol):
    """A resolved runtime: `runtime(x)` with x (B, 3, H, W) float32 on the Predictor's device
    -> (B, H, W) float32 on that device."""

    name: str
    precision: str

    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...


def runtime_available(runtime: str) -> bool:
    """Whether the packages `runtime` needs are installed ("torch" always is)."""
    return all(importlib.util.find_spec(m) is not None for m in _MODULES.get(runtime, ()))


def resolve_precision(precision: str, device: torch.device, runtime: str = "torch") -> str:
    """The concrete precision of `precision` for `runtime` on `device`.

    "auto" -> "bf16" on CUDA and on CPUs with native bf16, else "fp32" (ONNX Runtime: "fp32").
    ValueError for an unknown name, fp16 on the CPU, or a reduced precision on ONNX Runtime;
    bf16 on a CPU without native bf16 is kept with a warning (emulated: slower than fp32).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; expected one of {PRECISIONS}")
    if runtime == "onnxruntime":
        if precision not in ("auto", "fp32"):
            raise ValueError(f"runtime onnxruntime runs fp32 only, not {precision}; use "
                             "--precision fp32 (or auto), or another --runtime")
        return "fp32"
    if precision == "auto":
        return "bf16" if device.type == "cuda" or cpu_has_native_bf16() else "fp32"
    if precision == "fp16" and device.type == "cpu":
        raise ValueError("precision fp16 is not supported on CPU; use bf16 or fp32")
    if precision == "bf16" and device.type == "cpu" and not cpu_has_native_bf16():
        logger.warning("precision bf16 on a CPU without native bf16 (no AVX512-BF16/AMX) is "
                       "emulated and several times slower than fp32; --precision auto picks "
                       "fp32 there")
    return precision


def convertible(model: torch.nn.Module) -> bool:
    """Whether OpenVINO / ONNX Runtime can run `model`: a `DepthAnything` whose parameters are
    plain tensors (not a wrapper, not sharded), so that it exports."""
    from depth_anything_fast.models.depth_anything import DepthAnything

    return isinstance(model, DepthAnything) and all(
        type(t.data) is torch.Tensor for t in (*model.parameters(), *model.buffers()))


def resolve_runtime(runtime: str, precision: str, device: torch.device,
                    model: torch.nn.Module, compile: bool = False) -> tuple[str, str]:
    """(runtime, precision) that `Predictor` runs: "auto" resolved as the module docstring
    says, an explicit runtime checked against the device, the model, `compile` and what is
    installed. ValueError (or ImportError naming the extra) when it cannot run."""
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r}; expected one of {RUNTIMES}")
    if runtime == "auto":
        return _auto_runtime(precision, device, model, compile)
    resolved = resolve_precision(precision, device, runtime)
    if runtime != "torch":
        _check_converted_runtime(runtime, device, model, compile)
    return runtime, resolved


def _auto_runtime(precision: str, device: torch.device, model: torch.nn.Module,
                  compile: bool) -> tuple[str, str]:
    """The fastest runtime installed for the model, device and precision (module docstring)."""
    wanted = resolve_precision(precision, device)
    small = sum(p.numel() for p in model.parameters()) < CONVERT_MIN_PARAMS
    if device.type != "cpu" or compile or small or not convertible(model):
        return "torch", wanted
    if runtime_available("openvino"):
        return "openvino", wanted
    if wanted == "fp32" and runtime_available("onnxruntime"):
        return "onnxruntime", "fp32"
    return "torch", wanted


def _check_converted_runtime(runtime: str, device: torch.device, model: torch.nn.Module,
                             compile: bool) -> None:
    """Raise unless OpenVINO / ONNX Runtime can run `model` on `device` here."""
    if compile:
        raise ValueError(f"compile applies to the torch runtime, not {runtime}")
    if not runtime_available(runtime):
        missing = [m for m in _MODULES[runtime] if importlib.util.find_spec(m) is None]
        raise ImportError(f"runtime {runtime} needs {', '.join(missing)}: pip install "
                          f"'depth_anything_fast[{_EXTRAS[runtime]}]'")
    if not convertible(model):
        raise ValueError(f"runtime {runtime} converts a DepthAnything model; got a "
                         f"{type(model).__name__} (wrapped or sharded): use --runtime torch")
    if runtime == "openvino" and device.type != "cpu":
        raise ValueError(f"runtime openvino runs on the CPU, not {device}: use --device cpu, "
                         "or --runtime torch")
    if runtime == "onnxruntime" and device.type == "cuda":
        import onnxruntime

        if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
            raise ValueError("runtime onnxruntime on CUDA needs onnxruntime-gpu (this "
                             "onnxruntime has no CUDAExecutionProvider): use --runtime torch")
    elif runtime == "onnxruntime" and device.type != "cpu":
        raise ValueError(f"runtime onnxruntime runs on the CPU or CUDA, not {device}")


def build_runtime(model: torch.nn.Module, runtime: str, precision: str, device: torch.device,
                  compile: bool = False) -> Runtime:
    """The runtime object of a `resolve_runtime` result; `model` already on `device`."""
    if runtime == "torch":
        return TorchRuntime(model, precision, device, compile)
    if runtime == "openvino":
        return OpenVINORuntime(model, precision)
    if runtime == "onnxruntime":
        return OnnxRuntime(model, device)
    raise ValueError(f"unresolved runtime {runtime!r}")


# ------------------------------------------------------------------------------------ torch
class TorchRuntime:
    """The model under `torch.inference_mode` and autocast to `precision` (off for fp32);
    `compile`: `torch.compile(dynamic=False)`, one graph per input shape."""

    name = "torch"

    def __init__(self, model: torch.nn.Module, precision: str, device: torch.device,
                 compile: bool) -> None:
        from depth_anything_fast.models.depth_anything import DepthAnything

        self.model, self.precision, self.device = model, precision, device
        split = precision != "fp32" and device.type == "cpu" and isinstance(model, DepthAnything)
        self._forward = self._split_forward if split else self._whole_forward
        if compile:
            import torch._dynamo

            # One static graph per bucket shape; keep-aspect buckets of a varied collection
            # exceed dynamo's default of 8 recompilations, after which it would fall back to eager.
            config = torch._dynamo.config
            name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
            setattr(config, name, max(getattr(config, name), 256))
            self._forward = torch.compile(self._forward, dynamic=False)

    def _whole_forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(self.device.type, dtype=DTYPES[self.precision],
                            enabled=self.precision != "fp32"):
            return self.model(x).float()

    def _split_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The encoder under autocast, the head in fp32 (see the module docstring)."""
        with torch.autocast(self.device.type, dtype=DTYPES[self.precision]):
            features = self.model.encode(x)
        return decode(self.model, [f.float() for f in features], x)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        with eval_mode(self.model), torch.inference_mode():
            return self._forward(x)


def decode(model: torch.nn.Module, features: list[torch.Tensor],
           x: torch.Tensor) -> torch.Tensor:
    """`model.decode` (the DPT head, fp32) of `features` computed from the batch `x`."""
    patch = model.config.patch_size
    return model.decode(features, x.shape[-2] // patch, x.shape[-1] // patch).float()


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """Eval mode for one forward; every submodule's own flag is restored afterwards (a training
    loop can validate with its own model)."""
    training = [m for m in model.modules() if m.training]
    model.eval()
    try:
        yield
    finally:
        for module in training:
            module.training = True  # not train(): that would also switch its children


# ------------------------------------------------------------------- converted runtimes
class _WeightsGuard:
    """Detects in-place changes of a model's tensors after a copy was converted (each in-place
    write bumps a tensor's version counter: optimiser steps, `load_state_dict`, `copy_`)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self._versions = self._read()

    def _read(self) -> list[int]:
        return [t._version for t in (*self.model.parameters(), *self.model.buffers())]

    def check(self, runtime: str) -> None:
        if self._read() != self._versions:
            raise RuntimeError(
                f"the model's weights changed after runtime {runtime} converted them: build a "
                "new Predictor to predict with the new weights (or use runtime='torch')")


class OpenVINORuntime:
    """The model converted to OpenVINO (cached on disk) and run on the CPU: for fp32 the whole
    model with `INFERENCE_PRECISION_HINT` f32; for bf16 the encoder converted alone with hint
    bf16, then the head converted alone with hint f32 (module docstring)."""

    name = "openvino"

    def __init__(self, model: torch.nn.Module, precision: str) -> None:
        import openvino

        self.model, self.precision = model, precision
        self._guard = _WeightsGuard(model)
        core = openvino.Core()

        def stage(part: str, hint: str) -> OpenVINOStage:
            converted = _converted(model, "openvino", part, f"{part}.xml", _convert_openvino,
                                   core.read_model)
            return OpenVINOStage(core, converted, hint)

        self._stages = ([stage("encoder", "bf16"), stage("head", "f32")] if precision == "bf16"
                        else [stage("model", "f32")])

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self._guard.check(self.name)
        image = x.detach().float().contiguous().numpy()
        outputs = self._stages[0]([image])
        if len(self._stages) == 2:  # encoder -> head; the head reads only the image's shape
            outputs = self._stages[1]([*outputs, image])
        return torch.from_numpy(outputs[0])


class OpenVINOStage:
    """One converted OpenVINO model, compiled for the CPU with inference precision `hint` once
    per input shapes (a static shape runs fastest); the `OPENVINO_SHAPES` most recent kept."""

    def __init__(self, core: Any, model: Any, hint: str) -> None:
        self._core, self._model = core, model
        self._config = {
            "INFERENCE_PRECISION_HINT": hint,
            "PERFORMANCE_HINT": "LATENCY",
            # as many threads as torch uses (OMP_NUM_THREADS, torch.set_num_threads)
            "INFERENCE_NUM_THREADS": torch.get_num_threads(),
        }
        self._compiled: collections.OrderedDict[tuple, Any] = collections.OrderedDict()

    def _request(self, shapes: tuple[tuple[int, ...], ...]) -> Any:
        request = self._compiled.get(shapes)
        if request is not None:
            self._compiled.move_to_end(shapes)
            return request
        model = self._model.clone()
        model.reshape({model.input(i): list(shape) for i, shape in enumerate(shapes)})
        request = self._core.compile_model(model, "CPU", self._config).create_infer_request()
        self._compiled[shapes] = request
        if len(self._compiled) > OPENVINO_SHAPES:
            self._compiled.popitem(last=False)
        return request

    def __call__(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        """The model's outputs (float32 copies the request no longer writes into) for its
        inputs in order (float32, C-contiguous; read in place)."""
        request = self._request(tuple(a.shape for a in inputs))
        outputs = request.infer(dict(enumerate(inputs)), share_inputs=True)
        return [outputs[i] for i in range(len(outputs))]


class OnnxRuntime:
    """The model's ONNX export (cached on disk) in an ONNX Runtime session, fp32, on the CPU
    or on CUDA (CUDAExecutionProvider; inputs and outputs go through host memory)."""

    name = "onnxruntime"
    precision = "fp32"

    def __init__(self, model: torch.nn.Module, device: torch.device) -> None:
        import onnxruntime

        self.device = device
        self._guard = _WeightsGuard(model)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        providers = ["CPUExecutionProvider"]
        if device.type == "cuda":
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": device.index or 0}))

        def session(path: Path) -> Any:
            return onnxruntime.InferenceSession(str(path), options, providers=providers)

        self._session = _converted(model, "onnxruntime", "model", "model.onnx", _convert_onnx,
                                   session)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self._guard.check(self.name)
        x = x.detach().float().cpu().contiguous()
        (out,) = self._session.run(None, {"x": x.numpy()})
        return torch.from_numpy(out).to(self.device)


def _convert_openvino(model: torch.nn.Module, path: Path) -> None:
    """Write the part of `model` that the file's name says (model.xml, encoder.xml, head.xml:
    `models.export.export_program`'s parts) as OpenVINO IR `path` (.xml, weights in the .bin
    beside it, float32)."""
    import openvino

    from depth_anything_fast.models.export import export_program

    program = export_program(model, attention="sdpa", part=path.stem)
    converted = openvino.convert_model(program)
    openvino.save_model(converted, str(path), compress_to_fp16=False)


def _convert_onnx(model: torch.nn.Module, path: Path) -> None:
    """Write `model`'s ONNX export to `path`."""
    from depth_anything_fast.models.export import export_program, save_export

    save_export(export_program(model), path, "onnx")


# ------------------------------------------------------------------------ on-disk cache
def cache_root() -> Path | None:
    """Where converted models are kept: `$DAF_CACHE_DIR` ("" = nowhere), else
    `$XDG_CACHE_HOME/depth_anything_fast`, else `~/.cache/depth_anything_fast`."""
    configured = os.environ.get("DAF_CACHE_DIR")
    if configured is not None:
        return Path(configured) if configured else None
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "depth_anything_fast"


def conversion_key(model: torch.nn.Module, runtime: str, part: str = "model") -> str:
    """sha256 naming a conversion: the weights' values, the architecture, the runtime, the part
    converted ("model", "encoder" or "head") and the versions of the packages that convert."""
    from depth_anything_fast.models.weights import weights_fingerprint

    packages = ["torch", *_MODULES[runtime]]
    versions = {name: _version(name) for name in packages}
    config = model.config.to_dict()
    described = json.dumps({"format": _CACHE_FORMAT, "runtime": runtime, "part": part,
                            "config": config, "versions": versions}, sort_keys=True)
    digest = hashlib.sha256(described.encode())
    digest.update(weights_fingerprint(model).encode())
    return digest.hexdigest()


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "?"


def _converted(model: torch.nn.Module, runtime: str, part: str, filename: str,
               convert: Callable[[torch.nn.Module, Path], None],
               load: Callable[[Path], Any]) -> Any:
    """`load(path)` of `model` (its `part`) converted by `convert(model, path)`: from the cache
    when it holds it, else converted (and kept in the cache where one is configured and
    writable; a cache that cannot be written is reported and skipped)."""
    root = cache_root()
    key = conversion_key(model, runtime, part) if root is not None else ""
    entry = root / runtime / key if root is not None else None
    if entry is not None and (entry / filename).is_file():
        try:
            loaded = load(entry / filename)
        except Exception as err:  # a truncated or damaged entry: convert again
            logger.warning("cached %s conversion %s unreadable (%s): converting again",
                           runtime, entry, err)
            shutil.rmtree(entry, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                os.utime(entry)  # most recently used
            return loaded
    logger.info("converting the model for %s (done once per weights; cached in %s)", runtime,
                entry.parent if entry is not None else "memory only")
    if entry is not None:
        with contextlib.suppress(OSError):
            return load(_store(model, entry, filename, convert))
    with tempfile.TemporaryDirectory(prefix="daf-convert-") as tmp:
        path = Path(tmp) / filename
        convert(model, path)
        return load(path)  # both runtimes read the files in full (or map them) here


def _store(model: torch.nn.Module, entry: Path, filename: str,
           convert: Callable[[torch.nn.Module, Path], None]) -> Path:
    """Convert into a temporary folder beside `entry`, then rename it to `entry` (another
    process that got there first wins; its files are the same). Returns the file's path.
    OSError (reported) when the cache cannot be written."""
    tmp: Path | None = None
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=entry.parent))
        convert(model, tmp / filename)
        (tmp / "meta.json").write_text(json.dumps(
            {"runtime": entry.parent.name, "file": filename, "format": _CACHE_FORMAT,
             "config": model.config.to_dict()}, indent=1) + "\n")
        try:
            tmp.rename(entry)
            tmp = None
        except OSError:
            if not (entry / filename).is_file():
                raise
        _prune(entry.parent, keep=entry)
        return entry / filename
    except OSError as err:
        logger.warning("cannot keep the %s conversion in %s (%s); converting in memory",
                       entry.parent.name, entry.parent, err)
        raise
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def _prune(folder: Path, keep: Path) -> None:
    """Remove all but the `CACHE_ENTRIES` most recently used entries of `folder`."""
    entries = sorted((p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")),
                     key=lambda p: p.stat().st_mtime, reverse=True)
    for old in entries[CACHE_ENTRIES:]:
        if old != keep:
            shutil.rmtree(old, ignore_errors=True)
