"""Helpers shared by the benchmarks: where the real test images live, peak memory of one call.

Imported as `benchmark_support` (pytest puts this folder on sys.path for the bench_*.py files in it).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch

SHARED_IMAGES = (
    Path(os.environ.get("DAF_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
    / "images"
)


def peak_memory_mib(fn: Callable[[], object], device: str | torch.device) -> float:
    """Peak memory of one call `fn()` above the memory live before it, in MiB.

    CUDA: the caching allocator's peak. CPU: the torch profiler's allocation trace (each
    allocation/free is attributed to the innermost op, "self"), replayed in order.
    """
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted(
        (e for e in prof.events() if e.self_cpu_memory_usage), key=lambda e: e.time_range.start
    )
    live = peak = 0
    for event in events:
        live += event.self_cpu_memory_usage
        peak = max(peak, live)
    return peak / 2**20
