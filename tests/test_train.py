"""Trainer tests: schedule, every stage end to end on a tiny synthetic set, loss decrease on a
fixed batch, NaN stop, kill/resume equality and 2-process FSDP2 equality (the configuration's
own tests are in test_train_config.py).

Models are tiny (embed 32, depth 4, 56 px crops) so that the whole file stays well under a
minute of CPU on 2 cores; the subprocess tests pay for interpreter start-up only a few times.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from depth_anything_fast.train import stages
from depth_anything_fast.train.config import load_config
from depth_anything_fast.train.optim import build_optimizer, lr_factor, param_groups
from depth_anything_fast.train.step_monitor import StepMonitor
from depth_anything_fast.train.trainer import NonFiniteLossError, Trainer, build_model

REPO = Path(__file__).resolve().parents[1]
TINY = [
    "model.encoder=tiny", "model.embed_dim=32", "model.depth=4", "model.num_heads=2",
    "model.features=16", "data.crop_size=56", "data.batch_size=4", "data.pipeline=pil",
    "data.num_threads=1", "dist.precision=fp32", "progress=false", "log_every=1",
    "tensorboard=false", "optim.lr=1e-3", "optim.warmup_steps=0",
]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> dict[str, Path]:
    """Synthetic RGB-D set, a random tiny teacher checkpoint and its pseudo-labels."""
    from depth_anything_fast.inference.pseudo_label import pseudo_label
    from depth_anything_fast.recipe.synthetic import generate_dataset

    root = tmp_path_factory.mktemp("train_data")
    layout = generate_dataset(root / "data", n_labelled=12, n_unlabelled=16, n_val=4,
                              size=(60, 80), seed=3)
    cfg = load_config(None, [*TINY, "stage=teacher"])
    torch.manual_seed(0)
    teacher = root / "teacher"
    build_model(cfg).save_pretrained(teacher)
    # The whole unlabelled folder: outputs under pseudo/images/, read through the manifest.
    summary = pseudo_label(teacher, layout.unlabelled, root / "pseudo", batch_size=16,
                           precision="fp32", input_size=56, original_size=True, device="cpu",
                           handle_signals=False)
    assert summary.failed == 0
    return {"labelled": layout.labelled, "val": layout.val, "pseudo": root / "pseudo",
            "teacher": teacher}


def _overrides(stage: str, data: dict[str, Path], out: Path, *extra: str) -> list[str]:
    items = [*TINY, f"stage={stage}", f"out_dir={out}", f"data.labelled={data['labelled']}"]
    if stage == "student":
        items += [f"data.pseudo_labels={data['pseudo']}", f"model.frozen_encoder={data['teacher']}",
                  "data.batch_size=2"]
    if stage == "finetune-metric":
        items += ["model.max_depth=40", f"model.init={data['teacher']}"]
    return items + list(extra)


def _losses(out: Path) -> dict[int, float]:
    """step -> loss from metrics.jsonl (the last record of a step wins: a killed run may have
    logged steps after its last checkpoint, which the resumed run computes again)."""
    losses = {}
    for line in (out / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "loss" in record:
            losses[record["step"]] = record["loss"]
    return losses


# ------------------------------------------------------------------------------------ config
def test_missing_frozen_encoder_path(tiny_data, tmp_path: Path) -> None:
    cfg = load_config(None, _overrides("student", tiny_data, tmp_path / "o",
                                       f"model.frozen_encoder={tmp_path / 'gone.safetensors'}"))
    with pytest.raises(FileNotFoundError, match="model.frozen_encoder"):
        Trainer(cfg).run()


# ------------------------------------------------------------------------------------ optimiser
def test_lr_schedule_warmup_then_poly() -> None:
    total, warmup, power = 100, 10, 0.9
    assert lr_factor(0, total, warmup, power) == pytest.approx(0.1)
    assert lr_factor(9, total, warmup, power) == pytest.approx(1.0)
    for step in (10, 37, 99):
        expected = (1 - (step - warmup) / (total - warmup)) ** power
        assert lr_factor(step, total, warmup, power) == pytest.approx(expected, rel=1e-12)
    assert lr_factor(total, total, warmup, power) == 0.0


def test_param_groups_encoder_decoder_lr() -> None:
    cfg = load_config(None, [*TINY, "optim.lr=2e-6", "optim.decoder_lr_mult=10"])
    model = build_model(cfg)
    groups = param_groups(model, cfg.optim)
    names = {id(p): n for n, p in model.named_parameters()}
    for group in groups:
        encoder = group["name"].startswith("encoder")
        assert group["lr"] == pytest.approx(2e-6 if encoder else 2e-5)
        for p in group["params"]:
            assert names[id(p)].startswith("encoder.") == encoder
            if group["weight_decay"] > 0:
                assert p.ndim >= 2
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


# ------------------------------------------------------------------------------------ stages
@pytest.mark.parametrize("stage", ["teacher", "student", "finetune-metric"])
def test_stage_runs_and_exports(stage: str, tiny_data, tmp_path: Path, monkeypatch) -> None:
    from depth_anything_fast.models import DepthAnything
    from depth_anything_fast.train import trainer as trainer_module

    kept = []
    monkeypatch.setattr(trainer_module, "keep_freed_memory", lambda: kept.append(1) or True)
    extra = ("steps=2", "val_every=2", f"data.val={tiny_data['val']}", "val_input_size=56")
    cfg = load_config(None, _overrides(stage, tiny_data, tmp_path, *extra))
    result = Trainer(cfg).run()
    assert result["status"] == "done" and result["step"] == 2
    assert kept == [1]  # a CPU run keeps freed memory for the next step
    losses = _losses(tmp_path)
    assert sorted(losses) == [1, 2] and all(math.isfinite(v) for v in losses.values())
    *_, record, val = (json.loads(line) for line in (tmp_path / "metrics.jsonl").open())
    expected_parts = {"teacher": {"affine"}, "student": {"labelled", "unlabelled", "feature"},
                      "finetune-metric": {"silog"}}[stage]
    assert expected_parts <= set(record) and record["images_per_s"] > 0
    if stage == "student":  # total = mean of the three losses
        parts = sum(record[k] for k in expected_parts) / 3
        assert record["loss"] == pytest.approx(parts, rel=1e-5)
    exported = DepthAnything.from_pretrained(result["export"])
    assert exported.config.metric == (stage == "finetune-metric")
    x = torch.randn(1, 3, 56, 56)
    assert torch.isfinite(exported(x)).all()
    # validation at the last step scored the exported weights: relative models by aligned
    # disparity, the metric model's depth as it is (not its depth taken for disparity)
    from depth_anything_fast.evaluate.datasets import get_reader
    from depth_anything_fast.evaluate.runner import evaluate_predictions
    from depth_anything_fast.inference.predictor import Predictor
    from depth_anything_fast.recipe.synthetic import DEPTH_SPEC

    reader = get_reader("generic", tiny_data["val"], encoding=DEPTH_SPEC)
    predict = Predictor(exported, batch_size=4, precision="fp32", input_size=56).predict
    scoring = "metric" if exported.config.metric else "relative"
    expected = evaluate_predictions(reader, predict, scoring=scoring)
    assert val["step"] == 2 and val["val_images"] == 4
    assert val["val_abs_rel"] == pytest.approx(expected.mean["abs_rel"], rel=1e-4)


def test_loss_decreases_on_fixed_batch(tiny_data) -> None:
    from depth_anything_fast.data.loaders import labelled_loader

    cfg = load_config(None, [*TINY, "optim.lr=1e-3", "optim.decoder_lr_mult=2"])
    batch = next(iter(labelled_loader(tiny_data["labelled"], batch_size=4, crop_size=56,
                                      backend="pil", num_threads=1)))
    model = build_model(cfg)
    optimizer = build_optimizer(model, cfg.optim)
    losses = []
    for _ in range(15):
        loss, _ = stages.teacher_loss(model, batch, cfg.loss)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(loss.detach()))
    assert min(losses[-3:]) < 0.8 * losses[0], losses


def test_nan_loss_stops_naming_step_and_sources(tiny_data, tmp_path: Path, monkeypatch) -> None:
    real = stages.teacher_loss
    calls = {"n": 0}

    def poisoned(model, batch, cfg):
        loss, parts = real(model, batch, cfg)
        calls["n"] += 1
        return (loss * math.nan if calls["n"] == 2 else loss), parts

    monkeypatch.setattr(stages, "teacher_loss", poisoned)
    cfg = load_config(None, _overrides("teacher", tiny_data, tmp_path, "steps=4"))
    with pytest.raises(NonFiniteLossError, match=r"at step 2; batch sources: \[.*\.png") as err:
        Trainer(cfg).run()
    assert str(tiny_data["labelled"]) in str(err.value)
    assert (tmp_path / "checkpoints" / "step_00000001").is_dir()


@pytest.mark.parametrize("fsdp", [False, True], ids=["single-process", "fsdp2"])
def test_one_compute_dtype_serves_both_paths(tiny_data, tmp_path: Path, monkeypatch,
                                             fsdp: bool) -> None:
    """dist.precision auto on a CPU with native bf16 (the flag mocked) computes in bf16 on both
    paths. A single process keeps fp32 parameters and autocasts, the frozen encoder included:
    started from the same weights, its tokens equal the student's exactly. FSDP2 gets the dtype
    as its MixedPrecisionPolicy's param_dtype (fully_shard recorded, not run: no process group)
    and the frozen encoder is cast to it, as FSDP2 casts the student."""
    import torch.distributed.device_mesh as device_mesh
    import torch.distributed.fsdp as fsdp_module

    from depth_anything_fast.train import distributed
    from depth_anything_fast.train.distributed import DistInfo, autocast_context

    monkeypatch.setattr(distributed, "cpu_has_native_bf16", lambda: True)
    policies = []
    monkeypatch.setattr(fsdp_module, "fully_shard",
                        lambda module, mesh, mp_policy: policies.append(mp_policy))
    monkeypatch.setattr(device_mesh, "init_device_mesh", lambda *args, **kwargs: None)
    cfg = load_config(None, _overrides("student", tiny_data, tmp_path, "dist.precision=auto",
                                       f"dist.fsdp={str(fsdp).lower()}",
                                       f"model.init={tiny_data['teacher']}",
                                       "model.allow_head_init=true"))
    cpu = torch.device("cpu")
    run = Trainer(cfg)._build(DistInfo(rank=0, world_size=1, local_rank=0, device=cpu))
    assert run.compute_dtype == torch.bfloat16 and run.fsdp is fsdp
    assert run.frozen is not None
    frozen_dtype = next(run.frozen.parameters()).dtype
    if fsdp:
        assert policies and all(p.param_dtype == torch.bfloat16
                                and p.reduce_dtype == torch.float32 for p in policies)
        assert frozen_dtype == torch.bfloat16
        with autocast_context(run.compute_dtype, cpu, run.fsdp):
            assert not torch.is_autocast_enabled("cpu")
        return
    assert not policies and frozen_dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in run.model.parameters())
    x = torch.randn(2, 3, 56, 56)
    with torch.no_grad(), autocast_context(run.compute_dtype, cpu, run.fsdp):
        assert torch.is_autocast_enabled("cpu")
        _, tokens = run.model.eval()(x, return_features=True)
        frozen_tokens = run.frozen.patch_tokens(x)
    assert torch.equal(tokens, frozen_tokens)


def test_more_ranks_than_gpus_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from depth_anything_fast.train.config import DistConfig
    from depth_anything_fast.train.distributed import init_distributed

    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ValueError, match=r"LOCAL_RANK=1 but 1 CUDA device\(s\) are visible"):
        init_distributed(DistConfig())


def test_step_monitor_single_process_loss_stop_and_nonfinite() -> None:
    def settle(loss: torch.Tensor, stop: bool):
        monitor = StepMonitor()
        monitor.record(1, loss, [])
        settled = monitor.settle(stop)
        return settled.loss, settled.nonfinite_step is not None, settled.stop

    assert settle(torch.tensor(2.5), False) == (2.5, False, False)
    assert settle(torch.tensor(2.5), True) == (2.5, False, True)
    for bad in (math.nan, math.inf, -math.inf):
        assert settle(torch.tensor(bad, dtype=torch.bfloat16), False)[1:] == (True, False)


def test_batch_stream_resume_is_exact_without_decoding_consumed_batches(
    tiny_data, monkeypatch
) -> None:
    from depth_anything_fast.data import labelled_loader, pil_pipelines
    from depth_anything_fast.train.batch_stream import BatchStream

    def stream() -> BatchStream:
        return BatchStream(labelled_loader(tiny_data["labelled"], batch_size=1, crop_size=56,
                                           seed=5, backend="pil", num_threads=1, prefetch=1),
                           "data.labelled")

    per_epoch = len(stream().loader)
    assert per_epoch == 12
    full = stream()
    expected = [next(full) for _ in range(per_epoch + 3)]  # into the second epoch
    cut_at = per_epoch - 2
    first = stream()
    for _ in range(cut_at):
        next(first)
    state = first.state_dict()

    decoded: list[str] = []
    real = pil_pipelines.process
    monkeypatch.setattr(pil_pipelines, "process", lambda job: decoded.append(job.path) or real(job))
    resumed = stream()
    resumed.load_state_dict(state)
    got = [next(resumed) for _ in range(len(expected) - cut_at)]
    # only the batches after the cut (plus prefetch), not the cut_at consumed ones again
    assert len(decoded) <= len(got) + 2, decoded
    for want, have in zip(expected[cut_at:], got, strict=True):
        assert have["paths"] == want["paths"]
        assert torch.equal(have["image"], want["image"])
        assert torch.equal(have["disparity"], want["disparity"])


# ------------------------------------------------------------------------------------ processes
def _run(args: list[str], **kwargs) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kwargs)


def _train_args(overrides: list[str], *extra: str) -> list[str]:
    args = [sys.executable, "-m", "depth_anything_fast.train"]
    for item in overrides:
        args += ["--set", item]
    return args + list(extra)


def test_sigterm_and_resume_match_uninterrupted_run(tiny_data, tmp_path: Path) -> None:
    """SIGTERM once the first step is logged: the run saves a checkpoint at the step it is on
    and exits 143 (the signal path, not a finished run: 5 steps cannot pass between the poll
    and the signal); the resumed run then matches an uninterrupted one step for step."""
    common = ["steps=6", "checkpoint_every=0", "data.batch_size=2"]
    full = _run(_train_args(_overrides("teacher", tiny_data, tmp_path / "full", *common)))
    out = tmp_path / "cut"
    cut = _run(_train_args(_overrides("teacher", tiny_data, out, *common)))
    deadline = time.monotonic() + 120
    metrics = out / "metrics.jsonl"
    while not (metrics.exists() and metrics.read_text().count("\n") >= 1):
        assert cut.poll() is None, cut.communicate()[0]
        assert time.monotonic() < deadline
        time.sleep(0.005)
    cut.send_signal(signal.SIGTERM)
    log = cut.communicate(timeout=120)[0]
    assert cut.returncode == 143, log
    assert "SIGTERM received" in log and '"status": "terminated"' in log, log
    saved = (out / "checkpoints" / "latest").read_text()
    assert saved < "step_00000006", saved
    resumed = _run(_train_args(_overrides("teacher", tiny_data, out, *common), "--resume"))
    log = resumed.communicate(timeout=120)[0]
    assert resumed.returncode == 0, log
    assert full.wait(timeout=120) == 0, full.communicate()[0]
    expected, got = _losses(tmp_path / "full"), _losses(out)
    assert sorted(got) == list(range(1, 7))
    steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines()]
    assert steps == sorted(set(steps)), steps  # no step logged twice
    for step, loss in expected.items():
        assert got[step] == pytest.approx(loss, rel=1e-6, abs=1e-7), (step, expected, got)


def test_two_process_fsdp_matches_one_process(tiny_data, tmp_path: Path) -> None:
    """Same global batch (4 images: 1 x 4 vs 2 ranks x 2, same sampler order and crops):
    step 1 (identical weights) must agree to float rounding, later steps within 1e-3 (Adam
    turns rounding-level gradient differences into parameter differences). Then a resume of
    the two ranks whose newest checkpoint one rank cannot read: both fall back to the older
    one together and step 3 comes out the same."""
    # gloo on the CPU for both runs, also on a GPU machine (two ranks need two GPUs for NCCL)
    common = ["steps=3", "checkpoint_every=2", "export=false", "optim.lr=1e-4",
              "dist.comm_backend=gloo"]
    one = _run(_train_args(_overrides("teacher", tiny_data, tmp_path / "one", *common,
                                      "data.batch_size=4")))
    two_args = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc-per-node=2", "-m", "depth_anything_fast.train"]
    for item in _overrides("teacher", tiny_data, tmp_path / "two", *common, "data.batch_size=2",
                           "dist.fsdp=true"):
        two_args += ["--set", item]
    two = _run(two_args)
    log_two = two.communicate(timeout=180)[0]
    log_one = one.communicate(timeout=180)[0]
    assert one.returncode == 0, log_one
    assert two.returncode == 0, log_two
    records = {}
    for name in ("one", "two"):
        lines = (tmp_path / name / "metrics.jsonl").read_text().splitlines()
        records[name] = {r["step"]: r for r in map(json.loads, lines)}
    assert sorted(records["two"]) == [1, 2, 3]
    first_one, first_two = records["one"][1], records["two"][1]
    assert first_two["loss"] == pytest.approx(first_one["loss"], rel=1e-5)
    assert first_two["grad_norm"] == pytest.approx(first_one["grad_norm"], rel=1e-4)
    for step in (2, 3):
        assert records["two"][step]["loss"] == pytest.approx(records["one"][step]["loss"],
                                                             rel=1e-3), (records, step)
    (tmp_path / "two" / "checkpoints" / "step_00000003" / "rank1.json").write_text("{cut")
    resumed = _run([*two_args, "--resume"])
    log = resumed.communicate(timeout=180)[0]
    assert resumed.returncode == 0, log
    assert "rank 1: " in log and "rank1.json: not valid JSON" in log, log
    assert "resuming from" in log and "step_00000002" in log, log
    lines = (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()
    again = {r["step"]: r for r in map(json.loads, lines)}
    assert sorted(again) == [1, 2, 3]
    assert again[3]["loss"] == pytest.approx(records["two"][3]["loss"], rel=1e-6)
