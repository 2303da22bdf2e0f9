"""The training loop shared by every stage.

``Trainer(cfg).run()`` checks data paths, builds and wraps the model, resumes if asked, and runs
``cfg.steps`` optimiser steps with periodic logging, validation and checkpointing. Everything
that makes a step reproducible across a kill / resume is either in the checkpoint (parameters,
optimiser, scheduler, data position, RNGs) or derived from ``(seed, rank, step)`` (CutMix).
"""

from __future__ import annotations

import json
import logging
import math
import signal
import threading
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import stages
from .checkpoint import checkpoint_name, latest_checkpoint, load_checkpoint, save_checkpoint
from .config import TrainConfig, config_to_dict
from .data import BatchStream
from .distributed import (
    DistInfo,
    all_reduce_mean,
    autocast_context,
    init_distributed,
    reduce_step,
    resolve_param_dtype,
    use_fsdp,
    wrap_model,
)
from .optim import build_optimizer, build_scheduler, clip_gradients

log = logging.getLogger(__name__)

# Exit status of a run stopped by SIGTERM after its checkpoint was written (128 + SIGTERM).
EXIT_TERMINATED = 143


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or inf; the message names the step and the batch's sources."""


def check_paths(cfg: TrainConfig) -> None:
    """Fail with FileNotFoundError naming the config field before any model work."""
    needed: dict[str, str | None] = {"data.labelled": cfg.data.labelled}
    if cfg.stage == "student":
        needed["data.pseudo_labels"] = cfg.data.pseudo_labels
        if cfg.model.frozen_encoder is None and cfg.model.init is None:
            raise ValueError("model.frozen_encoder: the student stage needs a frozen encoder "
                             "for feature alignment (set model.frozen_encoder or model.init)")
    if cfg.val_every > 0:
        needed["data.val"] = cfg.data.val
    for name, value in needed.items():
        if value is None:
            raise ValueError(f"{name}: required for stage {cfg.stage!r} but not set")
    optional = {"model.init": cfg.model.init, "model.frozen_encoder": cfg.model.frozen_encoder}
    for name, value in {**needed, **optional}.items():
        if value is not None and not Path(value).exists():
            raise FileNotFoundError(f"{name}: path does not exist: {value}")


def build_model(cfg: TrainConfig, *, initialise: bool = True) -> nn.Module:
    """A DepthAnything of the configured size, initialised from ``model.init`` if given and
    ``initialise`` (DINOv2 encoder weights or any Depth Anything checkpoint, encoder-only or
    full)."""
    from depth_anything_fast.models import DepthAnything, DepthAnythingConfig

    m = cfg.model
    sizes = {k: v for k, v in {
        "embed_dim": m.embed_dim, "depth": m.depth, "num_heads": m.num_heads,
        "features": m.features, "ffn": m.ffn,
        "out_channels": tuple(m.out_channels) if m.out_channels else None,
        "intermediate_layers": tuple(m.intermediate_layers) if m.intermediate_layers else None,
    }.items() if v is not None}
    metric = cfg.stage == "finetune-metric"
    arch = DepthAnythingConfig.preset(
        m.encoder, m.version, metric=metric, max_depth=m.max_depth if metric else None, **sizes
    )
    model = DepthAnything(config=arch, attn_backend=m.attn_backend)
    head_loaded = initialise and m.init is not None and load_init_weights(model, m.init)
    if head_loaded and cfg.stage == "student" and not m.allow_head_init:
        raise ValueError(
            f"model.init: {m.init} holds a DPT head (a trained depth model such as the "
            "teacher), but the paper's student starts from the pretrained encoder alone, not "
            "from the teacher. Give an encoder-only checkpoint (DINOv2 weights), or set "
            "model.allow_head_init=true to start the student from this model anyway")
    if initialise and not head_loaded and not metric:
        # A fresh DPT head ends in ReLU; with PyTorch's default init its last conv is often
        # negative everywhere, the ReLU outputs 0 and no gradient flows (seen on 3 of 4 seeds
        # of the tiny demo model). A positive bias starts the output in the active range.
        last_conv = model.head.scratch.output_conv2[2]
        with torch.no_grad():
            last_conv.bias.fill_(1.0)
    return model


def load_init_weights(model: nn.Module, path: str | Path) -> bool:
    """Copy weights from any checkpoint format the model loader reads (official, transformers,
    bare DINOv2, ours). The DPT head may be absent (encoder-only files: it keeps its fresh
    initialisation); any other missing key or a shape mismatch raises ValueError naming it.
    Returns whether the file had head weights."""
    from depth_anything_fast.models.checkpoints import load_into, read_checkpoint, to_ours

    state, _ = read_checkpoint(path)
    state = to_ours(state)
    load_into(model, state, strict=True, allow_missing="head.")
    return any(key.startswith("head.") for key in state)


class Trainer:
    """Runs one stage as configured. ``resume`` continues from the newest checkpoint in
    ``<out_dir>/checkpoints`` (a fresh start when there is none)."""

    def __init__(self, cfg: TrainConfig, *, resume: bool = False) -> None:
        self.cfg = cfg
        self.resume = resume
        self.out_dir = Path(cfg.out_dir)
        self.ckpt_dir = self.out_dir / "checkpoints"
        self._terminate = False

    # ---------------------------------------------------------------- data
    def _streams(self, info: DistInfo) -> dict[str, BatchStream]:
        """One BatchStream per data source of the stage, sharded over the ranks."""
        from depth_anything_fast.data import LabelledSource, LabelledSpec, labelled_loader

        cfg, d = self.cfg, self.cfg.data
        # batches are made on the training device: on CUDA, DALI decodes and augments there
        common = {"crop_size": d.crop_size, "shard_id": info.rank, "num_shards": info.world_size,
                  "backend": d.backend, "num_threads": d.num_threads, "shuffle": True,
                  "drop_last": True, "device": info.device}
        spec = LabelledSpec(**d.labelled_spec) if d.labelled_spec is not None else None
        labelled = LabelledSource.from_path(d.labelled, spec)
        target = "depth" if cfg.stage == "finetune-metric" else "disparity"
        streams = {"labelled": BatchStream(
            labelled_loader(labelled, batch_size=d.batch_size, seed=cfg.seed, target=target,
                            **common),
            "data.labelled")}
        if cfg.stage == "student":
            pseudo = LabelledSource.from_path(d.pseudo_labels)
            streams["pseudo"] = BatchStream(
                labelled_loader(pseudo, batch_size=d.batch_size * d.unlabelled_ratio,
                                seed=cfg.seed + 1, strong_view=True, **common),
                "data.pseudo_labels")
        return streams

    # ---------------------------------------------------------------- signals
    def _on_sigterm(self, signum: int, frame: Any) -> None:
        self._terminate = True

    # ---------------------------------------------------------------- run
    def run(self) -> dict[str, Any]:
        """Train; returns ``{"status": "done"|"terminated", "step", "loss", "export"}``."""
        cfg = self.cfg
        check_paths(cfg)
        info = init_distributed(cfg.dist)
        torch.manual_seed(cfg.seed)  # identical initial weights on every rank
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if info.is_main:
            (self.out_dir / "config.json").write_text(json.dumps(config_to_dict(cfg), indent=2))

        model = build_model(cfg).to(info.device)
        frozen = None
        if cfg.stage == "student":
            from depth_anything_fast.models import build_frozen_encoder

            # Replicated on every rank: it is inference-only and smaller than the student.
            # In the training parameter dtype (bf16 on GPU): it only runs forward passes.
            frozen = build_frozen_encoder(cfg.model.frozen_encoder or cfg.model.init)
            frozen = frozen.to(info.device, dtype=resolve_param_dtype(cfg.dist, info.device))
        fsdp = use_fsdp(cfg.dist, info)
        model = wrap_model(model, cfg.dist, info)
        optimizer = build_optimizer(model, cfg.optim)
        scheduler = build_scheduler(optimizer, cfg.optim, cfg.steps)
        streams = self._streams(info)

        step = 0
        resumed = False
        if self.resume:
            path = latest_checkpoint(self.ckpt_dir)
            if path is not None:
                state = load_checkpoint(path, model, optimizer, info)
                scheduler.load_state_dict(state["scheduler"])
                for name, stream in streams.items():
                    stream.load_state_dict(state["data"][name])
                step = int(state["step"])
                resumed = True  # the RNGs were restored with the checkpoint
                if info.is_main:
                    log.info("resumed from %s at step %d", path, step)
        if not resumed:
            torch.manual_seed(cfg.seed * 1000 + info.rank)  # per-rank augmentation streams

        def checkpoint(at: int) -> Path:
            return save_checkpoint(
                self.ckpt_dir, at, model, optimizer,
                {"scheduler": scheduler.state_dict(),
                 "data": {k: s.state_dict() for k, s in streams.items()}},
                info, keep=cfg.keep_checkpoints,
            )

        metrics_file = (self.out_dir / "metrics.jsonl").open("a") if info.is_main else None
        writer = self._tensorboard() if info.is_main else None
        bar = self._progress(step, info)
        # Signal handlers can only be installed from the main thread.
        in_main_thread = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGTERM, self._on_sigterm) if in_main_thread else None
        images_per_step = info.world_size * cfg.data.batch_size * (
            1 + cfg.data.unlabelled_ratio if cfg.stage == "student" else 1)
        last_loss = math.nan
        status = "done"
        tick = time.perf_counter()
        try:
            model.train()
            while step < cfg.steps:
                batches = {k: next(s) for k, s in streams.items()}
                with autocast_context(cfg.dist, info, fsdp):
                    loss, parts = self._stage_loss(model, batches, frozen, info, step)
                # SIGTERM (on any rank) is acted on after this step: checkpoint and stop.
                mean_loss, nonfinite, terminate = reduce_step(loss, self._terminate)
                if nonfinite:
                    checkpoint(step)
                    sources = [p for b in batches.values() for p in b.get("paths", [])]
                    raise NonFiniteLossError(
                        f"non-finite loss ({float(loss.detach())} on rank {info.rank}) at step "
                        f"{step + 1}; batch sources: {sources}; parts: "
                        f"{ {k: float(v) for k, v in parts.items()} }; the state before this "
                        f"step is saved in {self.ckpt_dir / checkpoint_name(step)}")
                loss.backward()
                grad_norm = clip_gradients(model, cfg.optim.grad_clip)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                last_loss = mean_loss
                now = time.perf_counter()
                images_per_s = images_per_step / max(now - tick, 1e-9)
                tick = now
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{mean_loss:.4f}", img_s=f"{images_per_s:.1f}")
                if cfg.log_every and (step % cfg.log_every == 0 or step == cfg.steps):
                    record = {"step": step, "loss": mean_loss,
                              **{k: float(all_reduce_mean(v.float())) for k, v in parts.items()},
                              "grad_norm": float(grad_norm),
                              "lr": [g["lr"] for g in optimizer.param_groups],
                              "images_per_s": images_per_s}
                    self._log(record, metrics_file, writer)
                if cfg.val_every and step % cfg.val_every == 0:
                    self._log({"step": step, **self._validate(model, info)}, metrics_file, writer)
                if terminate and step < cfg.steps:
                    checkpoint(step)
                    status = "terminated"
                    break
                if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < cfg.steps:
                    checkpoint(step)
            export = None
            if status == "done":
                checkpoint(step)
                if cfg.export:
                    export = self._export(model, info)
        finally:
            if in_main_thread:
                signal.signal(signal.SIGTERM, previous)
            if bar is not None:
                bar.close()
            if metrics_file is not None:
                metrics_file.close()
            if writer is not None:
                writer.close()
        return {"status": status, "step": step, "loss": last_loss,
                "export": str(export) if export else None}

    def _stage_loss(self, model: nn.Module, batches: dict, frozen: nn.Module | None,
                    info: DistInfo, step: int) -> tuple[torch.Tensor, dict]:
        cfg = self.cfg
        if cfg.stage == "teacher":
            return stages.teacher_loss(model, batches["labelled"], cfg.loss)
        if cfg.stage == "finetune-metric":
            return stages.metric_loss(model, batches["labelled"], cfg.loss)
        # CutMix boxes from (seed, rank, step): reproducible across resume without saved state.
        generator = torch.Generator().manual_seed(
            (cfg.seed * 1_000_003 + info.rank * 7919 + step) % (2**63))
        assert frozen is not None
        return stages.student_loss(model, batches["labelled"], batches["pseudo"], frozen,
                                   cfg.loss, generator)

    # ---------------------------------------------------------------- observability
    def _progress(self, step: int, info: DistInfo):
        if not (info.is_main and self.cfg.progress):
            return None
        from tqdm.auto import tqdm

        return tqdm(total=self.cfg.steps, initial=step, desc=self.cfg.stage, unit="step",
                    dynamic_ncols=True)

    def _tensorboard(self):
        if not self.cfg.tensorboard:
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard not installed: JSONL only
            return None
        return SummaryWriter(str(self.out_dir / "tensorboard"))

    @staticmethod
    def _log(record: dict, metrics_file, writer) -> None:
        if metrics_file is None:
            return
        metrics_file.write(json.dumps(record) + "\n")
        metrics_file.flush()
        if writer is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)):
                    writer.add_scalar(key, value, record["step"])

    def _validate(self, model: nn.Module, info: DistInfo) -> dict[str, float]:
        """AbsRel / delta1 on ``data.val`` through the evaluate module's runner. Every rank
        runs the same images (FSDP2 forward passes are collective); rank 0 records them."""
        from depth_anything_fast.data.sources import LabelledSpec, folder_spec
        from depth_anything_fast.evaluate.datasets import get_reader
        from depth_anything_fast.evaluate.runner import evaluate_predictions
        from depth_anything_fast.inference.predictor import Predictor

        d = self.cfg.data
        assert d.val is not None
        if d.val_spec is not None:
            encoding: LabelledSpec | str = LabelledSpec(**d.val_spec)
        else:
            encoding = folder_spec(d.val) or "metres"
        reader = get_reader("generic", d.val, encoding=encoding, limit=self.cfg.val_max_images)
        trainable = [p for p in model.parameters() if p.requires_grad]
        try:
            predictor = Predictor(model, batch_size=d.batch_size, precision="fp32",
                                  input_size=self.cfg.val_input_size, device=info.device)
            if self.cfg.stage == "finetune-metric":  # metric depth, scored as it is
                scoring = {"space": "depth", "alignment": "none", "predicted": "depth"}
            else:
                scoring = {}
            result = evaluate_predictions(reader, predictor.predict, batch_size=d.batch_size,
                                          **scoring)
        finally:
            model.train()
            for p in trainable:
                p.requires_grad_(True)
        return {"val_abs_rel": result.mean["abs_rel"], "val_delta1": result.mean["delta1"],
                "val_images": result.n_evaluated}

    def _export(self, model: nn.Module, info: DistInfo) -> Path | None:
        """Gather the full state dict and write ``<out_dir>/final`` with save_pretrained."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        state = get_model_state_dict(
            model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if not info.is_main:
            return None
        # Strip the wrappers' name components (activation checkpointing, torch.compile).
        state = {k.replace("_checkpoint_wrapped_module.", "").replace("_orig_mod.", ""): v
                 for k, v in state.items()}
        plain = build_model(self.cfg, initialise=False)
        plain.load_state_dict(state)
        out = self.out_dir / "final"
        plain.save_pretrained(out)
        return out

