"""Resumable checkpoints with ``torch.distributed.checkpoint`` (DCP).

Layout under ``<out_dir>/checkpoints``::

    step_00000100/            DCP directory: model + optimiser state (sharded under FSDP2)
    step_00000100/rank{r}.pt  per-rank trainer state: step, scheduler, data position, RNG
    latest                    name of the newest complete checkpoint

A checkpoint is written to ``step_N.tmp`` and renamed once every rank has finished, so a
process killed mid-save never leaves a directory that looks complete.
"""

from __future__ import annotations

import contextlib
import random
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from .distributed import DistInfo, barrier

LATEST = "latest"


@contextlib.contextmanager
def _single_process_quiet() -> Iterator[None]:
    """DCP warns on every call without a process group that it assumes a single process,
    which is exactly the intent of a plain ``python -m`` run."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def rng_state() -> dict[str, Any]:
    """Every RNG the training step draws from (python, numpy, torch CPU and CUDA)."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoint_name(step: int) -> str:
    return f"step_{step:08d}"


def latest_checkpoint(root: str | Path) -> Path | None:
    """The newest complete checkpoint under ``root`` (``<out_dir>/checkpoints``), or None."""
    root = Path(root)
    marker = root / LATEST
    if marker.is_file():
        path = root / marker.read_text().strip()
        if path.is_dir():
            return path
    done = sorted(p for p in root.glob("step_*") if p.is_dir() and not p.name.endswith(".tmp"))
    return done[-1] if done else None


def save_checkpoint(
    root: str | Path,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    trainer_state: dict[str, Any],
    info: DistInfo,
    keep: int = 2,
) -> Path:
    """Collective: every rank calls it. ``trainer_state`` is this rank's picklable state
    (scheduler, data position, ...); the RNG state is added here."""
    root = Path(root)
    final = root / checkpoint_name(step)
    tmp = root / (final.name + ".tmp")
    if info.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True, exist_ok=True)
    barrier()
    model_state, optim_state = get_state_dict(model, optimizer)
    with _single_process_quiet():
        dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=str(tmp))
    torch.save(
        {**trainer_state, "step": step, "world_size": info.world_size, "rng": rng_state()},
        tmp / f"rank{info.rank}.pt",
    )
    barrier()
    if info.is_main:
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        (root / (LATEST + ".tmp")).write_text(final.name)
        (root / (LATEST + ".tmp")).replace(root / LATEST)
        old = sorted(p for p in root.glob("step_*") if p.is_dir() and not p.name.endswith(".tmp"))
        for path in old[:-keep]:
            shutil.rmtree(path, ignore_errors=True)
    barrier()
    return final


def load_checkpoint(
    path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer, info: DistInfo
) -> dict[str, Any]:
    """Load model and optimiser state in place, restore the RNGs, and return this rank's
    trainer state. Raises ValueError when the world size differs from the saving run (the data
    position is per rank)."""
    path = Path(path)
    rank_file = path / f"rank{info.rank}.pt"
    if not rank_file.is_file():
        raise FileNotFoundError(f"checkpoint {path} has no state for rank {info.rank} "
                                f"({rank_file} missing)")
    state = torch.load(rank_file, map_location="cpu", weights_only=False)
    if state["world_size"] != info.world_size:
        raise ValueError(f"checkpoint {path} was written by {state['world_size']} processes, "
                         f"this run has {info.world_size}: resume with the same world size")
    model_state, optim_state = get_state_dict(model, optimizer)
    with _single_process_quiet():
        dcp.load({"model": model_state}, checkpoint_id=str(path))
    # Partial for the optimiser only: parameters that never received a gradient (e.g. the
    # DPT head's unused refinenet4.resConfUnit1) have no AdamW state in the file, while
    # get_state_dict creates one for every parameter; those keep their fresh (unused) state.
    optim_wrapped = {"optim": optim_state}
    with _single_process_quiet():
        dcp.load(optim_wrapped, checkpoint_id=str(path),
                 planner=DefaultLoadPlanner(allow_partial_load=True))
    set_state_dict(model, optimizer, model_state_dict=model_state,
                   optim_state_dict=optim_wrapped["optim"])
    set_rng_state(state.pop("rng"))
    return state
