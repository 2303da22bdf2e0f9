"""Smoke test of the demo pipeline at a tiny scale: every stage runs and the outputs have the
documented form (the full-size demo's quality is checked by `make demo` itself)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from depth_anything_fast.demo import run_demo
from depth_anything_fast.recipe.synthetic import KINDS


def test_demo_pipeline_writes_results(tmp_path: Path) -> None:
    report = run_demo(tmp_path, scale=0.01)
    results = json.loads((tmp_path / "results.json").read_text())
    summary = results["summary"]
    assert list(summary) == ["teacher", "student", "control", "baseline_constant",
                             "baseline_row_prior"]
    for name, groups in summary.items():
        assert list(groups) == [*KINDS, "overall"], name
        assert sum(groups[k]["n"] for k in KINDS) == groups["overall"]["n"] == 16, name
        for metrics in groups.values():
            assert math.isfinite(metrics["abs_rel"]) and 0 <= metrics["delta1"] <= 1, name
    assert results["labelled_kinds"] == ["room", "street"]
    for comparison in ("student - control", "student - teacher"):
        overall = results["paired"][comparison]["overall"]
        assert overall["lo"] <= overall["mean"] <= overall["hi"] and overall["n"] == 16
    assert report["summary"] == summary
    assert "student - control" in (tmp_path / "results.md").read_text()
    assert (tmp_path / "chart.png").stat().st_size > 1000
    assert len(list((tmp_path / "visualisations").glob("*.png"))) == 2 * len(KINDS)
    assert (tmp_path / "pseudo_labels" / "manifest.jsonl").is_file()
    for model in ("teacher", "student", "control"):
        assert (tmp_path / model / "final" / "model.safetensors").is_file()
    # the control ran the student's steps with the student's images per step
    control = json.loads((tmp_path / "control" / "config.json").read_text())
    student = json.loads((tmp_path / "student" / "config.json").read_text())
    assert control["steps"] == student["steps"]
    assert control["data"]["batch_size"] == student["data"]["batch_size"] * 3
    assert control["model"]["init"] == student["model"]["init"] == \
        student["model"]["frozen_encoder"]
