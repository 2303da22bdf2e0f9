"""The paper's ablation (Depth Anything, Table 9 in spirit) on the synthetic world:
``python -m depth_anything_fast.recipe.ablation`` (``make ablation``).

Rows, each adding one ingredient to the one above, with the same budget (the demo student's
steps and images per step) and the same seeds:

1. labelled only (this model is also the teacher of the rows below, per seed);
2. + pseudo-labelled images, clean view, no CutMix, no feature alignment (plain self-training);
3. + strong colour perturbation (colour jitter, greyscale, blur) on the pseudo-labelled images;
4. + CutMix (the authors' box sampler, p = 0.5);
5. + feature alignment to the frozen semantic encoder (alpha 0.85): the full recipe.

The world (data and semantic encoder) is the demo's, reused from ``--world`` when given, as
are that demo's teacher, pseudo-labels and student where their configuration is exactly a row
of the same seed (the demo's seed 0 trains row 1 and row 5 of seed 0). For each seed: train row 1, pseudo-label the unlabelled images with it, train rows 2-5 (same
student seed), score every row on the validation images. Per row: mean over seeds of the
overall and per-kind AbsRel / delta1, a 95% t-interval over seeds of the overall AbsRel, and
the paired per-image AbsRel difference to row 1 (averaged over seeds) with a 95% bootstrap CI.
Results are written after every seed (``ablation.json`` / ``.md`` / ``.png``), so an
interrupted run leaves its finished seeds, marked partial; a rerun reuses finished models.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from . import pipeline

ROWS: tuple[tuple[str, tuple[str, ...] | None], ...] = (
    ("labelled only", None),
    ("+ pseudo-labelled, no perturbation", (
        "loss.strong_perturbation=false", "loss.cutmix_p=0.0", "loss.feature_alignment=false")),
    ("+ strong colour perturbation", (
        "loss.strong_perturbation=true", "loss.cutmix_p=0.0", "loss.feature_alignment=false")),
    ("+ CutMix", (
        "loss.strong_perturbation=true", "loss.cutmix_p=0.5", "loss.feature_alignment=false")),
    ("+ feature alignment (full recipe)", (
        "loss.strong_perturbation=true", "loss.cutmix_p=0.5", "loss.feature_alignment=true")),
)
# Training order: labelled only (the teacher), the full recipe, then the rows in between, so
# that a run cut short has the two ends of the table for every seed it reached.
TRAIN_ORDER = (0, 4, 1, 2, 3)
# two-sided 97.5% quantiles of Student's t for n - 1 degrees of freedom
_T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306,
         9: 2.262}


def _done(out_dir: Path) -> Path | None:
    final = out_dir / "final"
    return final if (final / "model.safetensors").is_file() else None


# Config fields that do not change what a run trains (where it writes, its progress bar, the
# folder its pseudo-labels were read from when they come from the same teacher).
_NOT_TRAINING = ("out_dir", "progress", "pseudo_labels")


def _same_run(run_dir: Path, config: Path, overrides: list[str]) -> Path | None:
    """`run_dir`'s exported model if it finished with exactly the training configuration that
    `config` + `overrides` give, else None."""
    from depth_anything_fast.train.config import config_to_dict, load_config

    final = _done(run_dir)
    if final is None or not (run_dir / "config.json").is_file():
        return None

    def strip(values: Any) -> Any:
        if isinstance(values, dict):
            return {k: strip(v) for k, v in values.items() if k not in _NOT_TRAINING}
        return values

    saved = json.loads((run_dir / "config.json").read_text())
    wanted = json.loads(json.dumps(config_to_dict(load_config(config, overrides))))
    return final if strip(saved) == strip(wanted) else None


def run_seed(out: Path, world: pipeline.World, seed: int, steps: int | None = None,
             reuse: Path | None = None, train_missing: bool = True,
             log: pipeline.Log = pipeline.log_line) -> dict[str, list[dict[str, Any]]]:
    """Train (in `TRAIN_ORDER`) and score every row for one seed; returns row name ->
    per-image records of the rows that have a model.

    Finished rows under `out` are reused; so are the teacher, pseudo-labels and student of a
    demo output folder `reuse` when their saved configuration is exactly this seed's row 1 /
    row 5 (the demo with the same seed trains them). `train_missing=False` scores the finished
    rows only. Each row's validation records are cached in `row<N>_val.json` (newer than its
    model), so scoring the rows again costs nothing."""
    from depth_anything_fast.train.config import load_config

    student = load_config(pipeline.STUDENT_CONFIG)
    student_steps = steps if steps is not None else student.steps
    images_per_step = student.data.batch_size * (1 + student.data.unlabelled_ratio)
    common = [f"data.labelled={world.layout.labelled}", f"model.init={world.encoder}",
              f"steps={student_steps}"]
    folder = out / f"seed{seed}"
    runs = _SeedRuns(folder, world, seed, common, images_per_step)
    models = runs.train_rows(reuse, train_missing, log)
    if not models:
        return {}
    return _score_rows(folder, world, models)


class _SeedRuns:
    """The rows' training runs of one seed under `folder` (`row<N>/`), and its pseudo-labels."""

    def __init__(self, folder: Path, world: pipeline.World, seed: int, common: list[str],
                 images_per_step: int) -> None:  # fmt: skip
        self.folder, self.world, self.seed = folder, world, seed
        self.common, self.images_per_step = common, images_per_step
        self.pseudo = folder / "pseudo_labels"

    def row(self, index: int) -> tuple[Path, Path, list[str]]:
        """(run folder, config, overrides) of row `index`: the teacher trains on the labelled
        images only (as many per step as a student sees); students add the pseudo-labels."""
        run_dir = self.folder / f"row{index + 1}"
        switches = ROWS[index][1]
        if switches is None:
            return run_dir, pipeline.TEACHER_CONFIG, [
                *self.common, f"seed={self.seed}", f"data.batch_size={self.images_per_step}",
                f"out_dir={run_dir}"]  # fmt: skip
        return run_dir, pipeline.STUDENT_CONFIG, [
            *self.common, f"seed={self.seed + 1}", f"out_dir={run_dir}",
            f"data.pseudo_labels={self.pseudo}", f"model.frozen_encoder={self.world.encoder}",
            *switches]  # fmt: skip

    def train_rows(self, reuse: Path | None, train_missing: bool,
                   log: pipeline.Log) -> dict[str, Path]:  # fmt: skip
        """Row name -> trained model folder, in `TRAIN_ORDER` (see `run_seed`)."""
        models: dict[str, Path] = {}
        labelled_here = False
        for index in TRAIN_ORDER:
            name, switches = ROWS[index]
            run_dir, config, overrides = self.row(index)
            demo_run = None
            if reuse is not None and index in (0, len(ROWS) - 1):
                demo_run = _same_run(reuse / ("teacher" if index == 0 else "student"), config,
                                     overrides)
                if index == 0 and demo_run is not None and (reuse / "pseudo_labels").is_dir():
                    self.pseudo = reuse / "pseudo_labels"  # labelled by that same teacher
            existing = _done(run_dir) or demo_run
            if existing is not None:
                log(f"[ablation seed {self.seed}] {name}: reusing {existing}")
                models[name] = existing
                continue
            if not train_missing or (switches is not None and ROWS[0][0] not in models):
                continue
            if switches is not None and self.pseudo == self.folder / "pseudo_labels" \
                    and not labelled_here:
                # resumes an interrupted labelling (finished images are skipped)
                pipeline.pseudo_label_images(models[ROWS[0][0]], self.world.layout.unlabelled,
                                             self.pseudo, log)
                labelled_here = True
            models[name] = pipeline.train(config, overrides, f"ablation seed {self.seed} {name}",
                                          log)
        return models


def _score_rows(folder: Path, world: pipeline.World,
                models: dict[str, Path]) -> dict[str, list[dict[str, Any]]]:
    """Row name -> per-image validation records of each model, cached in `row<N>_val.json`
    (used while newer than the model)."""
    records = {}
    for index, (name, _) in enumerate(ROWS):
        cache = folder / f"row{index + 1}_val.json"
        if name in models and cache.is_file():
            saved = json.loads(cache.read_text())
            weights = models[name] / "model.safetensors"
            if saved["model"] == str(models[name]) and \
                    cache.stat().st_mtime > weights.stat().st_mtime:
                records[name] = saved["records"]
    missing = {name: path for name, path in models.items() if name not in records}
    if missing:
        evaluation = pipeline.evaluate_models(world, missing)
        for index, (name, _) in enumerate(ROWS):
            if name in missing:
                records[name] = evaluation.per_image[name]
                (folder / f"row{index + 1}_val.json").write_text(json.dumps(
                    {"model": str(models[name]), "records": records[name]}))
    return {name: records[name] for name, _ in ROWS if name in records}


def summarise(per_seed: dict[int, dict[str, list[dict[str, Any]]]],
              kinds: list[str]) -> list[dict[str, Any]]:
    """One entry per row that has a model for at least one seed: per-seed overall metrics, mean
    and t-interval over those seeds, per-kind means, and the paired difference to row 1 (over
    the seeds having both) with a bootstrap CI over images."""
    base = ROWS[0][0]
    rows = []
    for name, _ in ROWS:
        seeds = sorted(s for s in per_seed if name in per_seed[s])
        if not seeds:
            continue
        summaries = [pipeline.summarise(per_seed[s][name], kinds) for s in seeds]
        overall = np.array([m["overall"]["abs_rel"] for m in summaries])
        entry: dict[str, Any] = {
            "row": name, "seeds": seeds,
            "abs_rel_per_seed": overall.tolist(),
            "delta1_per_seed": [m["overall"]["delta1"] for m in summaries],
            "abs_rel_mean": float(overall.mean()),
            "delta1_mean": float(np.mean([m["overall"]["delta1"] for m in summaries])),
            "per_kind_abs_rel": {k: float(np.mean([m[k]["abs_rel"] for m in summaries]))
                                 for k in kinds},
        }
        if len(seeds) > 1:
            half = _T975.get(len(seeds) - 1, 1.96) * overall.std(ddof=1) / np.sqrt(len(seeds))
            entry["abs_rel_ci"] = [float(overall.mean() - half), float(overall.mean() + half)]
        paired = [s for s in seeds if base in per_seed[s]]
        if name != base and paired:
            # per image, the difference averaged over seeds, then bootstrapped over images
            diffs = np.mean([pipeline.paired_differences(per_seed[s][name], per_seed[s][base])
                             for s in paired], axis=0)
            mean, lo, hi = pipeline.bootstrap_ci(diffs)
            entry["vs_labelled_only"] = {"mean": mean, "lo": lo, "hi": hi, "seeds": paired}
        rows.append(entry)
    return rows


def _markdown(rows: list[dict[str, Any]], kinds: list[str], meta: dict[str, Any]) -> str:
    seeds = sorted({s for r in rows for s in r["seeds"]})
    status = "complete" if meta["complete"] else (
        "PARTIAL: rows/seeds missing where the run was cut short; each row gives its seeds")
    lines = [
        f"# Ablation on the synthetic world ({status})", "",
        f"Command: `{meta['command']}`", "",
        f"Every row: {meta['steps']} steps x {meta['images_per_step']} images per step, seeds "
        f"{', '.join(map(str, seeds))}; labelled data covers {', '.join(meta['labelled_kinds'])} "
        f"only, validation ({meta['n_val']} images) covers {', '.join(kinds)}. AbsRel in depth "
        "space after per-image least-squares alignment in disparity (lower is better).", "",
        "| row | AbsRel mean (95% CI over seeds) | per seed | δ1 mean | "
        + " | ".join(f"{k} AbsRel" for k in kinds)
        + " | Δ AbsRel vs labelled only (95% bootstrap CI over images) |",
        "|---|---|---|---|" + "---|" * len(kinds) + "---|"]
    for r in rows:
        ci = (f" ({r['abs_rel_ci'][0]:.4f} … {r['abs_rel_ci'][1]:.4f})"
              if "abs_rel_ci" in r else "")
        vs = r.get("vs_labelled_only")
        vs_text = f"{vs['mean']:+.4f} ({vs['lo']:+.4f} … {vs['hi']:+.4f})" if vs else "—"
        lines.append(
            f"| {r['row']} | {r['abs_rel_mean']:.4f}{ci} | "
            + ", ".join(f"{v:.4f} (seed {s})" for s, v in zip(r["seeds"], r["abs_rel_per_seed"]))
            + f" | {r['delta1_mean']:.3f} | "
            + " | ".join(f"{r['per_kind_abs_rel'][k]:.4f}" for k in kinds) + f" | {vs_text} |")
    lines += ["", f"Wall time {meta['elapsed_s']:.0f} s on {meta['machine']}; load average "
              f"at the end {meta['load_average']}."]
    return "\n".join(lines) + "\n"


def _chart(rows: list[dict[str, Any]], path: Path, partial: bool) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 3.8))
    x = np.arange(len(rows))
    means = [r["abs_rel_mean"] for r in rows]
    # rows with a single seed have no interval
    err = np.array([[m - r["abs_rel_ci"][0], r["abs_rel_ci"][1] - m] if "abs_rel_ci" in r
                    else [0.0, 0.0] for m, r in zip(means, rows)]).T
    ax.bar(x, means, yerr=err, capsize=4, color="#8fb3d9")
    for i, r in enumerate(rows):
        ax.scatter([i] * len(r["abs_rel_per_seed"]), r["abs_rel_per_seed"], color="k", s=10,
                   zorder=3)
    ax.set_xticks(x, [r["row"].replace(" (", "\n(").replace(", ", ",\n") for r in rows],
                  fontsize=8)
    low = min(min(r["abs_rel_per_seed"]) for r in rows)
    high = max(max(r["abs_rel_per_seed"]) for r in rows)
    ax.set_ylim(max(low - 0.3 * (high - low) - 0.005, 0), high + 0.3 * (high - low) + 0.005)
    ax.set_ylabel("AbsRel, all kinds (lower is better)")
    ax.set_title("Ablation, mean over seeds (bars: 95% CI; dots: seeds)"
                 + (" - PARTIAL" if partial else ""))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_ablation(out: Path, *, seeds: list[int], world_dir: Path | None = None,
                 scale: float = 1.0, command: str = "", train: bool = True) -> dict[str, Any]:
    """Run every seed (results rewritten after each) and return the final report;
    `train=False` scores the finished rows only (the table of an interrupted run)."""
    import platform

    from depth_anything_fast.recipe.synthetic import KINDS
    from depth_anything_fast.train.config import load_config

    pipeline.set_threads()
    start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    budget = pipeline.WorldBudget().scaled(scale)
    world = pipeline.prepare_world(world_dir or out, budget, seed=0)
    student = load_config(pipeline.STUDENT_CONFIG)
    steps = None if scale >= 1 else max(int(student.steps * scale), 2)
    kinds = list(KINDS)
    per_seed: dict[int, dict[str, list[dict[str, Any]]]] = {}
    report: dict[str, Any] = {}
    for seed in seeds:
        found = run_seed(out, world, seed, steps, reuse=world_dir, train_missing=train)
        if found:
            per_seed[seed] = found
        if not per_seed:
            continue
        rows = summarise(per_seed, kinds)
        complete = sorted(per_seed) == sorted(seeds) and all(
            len(v) == len(ROWS) for v in per_seed.values())
        meta = {
            "command": command, "seeds_requested": seeds, "complete": complete,
            "steps": steps or student.steps,
            "images_per_step": student.data.batch_size * (1 + student.data.unlabelled_ratio),
            "labelled_kinds": list(budget.labelled_kinds), "n_val": budget.n_val,
            "elapsed_s": time.perf_counter() - start,
            "load_average": [round(v, 2) for v in os.getloadavg()],
            "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores (shared)",
        }
        report = {"meta": meta, "rows": rows,
                  "per_seed": {str(s): {name: pipeline.summarise(r, kinds)["overall"]
                                        for name, r in v.items()} for s, v in per_seed.items()}}
        (out / "ablation.json").write_text(json.dumps(report, indent=2) + "\n")
        (out / "ablation.md").write_text(_markdown(rows, kinds, meta))
        _chart(rows, out / "ablation.png", partial=not meta["complete"])
        print(_markdown(rows, kinds, meta), flush=True)
    if not per_seed:
        raise SystemExit(f"no finished ablation row under {out}")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m depth_anything_fast.recipe.ablation",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="ablation_out",
                        help="output directory (default ablation_out)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--world", default=None,
                        help="reuse the data and semantic encoder of a demo output directory "
                             "(and its teacher / student where they are exactly a row of a "
                             "seed; default: generate the world under --out)")
    parser.add_argument("--scale", type=float, default=1.0,
                        help="shrink data and training steps (< 1: a quick smoke run)")
    parser.add_argument("--no-train", action="store_true",
                        help="score the finished rows only (the table of an interrupted run)")
    args = parser.parse_args(argv)
    if len(set(args.seeds)) != len(args.seeds):
        parser.error(f"--seeds must be distinct, got {args.seeds}")
    command = "python -m depth_anything_fast.recipe.ablation " + " ".join(
        shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    run_ablation(Path(args.out), seeds=args.seeds,
                 world_dir=Path(args.world) if args.world else None, scale=args.scale,
                 command=command.strip(), train=not args.no_train)
    return 0


if __name__ == "__main__":
    sys.exit(main())
