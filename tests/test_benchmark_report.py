"""benchmarks/benchmark_report.py: baselines and the speed targets computed from pytest-benchmark JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import load_benchmark


@pytest.fixture(scope="module")
def report():
    return load_benchmark("benchmark_report")


def _bench(group: str, name: str, mean_s: float, params: dict, **extra) -> dict:
    return {"group": group, "name": name, "params": params, "extra_info": extra,
            "stats": {"mean": mean_s, "min": mean_s * 0.9}}


def _gpu_run() -> list[dict]:
    loss = "affine_invariant cuda B=16 518x518 fwd+bwd"
    fwd = "forward vitl 518x518 batch {} {}"
    attn = "attention ViT-L N=1370 heads 16x64 batch 16 bfloat16"
    inf = "inference cuda vitl (200 images, 518)"
    return [
        _bench(loss, "test_affine_invariant[f]", 1e-3, {"impl": "fused"},
               **{"GB/s": 2000.0, "bytes": 56e6, "design_bytes": 280e6}),
        _bench(loss, "test_affine_invariant[e]", 6e-3, {"impl": "eager"}, **{"GB/s": 333.0}),
        _bench(loss, "test_affine_invariant[c]", 1.5e-3, {"impl": "compiled"}),
        _bench("copy bandwidth cuda", "test_copy_bandwidth", 1e-3, {}, **{"GB/s": 3000.0}),
        _bench(fwd.format(1, "fp32 eager"), "test_forward_gpu[t1]", 1 / 30,
               {"impl": "transformers"}, images_per_s=30.0),
        _bench(fwd.format(1, "fp32 eager"), "test_forward_gpu[o1]", 1 / 35,
               {"impl": "ours"}, images_per_s=35.0),
        _bench(fwd.format(1, "bf16 compiled"), "test_forward_gpu[o1b]", 1 / 500,
               {"impl": "ours"}, images_per_s=500.0),  # batch 1: not "batched"
        _bench(fwd.format(16, "bf16 eager"), "test_forward_gpu[o16]", 16 / 100,
               {"impl": "ours"}, images_per_s=100.0),
        _bench(fwd.format(64, "bf16 compiled"), "test_forward_gpu[o64]", 64 / 120,
               {"impl": "ours"}, images_per_s=120.0),
        _bench(attn, "test_attention_backends[s]", 1.05e-3, {"backend": "sdpa"}),
        _bench(attn, "test_attention_backends[x]", 1.0e-3, {"backend": "xformers"}),
        _bench(attn, "test_attention_backends[m]", 3.0e-3, {"backend": "math"}),
        _bench(inf, "test_inference_throughput[cuda-vitl-official-loop]", 10.0,
               {"impl": "official-loop"}, images_per_s=20.0, gpu_busy=0.5),
        _bench(inf, "test_inference_throughput[cuda-vitl-pseudo-label]", 1.2,
               {"impl": "pseudo-label"}, images_per_s=166.7, gpu_busy=0.9),
    ]


def test_targets(report) -> None:
    checks = {name: (value, met) for name, value, met in report.targets(_gpu_run(), gpu=True)}
    loss = "affine_invariant cuda B=16 518x518 fwd+bwd"
    assert checks[f"{loss}: fused >= 5x eager"] == ("6.0x", True)
    assert checks[f"{loss}: fused >= 2x compiled"] == ("1.5x", False)
    assert checks[f"{loss}: fused >= 50% of copy bandwidth (3000 GB/s)"] == ("67%", True)
    value, met = checks["vitl: bf16 batched >= 3x transformers fp32 batch 1"]
    assert value.startswith("4.0x (forward vitl 518x518 batch 64 bf16 compiled)") and met
    attn = "attention ViT-L N=1370 heads 16x64 batch 16 bfloat16"
    assert checks[f"{attn}: sdpa within 10% of the fastest"] == ("1.05x", True)
    inf = "inference cuda vitl (200 images, 518)"
    assert checks[f"{inf}: pseudo-label vs official loop >= 10x"] == ("8.3x", False)
    assert checks[f"{inf}: pseudo-label GPU busy > 85%"] == ("90%", True)
    assert len(checks) == 7


def test_markdown_tables_and_baselines(report, tmp_path: Path) -> None:
    data = {"machine_info": {"gpu": "NVIDIA H200", "torch": "2.11.0", "triton": "3.6.0",
                             "python_version": "3.12.3", "cpu": {"brand_raw": "x86"}},
            "commit_info": {"id": "abcdef1234567"}, "datetime": "2026-11-21",
            "benchmarks": _gpu_run()}
    path = tmp_path / "gpu.json"
    path.write_text(json.dumps(data))
    text = report.report(path)
    assert "GPU: NVIDIA H200" in text and "torch 2.11.0, triton 3.6.0" in text
    # speed-up against the group's baseline row: eager, transformers, official loop, math
    # GB/s, images/s and GPU busy (empty here), then the design / floor traffic
    assert ("| affine_invariant cuda B=16 518x518 fwd+bwd | fused | 1 | 0.9 | 6.00x | 2000 |  |  "
            "| 280 / 56 MB (5.0x) |") in text
    assert "| attention ViT-L N=1370 heads 16x64 batch 16 bfloat16 | xformers | 1 | 0.9 | 3.00x |" in text
    assert "| inference cuda vitl (200 images, 518) | pseudo-label | 1200 | 1080 | 8.33x |" in text
    assert text.count("| NO |") == 2
    # CPU results: only the C++ target (fwd+bwd >= 3x eager)
    cpu = [dict(b, group=b["group"].replace("cuda", "cpu")) for b in _gpu_run()]
    cpu_group = "affine_invariant cpu B=16 518x518 fwd+bwd"
    assert report.targets(cpu, gpu=False) == [
        (f"{cpu_group}: C++ >= 2x compiled", "1.5x", False),
        (f"{cpu_group}: C++ >= 10x eager", "6.0x", False),
    ]


def test_cpu_inference_targets(report) -> None:
    batch, e2e = "batch 4 518x518 vits cpu", "inference cpu vits (64 images, 518)"
    rows = [
        _bench(batch, "a", 0.60, {"impl": "ours-default"}, images_per_s=6.7),
        _bench(batch, "b", 0.63, {"impl": "openvino-bf16-on-export"}),
        _bench(batch, "c", 1.20, {"impl": "openvino-f32-on-export"}),
        _bench(batch, "d", 0.75, {"impl": "onnxruntime-fp32-on-export"}),
        _bench(e2e, "e", 100.0, {"impl": "transformers-pipeline"}),
        _bench(e2e, "f", 40.0, {"impl": "pseudo-label-cli"}),
        _bench(e2e, "g", 55.0, {"impl": "pseudo-label-cli-original-size"}),
    ]
    assert report.targets(rows, gpu=False) == [
        (f"{batch}: default >= the fastest direct runtime (openvino-bf16-on-export)", "1.05x",
         True),
        (f"{batch}: default >= 1.3x onnxruntime fp32", "1.25x", False),
        (f"{e2e}: pseudo-label-cli >= 2x the transformers pipeline loop", "2.50x", True),
        (f"{e2e}: pseudo-label-cli-original-size >= 2x the transformers pipeline loop",
         "1.82x", False),
    ]
