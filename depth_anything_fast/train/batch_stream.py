"""Training batch streams: ``BatchStream`` iterates a ``depth_anything_fast.data`` loader over
epochs and can resume at (epoch, shard position).

The stage-specific batches are options of ``data.labelled_loader``: ``strong_view=True`` for the
pseudo-labelled batches of the student stage, ``target="depth"`` for metric fine-tuning.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any


class BatchStream:
    """Endless iteration over the epochs of a training loader (``set_epoch(epoch, start)``,
    ``position`` and iteration, as ``data.labelled_loader``'s), resumable at (epoch, shard
    position): the loader restarts right after the last batch consumed, which is exact and
    decodes none of the earlier batches again."""

    def __init__(self, loader: Any, name: str) -> None:
        self.loader = loader
        self.name = name
        self.epoch = 0
        self.position = 0
        self._iterator: Iterator[dict] | None = None

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._iterator = None

    def __next__(self) -> dict:
        started_at = None
        while True:
            if self._iterator is None:
                started_at = self.position
                self.loader.set_epoch(self.epoch, self.position)
                self._iterator = iter(self.loader)
            batch = next(self._iterator, None)
            if batch is not None:
                self.position = int(self.loader.position)
                return batch
            if started_at == 0:
                raise ValueError(f"{self.name}: the loader yielded no batch (fewer samples than "
                                 f"one batch per rank, or every file was skipped)")
            # End of the epoch (or a resumed epoch with less than a batch left): next epoch.
            self.epoch, self.position, self._iterator = self.epoch + 1, 0, None
