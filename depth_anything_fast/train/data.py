"""Training batches per stage, on top of ``depth_anything_fast.data`` loaders.

Two stage-specific variants of the labelled loader extend it without changing its sampling,
geometry or backends:

* ``PseudoLabelledLoader``: pseudo-labelled images (a pseudo-label CLI output folder) with the
  clean view, the pseudo-label cropped like it, and the strongly perturbed view of the same
  crop (``"strong"``), for the student's unlabelled loss.
* ``MetricLabelledLoader``: labelled images with metric depth in metres (``"depth"``) instead of
  the per-image normalised disparity, for metric fine-tuning.

``BatchStream`` iterates such a loader over epochs and can resume at (epoch, batch).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from depth_anything_fast.data.augment import sample_strong
from depth_anything_fast.data.decode import probe
from depth_anything_fast.data.geometry import crop_nearest, sample_rng
from depth_anything_fast.data.loaders import LabelledLoader
from depth_anything_fast.data.sources import read_raw_target, target_to_disparity

# Mixed into the per-sample seed so the strong perturbation is drawn independently of the crop.
_STRONG_STREAM = 0x5EED


class PseudoLabelledLoader(LabelledLoader):
    """Batches {"image", "strong", "disparity", "mask", "paths"}: "strong" (B,3,c,c) float32 is
    the colour-perturbed view (jitter, greyscale, blur) of the same crop as "image"."""

    strong = True

    def _prepare(self, index: int, epoch: int):
        prepared = super()._prepare(index, epoch)
        if prepared is None:
            return None
        params = sample_strong(sample_rng(self.seed ^ _STRONG_STREAM, epoch, index))
        prepared.job = dataclasses.replace(prepared.job, strong=params)
        return prepared

    def _assemble(self, views: list[torch.Tensor], batch: list) -> dict[str, Any]:
        out = super()._assemble(views, batch)
        out["strong"] = views[1]
        return out


class MetricLabelledLoader(LabelledLoader):
    """Batches {"image", "depth" (B,c,c) float32 metres (0 where invalid), "mask", "paths"}."""

    def _prepare(self, index: int, epoch: int):
        prepared = super()._prepare(index, epoch)
        if prepared is None:
            return None
        _, target_path = self.source.pairs[index]
        disparity, valid = target_to_disparity(read_raw_target(target_path), self.source.spec)
        depth = np.where(valid, 1.0 / np.where(valid, disparity, 1.0), 0.0).astype(np.float32)
        image_hw, _ = probe(prepared.job.encoded)
        box = prepared.job.box
        prepared.extra = {"depth": crop_nearest(depth, box, image_hw),
                          "mask": crop_nearest(valid, box, image_hw)}
        return prepared

    def _assemble(self, views: list[torch.Tensor], batch: list) -> dict[str, Any]:
        return {
            "image": views[0],
            "depth": torch.from_numpy(np.stack([p.extra["depth"] for p in batch])).to(self.device),
            "mask": torch.from_numpy(np.stack([p.extra["mask"] for p in batch])).to(self.device),
            "paths": [p.job.path for p in batch],
        }


class BatchStream:
    """Endless iteration over the epochs of a loader (anything with ``set_epoch`` that is
    iterable), resumable at (epoch, batch index): resuming sets the epoch and skips the batches
    already consumed (exact; they are decoded again)."""

    def __init__(self, loader: Any, name: str) -> None:
        self.loader = loader
        self.name = name
        self.epoch = 0
        self.index = 0
        self._iterator: Iterator[dict] | None = None

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "index": self.index}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.index = int(state["epoch"]), int(state["index"])
        self._iterator = None

    def _open(self) -> None:
        self.loader.set_epoch(self.epoch)
        self._iterator = iter(self.loader)
        for _ in range(self.index):
            if next(self._iterator, None) is None:
                raise ValueError(f"{self.name}: cannot resume at batch {self.index} of epoch "
                                 f"{self.epoch}: the data changed since the checkpoint")

    def __next__(self) -> dict:
        if self._iterator is None:
            self._open()
        assert self._iterator is not None
        batch = next(self._iterator, None)
        if batch is None:
            if self.index == 0:
                raise ValueError(f"{self.name}: the loader yielded no batch (fewer samples than "
                                 f"one batch per rank, or every file was skipped)")
            self.epoch, self.index = self.epoch + 1, 0
            self._open()
            return next(self)
        self.index += 1
        return batch
