"""Smoke test of the demo pipeline at a tiny scale: every stage runs and the outputs have the
documented form (the full-size demo's quality is checked by `make demo` itself)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from depth_anything_fast.demo import run_demo


def test_demo_pipeline_writes_results(tmp_path: Path) -> None:
    report = run_demo(tmp_path, scale=0.01)
    results = json.loads((tmp_path / "results.json").read_text())
    assert list(results) == ["teacher", "student", "baseline_constant", "baseline_row_prior"]
    for name, metrics in results.items():
        assert set(metrics) == {"abs_rel", "delta1"}, name
        assert math.isfinite(metrics["abs_rel"]) and 0 <= metrics["delta1"] <= 1, (name, metrics)
    assert report["results"] == results
    assert len(list((tmp_path / "visualisations").glob("*.png"))) == 6
    assert (tmp_path / "pseudo_labels" / "manifest.jsonl").is_file()
    assert (tmp_path / "student" / "final" / "model.safetensors").is_file()
