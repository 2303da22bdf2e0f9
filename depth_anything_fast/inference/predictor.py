"""Batched, mixed-precision inference with a `DepthAnything` model.

The forward pass runs on one of the runtimes of `inference.runtimes` (torch, OpenVINO, ONNX
Runtime); "auto", the default, takes the fastest one installed that is exact enough, and
precision "auto" bf16 where the hardware computes it natively (CUDA, CPUs with AVX512-BF16 or
AMX), fp32 elsewhere. Pass `runtime` / `precision` to choose.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from depth_anything_fast.inference.runtimes import DTYPES, build_runtime, resolve_runtime
from depth_anything_fast.transforms import RESIZE_MODES, preprocess, resize_prediction


def resolve_device(device: str | torch.device | None) -> torch.device:
    """`device`, or the first CUDA device when available, else CPU. ValueError for a device
    this torch cannot use (a CUDA device on a CPU-only build or without a visible GPU)."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as err:
        raise ValueError(f"--device {device!r}: not a torch device ({err})") from None
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            build = "this torch build has no CUDA support" if torch.version.cuda is None \
                else "no CUDA GPU is visible"
            raise ValueError(f"--device {device}: {build}; use --device cpu (or leave it out)")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise ValueError(f"--device {device}: only {torch.cuda.device_count()} CUDA "
                             "device(s) are visible")
    return resolved


class Predictor:
    """Runs a `DepthAnything` model on batches.

    Args:
        model: a `DepthAnything`, moved to `device`. Each forward runs in eval mode under
            `torch.inference_mode`; the model's train/eval flags and `requires_grad` are left
            as the caller set them (a training loop can validate with its own model).
        batch_size: images per forward pass in `predict`.
        precision: "auto" (bf16 on CUDA and on CPUs with native bf16, else fp32), "bf16",
            "fp16" (CUDA only) or "fp32".
        compile: wrap the model in `torch.compile(dynamic=False)`; one graph per bucket shape
            (torch runtime only).
        input_size: shorter-side target of the resize rule (multiple of 14 after resizing).
        resize: "keep-aspect" (official lower-bound rule) or "square" (input_size x input_size).
        device: torch device; default CUDA when available.
        runtime: "auto" | "torch" | "openvino" | "onnxruntime" (`inference.runtimes`: how
            "auto" resolves). OpenVINO and ONNX Runtime convert the weights once (cached on
            disk) and refuse to run after the model's weights were changed in place.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        batch_size: int = 8,
        precision: str = "auto",
        compile: bool = False,
        input_size: int = 518,
        resize: str = "keep-aspect",
        device: str | torch.device | None = None,
        runtime: str = "auto",
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if resize not in RESIZE_MODES:
            raise ValueError(f"resize must be one of {RESIZE_MODES}, got {resize!r}")
        self.device = resolve_device(device)
        self.runtime, self.precision = resolve_runtime(runtime, precision, self.device, model,
                                                       compile)
        self.batch_size = batch_size
        self.input_size = input_size
        self.resize = resize
        self.model = model.to(self.device)
        self._run = build_runtime(self.model, self.runtime, self.precision, self.device, compile)

    @property
    def dtype(self) -> torch.dtype:
        """Compute dtype (float32: full precision)."""
        return DTYPES[self.precision]

    def predict_tensor(self, batch: torch.Tensor) -> torch.Tensor:
        """(B, 3, h, w) ImageNet-normalised float, h and w multiples of 14 -> (B, h, w) float32.

        The result stays on `self.device` (so callers can overlap the copy back with work).
        A CPU input is copied with a pinned, non-blocking transfer when the device is CUDA.
        """
        if batch.ndim != 4 or batch.shape[1] != 3:
            raise ValueError(f"expected a (B, 3, H, W) batch, got shape {tuple(batch.shape)}")
        patch = 14
        if batch.shape[-2] % patch or batch.shape[-1] % patch:
            raise ValueError(f"H and W must be multiples of {patch}, got {tuple(batch.shape[-2:])}")
        if self.device.type == "cuda" and batch.device.type == "cpu" and not batch.is_pinned():
            batch = batch.pin_memory()
        x = batch.to(self.device, dtype=torch.float32, non_blocking=True)
        return self._run(x)

    def predict(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """RGB uint8 images (H, W, 3), any sizes -> disparity float32 (H, W) each, original size.

        Images are preprocessed with the model's own transform, grouped by network shape (so each
        batch has one shape and no padding), run `batch_size` at a time, and resized back with
        `transforms.resize_prediction` (bilinear, align_corners=True). Output order matches input order.
        """
        arrays = [np.asarray(im) for im in images]
        inputs = [preprocess(a, self.input_size, resize=self.resize) for a in arrays]
        buckets: dict[tuple[int, int], list[int]] = {}
        for index, x in enumerate(inputs):
            buckets.setdefault((int(x.shape[-2]), int(x.shape[-1])), []).append(index)
        results: list[np.ndarray | None] = [None] * len(inputs)
        for indices in buckets.values():
            for start in range(0, len(indices), self.batch_size):
                chunk = indices[start : start + self.batch_size]
                out = self.predict_tensor(torch.cat([inputs[i] for i in chunk]))
                maps = original_size_maps(out, [arrays[i].shape[:2] for i in chunk])
                for i, disparity in zip(chunk, maps, strict=True):
                    results[i] = disparity
        return [r for r in results if r is not None]


def original_size_maps(out: torch.Tensor, sizes: Sequence[tuple[int, int]]) -> list[np.ndarray]:
    """(B, h, w) float32 predictions (any device) -> B float32 numpy maps, row i resized to
    `sizes[i]` = (H, W) with `transforms.resize_prediction`.

    One resize and one device->host copy (a sync on CUDA) per distinct size, not per image.
    """
    rows_of_size: dict[tuple[int, int], list[int]] = {}
    for row, size in enumerate(sizes):
        rows_of_size.setdefault((int(size[0]), int(size[1])), []).append(row)
    results: list[np.ndarray] = [np.empty(0)] * len(sizes)
    for size, rows in rows_of_size.items():
        maps = resize_prediction(out[rows], size).cpu().numpy()
        for row, disparity in zip(rows, maps, strict=True):
            results[row] = disparity
    return results


MISSING_WEIGHTS_MESSAGE = """\
no weights given: pass --weights PATH or a Hugging Face Hub repo id, e.g.
--weights depth-anything/Depth-Anything-V2-Small (needs the `hub` extra).
Official checkpoints: Depth Anything V2 on the Hugging Face hub, e.g.
  https://huggingface.co/depth-anything/Depth-Anything-V2-Small/resolve/main/depth_anything_v2_vits.pth
  (also -Base/vitb, -Large/vitl; V1: https://huggingface.co/LiheYoung/depth_anything_vitl14 and
  https://github.com/LiheYoung/Depth-Anything, https://github.com/DepthAnything/Depth-Anything-V2).
--weights accepts those .pth files directly, or a converted checkpoint; to convert one to this
project's format (safetensors + JSON config) run:
  depth-anything-fast convert --help"""


def metric_max_depth(model: torch.nn.Module) -> float | None:
    """`max_depth` of a metric model (its outputs are depth in metres), None for a relative
    one (outputs are disparity) or a module without a `DepthAnythingConfig`."""
    config = getattr(model, "config", None)
    return float(config.max_depth) if getattr(config, "metric", False) else None


def load_model(
    weights: str | torch.nn.Module | None,
    *,
    version: str | None = None,
    metric: bool | None = None,
    max_depth: float | None = None,
) -> torch.nn.Module:
    """A model from `weights` (returned as is if already a module), via
    `DepthAnything.from_pretrained(weights, ...)` with those of the architecture hints
    `version`, `metric`, `max_depth` that are not None (for checkpoints that do not say). None
    raises ValueError naming where to get official checkpoints."""
    if isinstance(weights, torch.nn.Module):
        return weights
    if weights is None or str(weights) == "":
        raise ValueError(MISSING_WEIGHTS_MESSAGE)
    from depth_anything_fast.models import DepthAnything

    hints = {k: v for k, v in (("version", version), ("metric", metric),
                               ("max_depth", max_depth)) if v is not None}
    return DepthAnything.from_pretrained(weights, **hints)  # type: ignore[arg-type]
