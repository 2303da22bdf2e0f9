"""Training batch streams: ``BatchStream`` iterates a ``depth_anything_fast.data`` loader over
epochs and can resume at (epoch, batch).

The stage-specific batches are options of ``data.labelled_loader``: ``strong_view=True`` for the
pseudo-labelled batches of the student stage, ``target="depth"`` for metric fine-tuning.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any


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
