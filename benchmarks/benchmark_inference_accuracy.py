"""Accuracy of each inference path against torch fp32 on real photos (issue 20's budget:
aligned AbsRel < 1e-3 for a path to be a default).

    python benchmarks/benchmark_inference_accuracy.py --out benchmarks/results/inference_accuracy \
        [--weights demo_out/teacher/final --weights-input-size 112]

For every image of `shared/data/images` and the colour images of `shared/data/rgbd`, each path
(`Predictor` with a runtime and precision, exactly what users run) predicts the disparity at
the network resolution (keep-aspect lower-bound resize to `--input-size`, batch 1); torch fp32
is the reference. Per image, in float64: the path's map is aligned to the reference by least
squares (scale and shift, `evaluate.metrics.align_scale_shift`) over the pixels where the
reference is positive, then AbsRel = mean |aligned - ref| / ref over those pixels (disparity
space; a ReLU-dead pixel of the reference, disparity 0, is left out as an invalid pixel is in
evaluation). Also the unaligned max |x - ref| / max |ref|. Models: random-initialised ViT-S
and ViT-B (seed 0; the official initialisation) and, with `--weights`, a trained checkpoint
(e.g. the demo's teacher) at 518 and at its own `--weights-input-size`.

Writes `<out>.json` (per image) and `<out>.md` (mean and max over images per model and path).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch
from benchmark_support import SHARED_IMAGES, cpu_description

from depth_anything_fast.data.decode import decode_rgb
from depth_anything_fast.evaluate.metrics import align_scale_shift
from depth_anything_fast.inference.predictor import Predictor
from depth_anything_fast.inference.runtimes import runtime_available
from depth_anything_fast.models import DepthAnything
from depth_anything_fast.transforms import preprocess

PATHS = [("torch", "bf16"), ("openvino", "fp32"), ("openvino", "bf16"), ("onnxruntime", "fp32")]
BUDGET = 1e-3


def real_images() -> list[Path]:
    """The 20 photos and the RGB-D set's colour images."""
    rgbd = SHARED_IMAGES.parent / "rgbd"
    colour = sorted(rgbd.glob("*_color.*")) + sorted((rgbd / "redwood" / "color").glob("*.jpg"))
    return sorted(SHARED_IMAGES.glob("*.jpg")) + colour


def compare(got: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    """Aligned AbsRel (disparity space, pixels with ref > 0) and unaligned max rel. diff."""
    valid = ref > 0
    scale, shift = align_scale_shift(got.astype(np.float64), ref.astype(np.float64), valid)
    g, r = got[valid].astype(np.float64), ref[valid].astype(np.float64)
    aligned = g * scale + shift
    return {"abs_rel": float(np.mean(np.abs(aligned - r) / r)),
            "max_rel_diff": float(np.abs(got - ref).max() / np.abs(ref).max()),
            "valid_fraction": float(valid.mean())}


def measure(model: torch.nn.Module, images: list[Path], input_size: int,
            paths: list[tuple[str, str]] = PATHS) -> dict[str, list]:
    """Per path (runtime, precision), one record per image (name, shape, comparison with torch
    fp32). An image whose fp32 map has no positive pixel (a random model's ReLU-dead output) has
    nothing to compare: it is left out and reported; a model with no such image is refused."""
    inputs = {p.name: preprocess(decode_rgb(p.read_bytes(), str(p)), input_size)
              for p in images}
    reference = Predictor(model, runtime="torch", precision="fp32", device="cpu")
    refs = {name: reference.predict_tensor(x)[0].numpy() for name, x in inputs.items()}
    dead = [name for name, ref in refs.items() if not (ref > 0).any()]
    if dead:
        print(f"  left out ({len(dead)}: fp32 map without a positive pixel): {dead}", flush=True)
        inputs = {name: x for name, x in inputs.items() if name not in dead}
    if not inputs:
        raise ValueError("the model's fp32 map has no positive pixel on any image: nothing to "
                         "compare (the official initialisation of a random ViT-B gives this)")
    results: dict[str, list] = {}
    for runtime, precision in paths:
        if not runtime_available(runtime):
            continue
        predictor = Predictor(model, runtime=runtime, precision=precision, device="cpu")
        rows = []
        for name, x in inputs.items():
            got = predictor.predict_tensor(x)[0].numpy()
            rows.append({"image": name, "shape": list(got.shape), **compare(got, refs[name])})
        results[f"{runtime} {precision}"] = rows
        worst = max(r["abs_rel"] for r in rows)
        print(f"  {runtime} {precision}: mean AbsRel {np.mean([r['abs_rel'] for r in rows]):.2e}"
              f", max {worst:.2e}", flush=True)
    return results


def markdown(report: dict) -> str:
    lines = [
        "# Inference accuracy against torch fp32 on real images",
        "",
        f"{report['n_images']} real images (`shared/data/images` and the RGB-D colour images), "
        "each path run by `Predictor` at the network resolution (keep-aspect lower-bound resize,"
        " batch 1). Per image: least-squares scale+shift alignment to the torch fp32 map, then "
        "AbsRel = mean |aligned - ref| / ref (disparity, pixels with ref > 0); max rel. diff = "
        "max |x - ref| / max |ref| unaligned. Mean and max over the images; the budget for a "
        f"default is AbsRel < {BUDGET:g}.",
        "",
        f"Machine: {report['cpu']}; torch {report['versions']['torch']}, openvino "
        f"{report['versions']['openvino']}, onnxruntime {report['versions']['onnxruntime']}; "
        f"recorded {report['date']}.",
        "",
        "| model | input | path | AbsRel mean | AbsRel max | max rel. diff (max) | within budget |",
        "|---|---|---|---:|---:|---:|---|",
    ]
    for entry in report["models"]:
        if "not_measured" in entry:
            lines.append(f"| {entry['model']} | {entry['input_size']} | all | - | - | - | not "
                         f"measured: {entry['not_measured']} |")
        for path, rows in entry["paths"].items():
            mean = np.mean([r["abs_rel"] for r in rows])
            worst = max(r["abs_rel"] for r in rows)
            diff = max(r["max_rel_diff"] for r in rows)
            lines.append(f"| {entry['model']} | {entry['input_size']} | {path} | {mean:.2e} | "
                         f"{worst:.2e} | {diff:.2e} | {'yes' if worst < BUDGET else 'NO'} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="benchmarks/results/inference_accuracy")
    parser.add_argument("--input-size", type=int, default=518)
    parser.add_argument("--encoders", nargs="*", default=["vits", "vitb"])
    parser.add_argument("--paths", nargs="*", default=[f"{r}:{p}" for r, p in PATHS],
                        help="runtime:precision pairs to measure (default: all)")
    parser.add_argument("--weights", help="a trained checkpoint (e.g. demo_out/teacher/final)")
    parser.add_argument("--weights-input-size", type=int, default=None,
                        help="also run the trained checkpoint at this input size")
    args = parser.parse_args()
    paths = [tuple(p.split(":")) for p in args.paths]
    images = real_images()
    if not images:
        raise SystemExit(f"no images under {SHARED_IMAGES}")
    models: list[tuple[str, torch.nn.Module, int]] = []
    for encoder in args.encoders:
        torch.manual_seed(0)
        models.append((f"{encoder} random init", DepthAnything(encoder=encoder).eval(),
                       args.input_size))
    if args.weights:
        trained = DepthAnything.from_pretrained(args.weights).eval()
        name = f"trained {trained.config.encoder} ({args.weights})"
        models.append((name, trained, args.input_size))
        if args.weights_input_size:
            models.append((name, trained, args.weights_input_size))
    report = {
        "cpu": cpu_description(), "date": time.strftime("%Y-%m-%d %H:%M"),
        "load_average": os.getloadavg(), "python": platform.python_version(),
        "versions": {name: _version(name) for name in ("torch", "openvino", "onnxruntime")},
        "n_images": len(images), "budget": BUDGET, "models": [],
    }
    for name, model, input_size in models:
        print(f"{name} at {input_size}:", flush=True)
        entry: dict = {"model": name, "input_size": input_size, "paths": {}}
        try:
            entry["paths"] = measure(model, images, input_size, paths)
        except ValueError as err:  # nothing to compare on this model: said in the table
            entry["not_measured"] = str(err)
            print(f"  not measured: {err}", flush=True)
        report["models"].append(entry)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    out.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


if __name__ == "__main__":
    main()
