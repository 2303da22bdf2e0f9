"""Two arms of the demo over the same seeds (e.g. fp32 and bf16 training): are the results equal
within the seed spread?

    python -m depth_anything_fast.demo --out demo_fp32 --set dist.precision=fp32
    python -m depth_anything_fast.demo --out demo_bf16
    python benchmarks/benchmark_demo_seed_spread.py --a fp32 demo_fp32 --b bf16 demo_bf16 > cmp.md

Each folder is a finished demo run (its `results.json` holds every seed's scores per model and
kind); the arms are paired by seed (the same synthetic world, initial weights and data order).
For the control (the teacher) and the student, per kind and overall: AbsRel and delta1 as mean
and sample standard deviation over seeds in each arm, and the paired difference b - a (mean over
seeds with a 95% t-interval) beside the seed spread it is judged against; then each arm's
student - control verdict and its wall and CPU time.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path
from typing import Any

from depth_anything_fast.recipe.statistics import t975, t_interval

MODELS = {"teacher": "control (teacher)", "student": "student"}
METRICS = (("abs_rel", "AbsRel", 4), ("delta1", "δ1", 3))


def load_run(folder: Path) -> dict[str, Any]:
    """The demo's `results.json` in `folder` (a `FileNotFoundError` naming it when absent)."""
    path = folder / "results.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not a finished demo run")
    results = json.loads(path.read_text())
    if "per_seed" not in results:
        raise ValueError(f"{path}: no per-seed scores (a demo run from before the seed-paired "
                         "demo)")
    return {"folder": str(folder), **results}


def mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else math.nan


def _score_table(a: dict, b: dict, seeds: list[str], name_a: str, name_b: str, metric: str,
                 label: str, digits: int) -> list[str]:
    lines = [f"**{label}**", "", f"| model | group | {name_a} | {name_b} | Δ (95% CI) | "
             "\\|Δ\\| / seed SD |", "|---|---|---|---|---|---|"]
    for model, model_label in MODELS.items():
        for group in [*a["kinds"], "overall"]:
            va = [a["per_seed"][model][s][group][metric] for s in seeds]
            vb = [b["per_seed"][model][s][group][metric] for s in seeds]
            (ma, sa), (mb, sb) = mean_sd(va), mean_sd(vb)
            d = t_interval([y - x for x, y in zip(va, vb, strict=True)])
            ratio = abs(d.mean) / max(sa, sb) if max(sa, sb) > 0 else math.inf
            lines.append(f"| {model_label} | {group} | {ma:.{digits}f} ± {sa:.{digits}f} | "
                         f"{mb:.{digits}f} ± {sb:.{digits}f} | {d.mean:+.{digits}f} "
                         f"({d.lo:+.{digits}f} … {d.hi:+.{digits}f}) | {ratio:.2f} |")
    return [*lines, ""]


def compare(a: dict, b: dict, name_a: str, name_b: str) -> str:
    """The markdown comparison of two demo runs `a` and `b` (from `load_run`)."""
    seeds = [str(s) for s in a["seeds"]]
    if seeds != [str(s) for s in b["seeds"]] or len(seeds) < 2:
        raise ValueError(f"the arms must have the same >= 2 seeds: {a['seeds']} vs {b['seeds']}")
    if a["kinds"] != b["kinds"] or a["n_val"] != b["n_val"] or a["steps"] != b["steps"]:
        raise ValueError("the arms differ in world or steps: not paired runs")
    lines = [f"Seeds {', '.join(seeds)}; {name_a}: {a['folder']}; {name_b}: {b['folder']}; "
             f"{a['steps']} steps per stage, {a['n_val']} validation images.", "",
             f"Mean ± sample SD over the {len(seeds)} seeds; Δ = {name_b} - {name_a} paired by "
             f"seed, mean and 95% t-interval (t = {t975(len(seeds) - 1):.3f}); |Δ| / seed SD = the "
             "mean difference in units of the larger arm's seed SD.", ""]
    for metric, label, digits in METRICS:
        lines += _score_table(a, b, seeds, name_a, name_b, metric, label, digits)
    lines += ["**Each arm's verdict and time** (the machine is shared: read the time with its "
              "load average)", "", "| arm | student - control, overall AbsRel (95% CI) | wall s | "
              "CPU s | load average (start; end) |", "|---|---|---|---|---|"]
    for name, run in ((name_a, a), (name_b, b)):
        lines.append(f"| {name} | {run['verdict_line']} | {run['elapsed_s']:.0f} | "
                     f"{run['cpu_s']:.0f} | {run['load_average_start']}; "
                     f"{run['load_average']} |")
    return "\n".join([*lines, ""])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--a", nargs=2, required=True, metavar=("NAME", "RUN"),
                        help="the first arm's name and its demo output folder")
    parser.add_argument("--b", nargs=2, required=True, metavar=("NAME", "RUN"),
                        help="the second arm's name and its demo output folder")
    args = parser.parse_args(argv)
    a, b = load_run(Path(args.a[1])), load_run(Path(args.b[1]))
    print(compare(a, b, args.a[0], args.b[0]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
