"""The training loop's per-step checks without a host sync per step.

Each step's loss and whether it is finite stay on the device (`record`, no sync: the backward
is queued right behind the forward); `settle` reads all pending steps in one host sync (and one
all-reduce across ranks, which also agrees on a stop request), once per log interval.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Settled:
    """What `StepMonitor.settle` found over the pending steps."""

    loss: float  # the last step's loss, averaged over ranks
    nonfinite_step: int | None  # the first step whose loss was NaN/inf on any rank
    nonfinite_sources: list[str]  # that step's batch sources on this rank
    stop: bool  # some rank asked to stop (a signal)


class StepMonitor:
    """Per-step [loss, non-finite] flags kept on the device, read once per interval."""

    def __init__(self) -> None:
        self._steps: list[int] = []
        self._flags: list[torch.Tensor] = []
        self._sources: list[list[str]] = []

    def record(self, step: int, loss: torch.Tensor, sources: list[str]) -> None:
        """Keep step `step`'s scalar loss (device ops only, no host sync)."""
        local = loss.detach().float().reshape(())
        self._flags.append(torch.stack([local, (~torch.isfinite(local)).float()]))
        self._steps.append(step)
        self._sources.append(sources)

    def settle(self, stop: bool) -> Settled:
        """One host sync (and one all-reduce) for every step recorded since the last call;
        `stop` is this rank's stop request, agreed across ranks."""
        if not self._flags:
            raise RuntimeError("settle() without a recorded step")
        flags = torch.stack(self._flags)
        packed = torch.cat([flags.reshape(-1), flags.new_tensor([1.0 if stop else 0.0])])
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(packed, op=dist.ReduceOp.SUM)
        values = packed.tolist()  # the host sync
        world = dist.get_world_size() if dist.is_initialized() else 1
        losses, nonfinite = values[0:-1:2], values[1:-1:2]
        bad = next((i for i, flag in enumerate(nonfinite) if flag > 0), None)
        settled = Settled(
            loss=losses[-1] / world,
            nonfinite_step=None if bad is None else self._steps[bad],
            nonfinite_sources=[] if bad is None else self._sources[bad],
            stop=values[-1] > 0,
        )
        self._steps, self._flags, self._sources = [], [], []
        return settled
