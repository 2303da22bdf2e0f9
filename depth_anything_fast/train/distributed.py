"""Process-group set-up, the training precision rule (`resolve_compute_dtype`) and the one place
where models are wrapped for training.

Wrapping follows torchtitan's order: activation checkpointing per transformer block ->
optional ``torch.compile`` per block -> ``fully_shard`` each block -> ``fully_shard`` the root.
Compiling the block before sharding keeps FSDP2's hooks outside the compiled graph.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from depth_anything_fast.runtime import cpu_has_native_bf16, launch_env

from .config import DistConfig

logger = logging.getLogger(__name__)

PRECISIONS = ("auto", "bf16", "fp32")


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(cfg: DistConfig) -> DistInfo:
    """Join the process group when launched by torchrun (``WORLD_SIZE`` set), NCCL on CUDA and
    gloo on CPU; a plain ``python -m`` run stays single-process without a process group."""
    env = launch_env()
    world_size, rank, local_rank = env.world_size, env.rank, env.local_rank
    use_cuda = torch.cuda.is_available() and cfg.comm_backend != "gloo"
    if use_cuda:
        visible = torch.cuda.device_count()
        if local_rank >= visible:
            raise ValueError(
                f"LOCAL_RANK={local_rank} but {visible} CUDA device(s) are visible: start one "
                f"process per GPU (torchrun --nproc-per-node={visible}), or set "
                "dist.comm_backend=gloo to train on the CPU"
            )
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if world_size > 1 and cfg.fsdp is False:
        raise ValueError(f"dist.fsdp: false with {world_size} processes would train unsynchronised "
                         "replicas; leave it unset (FSDP2) or run one process")
    if (world_size > 1 or cfg.fsdp) and not dist.is_initialized():
        if world_size == 1:
            # FSDP2 asked for in a single process (e.g. to measure it on one GPU): a one-rank
            # group on a free local port.
            os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
            os.environ.setdefault("MASTER_PORT", str(_free_port()))
            os.environ.setdefault("RANK", "0")
            os.environ.setdefault("WORLD_SIZE", "1")
        backend = cfg.comm_backend if cfg.comm_backend != "auto" else ("nccl" if use_cuda else "gloo")
        dist.init_process_group(
            backend=backend,
            # a collective waits this long for a slow rank (validation, a checkpoint on slow
            # storage) before the job is declared hung
            timeout=datetime.timedelta(minutes=cfg.timeout_minutes),
            device_id=device if backend == "nccl" else None,
        )
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=device)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def shutdown_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def all_ranks_agree(ok: bool) -> bool:
    """True when `ok` is true on every rank (one collective; `ok` itself without a group)."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        device = "cuda" if dist.get_backend() == "nccl" else "cpu"
        flag = torch.tensor([0 if ok else 1], dtype=torch.int64, device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.SUM)
        return int(flag.item()) == 0
    return ok


def all_reduce_mean(value: torch.Tensor) -> torch.Tensor:
    """Mean over ranks (a no-op without a process group)."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        value = value.detach().clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        value /= dist.get_world_size()
    return value


def resolve_compute_dtype(precision: str, device: torch.device) -> torch.dtype:
    """The dtype a training step computes in; the one rule for both paths (FSDP2 casts the
    parameters to it through its `MixedPrecisionPolicy`, a single process autocasts the forward
    pass to it; the master weights, gradients and optimiser state stay fp32 either way, and
    the losses run in fp32, see `train.stages`).

    ``precision`` (`DistConfig.precision`) "auto": bf16 where the hardware computes it natively (CUDA, and CPUs with
    AVX512-BF16 or AMX: `runtime.cpu_has_native_bf16`), fp32 elsewhere, where bf16 is emulated
    and slower than fp32. ``"bf16"`` / ``"fp32"`` are taken as they are (bf16 on a CPU without
    native bf16 with a warning).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "fp32":
        return torch.float32
    native = device.type == "cuda" or (device.type == "cpu" and cpu_has_native_bf16())
    if precision == "bf16":
        if not native:
            logger.warning("dist.precision bf16 on %s without native bf16 (no AVX512-BF16/AMX) "
                           "is emulated and slower than fp32; precision auto picks fp32 there",
                           device)
        return torch.bfloat16
    return torch.bfloat16 if native else torch.float32


def use_fsdp(cfg: DistConfig, info: DistInfo) -> bool:
    return info.world_size > 1 if cfg.fsdp is None else cfg.fsdp


def transformer_blocks(model: nn.Module) -> list[tuple[nn.Module, str, nn.Module]]:
    """(parent, attribute, block) for every encoder transformer block: ``encoder.blocks`` is an
    nn.ModuleList (possibly chunked into lists of lists as in DINOv2's ``block_chunks``)."""
    found = []
    blocks = getattr(getattr(model, "encoder", None), "blocks", None)
    if blocks is None:
        raise TypeError(f"{type(model).__name__} has no encoder.blocks to wrap")
    for index, block in enumerate(blocks):
        if isinstance(block, nn.ModuleList):  # block chunk
            found.extend((block, str(i), inner) for i, inner in enumerate(block)
                         if not isinstance(inner, nn.Identity))
        else:
            found.append((blocks, str(index), block))
    return found


def wrap_model(model: nn.Module, cfg: DistConfig, info: DistInfo,
               compute_dtype: torch.dtype) -> nn.Module:
    """Apply activation checkpointing, per-block compile and FSDP2 (parameters cast to
    ``compute_dtype``, `resolve_compute_dtype`'s) to a model already on ``info.device``;
    returns the model to train (the same object, blocks replaced in place)."""
    if cfg.activation_checkpointing or cfg.compile:
        from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
            checkpoint_wrapper,
        )

        for parent, attr, block in transformer_blocks(model):
            wrapped = block
            if cfg.activation_checkpointing:
                wrapped = checkpoint_wrapper(wrapped, preserve_rng_state=False)
            if cfg.compile:
                wrapped = torch.compile(wrapped)
            parent._modules[attr] = wrapped

    if use_fsdp(cfg, info):
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        mesh = init_device_mesh(info.device.type, (info.world_size,))
        policy = MixedPrecisionPolicy(param_dtype=compute_dtype, reduce_dtype=torch.float32)
        for _, _, block in transformer_blocks(model):
            fully_shard(block, mesh=mesh, mp_policy=policy)
        fully_shard(model, mesh=mesh, mp_policy=policy)
    return model


def autocast_context(compute_dtype: torch.dtype, device: torch.device,
                     fsdp: bool) -> contextlib.AbstractContextManager:
    """The forward pass's context: bf16 autocast in a single process when ``compute_dtype`` is
    bf16 (under FSDP2 the parameters are cast instead: a null context, as for fp32)."""
    if compute_dtype == torch.bfloat16 and not fsdp:
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
