"""Fault injection: crafted pickles, reused and corrupted run folders, changed weights, full
disks and unusable outputs, signals, and the messages of bad input.

Each test drives one fault end to end and checks the run refuses or stops with a message that
names it, runs no code from a file (crafted pickles would create their marker file), and
leaves nothing corrupt behind. Models are tiny (embed 32, depth 4) so the file stays fast.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import shutil
import signal
from pathlib import Path

import pytest
import torch

from depth_anything_fast.train import stages
from depth_anything_fast.train.__main__ import main as train_main
from depth_anything_fast.train.config import ConfigError, load_config
from depth_anything_fast.train.trainer import RunDirError, Trainer

TINY = [
    "model.encoder=tiny", "model.embed_dim=32", "model.depth=4", "model.num_heads=2",
    "model.features=16", "data.crop_size=28", "data.batch_size=2", "data.backend=pil",
    "data.num_threads=1", "dist.precision=fp32", "progress=false", "log_every=1",
    "tensorboard=false", "optim.lr=1e-3", "optim.warmup_steps=0", "export=false",
]


class _Marker:
    """Unpickling this creates `path`: proof that a file ran code."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


@pytest.fixture(scope="module")
def labelled(tmp_path_factory) -> Path:
    from depth_anything_fast.data.synthetic import generate_dataset

    root = tmp_path_factory.mktemp("faults_data")
    return generate_dataset(root / "data", n_labelled=8, n_unlabelled=0, n_val=0,
                            size=(40, 40), seed=1).labelled


def _cfg(labelled: Path, out: Path, *extra: str):
    return load_config(None, [*TINY, f"out_dir={out}", f"data.labelled={labelled}", *extra])


@pytest.fixture(scope="module")
def trained_run(labelled, tmp_path_factory) -> Path:
    """A finished 4-step run with checkpoints at steps 2 and 4."""
    out = tmp_path_factory.mktemp("faults_run") / "run"
    result = Trainer(_cfg(labelled, out, "steps=4", "checkpoint_every=2")).run()
    assert result["status"] == "done"
    return out


@pytest.fixture
def run_copy(trained_run, tmp_path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(trained_run, out)
    return out


def _steps(out: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]


# ------------------------------------------------------------------------------ training
def test_crafted_rank_state_is_refused_without_running(labelled, run_copy, tmp_path) -> None:
    marker = tmp_path / "ran"
    for step in ("step_00000002", "step_00000004"):
        torch.save({"0": _Marker(marker)}, run_copy / "checkpoints" / step / "rank0.pt")
    cfg = _cfg(labelled, run_copy, "steps=4", "checkpoint_every=2")
    with pytest.raises(ValueError, match=r"no readable checkpoint.*rank0\.pt: not a plain "
                                         r"tensor file, refused"):
        Trainer(cfg, resume=True).run()
    assert not marker.exists()


def test_crafted_dcp_metadata_is_refused_without_running(labelled, run_copy, tmp_path) -> None:
    marker = tmp_path / "ran"
    for step in ("step_00000002", "step_00000004"):
        (run_copy / "checkpoints" / step / ".metadata").write_bytes(pickle.dumps(_Marker(marker)))
    with pytest.raises(ValueError, match=r"\.metadata: not a valid checkpoint metadata file "
                                         r"\(refused to load pathlib\.Path\.touch"):
        Trainer(_cfg(labelled, run_copy, "steps=4", "checkpoint_every=2"), resume=True).run()
    assert not marker.exists()


def test_resume_falls_back_to_the_newest_readable_checkpoint(labelled, run_copy, caplog) -> None:
    newest = run_copy / "checkpoints" / "step_00000004"
    data = next(newest.glob("*.distcp"))
    data.write_bytes(data.read_bytes()[:100])  # truncated
    with caplog.at_level(logging.WARNING):
        result = Trainer(_cfg(labelled, run_copy, "steps=4", "checkpoint_every=2"),
                         resume=True).run()
    assert result["status"] == "done" and result["step"] == 4
    assert "resuming from" in caplog.text and "step_00000002" in caplog.text
    assert "step_00000004 skipped" in caplog.text
    # steps 3 and 4 were computed again and logged once
    assert _steps(run_copy) == [1, 2, 3, 4]


def test_fresh_run_refuses_a_used_out_dir(labelled, run_copy, capsys) -> None:
    before = sorted(p.name for p in (run_copy / "checkpoints").iterdir())
    with pytest.raises(RunDirError, match="is not empty.*--resume.*--overwrite"):
        Trainer(_cfg(labelled, run_copy, "steps=2")).run()
    assert sorted(p.name for p in (run_copy / "checkpoints").iterdir()) == before
    # through the command line: exit 2 and the message
    assert train_main(["--set", f"out_dir={run_copy}", "--set", f"data.labelled={labelled}",
                       *(x for item in TINY for x in ("--set", item))]) == 2
    assert "is not empty" in capsys.readouterr().err
    # --overwrite: the old run's outputs go, the new run's checkpoint is kept and is latest
    result = Trainer(_cfg(labelled, run_copy, "steps=1"), overwrite=True).run()
    assert result["status"] == "done"
    ckpts = run_copy / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["latest", "step_00000001"]
    assert (ckpts / "latest").read_text() == "step_00000001"
    assert _steps(run_copy) == [1]


def test_pruning_keeps_the_newest_steps_of_this_run(tmp_path) -> None:
    from depth_anything_fast.train.checkpoint import latest_checkpoint, save_checkpoint
    from depth_anything_fast.train.distributed import DistInfo

    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    info = DistInfo(0, 1, 0, torch.device("cpu"))
    root = tmp_path / "checkpoints"
    for step in (1, 3, 9, 100_000_000):  # 9 and 1e8: ahead of this run (before a resume)
        (root / f"step_{step:08d}").mkdir(parents=True)
    save_checkpoint(root, 4, model, optimizer, {}, info, keep=2)
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step_00000003", "step_00000004"]
    assert latest_checkpoint(root) == root / "step_00000004"


def test_resume_with_other_steps_is_refused(labelled, run_copy) -> None:
    with pytest.raises(RunDirError, match=r"run of steps=4, this config has steps=6.*learning "
                                          r"rate schedule"):
        Trainer(_cfg(labelled, run_copy, "steps=6"), resume=True).run()


def test_ctrl_c_saves_a_checkpoint_and_exits_130(labelled, tmp_path, monkeypatch) -> None:
    real, calls = stages.teacher_loss, []

    def interrupted(*args):
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGINT)
        return real(*args)

    monkeypatch.setattr(stages, "teacher_loss", interrupted)
    out = tmp_path / "run"
    args = [x for item in [*TINY, f"out_dir={out}", f"data.labelled={labelled}", "steps=50"]
            for x in ("--set", item)]
    assert train_main(args) == 130
    ckpts = out / "checkpoints"
    assert (ckpts / "latest").read_text() == "step_00000002"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored


def test_second_ctrl_c_aborts() -> None:
    from depth_anything_fast.runtime import StopSignals

    with StopSignals() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested and stop.exit_code == 143
        os.kill(os.getpid(), signal.SIGTERM)  # a repeated SIGTERM only stops
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)


def test_metrics_are_valid_json_when_a_value_is_not_finite(tmp_path, caplog, monkeypatch) -> None:
    import sys

    from depth_anything_fast.train.distributed import DistInfo
    from depth_anything_fast.train.trainer import _MetricsLogger

    # tensorboard asked for but not installed: said so, metrics still written
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    cfg = load_config(None, ["tensorboard=true"])
    with caplog.at_level(logging.WARNING), \
            _MetricsLogger(tmp_path, cfg, DistInfo(0, 1, 0, torch.device("cpu"))) as logger:
        logger.log({"step": 1, "loss": float("nan"), "grad_norm": float("inf"), "lr": [1e-3]})
    assert "tensorboard package is not installed" in caplog.text

    def strict(token: str):
        raise ValueError(f"invalid JSON number {token}")

    line = (tmp_path / "metrics.jsonl").read_text()
    assert json.loads(line, parse_constant=strict) == {"step": 1, "loss": None,
                                                       "grad_norm": None, "lr": [1e-3]}


def test_yaml_syntax_error_is_a_config_error(tmp_path, capsys) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim:\n  lr: [1e-4\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_config(bad)
    assert train_main(["--config", str(bad)]) == 2
    assert "not valid YAML" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="is not valid YAML"):
        load_config(None, ["optim.betas=[0.9"])


def test_collective_timeout_is_configurable(monkeypatch) -> None:
    import datetime

    import torch.distributed as dist

    from depth_anything_fast.train.distributed import init_distributed

    seen = {}
    monkeypatch.setattr(dist, "init_process_group", lambda **kw: seen.update(kw))
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    for name in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    cfg = load_config(None, ["dist.fsdp=true", "dist.backend=gloo", "dist.timeout_minutes=90"])
    init_distributed(cfg.dist)
    assert seen["timeout"] == datetime.timedelta(minutes=90)
    with pytest.raises(ConfigError, match="dist.timeout_minutes: must be > 0"):
        load_config(None, ["dist.timeout_minutes=0"])


def test_launch_env_names_the_bad_variable() -> None:
    from depth_anything_fast.runtime import launch_env

    assert launch_env({}).world_size == 1
    env = launch_env({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1",
                      "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "h"})
    assert (env.rank, env.world_size, env.local_rank, env.has_rendezvous) == (1, 2, 1, True)
    with pytest.raises(ValueError, match="WORLD_SIZE='two' is not an integer"):
        launch_env({"WORLD_SIZE": "two"})
    with pytest.raises(ValueError, match="invalid RANK=2 for WORLD_SIZE=2"):
        launch_env({"RANK": "2", "WORLD_SIZE": "2"})
