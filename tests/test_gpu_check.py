"""benchmarks/gpu_check.sh, the one-call GPU check, in its dry-run mode (runs on the CPU).

The dry run goes through every step of the script and collects each step's pytest selection,
so a renamed test or benchmark, a bad `-k` expression or a broken step fails here rather than
inside the few GPU minutes a session may get.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STEPS = {"tests_triton", "tests_cuda", "losses", "losses_atomics", "model", "inference",
         "inference_batch"}


def test_gpu_check_dry_run_collects_every_step(tmp_path: Path) -> None:
    env = {**os.environ, "OUT": str(tmp_path), "DRY_RUN": "1", "PY": sys.executable}
    run = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh")], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=600)  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert json.loads((tmp_path / "environment.json").read_text())["torch"]
    records = {p.stem: json.loads(p.read_text()) for p in tmp_path.glob("*.json")}
    assert records.keys() >= STEPS, sorted(records)
    for name in STEPS:
        assert records[name]["rc"] == 0 and records[name]["collected"] > 0, records[name]
    # The CUDA loss cases: affine, CutMix and feature alignment fwd+bwd in 3 impls, plus copy.
    assert records["losses"]["collected"] == 10
    assert records["losses_atomics"]["collected"] == 2  # fused affine and CutMix only
    # ViT-S/B/L x batch 16/64 x (default, ONNX Runtime CUDA, transformers)
    assert records["inference_batch"]["collected"] == 18
