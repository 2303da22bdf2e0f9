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
from depth_anything_fast.train.cli import main as train_main
from depth_anything_fast.train.config import ConfigError, load_config
from depth_anything_fast.train.trainer import RunDirError, Trainer

TINY = [
    "model.encoder=tiny", "model.embed_dim=32", "model.depth=4", "model.num_heads=2",
    "model.features=16", "data.crop_size=28", "data.batch_size=2", "data.pipeline=pil",
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
    from depth_anything_fast.recipe.synthetic import generate_dataset

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
    # what was installed before (a background job starts with SIGINT ignored, not Python's)
    before = signal.getsignal(signal.SIGINT)
    assert train_main(args) == 130
    ckpts = out / "checkpoints"
    assert (ckpts / "latest").read_text() == "step_00000002"
    assert signal.getsignal(signal.SIGINT) is before  # restored


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
    cfg = load_config(None, ["dist.fsdp=true", "dist.comm_backend=gloo", "dist.timeout_minutes=90"])
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


# ------------------------------------------------------------------------------ inference
def _tiny_model(seed: int):
    from depth_anything_fast.models import DepthAnything, DepthAnythingConfig

    torch.manual_seed(seed)
    config = DepthAnythingConfig.preset("vits", embed_dim=32, depth=4, num_heads=2, features=16,
                                        out_channels=(8, 16, 32, 32))
    model = DepthAnything(config=config).eval()
    with torch.no_grad():
        model.head.scratch.output_conv2[2].bias.fill_(1.0)  # a map that is not all zeros
    return model


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """12 small JPEGs (two sizes) in a folder, and two tiny models' weights beside it."""
    import numpy as np
    from PIL import Image

    root = tmp_path_factory.mktemp("faults_photos")
    (root / "src").mkdir()
    rng = np.random.default_rng(0)
    for i in range(12):
        size = (42, 56) if i % 2 else (56, 42)
        pixels = rng.integers(0, 255, (*size, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / "src" / f"p{i:02d}.jpg")
    _tiny_model(1).save_pretrained(root / "weights_a.safetensors")
    _tiny_model(2).save_pretrained(root / "weights_b.safetensors")
    return root


PL = {"input_size": 42, "batch_size": 4, "precision": "fp32", "device": "cpu",
      "handle_signals": False}


def _label(photos: Path, weights: Path, out: Path, src: Path | str | None = None, **kw):
    from depth_anything_fast.inference.pseudo_label import pseudo_label

    return pseudo_label(weights, src or photos / "src", out, **{**PL, **kw})


def test_changed_weights_are_refused_or_overwritten(photos, tmp_path) -> None:
    from depth_anything_fast.formats.manifest import read_all_records

    weights, out = tmp_path / "w.safetensors", tmp_path / "labels"
    shutil.copy(photos / "weights_a.safetensors", weights)
    assert _label(photos, weights, out).succeeded == 12
    old = read_all_records(out)
    shutil.copy(photos / "weights_b.safetensors", weights)  # new weights, same path
    with pytest.raises(ValueError, match=r"holds labels made by other weights .*sha256:.*"
                                         r"--overwrite"):
        _label(photos, weights, out)
    summary = _label(photos, weights, out, overwrite=True)
    assert (summary.succeeded, summary.skipped) == (12, 0)
    new = read_all_records(out)
    assert len(new) == 12 and all(new[k].checksum != old[k].checksum for k in new)
    assert sum(1 for _ in (out / "manifest.jsonl").open()) == 12  # the old lines are gone
    # same weights under another path: content decides, everything is skipped
    moved = tmp_path / "moved.safetensors"
    shutil.copy(weights, moved)
    assert _label(photos, moved, out).skipped == 12


def test_second_run_into_the_same_folder_is_refused(photos, tmp_path) -> None:
    from depth_anything_fast.inference.pseudo_label import _OutputLock

    out = tmp_path / "labels"
    out.mkdir()
    held = _OutputLock(out, 0)  # another run holding rank 0's lock
    try:
        with pytest.raises(ValueError, match=r"another pseudo-label run \(pid \d+\) is writing"):
            _label(photos, photos / "weights_a.safetensors", out)
    finally:
        held.release()
    assert _label(photos, photos / "weights_a.safetensors", out).succeeded == 12


def _spy_model_runs(monkeypatch) -> list[int]:
    from depth_anything_fast.inference.predictor import Predictor

    calls: list[int] = []
    real = Predictor.predict_tensor
    monkeypatch.setattr(Predictor, "predict_tensor",
                        lambda self, batch: calls.append(len(batch)) or real(self, batch))
    return calls


def test_unusable_output_is_a_usage_error_before_the_model_runs(photos, tmp_path, capsys,
                                                                  monkeypatch) -> None:
    import errno

    from depth_anything_fast.cli import main

    runs = _spy_model_runs(monkeypatch)
    a_file = tmp_path / "taken"
    a_file.write_text("x")
    weights = str(photos / "weights_a.safetensors")
    for output, message in ((a_file, "exists and is not a directory"),
                            (a_file / "sub", "is a file, not a directory")):
        assert main(["pseudo-label", "--weights", weights, "--input", str(photos / "src"),
                     "--output", str(output), "--device", "cpu", "--no-progress"]) == 2
        assert message in capsys.readouterr().err
        assert main(["predict", "--weights", weights, str(photos / "src"), "--outdir",
                     str(output), "--device", "cpu", "--no-progress"]) == 2
        assert message in capsys.readouterr().err
    # a read-only file system (injected: the probe write fails with EROFS)
    real_write = Path.write_bytes

    def read_only(self, data):
        if ".write-probe" in self.name:
            raise OSError(errno.EROFS, "Read-only file system")
        return real_write(self, data)

    monkeypatch.setattr(Path, "write_bytes", read_only)
    with pytest.raises(ValueError, match="cannot write there \\(Read-only file system\\)"):
        _label(photos, photos / "weights_a.safetensors", tmp_path / "ro")
    assert runs == []


def _fill_disk_after(monkeypatch, allowed: int, suffix: str = ".png") -> None:
    """os.replace of the writers fails with ENOSPC after `allowed` outputs."""
    import errno
    import threading

    from depth_anything_fast.inference import writers

    real, lock, done = os.replace, threading.Lock(), [0]

    def replace(src, dst):
        if str(dst).endswith(suffix):
            with lock:
                done[0] += 1
                if done[0] > allowed:
                    raise OSError(errno.ENOSPC, "No space left on device")
        return real(src, dst)

    monkeypatch.setattr(writers.os, "replace", replace)


def _temporaries(root: Path) -> list[str]:
    return [str(p) for p in root.rglob("*.tmp")]


def test_full_disk_stops_pseudo_label_at_once(photos, tmp_path, capsys, caplog,
                                              monkeypatch) -> None:
    from collections import namedtuple

    from depth_anything_fast.cli import main
    from depth_anything_fast.formats.manifest import finished_records, read_all_records

    runs = _spy_model_runs(monkeypatch)
    _fill_disk_after(monkeypatch, allowed=2)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**6, 0, 3 * 42 * 42 * 3))
    out = tmp_path / "labels"
    code = main(["pseudo-label", "--weights", str(photos / "weights_a.safetensors"), "--input",
                 str(photos / "src"), "--output", str(out), "--device", "cpu", "--precision",
                 "fp32", "--input-size", "42", "--batch-size", "1", "--writer-threads", "1",
                 "--num-workers", "1", "--no-progress"])
    captured = capsys.readouterr()
    assert code == 3, captured
    assert "the run will stop when the disk is full" in caplog.text  # said before it ran
    assert "No space left on device" in captured.err and "stopped (" in captured.out
    assert "2 succeeded" in captured.out
    assert sum(runs) < 12  # stopped, not run over the whole collection
    assert _temporaries(out) == []
    assert (out / "errors.jsonl").read_text() == ""  # not counted as failed inputs
    assert len(finished_records(out)) == len(read_all_records(out)) == 2
    monkeypatch.undo()  # room again: the rerun resumes
    summary = _label(photos, photos / "weights_a.safetensors", out)
    assert (summary.skipped, summary.succeeded, summary.exit_code) == (2, 10, 0)


def test_no_room_for_one_output_is_a_usage_error(tmp_path, monkeypatch) -> None:
    from collections import namedtuple

    from depth_anything_fast.inference.writers import make_output_dir

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**6, 10**6, 1000))
    with pytest.raises(ValueError, match="only 0.0 MB free on its disk, not enough for one"):
        make_output_dir(tmp_path / "out", min_free=10_000)


def test_full_disk_drops_the_open_tar_shard(photos, tmp_path, monkeypatch) -> None:
    _fill_disk_after(monkeypatch, allowed=0, suffix=".tar")
    out = tmp_path / "shards"
    summary = _label(photos, photos / "weights_a.safetensors", out, format="webdataset")
    assert summary.exit_code == 3 and "No space left on device" in (summary.error or "")
    assert summary.succeeded == 0 and _temporaries(out) == [] and not list(out.glob("*.tar"))
    assert (out / "manifest.jsonl").read_text() == ""  # no record for a shard never written


def test_full_disk_stops_predict(photos, tmp_path, capsys, monkeypatch) -> None:
    from depth_anything_fast.cli import main

    _fill_disk_after(monkeypatch, allowed=1)
    out = tmp_path / "vis"
    code = main(["predict", "--weights", str(photos / "weights_a.safetensors"),
                 str(photos / "src"), "--outdir", str(out), "--device", "cpu", "--input-size",
                 "42", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 3 and "No space left on device" in err and "stopped after" in err
    assert _temporaries(out) == []


def test_listing_faults_are_recorded_with_absolute_paths(photos, tmp_path, monkeypatch) -> None:
    src = tmp_path / "src"
    shutil.copytree(photos / "src", src)
    (src / "anim.gif").write_bytes(b"GIF89a")
    (src / "notes.txt").write_text("x")
    (src / "broken.jpg").write_bytes(b"not a jpeg")
    monkeypatch.chdir(tmp_path)
    summary = _label(photos, photos / "weights_a.safetensors", Path("out_dir"), src="src")
    assert (summary.succeeded, summary.failed, summary.unsupported) == (12, 1, 2)
    errors = [json.loads(line) for line in (tmp_path / "out_dir/errors.jsonl").open()]
    assert all(os.path.isabs(e["input"]) for e in errors)
    assert {Path(e["input"]).name: e["stage"] for e in errors} == {
        "anim.gif": "list", "notes.txt": "list", "broken.jpg": "decode"}
    assert "unsupported files skipped" in summary.line()
    # a list file naming a missing image: reported and skipped, the rest is labelled
    (tmp_path / "list.txt").write_text("src/p00.jpg\nsrc/gone.jpg\nsrc/p01.jpg\n")
    summary = _label(photos, photos / "weights_a.safetensors", Path("out_list"), src="list.txt")
    assert (summary.succeeded, summary.failed, summary.exit_code) == (2, 1, 1)
    (line,) = (tmp_path / "out_list/errors.jsonl").read_text().splitlines()
    assert json.loads(line) == {"input": str(tmp_path / "src/gone.jpg"),
                                "reason": "file not found (listed in the input)", "stage": "list"}


def test_model_flags_device_and_precision_messages(photos, tmp_path, caplog, monkeypatch,
                                                   capsys) -> None:
    from depth_anything_fast.cli import main
    from depth_anything_fast.inference import predictor

    # a name that says nothing about the version: warned in CLI words, --version settles it
    weights = tmp_path / "model.safetensors"
    _tiny_model(1).save_pretrained(weights)
    raw = tmp_path / "raw.pth"
    from depth_anything_fast.models import DepthAnything

    torch.save({k.replace("encoder.", "pretrained.").replace("head.", "depth_head.", 1): v
                for k, v in DepthAnything.from_pretrained(weights).state_dict().items()}, raw)
    # (a custom width: the head count stops it after the warning)
    with caplog.at_level(logging.WARNING), pytest.raises(ValueError, match="number of heads"):
        DepthAnything.from_pretrained(raw)
    assert "--version v1 on the command line" in caplog.text
    out = tmp_path / "labels"
    assert main(["pseudo-label", "--weights", str(weights), "--input", str(photos / "src"),
                 "--output", str(out), "--version", "v1", "--device", "cpu", "--input-size",
                 "42", "--no-progress"]) == 0
    assert json.loads((out / "run_config.json").read_text())["model"]["version"] == "v1"
    assert "images/s" in capsys.readouterr().out
    assert main(["predict", "--weights", str(weights), str(photos / "src" / "p00.jpg"),
                 "--outdir", str(tmp_path / "vis"), "--device", "cpu", "--input-size", "42",
                 "--no-progress"]) == 0
    assert "images/s" in capsys.readouterr().out  # speed reported
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="--device cuda: (this torch build has no CUDA "
                                             "support|no CUDA GPU is visible)"):
            predictor.resolve_device("cuda")
        assert main(["predict", "--weights", str(weights), str(photos / "src"), "--outdir",
                     str(tmp_path / "v2"), "--device", "cuda", "--no-progress"]) == 2
        assert "use --device cpu" in capsys.readouterr().err
    from depth_anything_fast.inference import runtimes

    monkeypatch.setattr(runtimes, "cpu_has_native_bf16", lambda: False)
    with caplog.at_level(logging.WARNING):
        assert runtimes.resolve_precision("bf16", torch.device("cpu")) == "bf16"
    assert "without native bf16" in caplog.text


def test_bad_checkpoints_are_named_without_unsafe_advice(tmp_path) -> None:
    from depth_anything_fast.models import DepthAnything

    junk = tmp_path / "junk.pth"
    junk.write_bytes(os.urandom(4096))
    with pytest.raises(ValueError, match="junk.pth: truncated or corrupt") as err:
        DepthAnything.from_pretrained(junk)
    assert "weights_only=False" not in str(err.value)
    one = tmp_path / "one.pth"
    torch.save({"cls_token": torch.zeros(1, 1, 32)}, one)
    with pytest.raises(ValueError, match="lacks the encoder tensors"):
        DepthAnything.from_pretrained(one)


def test_ctrl_c_in_the_inference_commands_is_one_line(photos, tmp_path, capsys,
                                                      monkeypatch) -> None:
    from depth_anything_fast.cli import main
    from depth_anything_fast.inference import pictures, pseudo_label

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pseudo_label, "pseudo_label", interrupted)
    monkeypatch.setattr(pictures, "predict_files", interrupted)
    weights = str(photos / "weights_a.safetensors")
    assert main(["pseudo-label", "--weights", weights, "--input", str(photos / "src"),
                 "--output", str(tmp_path / "o")]) == 130
    assert "aborted: the outputs written are complete" in capsys.readouterr().err
    assert main(["predict", "--weights", weights, str(photos / "src")]) == 130
    assert "interrupted: the images written are complete" in capsys.readouterr().err
