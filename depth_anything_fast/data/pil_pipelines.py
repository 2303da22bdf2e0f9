"""PIL fallback backend (no DALI, e.g. macOS): the same jobs, geometry and perturbations.

PIL only decodes. Resampling is `resample.resample_box`, the resampler of the official
preprocessing (`preprocess`) applied to the box from `geometry` (the mapping DALI applies), so
an inference batch equals `preprocess` of each image to float rounding. Work runs in a thread
pool: PIL and torch release the GIL while decoding and resampling.

With `resample_on_device` (inference batches for a CUDA device) the pool only decodes, into
pinned memory, and the images are copied and resampled on the device on a stream of the
resampler's own (`resample.BatchResampler`): resampling a 3 MP photo costs more CPU time than
decoding it, and on the GPU the copies and filters overlap the model's work.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import torch

from depth_anything_fast.transforms import as_tensor, normalise_rgb

from .augment import apply_strong
from .decode import DecodeError, ErrorCallback, decode_rgb, report_error
from .jobs import ImageJob
from .resample import BatchResampler, resample_box


def process(job: ImageJob) -> list[torch.Tensor]:
    """[clean (3, h, w)[, strong (3, h, w)]] float32 normalised for one job. Raises
    DecodeError."""
    rgb = resample_box(as_tensor(decode_rgb(job.encoded, job.path)), job.box)
    views = [normalise_rgb(rgb)]
    if job.strong is not None:
        # the perturbation works on uint8, as DALI's does on its uint8 resize output
        rgb8 = rgb.round_().clamp_(0, 255).to(torch.uint8).numpy()
        views.append(normalise_rgb(torch.from_numpy(apply_strong(rgb8, job.strong))))
    return views


def decode_only(job: ImageJob, pin: bool) -> torch.Tensor:
    """(H, W, 3) uint8 decoded image, in pinned memory when `pin`. Raises DecodeError."""
    rgb = decode_rgb(job.encoded, job.path)
    if not pin:
        return as_tensor(rgb)
    pinned = torch.empty(rgb.shape, dtype=torch.uint8, pin_memory=True)
    pinned.numpy()[...] = rgb  # one copy, also from PIL's read-only array
    return pinned


class PilRunner:
    """Same interface as `DaliRunner`: `submit(jobs)`, `collect()`, `free_slots`.

    `resample_on_device`: decode in the pool, resample on `device` in `collect` with a
    `BatchResampler` (jobs without a strong view only).
    """

    def __init__(
        self, *, num_threads: int, device: torch.device, prefetch: int = 2,
        on_error: ErrorCallback | None = None, resample_on_device: bool = False,
    ) -> None:
        self.pool = ThreadPoolExecutor(max(1, num_threads), thread_name_prefix="daf-pil")
        self.device = device
        self.prefetch = prefetch
        self.on_error = on_error
        self.resampler = BatchResampler(device) if resample_on_device else None
        self.in_flight: deque[tuple[list[ImageJob], list[Future]]] = deque()

    @property
    def free_slots(self) -> int:
        return self.prefetch - len(self.in_flight)

    def submit(self, jobs: Sequence[ImageJob]) -> None:
        jobs = list(jobs)
        if self.resampler is not None:
            if any(j.strong is not None for j in jobs):
                raise ValueError("resample_on_device does not make strong views")
            pin = self.device.type == "cuda"
            futures = [self.pool.submit(decode_only, j, pin) for j in jobs]
        else:
            futures = [self.pool.submit(process, j) for j in jobs]
        self.in_flight.append((jobs, futures))

    def collect(self) -> tuple[list[torch.Tensor], list[ImageJob]] | None:
        """Oldest batch: ([clean (B,3,h,w)[, strong]], its jobs); None if nothing decoded."""
        jobs, futures = self.in_flight.popleft()
        kept, results = [], []
        for job, fut in zip(jobs, futures):
            try:
                results.append(fut.result())
                kept.append(job)
            except DecodeError as err:
                report_error(err.path, err.reason, self.on_error)
        if not kept:
            return None
        if self.resampler is not None:
            return [self.resampler(results, [j.box for j in kept])], kept
        stacked = [torch.stack(v) for v in zip(*results)]
        return [t.to(self.device) for t in stacked], kept

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
