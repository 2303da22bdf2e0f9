"""Why a kind of scene absent from the labelled data can get worse under self-training, measured:
how wrong the teacher's pseudo-labels are, per kind, on the unlabelled images, and how closely a
student's per-image error follows its teacher's.

The unlabelled split stores no depth (the models never see any); for this measurement only, it
is rendered again from the world's seed (`synthetic.split_scene`), exact as the val depth is.
Pseudo-labels are scored as the validation split is (`pipeline.evaluate_models`): per-image
least-squares alignment in disparity, AbsRel and delta1 in depth space.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import pipeline

Records = list[dict[str, Any]]


def unlabelled_samples(world: pipeline.World) -> list[Any]:
    """`evaluate` Samples of the unlabelled images: the stored image (what the teacher
    labelled), depth rendered again in metres as the val split stores it (millimetre steps,
    0 = sky or beyond `MAX_DEPTH`)."""
    from depth_anything_fast.evaluate.datasets import Sample, read_rgb
    from depth_anything_fast.formats.images import find_images
    from depth_anything_fast.recipe.synthetic import depth_to_png16, read_kinds, split_scene

    stamp = json.loads((world.layout.root / pipeline.WORLD_FILE).read_text())
    size = tuple(stamp["budget"]["size"])
    kinds = read_kinds(world.layout.root, "unlabelled")
    images = {Path(p).stem: Path(p) for p in find_images(world.layout.unlabelled / "images").images}
    samples = []
    for name in sorted(kinds):
        scene = split_scene(stamp["seed"], "unlabelled", int(name), kinds[name], size)
        depth = depth_to_png16(scene.depth).astype(np.float32) / 1000.0
        samples.append(Sample(name, read_rgb(images[name]), depth, depth > 0,
                              str(images[name])))
    return samples


def _records(result: Any, kinds: Mapping[str, str]) -> Records:
    return [{"name": r["name"], "kind": kinds[Path(r["name"]).stem], "abs_rel": r["abs_rel"],
             "delta1": r["delta1"]} for r in result.per_image if r.get("degenerate") is None]


def score_pseudo_labels(world: pipeline.World, pseudo_dir: Path,
                        samples: Sequence[Any]) -> Records:
    """Per-image records (name, kind, abs_rel, delta1) of the pseudo-labels in `pseudo_dir`
    (a pseudo-label output folder) against the unlabelled images' rendered depth."""
    from depth_anything_fast.evaluate.runner import PredictionDirectory, evaluate_predictions
    from depth_anything_fast.recipe.synthetic import read_kinds

    result = evaluate_predictions(samples, PredictionDirectory(pseudo_dir),
                                  scoring="relative-depth", batch_size=32)
    return _records(result, read_kinds(world.layout.root, "unlabelled"))


def score_model_unlabelled(world: pipeline.World, model: Path,
                           samples: Sequence[Any]) -> Records:
    """Per-image records of `model`'s predictions on the unlabelled images (for a student:
    its error on the images it was trained on, against the exact depth)."""
    from depth_anything_fast.evaluate.runner import evaluate_predictions
    from depth_anything_fast.recipe.synthetic import read_kinds

    maps = pipeline.predict(model, [s.image for s in samples])
    result = evaluate_predictions(samples, pipeline.replay(maps), scoring="relative-depth",
                                  batch_size=32)
    return _records(result, read_kinds(world.layout.root, "unlabelled"))


def cached(path: Path, source: Path, compute: Any) -> Records:
    """`compute()`'s records, kept in `path` (JSON) while newer than `source`."""
    if path.is_file() and path.stat().st_mtime > source.stat().st_mtime:
        return json.loads(path.read_text())
    records = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(records))
    return records


def follows(teacher: Mapping[int, Records], student: Mapping[int, Records],
            kinds: Sequence[str]) -> dict[str, dict[str, float]]:
    """How the student's per-image AbsRel follows its teacher's, per kind and "overall", pooled
    over the seeds both have (each seed's student against its own teacher): Pearson r, the
    least-squares slope of student on teacher error, the mean of each and the share of images
    where the student's error is below the teacher's."""
    out = {}
    for group in [*kinds, "overall"]:
        pairs = []
        for seed in sorted(set(teacher) & set(student)):
            t = {r["name"]: r["abs_rel"] for r in teacher[seed]
                 if group == "overall" or r["kind"] == group}
            pairs += [(t[r["name"]], r["abs_rel"]) for r in student[seed] if r["name"] in t]
        x, y = np.array(pairs, dtype=np.float64).reshape(-1, 2).T
        if x.size < 3:
            continue
        slope = float(np.polyfit(x, y, 1)[0])
        out[group] = {"r": float(np.corrcoef(x, y)[0, 1]), "slope": slope,
                      "teacher": float(x.mean()), "student": float(y.mean()),
                      "student_better_share": float((y < x).mean()), "n": int(x.size)}
    return out


def scatter(panels: Sequence[tuple[str, Mapping[int, Records], Mapping[int, Records]]],
            kind: str, path: Path) -> None:
    """One panel per (title, teacher records, student records): each `kind` image of each seed
    as a dot at (teacher AbsRel, student AbsRel), coloured by seed, with the diagonal."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.8), squeeze=False)
    for ax, (title, teacher, student) in zip(axes[0], panels):
        top = 0.0
        for seed in sorted(set(teacher) & set(student)):
            t = {r["name"]: r["abs_rel"] for r in teacher[seed] if r["kind"] == kind}
            xy = np.array([(t[r["name"]], r["abs_rel"]) for r in student[seed]
                           if r["name"] in t]).reshape(-1, 2)
            ax.scatter(xy[:, 0], xy[:, 1], s=9, alpha=0.6, label=f"seed {seed}")
            top = max(top, float(xy.max(initial=0)))
        ax.plot([0, top], [0, top], color="k", lw=0.8, label="student = teacher")
        ax.set_xlabel("teacher AbsRel (per image)")
        ax.set_ylabel("student AbsRel (same image)")
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7)
    fig.suptitle(f"'{kind}' images: the student's error against its own teacher's")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
