"""Smoke test of the demo pipeline at a tiny scale: every stage runs for two seeds and the
outputs have the documented form (the full-size demo's quality is checked by `make demo`
itself)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from depth_anything_fast.demo import run_demo
from depth_anything_fast.recipe.synthetic import KINDS


def test_demo_pipeline_writes_seed_paired_results(tmp_path: Path) -> None:
    report = run_demo(tmp_path, scale=0.01, seeds=(0, 3), workers=1)
    results = json.loads((tmp_path / "results.json").read_text())
    summary = results["summary"]
    assert list(summary) == ["baseline_constant", "baseline_row_prior", "teacher", "student"]
    for name, groups in summary.items():
        assert list(groups) == [*KINDS, "overall"], name
        for metrics in groups.values():
            assert math.isfinite(metrics["abs_rel"]) and 0 <= metrics["delta1"] <= 1, name
    assert results["seeds"] == [0, 3] and results["labelled_kinds"] == ["room", "street"]
    for model in ("teacher", "student"):
        per_seed = results["per_seed"][model]
        assert list(per_seed) == ["0", "3"]
        assert sum(per_seed["0"][k]["n"] for k in KINDS) == per_seed["0"]["overall"]["n"] == 16
        mean = (per_seed["0"]["overall"]["abs_rel"] + per_seed["3"]["overall"]["abs_rel"]) / 2
        assert summary[model]["overall"]["abs_rel"] == pytest.approx(mean)
    paired = results["paired"]["student - control"]
    for group in [*KINDS, "overall"]:
        d = paired[group]
        assert d["lo"] <= d["mean"] <= d["hi"] and d["seeds"] == [0, 3]
        assert d["mean"] == pytest.approx(sum(d["per_seed"]) / 2)
    diff = (results["per_seed"]["student"]["0"]["overall"]["abs_rel"]
            - results["per_seed"]["teacher"]["0"]["overall"]["abs_rel"])
    assert paired["overall"]["per_seed"][0] == pytest.approx(diff)
    assert results["verdict"] == ("yes" if paired["overall"]["hi"] < 0 else "no")
    assert report["summary"] == summary
    markdown = (tmp_path / "results.md").read_text()
    assert "Student - control" in markdown and "| seed 3 |" in markdown
    assert (tmp_path / "chart.png").stat().st_size > 1000
    assert len(list((tmp_path / "visualisations").glob("*.png"))) == 2 * len(KINDS)
    for seed in (0, 3):
        folder = tmp_path / f"seed{seed}"
        assert (folder / "pseudo_teacher" / "manifest.jsonl").is_file()
        control = json.loads((folder / "teacher" / "config.json").read_text())
        student = json.loads((folder / "student" / "config.json").read_text())
        # the pair shares its seed and start; the control runs the student's steps with the
        # student's images per step
        assert control["seed"] == student["seed"] == seed
        assert control["steps"] == student["steps"]
        assert control["data"]["batch_size"] == student["data"]["batch_size"] * 3
        assert control["model"]["init"] == student["model"]["init"] == \
            student["model"]["frozen_encoder"]
    # a second run reuses every finished model and gives the same numbers
    again = run_demo(tmp_path, scale=0.01, seeds=(0, 3), workers=1)
    assert again["paired"] == report["paired"]
