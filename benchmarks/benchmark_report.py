"""Markdown summary of pytest-benchmark JSON files, with the issues' speed targets checked.

    python benchmarks/benchmark_report.py benchmarks/results/losses_gpu.json [...] > summary.md

One table per file: each group's rows with mean/min time, speed-up against the group's baseline
(the eager reference, transformers, or the official-style loop), and the `extra_info` figures
the benchmarks record (GB/s, images/s, peak memory, GPU busy) and, for the fused loss kernels,
the traffic: bytes moved by design against the floor (`design MB / floor MB`, the ratio in
brackets). Then the targets that apply to the groups present, each with the measured value and
whether it is met:

* losses: on CUDA, affine-invariant and CutMix fused >= 5x eager, >= 2x compiled and > 50% of
  the copy bandwidth (GB/s counting floor bytes), feature alignment >= 80% of it; on the CPU
  every C++ fwd+bwd >= 2x compiled, and the affine-invariant one >= 10x eager.
* model (CUDA): best bf16 batched throughput of ours >= 3x transformers fp32 batch 1;
  sdpa within 10% of the fastest attention backend.
* inference (CUDA): pseudo-label >= 10x the official-style loop (vitl); GPU busy > 85%.
* inference (CPU, issue 20): the default `Predictor` on one batch at least as fast as the fastest
  runtime run directly on our export, and >= 1.3x ONNX Runtime fp32 on it; the `pseudo-label`
  CLI end to end >= 2x the transformers pipeline in a loop.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

# The row each group's speed-ups are measured against.
BASELINES = ("eager", "reference eager", "transformers", "official-loop", "math")
EXTRA_COLUMNS = {
    "GB/s": "GB/s",
    "images_per_s": "images/s",
    "peak_MiB": "peak MiB",
    "peak_mem_mb": "peak MB",
    "peak_memory_mb": "peak MB",
    "gpu_busy": "GPU busy",
    "resolved": "runs as",
    "build_s": "build s",
    "first_s": "first batch s",
    "peak_rss_mib": "peak RSS MiB",
    # bench_inference.compare: mean |aligned - fp32| / mean |fp32| (a sanity check), and the
    # per-pixel aligned AbsRel (the accuracy budget's metric) on the benchmark's random model
    "aligned_err": "aligned mean err. / mean vs fp32",
    "abs_rel": "aligned AbsRel vs fp32",
}
# issue 20: the runtimes run directly on our ONNX export, which the default must keep up with
DIRECT_RUNTIMES = ("openvino-f32-on-export", "openvino-bf16-on-export",
                   "onnxruntime-fp32-on-export")


def _impl(bench: dict[str, Any]) -> str:
    """The varying implementation of a row: the `impl` parameter, or the test id's last part."""
    params = bench.get("params") or {}
    if "impl" in params:
        label = str(params["impl"])
        if "compiled" in params:  # bench_train: impl x compiled x precision
            label += " compiled" if params["compiled"] else " eager"
        if "precision" in params:
            label += f" {params['precision']}"
        return label
    if "backend" in params:
        return str(params["backend"])
    return bench["name"].split("[")[-1].rstrip("]")


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def header(data: dict[str, Any]) -> list[str]:
    info = data.get("machine_info", {})
    cpu = info.get("cpu", {}).get("brand_raw", "?")
    gpu = info.get("gpu") or "none"
    versions = [
        f"{name} {info[name]}" for name in ("torch", "triton", "transformers", "cuda")
        if info.get(name)
    ]
    versions.append(f"Python {info.get('python_version', '?')}")
    threads = f" (torch threads: {info['torch_threads']})" if "torch_threads" in info else ""
    commit = data.get("commit_info", {}).get("id", "?")[:10]
    return [
        f"- GPU: {gpu}; CPU: {cpu}{threads}",
        f"- {', '.join(versions)}",
        f"- commit {commit}, recorded {data.get('datetime', '?')}",
    ]


def traffic(extra: dict[str, Any]) -> str:
    """`design MB / floor MB (ratio x)` from a row's `design_bytes` and `bytes`, else ""."""
    design, floor = extra.get("design_bytes"), extra.get("bytes")
    if not design or not floor:
        return ""
    return f"{design / 1e6:.0f} / {floor / 1e6:.0f} MB ({design / floor:.1f}x)"


def table(benchmarks: list[dict[str, Any]]) -> list[str]:
    extras = [k for k in EXTRA_COLUMNS if any(k in b.get("extra_info", {}) for b in benchmarks)]
    with_traffic = any("design_bytes" in b.get("extra_info", {}) for b in benchmarks)
    headers = [EXTRA_COLUMNS[k] for k in extras] + (["traffic design / floor"] if with_traffic
                                                     else [])  # fmt: skip
    lines = [
        "| group | impl | mean ms | min ms | speed-up vs baseline | " + " | ".join(headers) + " |",
        "|---|---|---:|---:|---:|" + "---:|" * len(headers),
    ]
    groups: dict[str, list[dict[str, Any]]] = {}
    for bench in benchmarks:
        groups.setdefault(bench["group"] or bench["name"], []).append(bench)
    for group, rows in groups.items():
        base = next((r for r in rows if _impl(r) in BASELINES), None)
        for row in rows:
            mean = row["stats"]["mean"]
            speedup = f"{base['stats']['mean'] / mean:.2f}x" if base else "-"
            cells = [_fmt(row.get("extra_info", {}).get(k, "")) for k in extras]
            if with_traffic:
                cells.append(traffic(row.get("extra_info", {})))
            lines.append(
                f"| {group} | {_impl(row)} | {_fmt(mean * 1e3)} | {_fmt(row['stats']['min'] * 1e3)} "
                f"| {speedup} | " + " | ".join(cells) + " |"
            )
    return lines


def _by(benchmarks: list[dict[str, Any]], group: str, impl: str) -> dict[str, Any] | None:
    return next((b for b in benchmarks if b["group"] == group and _impl(b) == impl), None)


def targets(benchmarks: list[dict[str, Any]], gpu: bool) -> list[tuple[str, str, bool]]:
    """(target, measured, met) for the targets whose groups are present. `gpu`: the file was
    recorded with a GPU (the model, attention and inference targets are GPU targets)."""
    out: list[tuple[str, str, bool]] = []
    copy = next((b for b in benchmarks if b["group"] == "copy bandwidth cuda"), None)
    copy_gbs = copy["extra_info"]["GB/s"] if copy else None
    for group in sorted({b["group"] for b in benchmarks}):
        fused, eager = _by(benchmarks, group, "fused"), _by(benchmarks, group, "eager")
        if not (fused and eager):
            continue  # not a loss group
        t, device = fused["stats"]["mean"], group.split()[1]
        compiled = _by(benchmarks, group, "compiled")
        feature = group.startswith("feature_alignment")
        if device == "cpu":
            if group.endswith("fwd+bwd"):
                if compiled:
                    ratio = compiled["stats"]["mean"] / t
                    out.append((f"{group}: C++ >= 2x compiled", f"{ratio:.1f}x", ratio >= 2))
                if group.startswith("affine_invariant"):
                    ratio = eager["stats"]["mean"] / t
                    out.append((f"{group}: C++ >= 10x eager", f"{ratio:.1f}x", ratio >= 10))
            continue
        if not feature:
            out.append((f"{group}: fused >= 5x eager", f"{eager['stats']['mean'] / t:.1f}x",
                        eager["stats"]["mean"] / t >= 5))
            if compiled:
                out.append((f"{group}: fused >= 2x compiled",
                            f"{compiled['stats']['mean'] / t:.1f}x",
                            compiled["stats"]["mean"] / t >= 2))
        if copy_gbs:
            share, goal = fused["extra_info"]["GB/s"] / copy_gbs, 0.8 if feature else 0.5
            out.append((f"{group}: fused >= {100 * goal:.0f}% of copy bandwidth "
                        f"({copy_gbs:.0f} GB/s)", f"{100 * share:.0f}%", share >= goal))
    out += cpu_inference_targets(benchmarks)
    if not gpu:
        return out
    forward = [b for b in benchmarks if b["group"].startswith("forward ")]
    for encoder in sorted({b["group"].split()[1] for b in forward}):
        mine = [b for b in forward if b["group"].split()[1] == encoder]
        base = next((b for b in mine if _impl(b) == "transformers"
                     and re.search(r"batch 1 fp32 eager", b["group"])), None)
        best = max((b for b in mine if _impl(b) == "ours" and " bf16 " in b["group"]
                    and not re.search(r"batch 1 ", b["group"])),
                   key=lambda b: b["extra_info"]["images_per_s"], default=None)
        if base and best:
            ratio = best["extra_info"]["images_per_s"] / base["extra_info"]["images_per_s"]
            out.append((f"{encoder}: bf16 batched >= 3x transformers fp32 batch 1",
                        f"{ratio:.1f}x ({best['group']})", ratio >= 3))
    for group in sorted({b["group"] for b in benchmarks if b["group"].startswith("attention ")}):
        rows = [b for b in benchmarks if b["group"] == group]
        sdpa = _by(rows, group, "sdpa")
        if sdpa:
            fastest = min(b["stats"]["mean"] for b in rows)
            ratio = sdpa["stats"]["mean"] / fastest
            out.append((f"{group}: sdpa within 10% of the fastest", f"{ratio:.2f}x",
                        ratio <= 1.1))
    for group in sorted({b["group"] for b in benchmarks if b["group"].startswith("inference ")}):
        loop, ours = _by(benchmarks, group, "official-loop"), _by(benchmarks, group, "pseudo-label")
        if loop and ours:
            ratio = loop["stats"]["mean"] / ours["stats"]["mean"]
            goal = 10 if " vitl " in group else None
            out.append((f"{group}: pseudo-label vs official loop" + (" >= 10x" if goal else ""),
                        f"{ratio:.1f}x", ratio >= goal if goal else True))
            busy = ours["extra_info"].get("gpu_busy")
            if busy is not None:
                out.append((f"{group}: pseudo-label GPU busy > 85%", f"{100 * busy:.0f}%",
                            busy > 0.85))
    return out


def cpu_inference_targets(benchmarks: list[dict[str, Any]]) -> list[tuple[str, str, bool]]:
    """Issue 20's CPU targets (bench_inference): per "batch ... cpu" group, the default against
    the fastest direct runtime (>= 1x) and ONNX Runtime fp32 (>= 1.3x); per CPU end-to-end
    group, the pseudo-label CLI against the transformers pipeline loop (>= 2x)."""
    out: list[tuple[str, str, bool]] = []
    for group in sorted({b["group"] for b in benchmarks}):
        if group.startswith("batch ") and group.endswith(" cpu"):
            default = _by(benchmarks, group, "ours-default")
            direct = [b for b in (_by(benchmarks, group, name) for name in DIRECT_RUNTIMES) if b]
            if not (default and direct):
                continue
            fastest = min(direct, key=lambda b: b["stats"]["mean"])
            ratio = fastest["stats"]["mean"] / default["stats"]["mean"]
            out.append((f"{group}: default >= the fastest direct runtime ({_impl(fastest)})",
                        f"{ratio:.2f}x", ratio >= 1))
            onnx = _by(benchmarks, group, "onnxruntime-fp32-on-export")
            if onnx:
                ratio = onnx["stats"]["mean"] / default["stats"]["mean"]
                out.append((f"{group}: default >= 1.3x onnxruntime fp32", f"{ratio:.2f}x",
                            ratio >= 1.3))
        if group.startswith("inference cpu "):
            pipe = _by(benchmarks, group, "transformers-pipeline")
            for name in ("pseudo-label-cli", "pseudo-label-cli-original-size"):
                ours = _by(benchmarks, group, name)
                if pipe and ours:
                    ratio = pipe["stats"]["mean"] / ours["stats"]["mean"]
                    out.append((f"{group}: {name} >= 2x the transformers pipeline loop",
                                f"{ratio:.2f}x", ratio >= 2))
    return out


def report(path: Path) -> str:
    data = json.loads(path.read_text())
    lines = [f"## {path.name}", "", *header(data), "", *table(data["benchmarks"])]
    checks = targets(data["benchmarks"], gpu=bool(data.get("machine_info", {}).get("gpu")))
    if checks:
        lines += ["", "| target | measured | met |", "|---|---|---|"]
        lines += [f"| {name} | {value} | {'yes' if met else 'NO'} |" for name, value, met in checks]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", type=Path, help="pytest-benchmark JSON files")
    args = parser.parse_args(argv)
    print("\n".join(report(path) for path in args.files))


if __name__ == "__main__":
    main()
