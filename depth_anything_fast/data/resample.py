"""Exact resampling of decoded images: the official preprocessing's filter on a crop box.

`transforms.resample_bicubic` (cv2.INTER_CUBIC: a = -0.75, no antialiasing, float) on
the box from `geometry`, then ImageNet normalisation. The PIL backend resamples every view this
way (in its thread pool; for inference batches on a CUDA device it only decodes), and DALI's
inference batches are only decoded: `BatchResampler` resamples those on the loader's device. So
inference inputs equal `transforms.preprocess` whatever the backend.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

from depth_anything_fast.transforms import normalise_rgb, resample_bicubic

from .geometry import CropBox


def resample_box(rgb: torch.Tensor, box: CropBox) -> torch.Tensor:
    """(H, W, 3) decoded image (uint8, any device) -> (out_h, out_w, 3) float32 in 0..255
    units, not rounded or clamped."""
    return resample_bicubic(
        rgb, (box.out_h, box.out_w), (box.y0, box.x0, box.y1, box.x1), flip=box.flip
    )


class BatchResampler:
    """Decoded images -> one network batch on `device`, each resampled to its box.

    On CUDA the copies and filters run on a stream of the resampler's own and a call returns
    once they are done: called from a loader thread, they overlap the model's kernels instead
    of queueing between them on the consumer's stream. The batch is then ready for any stream
    (and recorded on the caller's current stream, so the allocator keeps its memory until the
    work queued there is done).
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None

    def __call__(self, images: Iterable[torch.Tensor], boxes: Sequence[CropBox]) -> torch.Tensor:
        """images: (H, W, 3) uint8 each, on any device (pinned for an asynchronous copy); an
        iterator is consumed on the resampler's stream. Returns (B, 3, h, w) float32
        normalised on `device`; all boxes must have one output size."""

        def resample() -> torch.Tensor:
            return torch.stack([
                normalise_rgb(resample_box(rgb.to(self.device, non_blocking=True), box))
                for rgb, box in zip(images, boxes, strict=True)
            ])

        if self.stream is None:
            return resample()
        consumer = torch.cuda.current_stream(self.device)
        with torch.cuda.stream(self.stream):
            batch = resample()
        self.stream.synchronize()
        batch.record_stream(consumer)
        return batch
