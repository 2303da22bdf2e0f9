"""The recipe pieces issue 11 added: the student's init guard, the "paper" optimiser preset,
the student's ablation switches, the semantic encoder (semantics only, cached) and the
statistics of the demo / ablation reports."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from depth_anything_fast.train.config import ConfigError, LossConfig, load_config
from depth_anything_fast.train.optim import param_groups
from depth_anything_fast.train.trainer import build_model

TINY = ["model.encoder=tiny", "model.embed_dim=32", "model.depth=4", "model.num_heads=2",
        "model.features=16", "data.crop_size=56", "dist.precision=fp32"]


# ------------------------------------------------------------------------------ init guard
def _save_tiny(tmp_path: Path, encoder_only: bool) -> Path:
    from depth_anything_fast.models.weights import save_file

    model = build_model(load_config(None, TINY))
    state = model.state_dict()
    if encoder_only:
        path = tmp_path / "encoder.safetensors"
        save_file({k: v for k, v in state.items() if k.startswith("encoder.")}, path,
                  model.config)
        return path
    return model.save_pretrained(tmp_path / "full")


def test_student_refuses_an_init_checkpoint_with_a_head(tmp_path: Path) -> None:
    full = _save_tiny(tmp_path, encoder_only=False)
    with pytest.raises(ValueError, match=r"model.init: .* holds a DPT head.*allow_head_init"):
        build_model(load_config(None, [*TINY, "stage=student", f"model.init={full}"]))
    # overridable, and the teacher stage may start from any checkpoint
    allowed = build_model(load_config(None, [*TINY, "stage=student", f"model.init={full}",
                                             "model.allow_head_init=true"]))
    reference = build_model(load_config(None, TINY))
    reference.load_state_dict(dict(__import__("safetensors.torch", fromlist=["x"]).load_file(
        str(full))))
    for (name, a), b in zip(allowed.state_dict().items(), reference.state_dict().values()):
        assert torch.equal(a, b), name
    build_model(load_config(None, [*TINY, "stage=teacher", f"model.init={full}"]))


def test_student_starts_from_an_encoder_only_checkpoint(tmp_path: Path) -> None:
    from depth_anything_fast.models import build_frozen_encoder

    path = _save_tiny(tmp_path, encoder_only=True)
    model = build_model(load_config(None, [*TINY, "stage=student", f"model.init={path}"]))
    frozen = build_frozen_encoder(path)  # an encoder-only file of ours loads as frozen encoder
    for (name, a), b in zip(model.encoder.state_dict().items(), frozen.state_dict().values()):
        assert torch.equal(a, b), name
    assert not any(p.requires_grad for p in frozen.parameters())


# ------------------------------------------------------------------------------ optimiser
def test_paper_optimiser_preset() -> None:
    default = load_config(None, TINY).optim
    assert (default.preset, default.warmup_steps, default.grad_clip,
            default.decay_all_params) == ("default", 0, 1.0, False)
    paper = load_config(None, [*TINY, "optim.preset=paper", "optim.weight_decay=0.05"]).optim
    assert (paper.warmup_steps, paper.grad_clip, paper.decay_all_params) == (0, 0.0, True)
    model = build_model(load_config(None, TINY))
    groups = param_groups(model, paper)
    assert all(g["weight_decay"] == 0.05 for g in groups)  # norms, biases, tokens included
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    assert any(g["weight_decay"] == 0 for g in param_groups(model, default))
    # explicit fields win over the preset
    mixed = load_config(None, [*TINY, "optim.preset=paper", "optim.grad_clip=0.5"]).optim
    assert mixed.grad_clip == 0.5 and mixed.warmup_steps == 0
    with pytest.raises(ConfigError, match="optim.preset"):
        load_config(None, [*TINY, "optim.preset=adam"])


# ------------------------------------------------------------------------------ student switches
def _student_batches(nan_strong: bool) -> tuple[dict, dict]:
    b, u, c = 2, 4, 56
    labelled = {"image": torch.randn(b, 3, c, c), "disparity": torch.rand(b, c, c),
                "mask": torch.ones(b, c, c, dtype=torch.bool)}
    strong = torch.full((u, 3, c, c), float("nan")) if nan_strong else torch.randn(u, 3, c, c)
    pseudo = {"image": torch.randn(u, 3, c, c), "strong": strong,
              "disparity": torch.rand(u, c, c), "mask": torch.ones(u, c, c, dtype=torch.bool)}
    return labelled, pseudo


def test_student_ablation_switches() -> None:
    from depth_anything_fast.models import build_frozen_encoder
    from depth_anything_fast.train.stages import student_loss

    model = build_model(load_config(None, TINY))
    frozen = build_frozen_encoder(model)
    g = torch.Generator().manual_seed(0)
    labelled, pseudo = _student_batches(nan_strong=True)
    # the clean view is used when the strong perturbation is off: the NaN strong view is unseen
    off = LossConfig(strong_perturbation=False, feature_alignment=False, implementation="reference")
    total, parts = student_loss(model, labelled, pseudo, frozen, off, g)
    assert torch.isfinite(total) and set(parts) == {"labelled", "unlabelled"}
    torch.testing.assert_close(total, (parts["labelled"] + parts["unlabelled"]) / 2)
    on = LossConfig(strong_perturbation=True, feature_alignment=True, implementation="reference")
    assert not torch.isfinite(student_loss(model, labelled, pseudo, frozen, on, g)[0])
    labelled, pseudo = _student_batches(nan_strong=False)
    total, parts = student_loss(model, labelled, pseudo, frozen, on, g)
    assert set(parts) == {"labelled", "unlabelled", "feature"}
    torch.testing.assert_close(total, sum(parts.values()) / 3)


# ------------------------------------------------------------------------------ semantic encoder
def test_semantic_encoder_learns_semantics_only_and_is_cached(tmp_path: Path) -> None:
    """Trained from the unlabelled images and class maps alone (the depth folders are removed
    first), saved encoder-only, loaded as init and as frozen encoder, reused when unchanged."""
    import shutil

    from depth_anything_fast.models import DepthAnythingConfig, build_frozen_encoder
    from depth_anything_fast.models.weights import read_checkpoint
    from depth_anything_fast.recipe.semantic_encoder import (
        SemanticTraining,
        train_semantic_encoder,
    )
    from depth_anything_fast.recipe.synthetic import generate_dataset

    root = tmp_path / "world"
    generate_dataset(root, n_labelled=2, n_unlabelled=8, n_val=4, size=(60, 80), seed=1)
    shutil.rmtree(root / "labelled")
    shutil.rmtree(root / "val" / "depth")
    arch = DepthAnythingConfig.preset("tiny", "v2", embed_dim=32, depth=4, num_heads=2,
                                      features=16)
    settings = SemanticTraining(steps=3, batch_size=4, crop_size=56, warmup_steps=1)
    messages: list[str] = []
    path = train_semantic_encoder(root, arch, tmp_path / "enc", settings, messages.append)
    state, config = read_checkpoint(path)
    assert state and all(k.startswith("encoder.") for k in state) and config is not None
    info = json.loads((tmp_path / "enc" / "info.json").read_text())
    assert info["train_images"] == 8 and 0 <= info["val_kind_accuracy"] <= 1
    model = build_model(load_config(None, [*TINY, "stage=student", f"model.init={path}"]))
    torch.testing.assert_close(model.encoder.state_dict(), build_frozen_encoder(path).state_dict())
    mtime = os.stat(path).st_mtime_ns
    assert train_semantic_encoder(root, arch, tmp_path / "enc", settings,
                                  messages.append) == path
    assert os.stat(path).st_mtime_ns == mtime and "reusing" in messages[-1]


def test_patch_histograms_match_one_hot_pooling() -> None:
    import torch.nn.functional as F

    from depth_anything_fast.recipe.semantic_encoder import _patch_histograms

    classes = torch.randint(0, 10, (3, 28, 42))
    expected = F.avg_pool2d(F.one_hot(classes, 10).permute(0, 3, 1, 2).double(), 14)
    torch.testing.assert_close(_patch_histograms(classes, 10, 14).double(),
                               expected.flatten(2).transpose(1, 2), rtol=0, atol=1e-6)


# ------------------------------------------------------------------------------ report statistics
def test_bootstrap_ci_and_paired_differences(np_rng: np.random.Generator) -> None:
    from depth_anything_fast.recipe.statistics import bootstrap_ci, paired_differences

    values = np_rng.normal(-0.02, 0.05, 400)
    mean, lo, hi = bootstrap_ci(values, seed=3)
    se = values.std(ddof=1) / np.sqrt(values.size)
    assert mean == pytest.approx(values.mean())
    # percentile bootstrap of a mean of 400 normals ~ mean +- 1.96 se
    assert lo == pytest.approx(mean - 1.96 * se, abs=0.25 * se)
    assert hi == pytest.approx(mean + 1.96 * se, abs=0.25 * se)
    assert bootstrap_ci(values, seed=3) == (mean, lo, hi)
    with pytest.raises(ValueError, match="empty"):
        bootstrap_ci(np.array([]))
    a = [{"name": "x", "abs_rel": 0.3}, {"name": "y", "abs_rel": 0.1}, {"name": "z", "abs_rel": 1}]
    b = [{"name": "y", "abs_rel": 0.2}, {"name": "x", "abs_rel": 0.1}]
    np.testing.assert_allclose(paired_differences(a, b), [0.2, -0.1])


def test_ablation_summary_statistics(np_rng) -> None:
    from depth_anything_fast.recipe.ablation import ROWS, summarise
    from depth_anything_fast.recipe.statistics import t975

    kinds = ["room", "field"]
    names = {row.arm.name for row in ROWS} | {row.control for row in ROWS}
    scores = {name: {seed: [{"name": f"i{j}", "kind": kinds[j % 2], "abs_rel": float(v),
                             "delta1": 0.5} for j, v in enumerate(np_rng.uniform(0.1, 0.3, 10))]
                     for seed in (0, 1, 2)} for name in names}
    rows = summarise(scores, kinds)
    assert [r["row"] for r in rows] == [row.label for row in ROWS]
    for r, row in zip(rows, ROWS):
        by_seed = scores[row.arm.name]
        overall = np.array([np.mean([x["abs_rel"] for x in by_seed[s]]) for s in (0, 1, 2)])
        half = t975(2) * overall.std(ddof=1) / np.sqrt(3)
        assert r["abs_rel_mean"] == pytest.approx(overall.mean())
        assert r["abs_rel_ci"] == pytest.approx([overall.mean() - half, overall.mean() + half])
        room = np.mean([np.mean([x["abs_rel"] for x in by_seed[s][::2]]) for s in (0, 1, 2)])
        assert r["per_kind_abs_rel"]["room"] == pytest.approx(room)
        if row.arm.name == row.control:
            assert "vs_control" not in r
            continue
        control = scores[row.control]
        diff = np.mean([[a["abs_rel"] - b["abs_rel"] for a, b in zip(by_seed[s], control[s])]
                        for s in (0, 1, 2)])
        assert r["vs_control"]["overall"]["mean"] == pytest.approx(diff)
        assert r["vs_control"]["field"]["n_images"] == 5
    # a run cut short: rows missing for some seeds are summarised over the seeds they have
    del scores[ROWS[2].arm.name][2]
    partial = summarise(scores, kinds)
    assert partial[2]["seeds"] == [0, 1] and partial[4]["seeds"] == [0, 1, 2]
    assert partial[2]["vs_control"]["overall"]["seeds"] == [0, 1]
    half = t975(1) * np.std(partial[2]["abs_rel_per_seed"], ddof=1) / np.sqrt(2)
    assert partial[2]["abs_rel_ci"][1] - partial[2]["abs_rel_mean"] == pytest.approx(half)


# ------------------------------------------------------------------------------ runs and plans
def test_same_run_tells_finished_started_and_other_runs(tmp_path: Path) -> None:
    from depth_anything_fast.recipe.pipeline import STUDENT_CONFIG, same_run
    from depth_anything_fast.train.config import config_to_dict

    run = tmp_path / "student"
    run.mkdir()
    saved = ["seed=1", "data.labelled=w/labelled", "data.pseudo_labels=demo/seed1/pseudo_teacher",
             f"out_dir={run}", "progress=false"]
    (run / "config.json").write_text(
        json.dumps(config_to_dict(load_config(STUDENT_CONFIG, saved))))
    # where it wrote, its progress bar and the folder of the (same teacher's) labels do not
    # matter: the labels' folder is compared by name
    same = ["seed=1", "data.labelled=w/labelled",
            "data.pseudo_labels=ablation/seed1/pseudo_teacher", "out_dir=elsewhere",
            "loss.feature_alignment=true"]
    assert same_run(run, STUDENT_CONFIG, same) == "started"
    (run / "final").mkdir()
    (run / "final" / "model.safetensors").write_bytes(b"")
    assert same_run(run, STUDENT_CONFIG, same) == "finished"
    for change in ("seed=2", "loss.feature_alignment=false", "steps=7", "loss.cutmix_p=0.0",
                   "data.pseudo_labels=demo/seed1/pseudo_teacher_large"):
        assert same_run(run, STUDENT_CONFIG, [*same, change]) is None, change
    assert same_run(tmp_path / "absent", STUDENT_CONFIG, same) is None


def _stub_world(tmp_path: Path):
    from types import SimpleNamespace

    layout = SimpleNamespace(labelled=tmp_path / "l", unlabelled=tmp_path / "u", root=tmp_path)
    return SimpleNamespace(layout=layout, encoders={"base": tmp_path / "enc",
                                                    "big": tmp_path / "big_enc"})


def _value(overrides: list[str], key: str) -> str:
    found = [o.split("=", 1)[1] for o in overrides if o.startswith(key + "=")]
    assert len(found) == 1, (key, overrides)
    return found[0]


def test_plan_pairs_each_student_with_the_control_of_its_seed(tmp_path: Path) -> None:
    from depth_anything_fast.recipe import runs

    world = _stub_world(tmp_path)
    big = runs.Arm("teacher_big", overrides=("model.embed_dim=128",), encoder="big")
    arms = [runs.TEACHER, runs.STUDENT, big, runs.Arm("student_big", teacher="teacher_big")]
    jobs, finals = runs.plan(world, tmp_path / "out", [0, 3], arms, extra=["steps=5"])
    assert set(finals) == {(s, a.name) for s in (0, 3) for a in arms}
    # arm by arm, every seed of an arm first: a plan cut short leaves whole arms
    assert [j for j in jobs if j.startswith("train")] == [
        f"train {s} {a.name}" for a in arms for s in (0, 3)]
    for seed in (0, 3):
        teacher = jobs[f"train {seed} teacher"]
        student = jobs[f"train {seed} student"]
        label = jobs[f"label {seed} teacher"]
        t_over, s_over = teacher.args[1], student.args[1]
        # the pair shares its seed: initial weights and labelled order are drawn from it
        assert _value(t_over, "seed") == _value(s_over, "seed") == str(seed)
        assert _value(t_over, "model.init") == _value(s_over, "model.init") == str(
            tmp_path / "enc") == _value(s_over, "model.frozen_encoder")
        assert _value(t_over, "data.batch_size") == str(runs.images_per_step()) == "12"
        assert _value(t_over, "steps") == _value(s_over, "steps") == "5"
        pseudo = tmp_path / "out" / f"seed{seed}" / "pseudo_teacher"
        assert _value(s_over, "data.pseudo_labels") == str(pseudo)
        assert label.args == (tmp_path / "out" / f"seed{seed}" / "teacher" / "final",
                              tmp_path / "u", pseudo)
        assert label.after == (f"train {seed} teacher",) and student.after == (
            f"label {seed} teacher",)
        # the larger teacher has its own encoder; its student keeps the base one
        b_over = jobs[f"train {seed} teacher_big"].args[1]
        assert _value(b_over, "model.init") == str(tmp_path / "big_enc")
        assert _value(b_over, "model.embed_dim") == "128"
        sb_over = jobs[f"train {seed} student_big"].args[1]
        assert _value(sb_over, "model.init") == str(tmp_path / "enc")
        assert _value(sb_over, "data.pseudo_labels").endswith(f"seed{seed}/pseudo_teacher_big")
    with pytest.raises(ValueError, match="not in the plan"):
        runs.plan(world, tmp_path / "out", [0], [runs.STUDENT])
    with pytest.raises(ValueError, match="distinct"):
        runs.plan(world, tmp_path / "out", [0], [runs.TEACHER, runs.TEACHER])


def test_ablation_rows_train_only_what_the_named_rows_need(tmp_path: Path) -> None:
    """`--rows`: a lever's row brings its control and its teacher (with the teacher's labels),
    for the seeds asked, and nothing else; a row with its own control brings that control."""
    from depth_anything_fast.recipe import ablation, runs

    world = _stub_world(tmp_path)
    world.encoders.update(large=tmp_path / "large_enc", strong=tmp_path / "strong_enc")
    arms = [ablation.ROWS[i].arm for i in ablation.TRAIN_ORDER]
    jobs, _ = runs.plan(world, tmp_path / "out", [0, 4], arms)
    picked = ablation.row_jobs(jobs, [4], ["share_1to1"])
    assert list(picked) == ["train 4 teacher", "label 4 teacher", "train 4 share_1to1"]
    picked = ablation.row_jobs(jobs, [0, 4], ["student_strong_encoder"])
    assert set(picked) == {f"{what} {seed} {arm}" for seed in (0, 4) for what, arm in (
        ("train", "teacher_strong_encoder"), ("label", "teacher_strong_encoder"),
        ("train", "student_strong_encoder"))}  # its control is its teacher
    assert list(picked) == [name for name in jobs if name in picked]  # the plan's order
    # a finished run has no job: nothing of it, or of what it waited for, is redone
    done = {name: job for name, job in jobs.items() if name != "train 4 share_1to1"}
    assert ablation.row_jobs(done, [4], ["share_1to1"]) == {
        "train 4 teacher": jobs["train 4 teacher"]}
    with pytest.raises(ValueError, match="unknown ablation rows"):
        ablation.row_jobs(jobs, [0], ["share_2to1"])


def test_plan_reuses_finished_runs_of_the_same_configuration(tmp_path: Path) -> None:
    from depth_anything_fast.recipe import runs
    from depth_anything_fast.train.config import config_to_dict

    world = _stub_world(tmp_path)

    def finish(job: runs.Job) -> None:
        config, overrides = job.args[0], job.args[1]
        out_dir = Path(_value(overrides, "out_dir").replace("/out/", "/demo/"))
        (out_dir / "final").mkdir(parents=True)
        (out_dir / "final" / "model.safetensors").write_bytes(b"")
        (out_dir / "config.json").write_text(json.dumps(config_to_dict(
            load_config(config, [*overrides, f"out_dir={out_dir}"]))))

    demo_jobs, _ = runs.plan(world, tmp_path / "demo", [0], [runs.TEACHER, runs.STUDENT])
    jobs, _ = runs.plan(world, tmp_path / "out", [0], [runs.TEACHER, runs.STUDENT])
    finish(jobs["train 0 teacher"])  # as the demo would have, under demo/
    jobs, finals = runs.plan(world, tmp_path / "out", [0], [runs.TEACHER, runs.STUDENT],
                             reuse=[tmp_path / "demo"])
    assert "train 0 teacher" not in jobs and finals[(0, "teacher")] == (
        tmp_path / "demo" / "seed0" / "teacher" / "final")
    # its labels are (re)made beside it, and the student learns from them
    assert jobs["label 0 teacher"].args[2] == tmp_path / "demo" / "seed0" / "pseudo_teacher"
    assert jobs["label 0 teacher"].after == ()
    finish(jobs["train 0 student"])
    jobs, finals = runs.plan(world, tmp_path / "out", [0], [runs.TEACHER, runs.STUDENT],
                             reuse=[tmp_path / "demo"])
    assert [name for name in jobs] == ["label 0 teacher"]
    # another configuration of the same arm name is trained again
    changed = runs.Arm("student", teacher="teacher", overrides=("loss.alpha=0.5",))
    jobs, _ = runs.plan(world, tmp_path / "out", [0], [runs.TEACHER, changed],
                        reuse=[tmp_path / "demo"])
    assert "train 0 student" in jobs
    assert set(demo_jobs) == {"train 0 teacher", "label 0 teacher", "train 0 student"}


def _record_job(path: str, name: str) -> int:
    """A job for `run_jobs`: appends its name to `path`; returns the process id."""
    with open(path, "a") as f:
        f.write(name + "\n")
    return os.getpid()


def _failing_job() -> None:
    raise RuntimeError("this job fails")


def test_run_jobs_waits_for_dependencies_inline_and_in_processes(tmp_path: Path) -> None:
    from depth_anything_fast.recipe.runs import Job, run_jobs

    for workers in (1, 2):
        log = tmp_path / f"order{workers}.txt"
        jobs = {"c": Job(_record_job, (str(log), "c"), ("a", "b")),
                "a": Job(_record_job, (str(log), "a")),
                "b": Job(_record_job, (str(log), "b"), ("a",)),
                "d": Job(_record_job, (str(log), "d"))}
        seen: list[str] = []
        results = run_jobs(jobs, workers, on_done=seen.append)
        order = log.read_text().split()
        assert sorted(order) == ["a", "b", "c", "d"] == sorted(seen)
        assert order.index("a") < order.index("b") < order.index("c")
        pids = set(results.values())
        assert (pids == {os.getpid()}) if workers == 1 else (os.getpid() not in pids)
    with pytest.raises(RuntimeError, match="this job fails"):
        run_jobs({"x": Job(_failing_job, ())}, 2)
    with pytest.raises(ValueError, match="unknown jobs"):
        run_jobs({"x": Job(_failing_job, (), ("y",))}, 1)
    with pytest.raises(ValueError, match="wait for each other"):
        run_jobs({"x": Job(_failing_job, (), ("y",)), "y": Job(_failing_job, (), ("x",))}, 1)


def test_student_and_control_of_a_seed_start_alike_and_see_the_labelled_images_alike(
        tmp_path: Path, test_seed: int) -> None:
    """What the pairing rests on, through the trainer itself: a student and its labelled-only
    control of the same seed start from the same weights, and the control's labelled batches
    (12 images) are the student's (4 labelled per step) three at a time, same crops."""
    from depth_anything_fast.models.weights import save_file
    from depth_anything_fast.recipe import pipeline, runs
    from depth_anything_fast.recipe.synthetic import generate_dataset, read_kinds
    from depth_anything_fast.train.distributed import init_distributed
    from depth_anything_fast.train.trainer import Trainer

    layout = generate_dataset(tmp_path / "world", n_labelled=24, n_unlabelled=6, n_val=2,
                              size=(60, 80), seed=test_seed % 1000)
    model = build_model(load_config(None, TINY))
    encoder = tmp_path / "encoder.safetensors"
    save_file({k: v for k, v in model.state_dict().items() if k.startswith("encoder.")},
              encoder, model.config)
    world = pipeline.World(layout.root, layout, read_kinds(layout.root, "val"),
                           {"base": encoder})
    pseudo = pipeline.pseudo_label_images(model.save_pretrained(tmp_path / "teacher"),
                                          layout.unlabelled, tmp_path / "pseudo", lambda _: None)
    seed = test_seed % 10_000
    tiny = [o for o in TINY if not o.startswith("model.encoder")] + ["data.num_threads=1"]
    built = {}
    for arm in (runs.TEACHER, runs.STUDENT):
        overrides = runs.arm_overrides(arm, world, seed, tmp_path / arm.name, pseudo, tiny)
        trainer = Trainer(load_config(arm.config, overrides))
        built[arm.name] = trainer._build(init_distributed(trainer.cfg.dist))
    control, student = built["teacher"], built["student"]
    for (name, a), b in zip(control.model.state_dict().items(),
                            student.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    for _ in range(2):  # two control steps = six student steps (24 images: one epoch)
        big = next(control.streams["labelled"])
        small = [next(student.streams["labelled"]) for _ in range(3)]
        assert big["paths"] == [p for b in small for p in b["paths"]]
        torch.testing.assert_close(big["image"], torch.cat([b["image"] for b in small]))
        torch.testing.assert_close(big["disparity"], torch.cat([b["disparity"] for b in small]))


# ------------------------------------------------------------------------------ unseen kind
def test_split_scene_renders_a_generated_image_again(tmp_path: Path, test_seed: int) -> None:
    """The unlabelled split's depth, rendered again for the pseudo-label analysis, belongs to
    the stored image: the val split's stored depth is re-rendered exactly (but for its sensor
    holes), an unlabelled JPEG is its scene's colours encoded the same way."""
    import io

    from PIL import Image

    from depth_anything_fast.recipe.synthetic import (
        depth_to_png16,
        generate_dataset,
        read_kinds,
        split_scene,
    )

    seed = test_seed % 10_000
    root = tmp_path / "world"
    generate_dataset(root, n_labelled=1, n_unlabelled=3, n_val=3, size=(40, 56), seed=seed)
    for split in ("val", "unlabelled"):
        for name, kind in read_kinds(root, split).items():
            scene = split_scene(seed, split, int(name), kind, (40, 56))
            if split == "val":
                stored = np.array(Image.open(root / "val" / "depth" / f"{name}.png"))
                holes = (stored == 0) & (scene.depth > 0)
                np.testing.assert_array_equal(stored[~holes], depth_to_png16(scene.depth)[~holes])
                assert holes.mean() < 0.2
            else:  # the same colours, JPEG-encoded as generate_dataset does
                stored = np.array(Image.open(root / "unlabelled" / "images" / f"{name}.jpg"))
                encoded = io.BytesIO()
                Image.fromarray(scene.rgb).save(encoded, format="JPEG", quality=92)
                np.testing.assert_array_equal(stored, np.array(Image.open(encoded)))
    with pytest.raises(ValueError, match="unknown split"):
        split_scene(seed, "train", 0, "room")


def test_follows_pools_each_student_with_its_own_teacher(np_rng) -> None:
    from depth_anything_fast.recipe.unseen_kind import follows

    kinds = ["room", "field"]
    teacher, student, pairs = {}, {}, {"field": [], "room": []}
    for seed in (0, 1):
        t = np_rng.uniform(0.1, 0.5, 12)
        s = 0.5 * t + np_rng.normal(0.05, 0.01, 12)
        names = [f"{seed}-{j}" for j in range(12)]
        teacher[seed] = [{"name": n, "kind": kinds[j % 2], "abs_rel": float(v)}
                         for j, (n, v) in enumerate(zip(names, t))]
        student[seed] = [{"name": n, "kind": kinds[j % 2], "abs_rel": float(v)}
                         for j, (n, v) in enumerate(zip(names, s))][::-1]
        for j in range(12):
            pairs[kinds[j % 2]].append((t[j], s[j]))
    student[2] = student[0]  # no teacher for seed 2: not used
    result = follows(teacher, student, kinds)
    for kind in kinds:
        x, y = np.array(pairs[kind]).T
        assert result[kind]["n"] == 12
        assert result[kind]["r"] == pytest.approx(np.corrcoef(x, y)[0, 1])
        assert result[kind]["slope"] == pytest.approx(np.cov(x, y)[0, 1] / x.var(ddof=1))
        assert result[kind]["student_better_share"] == pytest.approx((y < x).mean())
    assert result["overall"]["n"] == 24 and result["overall"]["slope"] == pytest.approx(0.5,
                                                                                        abs=0.1)


def test_budget_pairs_students_and_controls_at_each_budget(np_rng) -> None:
    from depth_anything_fast.recipe.budget import budget_arms, summarise

    assert [a.name for a in budget_arms(400, 400)] == ["teacher", "student"]
    control, student = budget_arms(1600, 400)
    assert control.overrides == student.overrides == ("steps=1600",)
    assert student.teacher == "teacher" and control.teacher is None
    kinds = ["room", "field"]

    def records(shift: float) -> list[dict]:
        return [{"name": f"i{j}", "kind": kinds[j % 2], "abs_rel": 0.3 + shift + 0.01 * j,
                 "delta1": 0.5} for j in range(6)]

    scores = {"teacher": {0: records(0), 1: records(0)},
              "student": {0: records(-0.01), 1: records(-0.01)},
              "control_1600": {0: records(-0.02), 1: records(-0.02)},
              "student_1600": {0: records(-0.05)}}
    out = summarise(scores, [400, 800, 1600], 400, kinds)
    assert [e["steps"] for e in out] == [400, 1600]  # no run at 800 yet
    assert out[0]["student - control"]["overall"]["mean"] == pytest.approx(-0.01)
    assert out[1]["student - control"]["overall"]["mean"] == pytest.approx(-0.03)
    assert out[1]["student - teacher"]["field"]["mean"] == pytest.approx(-0.05)
    assert out[1]["seeds"] == [0]
    assert out[1]["mean"]["control"]["overall"]["abs_rel"] == pytest.approx(0.305)
