"""Process runtime shared by training and inference: the torchrun environment, graceful stops on
SIGTERM / Ctrl-C, what the host CPU can do (native bf16), and the C allocator's reuse of freed
memory.

``torchrun`` (and other launchers) describe a process's place in the job through environment
variables; ``launch_env`` is the one reader of them. ``StopSignals`` turns the first SIGTERM or
SIGINT into a flag the work loop polls (finish the step, save, exit cleanly) and a second SIGINT
into ``KeyboardInterrupt`` (the user insists).
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import threading
from dataclasses import dataclass
from types import FrameType
from typing import Any

logger = logging.getLogger(__name__)

# Exit statuses of a run stopped by a signal after saving its work (128 + signal number).
EXIT_SIGINT = 128 + signal.SIGINT
EXIT_SIGTERM = 128 + signal.SIGTERM


@dataclass(frozen=True)
class LaunchEnv:
    """Where this process sits in a multi-process launch (all zeros and ones without one)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    # torchrun sets MASTER_ADDR; ranks started without it cannot form a process group
    has_rendezvous: bool = False


def launch_env(environ: dict[str, str] | None = None) -> LaunchEnv:
    """Read ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE`` and ``MASTER_ADDR``.

    Raises ValueError naming the variable that is not an integer or out of range.
    """
    env = os.environ if environ is None else environ
    values = {}
    for name, default in (("RANK", 0), ("WORLD_SIZE", 1), ("LOCAL_RANK", 0),
                          ("LOCAL_WORLD_SIZE", 1)):
        raw = env.get(name)
        try:
            values[name] = default if raw is None or raw == "" else int(raw)
        except ValueError:
            raise ValueError(f"environment variable {name}={raw!r} is not an integer") from None
    rank, world = values["RANK"], values["WORLD_SIZE"]
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"invalid RANK={rank} for WORLD_SIZE={world}")
    if values["LOCAL_RANK"] < 0 or values["LOCAL_WORLD_SIZE"] < 1:
        raise ValueError(f"invalid LOCAL_RANK={values['LOCAL_RANK']} / "
                         f"LOCAL_WORLD_SIZE={values['LOCAL_WORLD_SIZE']}")
    return LaunchEnv(rank, world, values["LOCAL_RANK"], values["LOCAL_WORLD_SIZE"],
                     bool(env.get("MASTER_ADDR")))


class StopSignals:
    """Context manager: while active, the first SIGTERM or SIGINT sets ``requested`` (and
    ``signum``) instead of killing the process; a second SIGINT raises KeyboardInterrupt.

    Handlers can only be installed from the main thread; elsewhere (or with
    ``install=False``) this is an inert flag. The previous handlers are restored on exit.
    """

    def __init__(self, *, install: bool = True, what: str = "after the current step") -> None:
        self.requested = False
        self.signum: int | None = None
        self._install = install and threading.current_thread() is threading.main_thread()
        self._what = what
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if self._install:
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        if not self.requested:
            name = signal.Signals(signum).name
            again = "; Ctrl-C again to abort at once" if signum == signal.SIGINT else ""
            logger.warning("%s received: stopping %s%s", name, self._what, again)
        self.requested = True
        self.signum = self.signum or signum

    @property
    def exit_code(self) -> int:
        """128 + the first signal received (130 for Ctrl-C, 143 for SIGTERM); 0 without one."""
        return 128 + self.signum if self.signum else 0


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX); elsewhere bf16 autocast
    emulates it and runs several times slower than fp32."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False  # unknown: callers then keep fp32 and warn where bf16 is asked for
    return any(flag in flags for flag in ("avx512_bf16", "amx_bf16"))


# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def keep_freed_memory(limit: int = 1 << 30) -> bool:
    """Make glibc's malloc keep freed blocks of up to `limit` bytes for reuse instead of handing
    them back to the kernel. Returns whether it took effect (False where the C library is not
    glibc; a preloaded jemalloc / tcmalloc is unaffected).

    A CPU training step allocates and frees the same large tensors every step. By default glibc
    serves large blocks with mmap and trims the heap's free top, so each step page-faults all
    that memory in again, zero-filled by the kernel: 15-20% of a demo training step's CPU time
    (measured on the 2-core development machine). With both thresholds raised the process keeps
    the footprint it reaches every step anyway. Process-wide and permanent (glibc has no undo).
    """
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(mallopt(_M_MMAP_THRESHOLD, limit)) and bool(mallopt(_M_TRIM_THRESHOLD, limit))
