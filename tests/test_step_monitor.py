"""The training loop's deferred step checks: no host sync per step, one per interval."""

from __future__ import annotations

import math

import pytest
import torch

from depth_anything_fast.train.step_monitor import StepMonitor


def test_settle_reports_the_first_nonfinite_step_and_the_last_loss() -> None:
    monitor = StepMonitor()
    for step, value in ((1, 0.5), (2, math.nan), (3, math.inf), (4, 0.25)):
        monitor.record(step, torch.tensor(value), [f"batch{step}.png"])
    settled = monitor.settle(stop=False)
    assert settled.loss == 0.25 and not settled.stop
    assert settled.nonfinite_step == 2 and settled.nonfinite_sources == ["batch2.png"]
    monitor.record(5, torch.tensor(1.0, dtype=torch.bfloat16), [])
    settled = monitor.settle(stop=True)  # pending steps were cleared by the first settle
    assert settled == type(settled)(loss=1.0, nonfinite_step=None, nonfinite_sources=[], stop=True)
    with pytest.raises(RuntimeError, match="without a recorded step"):
        monitor.settle(stop=False)


def test_record_keeps_the_flags_on_the_device_without_reading_them() -> None:
    """record() must not read a value back (`item`/`tolist`: a host sync on a GPU)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class NoRead(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
            assert func is not torch.ops.aten._local_scalar_dense.default, "record() read a value"
            return func(*args, **(kwargs or {}))

    monitor = StepMonitor()
    loss = torch.tensor(2.0)
    with NoRead():
        monitor.record(1, loss, [])
    assert monitor.settle(stop=False).loss == 2.0
    with NoRead(), pytest.raises(AssertionError, match="read a value"):
        torch.tensor(1.0).item()  # the guard itself sees a read
