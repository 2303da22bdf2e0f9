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


def rss_bytes() -> int:
    """This process's resident set size now (Linux: /proc/self/statm), in bytes."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


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


SIMD_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile",
              "amx_bf16", "amx_int8")


def cpu_description() -> str:
    """"<model name>, <n> logical cores, flags <the SIMD flags present>" from /proc/cpuinfo
    (the flags that decide inference speed: native bf16 is AVX512-BF16 or AMX)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown CPU (no /proc/cpuinfo)"
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines()
                 if line.startswith("model name")), "unknown CPU")
    flags = next((line.split(":", 1)[1].split() for line in info.splitlines()
                  if line.startswith("flags")), [])
    present = [f for f in SIMD_FLAGS if f in flags]
    return f"{name}, {os.cpu_count()} logical cores, flags {' '.join(present) or 'none of ' + ' '.join(SIMD_FLAGS)}"
