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
def test_bootstrap_ci_and_paired_differences() -> None:
    from depth_anything_fast.recipe.pipeline import bootstrap_ci, paired_differences

    rng = np.random.default_rng(int.from_bytes(os.urandom(4), "little"))
    values = rng.normal(-0.02, 0.05, 400)
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


def test_ablation_summary_statistics() -> None:
    from depth_anything_fast.recipe.ablation import ROWS, summarise

    rng = np.random.default_rng(int.from_bytes(os.urandom(4), "little"))
    kinds = ["room", "field"]
    per_seed = {}
    for seed in (0, 1, 2):
        per_seed[seed] = {
            name: [{"name": f"i{j}", "kind": kinds[j % 2], "abs_rel": float(v),
                    "delta1": 0.5} for j, v in enumerate(rng.uniform(0.1, 0.3, 10) - 0.01 * r)]
            for r, (name, _) in enumerate(ROWS)}
    rows = summarise(per_seed, kinds)
    assert [r["row"] for r in rows] == [name for name, _ in ROWS]
    for r, (name, _) in zip(rows, ROWS):
        overall = np.array([np.mean([x["abs_rel"] for x in per_seed[s][name]]) for s in (0, 1, 2)])
        half = 4.303 * overall.std(ddof=1) / np.sqrt(3)
        assert r["abs_rel_mean"] == pytest.approx(overall.mean())
        assert r["abs_rel_ci"] == pytest.approx([overall.mean() - half, overall.mean() + half])
        room = np.mean([np.mean([x["abs_rel"] for x in per_seed[s][name][::2]]) for s in (0, 1, 2)])
        assert r["per_kind_abs_rel"]["room"] == pytest.approx(room)
    diff = np.mean([[a["abs_rel"] - b["abs_rel"] for a, b in
                     zip(per_seed[s][ROWS[4][0]], per_seed[s][ROWS[0][0]])] for s in (0, 1, 2)])
    assert rows[4]["vs_labelled_only"]["mean"] == pytest.approx(diff)
    assert "vs_labelled_only" not in rows[0]
    # a run cut short: rows missing for some seeds are summarised over the seeds they have
    del per_seed[2][ROWS[2][0]]
    partial = summarise(per_seed, kinds)
    assert partial[2]["seeds"] == [0, 1] and partial[4]["seeds"] == [0, 1, 2]
    assert partial[2]["vs_labelled_only"]["seeds"] == [0, 1]
    half = 12.706 * np.std(partial[2]["abs_rel_per_seed"], ddof=1) / np.sqrt(2)
    assert partial[2]["abs_rel_ci"][1] - partial[2]["abs_rel_mean"] == pytest.approx(half)


def test_ablation_reuses_a_demo_run_only_with_the_same_training_config(tmp_path: Path) -> None:
    from depth_anything_fast.recipe.ablation import _same_run
    from depth_anything_fast.recipe.pipeline import STUDENT_CONFIG
    from depth_anything_fast.train.config import config_to_dict

    run = tmp_path / "student"
    (run / "final").mkdir(parents=True)
    (run / "final" / "model.safetensors").write_bytes(b"")
    saved = ["seed=1", "data.labelled=w/labelled", "data.pseudo_labels=demo/pseudo",
             f"out_dir={run}", "progress=false"]
    (run / "config.json").write_text(
        json.dumps(config_to_dict(load_config(STUDENT_CONFIG, saved))))
    # where it wrote and which folder held the (same teacher's) pseudo-labels do not matter
    same = ["seed=1", "data.labelled=w/labelled", "data.pseudo_labels=abl/pseudo",
            "out_dir=elsewhere", "loss.feature_alignment=true"]
    assert _same_run(run, STUDENT_CONFIG, same) == run / "final"
    for change in ("seed=2", "loss.feature_alignment=false", "steps=7", "loss.cutmix_p=0.0"):
        assert _same_run(run, STUDENT_CONFIG, [*same, change]) is None, change
    (run / "final" / "model.safetensors").unlink()
    assert _same_run(run, STUDENT_CONFIG, same) is None


def test_ablation_seed_trains_rows_in_order_labels_once_and_reuses(tmp_path: Path,
                                                                    monkeypatch) -> None:
    """run_seed's bookkeeping, with training, labelling and scoring stubbed: the teacher first,
    its pseudo-labels once before the first student, every student on them; a second call
    reuses every row and the cached scores."""
    from types import SimpleNamespace

    from depth_anything_fast.recipe import ablation, pipeline

    calls: list[tuple[str, list[str]]] = []

    def train(config: Path, overrides: list[str], label: str, log) -> Path:
        out_dir = Path(next(o for o in overrides if o.startswith("out_dir="))[8:])
        (out_dir / "final").mkdir(parents=True)
        (out_dir / "final" / "model.safetensors").write_bytes(b"")
        calls.append((config.name, overrides))
        return out_dir / "final"

    def label(teacher: Path, images: Path, out: Path, log) -> Path:
        calls.append(("label", [str(teacher), str(out)]))
        return out

    scored: list[set[str]] = []

    def evaluate(world, models: dict[str, Path]):
        scored.append(set(models))
        return SimpleNamespace(per_image={name: [{"model": str(p)}] for name, p in models.items()})

    monkeypatch.setattr(pipeline, "train", train)
    monkeypatch.setattr(pipeline, "pseudo_label_images", label)
    monkeypatch.setattr(pipeline, "evaluate_models", evaluate)
    layout = SimpleNamespace(labelled=tmp_path / "l", unlabelled=tmp_path / "u")
    world = SimpleNamespace(layout=layout, encoder=tmp_path / "enc")
    records = ablation.run_seed(tmp_path, world, seed=3, steps=2, log=lambda _: None)
    names = [name for name, _ in ablation.ROWS]
    assert list(records) == names
    pseudo = tmp_path / "seed3" / "pseudo_labels"
    assert [c[0] for c in calls] == ["demo_teacher.yaml", "label"] + ["demo_student.yaml"] * 4
    assert calls[1][1] == [str(tmp_path / "seed3" / "row1" / "final"), str(pseudo)]
    assert "seed=3" in calls[0][1] and "steps=2" in calls[0][1]
    for index, (_, overrides) in zip(ablation.TRAIN_ORDER[1:], calls[2:], strict=True):
        assert f"data.pseudo_labels={pseudo}" in overrides and "seed=4" in overrides
        assert f"out_dir={tmp_path / 'seed3' / f'row{index + 1}'}" in overrides
        assert all(s in overrides for s in ablation.ROWS[index][1])
    calls.clear()
    again = ablation.run_seed(tmp_path, world, seed=3, steps=2, log=lambda _: None)
    assert again == records and not calls and scored == [set(names)]
