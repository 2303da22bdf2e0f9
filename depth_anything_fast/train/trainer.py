"""The training loop shared by every stage.

``Trainer(cfg).run()`` checks data paths, builds and wraps the model, resumes if asked, and runs
``cfg.steps`` optimiser steps with periodic logging, validation and checkpointing. Everything
that makes a step reproducible across a kill / resume is either in the checkpoint (parameters,
optimiser, scheduler, data position, RNGs) or derived from ``(seed, rank, step)`` (CutMix).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from depth_anything_fast.runtime import StopSignals, keep_freed_memory

from . import stages
from .batch_stream import BatchStream
from .checkpoint import latest_checkpoint, load_newest_readable, save_checkpoint
from .config import TrainConfig, config_to_dict
from .distributed import (
    DistInfo,
    all_reduce_mean,
    autocast_context,
    barrier,
    init_distributed,
    resolve_compute_dtype,
    use_fsdp,
    wrap_model,
)
from .optim import build_optimizer, build_scheduler, clip_gradients
from .step_monitor import Settled, StepMonitor

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
# What a run writes into out_dir (removed by --overwrite; nothing else is touched).
RUN_OUTPUTS = ("checkpoints", METRICS_FILE, "tensorboard", "final", "config.json")


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or inf; the message names the step and the batch's sources."""


class RunDirError(ValueError):
    """``out_dir`` holds another run, or its checkpoint does not fit this config."""


@dataclass
class _RunState:
    """What the training loop carries from step to step."""

    info: DistInfo
    model: nn.Module
    frozen: nn.Module | None
    fsdp: bool
    # what the forward passes compute in (`resolve_compute_dtype`)
    compute_dtype: torch.dtype
    optimizer: torch.optim.Optimizer
    scheduler: Any
    streams: dict[str, BatchStream]
    step: int = 0
    last_loss: float = math.nan
    grad_norm: torch.Tensor = field(default_factory=lambda: torch.zeros(()))
    parts: dict[str, torch.Tensor] = field(default_factory=dict)
    # step losses kept on the device, read once per log interval
    monitor: StepMonitor = field(default_factory=StepMonitor)

    def images_per_step(self, cfg: TrainConfig) -> int:
        per_rank = cfg.data.batch_size * (
            1 + cfg.data.unlabelled_ratio if cfg.stage == "student" else 1)
        return self.info.world_size * per_rank


def json_safe(value: Any) -> Any:
    """`value` with NaN/inf floats replaced by None (JSON has no such numbers; Python's json
    would write the invalid tokens NaN / Infinity)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def _keep_metrics_until(path: Path, step: int) -> None:
    """Drop the records of steps after `step` from a metrics file (a resumed run computes
    those steps again), atomically."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line cut by a kill
        if isinstance(record, dict) and isinstance(record.get("step"), int) \
                and record["step"] <= step:
            kept.append(line + "\n")
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(kept))
    os.replace(tmp, path)


class _MetricsLogger:
    """Rank 0's metrics sink: ``metrics.jsonl`` (valid JSON, non-finite numbers as null) and,
    when configured and installed, TensorBoard."""

    def __init__(self, out_dir: Path, cfg: TrainConfig, info: DistInfo) -> None:
        self._file = (out_dir / METRICS_FILE).open("a")
        self._writer = None
        if cfg.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                log.warning("tensorboard: true, but the tensorboard package is not installed: "
                            "metrics go to %s only (pip install tensorboard, or set "
                            "tensorboard=false)", out_dir / METRICS_FILE)
            else:
                self._writer = SummaryWriter(str(out_dir / "tensorboard"))

    def log(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(json_safe(record), allow_nan=False) + "\n")
        self._file.flush()
        if self._writer is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)):
                    self._writer.add_scalar(key, value, record["step"])

    def __enter__(self) -> _MetricsLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self._file.close()
        if self._writer is not None:
            self._writer.close()


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
    from depth_anything_fast.models.hub import parse_hub_id

    # the weights may also be Hub repo ids, fetched when the model is built
    weights = {"model.init": cfg.model.init, "model.frozen_encoder": cfg.model.frozen_encoder}
    hub_ids = {name for name, value in weights.items() if value and parse_hub_id(value)}
    for name, value in {**needed, **weights}.items():
        if value is not None and name not in hub_ids and not Path(value).exists():
            raise FileNotFoundError(f"{name}: path does not exist: {value}")


def build_model(cfg: TrainConfig, *, initialise: bool = True) -> nn.Module:
    """A DepthAnything of the configured size, initialised from ``model.init`` if given and
    ``initialise`` (DINOv2 encoder weights or any Depth Anything checkpoint, encoder-only or
    full)."""
    from depth_anything_fast.models import DepthAnything

    m = cfg.model
    metric = cfg.stage == "finetune-metric"
    model = DepthAnything(config=m.depth_anything_config(metric), attn_backend=m.attn_backend)
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
    bare DINOv2, ours), a local path or a Hub repo id. The DPT head may be absent (encoder-only files: it keeps its fresh
    initialisation); any other missing key or a shape mismatch raises ValueError naming it.
    Returns whether the file had head weights."""
    from depth_anything_fast.models.hub import resolve_weights
    from depth_anything_fast.models.weights import load_into, read_checkpoint, to_ours

    state, _ = read_checkpoint(resolve_weights(path).path)
    state = to_ours(state)
    load_into(model, state, strict=True, allow_missing="head.")
    return any(key.startswith("head.") for key in state)


class Trainer:
    """Runs one stage as configured. ``resume`` continues from the newest readable checkpoint
    in ``<out_dir>/checkpoints`` (a fresh start when there is none); without it ``out_dir``
    must be empty, unless ``overwrite`` (the old run's outputs are then removed).

    Steps, as torchtitan splits them: ``_prepare_out_dir`` -> ``_build`` -> ``_resume`` ->
    ``train_step`` / ``_after_step`` (log, validate) / ``_checkpoint`` -> ``_export``."""

    def __init__(self, cfg: TrainConfig, *, resume: bool = False, overwrite: bool = False) -> None:
        self.cfg = cfg
        self.resume = resume
        self.overwrite = overwrite
        self.out_dir = Path(cfg.out_dir)
        self.ckpt_dir = self.out_dir / "checkpoints"

    # ---------------------------------------------------------------- data
    def _streams(self, info: DistInfo) -> dict[str, BatchStream]:
        """One BatchStream per data source of the stage, sharded over the ranks."""
        from depth_anything_fast.data import LabelledSource, LabelledSpec, labelled_loader

        cfg, d = self.cfg, self.cfg.data
        # batches are made on the training device: on CUDA, DALI decodes and augments there
        common = {"crop_size": d.crop_size, "shard_id": info.rank, "num_shards": info.world_size,
                  "backend": d.pipeline, "num_threads": d.num_threads, "shuffle": True,
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

    # ---------------------------------------------------------------- set-up
    def _prepare_out_dir(self, info: DistInfo) -> None:
        """A fresh run needs an empty ``out_dir`` (its checkpoints, metrics and export would
        mix with the old run's): refuse, or with ``overwrite`` remove the old run's outputs."""
        # every rank looks (they all see the same folder) and all refuse together
        if not self.resume and self.out_dir.is_dir():
            existing = sorted(p.name for p in self.out_dir.iterdir())
            if existing and not self.overwrite:
                raise RunDirError(
                    f"out_dir {self.out_dir} is not empty ({', '.join(existing[:5])}"
                    f"{', ...' if len(existing) > 5 else ''}): pass --resume to continue that "
                    "run, --overwrite to replace it, or set another out_dir")
        barrier()
        if info.is_main and self.overwrite:
            for name in RUN_OUTPUTS:
                path = self.out_dir / name
                if path.is_dir():
                    shutil.rmtree(path)
                elif path.exists():
                    path.unlink()
        barrier()
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if info.is_main:
            (self.out_dir / "config.json").write_text(json.dumps(config_to_dict(self.cfg),
                                                                 indent=2))

    def _build(self, info: DistInfo) -> _RunState:
        """Model (wrapped), frozen encoder, optimiser, scheduler and data streams."""
        cfg = self.cfg
        torch.manual_seed(cfg.seed)  # identical initial weights on every rank
        model = build_model(cfg).to(info.device)
        fsdp = use_fsdp(cfg.dist, info)
        compute_dtype = resolve_compute_dtype(cfg.dist.precision, info.device)
        if info.is_main:
            log.info("training in %s (dist.precision %s on %s%s)",
                     str(compute_dtype).removeprefix("torch."), cfg.dist.precision, info.device,
                     ", FSDP2 casts the parameters" if fsdp else "")
        frozen = None
        if cfg.stage == "student":
            from depth_anything_fast.models import build_frozen_encoder

            # Replicated on every rank: it is inference-only and smaller than the student.
            # Its tokens are computed as the student's are (the student starts from the same
            # weights): under FSDP2 in the parameter dtype FSDP2 gives the student, else in fp32
            # under the same autocast as the student's forward.
            frozen = build_frozen_encoder(cfg.model.frozen_encoder or cfg.model.init)
            frozen = frozen.to(info.device, dtype=compute_dtype if fsdp else torch.float32)
        model = wrap_model(model, cfg.dist, info, compute_dtype)
        optimizer = build_optimizer(model, cfg.optim)
        return _RunState(info=info, model=model, frozen=frozen, fsdp=fsdp,
                         compute_dtype=compute_dtype, optimizer=optimizer,
                         scheduler=build_scheduler(optimizer, cfg.optim, cfg.steps),
                         streams=self._streams(info))

    def _resume(self, run: _RunState) -> None:
        """Continue from the newest readable checkpoint (``--resume``), else seed a fresh run."""
        found = None
        if self.resume:
            found = load_newest_readable(self.ckpt_dir, run.model, run.optimizer, run.info)
        if found is None:
            torch.manual_seed(self.cfg.seed * 1000 + run.info.rank)  # per-rank augmentations
            if run.info.is_main:
                _keep_metrics_until(self.out_dir / METRICS_FILE, 0)
            return
        path, state = found  # the RNGs were restored with the checkpoint
        if state.get("steps") != self.cfg.steps:
            raise RunDirError(
                f"{path} belongs to a run of steps={state.get('steps')}, this config has "
                f"steps={self.cfg.steps}: the learning rate schedule (warm-up, then poly decay "
                "to zero at the last step) depends on it, so every remaining step would get "
                f"another learning rate. Resume with steps={state.get('steps')}, or start a new "
                "run (another out_dir) initialised from an export (model.init)")
        run.scheduler.load_state_dict(state["scheduler"])
        for name, stream in run.streams.items():
            stream.load_state_dict(state["data"][name])
        run.step = int(state["step"])
        if run.info.is_main:
            # steps after the checkpoint are computed again: their old records would repeat
            _keep_metrics_until(self.out_dir / METRICS_FILE, run.step)
            log.info("resumed from %s at step %d", path, run.step)

    def _checkpoint(self, run: _RunState) -> Path:
        return save_checkpoint(
            self.ckpt_dir, run.step, run.model, run.optimizer,
            {"scheduler": run.scheduler.state_dict(), "steps": self.cfg.steps,
             "data": {k: s.state_dict() for k, s in run.streams.items()}},
            run.info, keep=self.cfg.keep_checkpoints,
        )

    # ---------------------------------------------------------------- run
    def run(self) -> dict[str, Any]:
        """Train; returns ``{"status", "step", "loss", "export"}`` with status "done",
        "terminated" (SIGTERM) or "interrupted" (Ctrl-C), the last two after a checkpoint.
        Raises RunDirError for a reused ``out_dir`` or a resume that does not fit."""
        cfg = self.cfg
        check_paths(cfg)
        if self.resume and self.overwrite:
            raise RunDirError("--resume and --overwrite exclude each other")
        info = init_distributed(cfg.dist)
        if info.device.type == "cpu":
            # every step allocates the same large tensors: reuse them instead of page-faulting
            # them in again (15-20% of a demo step's CPU time)
            keep_freed_memory()
        self._prepare_out_dir(info)
        run = self._build(info)
        self._resume(run)
        status = "done"
        with contextlib.ExitStack() as stack:
            stop = stack.enter_context(
                StopSignals(what="at the next log interval and saving a checkpoint"))
            logger = stack.enter_context(_MetricsLogger(self.out_dir, cfg, info)) \
                if info.is_main else None
            bar = self._progress(run.step, info)
            if bar is not None:
                stack.callback(bar.close)
            run.model.train()
            tick = time.perf_counter()
            while run.step < cfg.steps:
                terminate = self.train_step(run, stop)
                now = time.perf_counter()
                self._after_step(run, logger, bar, now - tick)
                tick = now
                if terminate and run.step < cfg.steps:
                    self._checkpoint(run)
                    status = "interrupted" if stop.signum == signal.SIGINT else "terminated"
                    break
                if cfg.checkpoint_every and run.step % cfg.checkpoint_every == 0 \
                        and run.step < cfg.steps:
                    self._checkpoint(run)
            export = None
            if status == "done":
                self._checkpoint(run)
                if cfg.export:
                    export = self._export(run.model, info)
        return {"status": status, "step": run.step, "loss": run.last_loss,
                "export": str(export) if export else None}

    def train_step(self, run: _RunState, stop: StopSignals) -> bool:
        """One optimiser step. Returns whether any rank asked to stop (a signal). The loss
        stays on the device (no host sync before the backward); the pending steps are read
        once per log interval (and before checkpoints, validation, the end), where a
        non-finite loss raises NonFiniteLossError and a signal is acted on."""
        cfg, info = self.cfg, run.info
        batches = {k: next(s) for k, s in run.streams.items()}
        with autocast_context(run.compute_dtype, info.device, run.fsdp):
            loss, parts = self._stage_loss(run.model, batches, run.frozen, info, run.step)
        sources = [p for b in batches.values() for p in b.get("paths", [])]
        run.monitor.record(run.step + 1, loss, sources)  # no host sync before the backward
        loss.backward()
        terminate = False
        if self._sync_due(run.step + 1):
            settled = run.monitor.settle(stop.requested)
            run.last_loss, terminate = settled.loss, settled.stop
            if settled.nonfinite_step is not None:
                self._stop_nonfinite(settled, run)
        run.grad_norm = clip_gradients(run.model, cfg.optim.grad_clip)
        run.optimizer.step()
        run.scheduler.step()
        run.optimizer.zero_grad(set_to_none=True)
        run.step += 1
        run.parts = parts
        return terminate

    def _sync_due(self, step: int) -> bool:
        """Whether the loop reads the pending step checks after `step`'s backward."""
        cfg = self.cfg
        return any(every and step % every == 0 for every in
                   (cfg.log_every or 1, cfg.checkpoint_every, cfg.val_every)) or step == cfg.steps

    def _stop_nonfinite(self, settled: Settled, run: _RunState) -> None:
        """Raise NonFiniteLossError; when the bad step is this one (its optimiser step not taken
        yet) the state before it is saved first, else the newest checkpoint is named."""
        bad = settled.nonfinite_step
        if bad == run.step + 1:
            saved = f"the state before this step is saved in {self._checkpoint(run)}"
        else:
            newest = latest_checkpoint(self.ckpt_dir)
            saved = (f"steps {bad}..{run.step + 1} updated the parameters with it; resume from "
                     f"{newest}" if newest else "no checkpoint was saved before it")
        raise NonFiniteLossError(
            f"non-finite loss at step {bad}; batch sources: {settled.nonfinite_sources}; {saved}")

    def _after_step(self, run: _RunState, logger: _MetricsLogger | None, bar: Any,
                    seconds: float) -> None:
        """Progress bar, metrics record and validation of the step just taken."""
        cfg, step = self.cfg, run.step
        images_per_s = run.images_per_step(cfg) / max(seconds, 1e-9)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{run.last_loss:.4f}", img_s=f"{images_per_s:.1f}")
        if cfg.log_every and (step % cfg.log_every == 0 or step == cfg.steps):
            # every rank joins the reductions; rank 0 writes
            parts = {k: float(all_reduce_mean(v.float())) for k, v in run.parts.items()}
            if logger is not None:
                logger.log({"step": step, "loss": run.last_loss, **parts,
                            "grad_norm": float(run.grad_norm),
                            "lr": [g["lr"] for g in run.optimizer.param_groups],
                            "images_per_s": images_per_s})
        if cfg.val_every and step % cfg.val_every == 0:
            scores = self._validate(run.model, run.info)
            if logger is not None:
                logger.log({"step": step, **scores})

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

    def _validate(self, model: nn.Module, info: DistInfo) -> dict[str, float]:
        """AbsRel / delta1 on ``data.val`` through the evaluate module's runner. Every rank
        runs the same images (FSDP2 forward passes are collective); rank 0 records them."""
        from depth_anything_fast.evaluate.datasets import get_reader
        from depth_anything_fast.evaluate.runner import evaluate_predictions
        from depth_anything_fast.formats.spec import LabelledSpec, folder_spec
        from depth_anything_fast.inference.predictor import Predictor

        d = self.cfg.data
        assert d.val is not None
        if d.val_spec is not None:
            encoding: LabelledSpec | str = LabelledSpec(**d.val_spec)
        else:
            encoding = folder_spec(d.val) or "metres"
        reader = get_reader("generic", d.val, encoding=encoding, limit=self.cfg.val_max_images)
        # torch, not a converted runtime: the weights change between validations, and each
        # conversion would cost seconds (the predictor refuses stale converted weights anyway)
        predictor = Predictor(model, batch_size=d.batch_size, precision="fp32", runtime="torch",
                              input_size=self.cfg.val_input_size, device=info.device)
        # a metric model's depth is scored as it is
        scoring = "metric" if self.cfg.stage == "finetune-metric" else "relative"
        result = evaluate_predictions(reader, predictor.predict, batch_size=d.batch_size,
                                      scoring=scoring)
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

