"""PIL fallback backend (no DALI, e.g. macOS): the same jobs, geometry and perturbations.

Resampling uses `Image.resize(box=...)` with the box from `geometry`, i.e. exactly the mapping
DALI applies; PIL's bicubic filter antialiases when downscaling (DALI's does not), so pixel
values differ slightly while positions are identical. Work runs in a thread pool: PIL releases
the GIL while decoding and resampling.
"""

from __future__ import annotations

import io
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import torch

from .augment import apply_strong
from .decode import DecodeError, ErrorCallback, check_encoded, report_error, to_rgb
from .jobs import ImageJob

_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1) * 255
_STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1) * 255


def resample(job: ImageJob) -> np.ndarray:
    """Decode `job.encoded` and resample `job.box` -> (out_h, out_w, 3) uint8. Raises DecodeError."""
    from PIL import Image

    reason = check_encoded(job.encoded)
    if reason is not None:
        raise DecodeError(job.path, reason)
    box = job.box
    try:
        with Image.open(io.BytesIO(job.encoded)) as img:
            out = to_rgb(img).resize(
                (box.out_w, box.out_h), Image.Resampling.BICUBIC,
                box=(box.x0, box.y0, box.x1, box.y1),
            )
    except Exception as exc:
        raise DecodeError(job.path, f"decode failed ({type(exc).__name__}: {exc})") from exc
    if box.flip:
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return np.array(out)  # writable, for torch.from_numpy


def normalise(rgb: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, H, W) float32 ImageNet-normalised."""
    x = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).float()
    return x.sub_(_MEAN).div_(_STD)


def process(job: ImageJob) -> list[torch.Tensor]:
    """[clean (3, h, w)[, strong (3, h, w)]] float32 normalised for one job."""
    rgb = resample(job)
    views = [normalise(rgb)]
    if job.strong is not None:
        views.append(normalise(apply_strong(rgb, job.strong)))
    return views


class PilRunner:
    """Same interface as `DaliRunner`: `submit(jobs)`, `collect()`, `free_slots`."""

    def __init__(
        self, *, num_threads: int, device: torch.device, prefetch: int = 2,
        on_error: ErrorCallback | None = None,
    ) -> None:
        self.pool = ThreadPoolExecutor(max(1, num_threads), thread_name_prefix="daf-pil")
        self.device = device
        self.prefetch = prefetch
        self.on_error = on_error
        self.in_flight: deque[tuple[list[ImageJob], list[Future]]] = deque()

    @property
    def free_slots(self) -> int:
        return self.prefetch - len(self.in_flight)

    def submit(self, jobs: Sequence[ImageJob]) -> None:
        jobs = list(jobs)
        self.in_flight.append((jobs, [self.pool.submit(process, j) for j in jobs]))

    def collect(self) -> tuple[list[torch.Tensor], list[ImageJob]] | None:
        """Oldest batch: ([clean (B,3,h,w)[, strong]], its jobs); None if nothing decoded."""
        jobs, futures = self.in_flight.popleft()
        kept, views = [], []
        for job, fut in zip(jobs, futures):
            try:
                views.append(fut.result())
                kept.append(job)
            except DecodeError as err:
                report_error(err.path, err.reason, self.on_error)
        if not kept:
            return None
        stacked = [torch.stack(v) for v in zip(*views)]
        return [t.to(self.device) for t in stacked], kept

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
