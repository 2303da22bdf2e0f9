"""NVIDIA DALI graphs: decode, resample (resize + crop + flip in one op), perturb, normalise.

One graph for CPU (`device_id=None`: `decoders.image` on the CPU) and GPU (`device="mixed"`:
nvJPEG decode, everything after it on the GPU). The host feeds, per sample, the encoded bytes
and the geometry/photometric parameters computed by `geometry`/`augment` (so the PIL backend can
apply the same ones); DALI does the pixel work with its own threads.

Training views (`resample=True`) are resized by DALI: bicubic without antialiasing, as the
official cv2.INTER_CUBIC, but DALI's cubic is Catmull-Rom (a = -0.5, cv2 uses -0.75) and its
output is rounded to uint8, a difference that does not matter under random crops and
perturbations. Inference batches (`resample=False`) must match the official preprocessing, so
DALI only decodes and `resample.BatchResampler` resamples each image on the same device: equal to
`transforms.preprocess` to float rounding.

Only this module imports `nvidia.dali`.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch

from .augment import CONTRAST_CENTER, gaussian_kernel
from .decode import DecodeError, ErrorCallback, decode_rgb, report_error
from .geometry import dali_roi
from .jobs import ImageJob
from .resample import BatchResampler

logger = logging.getLogger(__name__)

_MEAN = [0.485 * 255, 0.456 * 255, 0.406 * 255]
_STD = [0.229 * 255, 0.224 * 255, 0.225 * 255]
_STRONG_INPUTS = ("brightness", "contrast", "saturation", "hue")


def dali_available() -> bool:
    """True when `nvidia.dali` can be imported."""
    try:
        import nvidia.dali  # noqa: F401
    except ImportError:
        return False
    return True


def build_pipeline(
    *, batch_size: int, num_threads: int, device_id: int | None, strong: bool, prefetch: int,
    resample: bool = True,
):
    """Build the graph. Outputs: clean image (B, 3, h, w) float32 normalised [, strong view];
    with `resample=False` (no `strong`) only the decoded images, (H, W, 3) uint8 each.

    External inputs per sample: "encoded" uint8 (n,), and unless `resample=False`:
    "roi_start"/"roi_end" float32 (2,) in
    source pixels (y, x) (a reversed x range mirrors), "size" float32 (2,) output (h, w), and for
    `strong` the scalars brightness, contrast, saturation, hue of `StrongParams` and the blur
    kernels "blur_h" (1, taps) / "blur_v" (taps, 1) float32 from `gaussian_kernel(sigma)`.
    """
    from nvidia.dali import Pipeline, fn, types

    if strong and not resample:
        raise ValueError("the strong view needs resample=True")
    pipe = Pipeline(
        batch_size=batch_size,
        num_threads=num_threads,
        device_id=device_id,
        prefetch_queue_depth=prefetch,
        exec_async=True,
        exec_pipelined=True,
    )
    with pipe:
        encoded = fn.external_source(name="encoded", dtype=types.UINT8, ndim=1)
        image = fn.decoders.image(
            encoded, device="cpu" if device_id is None else "mixed", output_type=types.RGB
        )
        if not resample:
            pipe.set_outputs(image)
            pipe.build()
            return pipe
        roi_start = fn.external_source(name="roi_start", dtype=types.FLOAT, ndim=1)
        roi_end = fn.external_source(name="roi_end", dtype=types.FLOAT, ndim=1)
        size = fn.external_source(name="size", dtype=types.FLOAT, ndim=1)
        image = fn.resize(
            image, size=size, roi_start=roi_start, roi_end=roi_end, roi_relative=False,
            interp_type=types.INTERP_CUBIC, antialias=False,
        )
        outputs = [_normalise(fn, types, image)]
        if strong:
            p = {n: fn.external_source(name=n, dtype=types.FLOAT, ndim=0) for n in _STRONG_INPUTS}
            x = fn.brightness_contrast(
                image, brightness=p["brightness"], contrast=p["contrast"],
                contrast_center=CONTRAST_CENTER, dtype=types.UINT8,
            )
            x = fn.hsv(x, hue=p["hue"], saturation=p["saturation"], dtype=types.UINT8)
            blur_h = fn.external_source(name="blur_h", dtype=types.FLOAT, ndim=2)
            blur_v = fn.external_source(name="blur_v", dtype=types.FLOAT, ndim=2)
            x = fn.filter(fn.filter(x, blur_h), blur_v)  # separable Gaussian, reflect-101 border
            outputs.append(_normalise(fn, types, x))
        pipe.set_outputs(*outputs)
    pipe.build()
    return pipe


def _normalise(fn, types, image):
    return fn.crop_mirror_normalize(
        image, dtype=types.FLOAT, output_layout="CHW", mean=_MEAN, std=_STD
    )


def _to_torch(tensor_list, device: torch.device) -> torch.Tensor:
    """Dense DALI TensorList -> torch tensor on `device` (a copy: DALI reuses its buffers)."""
    if device.type == "cuda":
        from nvidia.dali.plugin.pytorch import feed_ndarray

        dense = tensor_list.as_tensor()
        out = torch.empty(dense.shape(), dtype=torch.float32, device=device)
        feed_ndarray(dense, out, cuda_stream=torch.cuda.current_stream(device))
        return out
    return torch.from_numpy(tensor_list.as_array())  # as_array() returns a fresh copy


def _decoded(tensor_list, n: int, device: torch.device) -> Iterator[torch.Tensor]:
    """DALI's decoded images as (H, W, 3) uint8 tensors on `device`, one at a time (a CUDA
    copy is queued on the stream current when the next one is taken)."""
    if device.type == "cuda":
        from nvidia.dali.plugin.pytorch import feed_ndarray
    for k in range(n):
        if device.type == "cuda":
            sample = tensor_list[k]
            rgb = torch.empty(sample.shape(), dtype=torch.uint8, device=device)
            feed_ndarray(sample, rgb, cuda_stream=torch.cuda.current_stream(device))
            yield rgb
        else:
            yield torch.from_numpy(tensor_list.at(k))  # at() returns a fresh copy


class DaliRunner:
    """Feeds batches of `ImageJob` to a pipeline with up to `prefetch` batches in flight.

    `submit(jobs)` then `collect()` (FIFO) -> (tensors, jobs actually in the batch). DALI's first
    `schedule_run` of a pipelined executor runs `prefetch` iterations at once, so the first
    batches are fed before it; an epoch shorter than that is padded with copies whose outputs are
    discarded. When DALI fails on a batch (a file that passed the host checks but does not
    decode), the pipeline is rebuilt, the culprit files are found (a PIL decode, then DALI's
    decoder on each remaining file alone), reported and dropped, and the in-flight batches are
    resubmitted. A failure that no file explains is raised.
    """

    def __init__(
        self, *, batch_size: int, num_threads: int, device: torch.device, strong: bool,
        prefetch: int = 2, on_error: ErrorCallback | None = None, resample: bool = True,
    ) -> None:
        self.device = device
        device_id = None
        if device.type == "cuda":
            device_id = device.index if device.index is not None else torch.cuda.current_device()
        self._build: Callable[[], object] = lambda: build_pipeline(
            batch_size=batch_size, num_threads=num_threads, device_id=device_id, strong=strong,
            prefetch=prefetch, resample=resample,
        )
        # Inference batches: DALI decodes, the official filter resamples on `device`.
        self.resampler = None if resample else BatchResampler(device)
        self.device_id = device_id
        self.pipe = self._build()
        self.primed = False
        self.prefetch = prefetch
        self.strong = strong
        self.on_error = on_error
        # (jobs, discard) per fed batch, oldest first.
        self.in_flight: deque[tuple[list[ImageJob], bool]] = deque()

    @property
    def free_slots(self) -> int:
        return self.prefetch - len(self.in_flight)

    def submit(self, jobs: Sequence[ImageJob], *, discard: bool = False) -> None:
        """Queue one batch (1..batch_size jobs with the same output size)."""
        if not jobs:
            raise ValueError("cannot submit an empty batch")
        jobs = list(jobs)
        feeds: dict[str, list[np.ndarray]] = {
            "encoded": [np.frombuffer(j.encoded, np.uint8) for j in jobs]
        }
        if self.resampler is None:
            feeds["size"] = [np.array([j.box.out_h, j.box.out_w], np.float32) for j in jobs]
            feeds["roi_start"], feeds["roi_end"] = [], []
            for j in jobs:
                start, end = dali_roi(j.box)
                feeds["roi_start"].append(start)
                feeds["roi_end"].append(end)
        if self.strong:
            for name in _STRONG_INPUTS:
                feeds[name] = [np.float32(getattr(j.strong, name)) for j in jobs]
            kernels = [gaussian_kernel(j.strong.sigma) for j in jobs]
            feeds["blur_h"] = [k[None, :] for k in kernels]
            feeds["blur_v"] = [k[:, None] for k in kernels]
        for name, values in feeds.items():
            self.pipe.feed_input(name, values)
        self.in_flight.append((jobs, discard))
        if self.primed:
            self.pipe.schedule_run()
        elif len(self.in_flight) == self.prefetch:
            self.pipe.schedule_run()  # runs all `prefetch` fed iterations
            self.primed = True

    def _prime(self) -> None:
        while not self.primed:
            self.submit(self.in_flight[-1][0], discard=True)

    def collect(self) -> tuple[list[torch.Tensor], list[ImageJob]] | None:
        """Oldest submitted batch: ([clean (B,3,h,w)[, strong]], its jobs), or None when every
        file of the remaining in-flight batches turned out undecodable."""
        while self.in_flight:
            self._prime()
            try:
                outputs = self.pipe.outputs()
            except RuntimeError as exc:
                # A critical error invalidates the pipeline: rebuild, drop what does not decode.
                self._recover(exc)
                continue
            jobs, discard = self.in_flight.popleft()
            if discard:
                continue
            if self.resampler is not None:
                images = _decoded(outputs[0], len(jobs), self.device)
                return [self.resampler(images, [j.box for j in jobs])], jobs
            return [_to_torch(o, self.device) for o in outputs], jobs
        return None

    def _recover(self, exc: Exception) -> None:
        logger.warning("DALI failed on a batch (%s); rebuilding and checking files", exc)
        pending = [jobs for jobs, discard in self.in_flight if not discard]
        self.in_flight.clear()
        self.pipe = self._build()
        self.primed = False
        checker = None
        dropped = 0
        for jobs in pending:
            good = []
            for j in jobs:
                reason = _pil_reason(j)
                if reason is None:  # PIL decodes it: ask DALI's decoder alone, file by file
                    checker = checker or _build_decoder(self.device_id)
                    reason = _dali_reason(checker, j)
                    if reason is not None:
                        checker = None  # a failed pipeline cannot be reused
                if reason is None:
                    good.append(j)
                else:
                    report_error(j.path, reason, self.on_error)
                    dropped += 1
            if good:
                self.submit(good)
        if dropped == 0:
            raise RuntimeError("DALI failed on a batch whose files all decode") from exc


def _pil_reason(job: ImageJob) -> str | None:
    try:
        decode_rgb(job.encoded, job.path)
    except DecodeError as err:
        return err.reason
    return None


def _build_decoder(device_id: int | None):
    """One-sample decode-only pipeline used to find files that DALI alone cannot decode."""
    from nvidia.dali import Pipeline, fn, types

    pipe = Pipeline(batch_size=1, num_threads=1, device_id=device_id, prefetch_queue_depth=1,
                    exec_async=False, exec_pipelined=False)
    with pipe:
        encoded = fn.external_source(name="encoded", dtype=types.UINT8, ndim=1)
        pipe.set_outputs(fn.decoders.image(
            encoded, device="cpu" if device_id is None else "mixed", output_type=types.RGB
        ))
    pipe.build()
    return pipe


def _dali_reason(pipe, job: ImageJob) -> str | None:
    pipe.feed_input("encoded", [np.frombuffer(job.encoded, np.uint8)])
    try:
        pipe.run()
    except RuntimeError as exc:
        detail = str(exc).strip().splitlines()
        return f"DALI decoder failed ({detail[-1] if detail else type(exc).__name__})"
    return None
