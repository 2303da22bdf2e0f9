"""Two arms of demo runs (e.g. fp32 and bf16 training) over the same seeds: are the results
equal within the seed spread?

    python benchmarks/benchmark_demo_seed_spread.py --a fp32 runs/fp32_s0 runs/fp32_s1 runs/fp32_s2 \\
        --b bf16 runs/bf16_s0 runs/bf16_s1 runs/bf16_s2 > comparison.md

Each folder is a finished `python -m depth_anything_fast.demo --out DIR --seed N` run; the i-th
folder of each arm must have the same seed (the same synthetic world), which pairs them. For
teacher, student and control, per kind and overall: AbsRel and delta1 as mean and sample standard
deviation over seeds in each arm, and the paired difference b - a (mean over seeds with a 95%
t-interval), beside the seed spread it is judged against. Also each run's wall time and stage
times from `<folder>.log` when it exists (the output `run_demo.sh`-style wrappers save next to it).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
from pathlib import Path
from typing import Any

MODELS = ("teacher", "student", "control")
METRICS = (("abs_rel", "AbsRel", 4), ("delta1", "δ1", 3))
# two-sided 97.5% quantiles of Student's t for n - 1 degrees of freedom
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306,
        9: 2.262}
# "[teacher] 400 steps in 481s, ...", "[world] ... in 119s", "[pseudo-labels] ... (50s)"
STAGE_LINE = re.compile(r"^\[([\w -]+)\] (?!step ).*?(?:\bin (\d+)s\b|\((\d+)s\)$)")


def load_run(folder: Path) -> dict[str, Any]:
    """results.json of a demo run (its seed: recorded there, or the `seed N` of the log's first
    line for runs of older code) and the timings its log records."""
    path = folder / "results.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not a finished demo run")
    results = json.loads(path.read_text())
    run = {"folder": str(folder), "results": results, "stages": {}, "wall_s": None,
           "seed": results.get("seed"), "load": []}
    log = folder.with_name(folder.name + ".log")
    if log.is_file():
        lines = log.read_text().splitlines()
        if run["seed"] is None and " seed " in lines[0]:
            run["seed"] = int(lines[0].split(" seed ")[1].split()[0])
        for line in lines:
            if line.startswith("rc 0 wall "):
                run["wall_s"] = float(line.split()[3])
            elif "load average: " in line and not line.startswith("["):
                run["load"].append(line.split("load average: ")[1])
            elif (match := STAGE_LINE.match(line)) is not None:
                run["stages"][match.group(1)] = int(match.group(2) or match.group(3))
    return run


def mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else math.nan


def compare(a: list[dict], b: list[dict], name_a: str, name_b: str) -> str:
    if len(a) != len(b) or len(a) < 2:
        raise ValueError("need the same number (>= 2) of runs in both arms, paired by seed")
    for run_a, run_b in zip(a, b):
        if run_a["seed"] is None or run_a["seed"] != run_b["seed"]:
            raise ValueError(f"{run_a['folder']} (seed {run_a['seed']}) is paired with "
                             f"{run_b['folder']} (seed {run_b['seed']})")
    kinds = a[0]["results"]["kinds"]
    groups = [*kinds, "overall"]
    n = len(a)
    lines = [f"Seeds {', '.join(str(r['seed']) for r in a)}; {name_a}: "
             f"{', '.join(r['folder'] for r in a)}; {name_b}: {', '.join(r['folder'] for r in b)}.",
             "", f"Mean ± sample SD over the {n} seeds; Δ = {name_b} - {name_a} paired by seed, "
             f"mean and 95% t-interval (t = {T975[n - 1]}); |Δ| / SD = the mean difference in "
             "units of the larger arm's seed SD.", ""]
    for metric, label, digits in METRICS:
        lines += [f"**{label}**", "",
                  f"| model | group | {name_a} | {name_b} | Δ (95% CI) | \\|Δ\\| / SD |",
                  "|---|---|---|---|---|---|"]
        for model in MODELS:
            for group in groups:
                va = [r["results"]["summary"][model][group][metric] for r in a]
                vb = [r["results"]["summary"][model][group][metric] for r in b]
                (ma, sa), (mb, sb) = mean_sd(va), mean_sd(vb)
                diffs = [y - x for x, y in zip(va, vb)]
                md, sd = mean_sd(diffs)
                half = T975[n - 1] * sd / math.sqrt(n)
                ratio = abs(md) / max(sa, sb) if max(sa, sb) > 0 else math.inf
                lines.append(
                    f"| {model} | {group} | {ma:.{digits}f} ± {sa:.{digits}f} | "
                    f"{mb:.{digits}f} ± {sb:.{digits}f} | {md:+.{digits}f} "
                    f"({md - half:+.{digits}f} … {md + half:+.{digits}f}) | {ratio:.2f} |")
        lines.append("")
    lines += ["**Student - control** (overall AbsRel, the demo's paired per-image difference "
              "with its 95% bootstrap CI over images)", "", f"| seed | {name_a} | {name_b} |",
              "|---|---|---|"]
    for run_a, run_b in zip(a, b):
        cells = []
        for run in (run_a, run_b):
            d = run["results"]["paired"]["student - control"]["overall"]
            cells.append(f"{d['mean']:+.4f} ({d['lo']:+.4f} … {d['hi']:+.4f})")
        lines.append(f"| {run_a['seed']} | {' | '.join(cells)} |")
    lines.append("")
    if all(r["wall_s"] for r in a + b):
        stages = [s for s in a[0]["stages"] if all(s in r["stages"] for r in a + b)]
        lines += ["**Wall time** (s; the log's stage lines; the machine is shared: read each "
                  "row with its load average)", "",
                  f"| seed | arm | total | {' | '.join(stages)} | load average (start; end) |",
                  "|---|---|---|" + "---|" * len(stages) + "---|"]
        for run_a, run_b in zip(a, b):
            for arm, run in ((name_a, run_a), (name_b, run_b)):
                load = "; ".join(run["load"])
                lines.append(f"| {run['seed']} | {arm} | {run['wall_s']:.0f} | "
                             + " | ".join(str(run["stages"][s]) for s in stages)
                             + f" | {load} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--a", nargs="+", required=True, metavar=("NAME", "RUN"),
                        help="the first arm's name, then its run folders in seed order")
    parser.add_argument("--b", nargs="+", required=True, metavar=("NAME", "RUN"),
                        help="the second arm's name, then its run folders in the same order")
    args = parser.parse_args(argv)
    if len(args.a) < 3 or len(args.b) < 3:
        parser.error("each arm needs a name and at least two runs")
    a = [load_run(Path(p)) for p in args.a[1:]]
    b = [load_run(Path(p)) for p in args.b[1:]]
    print(compare(a, b, args.a[0], args.b[0]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
