"""Resumable checkpoints with ``torch.distributed.checkpoint`` (DCP), read without running code
from the files.

Layout under ``<out_dir>/checkpoints``::

    step_00000100/              DCP directory: model + optimiser state (sharded under FSDP2)
    step_00000100/rank{r}.json  per-rank trainer state: step, scheduler, data position, RNGs
    step_00000100/rank{r}.pt    the tensors that state refers to (plain tensors only)
    latest                      name of the newest complete checkpoint

A checkpoint is written to ``step_N.tmp`` and renamed once every rank has finished, so a
process killed mid-save never leaves a directory that looks complete.

Pickle is code: DCP unpickles its ``.metadata`` file and ``torch.load(weights_only=False)``
unpickles anything. Here the per-rank state is JSON plus a tensor file read with
``weights_only=True``, and ``.metadata`` goes through ``SafeFileSystemReader``, whose unpickler
admits only the classes DCP's metadata is made of; anything else is refused with
``CheckpointError`` before it runs.
"""

from __future__ import annotations

import contextlib
import json
import logging
import pickle
import random
import re
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path, PosixPath, PurePosixPath, PureWindowsPath, WindowsPath
from typing import Any

import numpy as np
import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint import metadata as dcp_metadata
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from .distributed import DistInfo, all_ranks_agree, barrier

log = logging.getLogger(__name__)

LATEST = "latest"
_STEP_DIR = re.compile(r"^step_(\d+)$")


class CheckpointError(ValueError):
    """A checkpoint cannot be used: unreadable, truncated, from another run layout, or holding
    something that is not plain data (refused without being run)."""


@contextlib.contextmanager
def _single_process_quiet() -> Iterator[None]:
    """DCP warns on every call without a process group that it assumes a single process,
    which is exactly the intent of a plain ``python -m`` run."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


# ----------------------------------------------------------------------------- DCP metadata
def _metadata_classes() -> dict[tuple[str, str], Any]:
    from torch.distributed.checkpoint.filesystem import _StorageInfo

    allowed: dict[tuple[str, str], Any] = {
        ("torch", "Size"): torch.Size,
        ("torch.serialization", "_get_layout"): torch.serialization._get_layout,  # name -> layout
        ("torch.distributed.checkpoint.filesystem", "_StorageInfo"): _StorageInfo,
    }
    for name in ("Metadata", "MetadataIndex", "StorageMeta", "TensorProperties",
                 "TensorStorageMetadata", "BytesStorageMetadata", "ChunkStorageMetadata",
                 "_MEM_FORMAT_ENCODING"):
        allowed[(dcp_metadata.__name__, name)] = getattr(dcp_metadata, name)
    for cls in (PosixPath, WindowsPath, PurePosixPath, PureWindowsPath):
        allowed[("pathlib", cls.__name__)] = cls
        allowed[("pathlib._local", cls.__name__)] = cls  # Python 3.13 pickles paths from here
    return allowed


class _MetadataUnpickler(pickle.Unpickler):
    """Admits only DCP's metadata dataclasses, torch dtypes/sizes/layouts and paths."""

    _allowed: dict[tuple[str, str], Any] | None = None

    def find_class(self, module: str, name: str) -> Any:
        if _MetadataUnpickler._allowed is None:
            _MetadataUnpickler._allowed = _metadata_classes()
        found = _MetadataUnpickler._allowed.get((module, name))
        if found is not None:
            return found
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise pickle.UnpicklingError(
            f"refused to load {module}.{name}: not a checkpoint metadata type")


class SafeFileSystemReader(FileSystemReader):
    """DCP's file reader with ``.metadata`` read by a restricted unpickler (the tensor data
    files are already read with ``torch.load(weights_only=True)`` by DCP)."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> dcp_metadata.Metadata:
        path = Path(self.path) / ".metadata"
        try:
            with open(path, "rb") as f:
                metadata = _MetadataUnpickler(f).load()
        except FileNotFoundError:
            raise CheckpointError(f"{path} is missing (incomplete checkpoint)") from None
        except (pickle.UnpicklingError, EOFError, AttributeError, TypeError, ValueError,
                IndexError, KeyError) as err:
            raise CheckpointError(f"{path}: not a valid checkpoint metadata file ({err})") from None
        if not isinstance(metadata, dcp_metadata.Metadata):
            raise CheckpointError(f"{path}: holds a {type(metadata).__name__}, not DCP metadata")
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = dcp_metadata.StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


# ----------------------------------------------------------------------------- per-rank state
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
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np.random.set_state(tuple(state["numpy"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _split(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """JSON-able copy of `value`; tensors and arrays go to `tensors` and are referenced by key."""
    if isinstance(value, torch.Tensor):
        key = str(len(tensors))
        tensors[key] = value.detach().cpu()
        return {"__tensor__": key}
    if isinstance(value, np.ndarray):
        key = str(len(tensors))
        tensors[key] = torch.from_numpy(value.astype(np.int64) if value.dtype == np.uint32
                                        else value.copy())
        return {"__ndarray__": key, "dtype": str(value.dtype)}
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise TypeError(f"trainer state keys must be strings, got {list(value)[:5]}")
        return {k: _split(v, tensors) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_split(v, tensors) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"trainer state holds a {type(value).__name__}, which is not plain data")


def _join(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, dict):
        if "__tensor__" in value:
            return tensors[value["__tensor__"]]
        if "__ndarray__" in value:
            return tensors[value["__ndarray__"]].numpy().astype(value["dtype"])
        return {k: _join(v, tensors) for k, v in value.items()}
    if isinstance(value, list):
        return [_join(v, tensors) for v in value]
    return value


def _write_rank_state(folder: Path, rank: int, state: dict[str, Any]) -> None:
    tensors: dict[str, torch.Tensor] = {}
    plain = _split(state, tensors)
    torch.save(tensors, folder / f"rank{rank}.pt")
    (folder / f"rank{rank}.json").write_text(json.dumps(plain))


def read_rank_state(folder: str | Path, rank: int) -> dict[str, Any]:
    """This rank's trainer state from ``rank{r}.json`` + ``rank{r}.pt`` (tensors only, read
    with ``weights_only=True``). Raises CheckpointError naming the file that is missing,
    truncated or not plain data."""
    folder = Path(folder)
    json_file, tensor_file = folder / f"rank{rank}.json", folder / f"rank{rank}.pt"
    if not json_file.is_file():
        old = " (written by an older version, which pickled it: not loaded)" \
            if tensor_file.is_file() else ""
        raise CheckpointError(f"{json_file} is missing{old}")
    try:
        plain = json.loads(json_file.read_text())
    except (ValueError, OSError) as err:
        raise CheckpointError(f"{json_file}: not valid JSON ({err})") from None
    try:
        tensors = torch.load(tensor_file, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{tensor_file} is missing") from None
    except Exception as err:  # weights_only refusals and truncation raise various types
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{tensor_file}: not a plain tensor file, refused ({reason})") \
            from None
    if not isinstance(tensors, dict) or not all(isinstance(t, torch.Tensor)
                                                for t in tensors.values()):
        raise CheckpointError(f"{tensor_file}: expected a dict of tensors")
    try:
        return _join(plain, tensors)
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{json_file}: refers to tensors {tensor_file} lacks ({err})") \
            from None


# ----------------------------------------------------------------------------- folders
def checkpoint_name(step: int) -> str:
    return f"step_{step:08d}"


def checkpoint_step(path: str | Path) -> int | None:
    """The step of a ``step_N`` folder, None for any other name (e.g. ``step_N.tmp``)."""
    match = _STEP_DIR.match(Path(path).name)
    return int(match.group(1)) if match else None


def complete_checkpoints(root: str | Path) -> list[Path]:
    """Complete checkpoint folders under ``root``, newest (highest step) first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and checkpoint_step(p) is not None]
    return sorted(found, key=lambda p: checkpoint_step(p) or 0, reverse=True)


def latest_checkpoint(root: str | Path) -> Path | None:
    """The newest complete checkpoint under ``root`` (``<out_dir>/checkpoints``), or None: the
    one ``latest`` names, else the highest step."""
    candidates = resume_candidates(root)
    return candidates[0] if candidates else None


def resume_candidates(root: str | Path) -> list[Path]:
    """Checkpoints to try on resume, in order: the one ``latest`` names, then the others from
    the highest step down."""
    root = Path(root)
    found = complete_checkpoints(root)
    marker = root / LATEST
    if marker.is_file():
        named = root / marker.read_text().strip()
        if named in found:
            found.remove(named)
            found.insert(0, named)
    return found


def save_checkpoint(
    root: str | Path,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    trainer_state: dict[str, Any],
    info: DistInfo,
    keep: int = 2,
) -> Path:
    """Collective: every rank calls it. ``trainer_state`` is this rank's state as plain data
    (dicts with string keys, lists, numbers, strings, tensors, arrays); the RNG state is added
    here. Keeps the ``keep`` newest checkpoints up to ``step``; folders of a higher step are
    left from before a resume that went back past them and are removed too."""
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
    _write_rank_state(tmp, info.rank, {**trainer_state, "step": step,
                                       "world_size": info.world_size, "rng": rng_state()})
    barrier()
    if info.is_main:
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        (root / (LATEST + ".tmp")).write_text(final.name)
        (root / (LATEST + ".tmp")).replace(root / LATEST)
        _prune(root, step, keep)
    barrier()
    return final


def _prune(root: Path, step: int, keep: int) -> None:
    kept = 0
    for path in complete_checkpoints(root):
        at = checkpoint_step(path) or 0
        if at > step:
            log.info("removing %s: it is ahead of this run (left from before the resume)", path)
        elif kept < keep:
            kept += 1
            continue
        shutil.rmtree(path, ignore_errors=True)


# ----------------------------------------------------------------------------- loading
def _read_local(path: Path, info: DistInfo) -> dict[str, Any]:
    """This rank's checks of a checkpoint that need no collective: its state and the
    metadata (read and vetted here: inside dcp.load a refusal comes back wrapped)."""
    state = read_rank_state(path, info.rank)
    if state.get("world_size") != info.world_size:
        raise CheckpointError(
            f"checkpoint {path} was written by {state.get('world_size')} processes, this run "
            f"has {info.world_size}: resume with the same world size")
    SafeFileSystemReader(str(path)).read_metadata()
    return state


def _load_dcp(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Collective: model and optimiser state from the DCP files, in place."""
    model_state, optim_state = get_state_dict(model, optimizer)
    try:
        with _single_process_quiet():
            dcp.load({"model": model_state}, storage_reader=SafeFileSystemReader(str(path)))
        # Partial for the optimiser only: parameters that never received a gradient (e.g. the
        # DPT head's unused refinenet4.resConfUnit1) have no AdamW state in the file, while
        # get_state_dict creates one for every parameter; those keep their fresh (unused) state.
        optim_wrapped = {"optim": optim_state}
        with _single_process_quiet():
            dcp.load(optim_wrapped, storage_reader=SafeFileSystemReader(str(path)),
                     planner=DefaultLoadPlanner(allow_partial_load=True))
    except CheckpointException as err:  # per-rank failures (e.g. a truncated data file),
        # gathered by DCP so that every rank raises
        reasons = sorted({f"{type(exc).__name__}: {exc}".rstrip(": ")
                          for exc, _ in err.failures.values()})
        raise CheckpointError(f"checkpoint {path} cannot be read (truncated or corrupt?): "
                              + "; ".join(reasons)) from None
    set_state_dict(model, optimizer, model_state_dict=model_state,
                   optim_state_dict=optim_wrapped["optim"])


def load_newest_readable(
    root: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer, info: DistInfo
) -> tuple[Path, dict[str, Any]] | None:
    """Collective: load the newest checkpoint under ``root`` that every rank can read
    (``latest`` first); each one skipped is logged with its reason. None when there is no
    checkpoint; raises CheckpointError listing every reason when none is readable."""
    reasons = []
    for path in resume_candidates(root):
        state, error = None, None
        try:
            state = _read_local(path, info)
        except CheckpointError as err:
            error = err
            if not info.is_main:  # rank 0 only learns that another rank failed
                log.warning("rank %d: %s", info.rank, err)
        # every rank goes on to the collective load, or none does
        if all_ranks_agree(error is None):
            try:
                _load_dcp(path, model, optimizer)
            except CheckpointError as err:  # raised on every rank alike
                error = err
        elif error is None:
            error = CheckpointError("unreadable on another rank")
        if error is None:
            assert state is not None
            set_rng_state(state.pop("rng"))
            if reasons and info.is_main:
                log.warning("resuming from %s, an older checkpoint: %s", path, "; ".join(reasons))
            return path, state
        reasons.append(f"{path.name} skipped ({error})")
        if info.is_main:
            log.warning("checkpoint %s is unusable: %s", path, error)
    if reasons:
        raise CheckpointError(f"no readable checkpoint in {root}: " + "; ".join(reasons))
    return None
