"""`evaluate` subcommand: zero-shot relative depth on a benchmark, optionally beside Table 2.

Heavy imports (torch, the model, PIL) happen inside the handler so `--help` stays fast.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from depth_anything_fast.inference.cli import add_predictor_options, predictor_options

DATASETS = ("kitti", "nyuv2", "sintel", "diode", "eth3d", "ddad", "generic")
SIZES = ("vits", "vitb", "vitl")
COLUMNS = (  # (metric key, header) in the order of the paper's tables; arrows: better direction
    ("abs_rel", "AbsRel↓"),
    ("delta1", "δ1↑"),
    ("delta2", "δ2↑"),
    ("delta3", "δ3↑"),
    ("rmse", "RMSE↓"),
    ("sq_rel", "SqRel↓"),
    ("log10", "log10↓"),
)

EPILOG = """\
Metrics: per image, the predicted disparity is aligned to the ground-truth disparity (1/depth)
by least-squares scale and shift (float64) over valid pixels; --space disparity (the paper's
Table 2 convention) compares aligned vs GT disparity, --space depth inverts the aligned
disparity (clipped to the depth range) and compares depth. Metric-depth models (and
--alignment median|none) are compared in depth space. Images with < 10 valid pixels or a
constant prediction are excluded and listed.
Predictions (--predictions DIR): the pseudo-label output (<rel>.png 16-bit + manifest.jsonl, or
<rel>.npy), matched to the dataset's images by input path or relative name; a metric model's
output (its spec.json says kind "depth") is scored as metric depth."""


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the `evaluate` subcommand."""
    p = subparsers.add_parser(
        "evaluate",
        help="zero-shot relative depth metrics on a benchmark (KITTI, NYUv2, Sintel, ...)",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--dataset", required=True, choices=DATASETS)
    p.add_argument("--root", required=True, help="dataset root in the benchmark's own layout")
    source = p.add_mutually_exclusive_group()
    source.add_argument(
        "--weights", help="model checkpoint (official .pth, converted, or a Hub repo id org/name)"
    )
    source.add_argument("--predictions", help="directory of saved disparities (no model run)")
    add_predictor_options(p, batch_size=8)
    p.add_argument(
        "--space",
        choices=("disparity", "depth"),
        default=None,
        help="metric space (default: disparity; depth for metric alignments)",
    )
    p.add_argument(
        "--alignment",
        choices=("scale_shift", "median", "none"),
        default=None,
        help="default: scale_shift, or median for a metric-depth model",
    )
    p.add_argument("--min-depth", type=float, default=None, help="default: the dataset's")
    p.add_argument("--max-depth", type=float, default=None, help="default: the dataset's")
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N images")
    g = p.add_argument_group("dataset options (where the dataset has them)")
    g.add_argument("--split", help="nyuv2: test|all; diode: indoor|outdoor|all")
    g.add_argument("--crop", help="kitti: garg|eigen|none; nyuv2: eigen_nyu|none")
    g.add_argument("--split-file", help="kitti: Eigen test split file")
    g.add_argument("--image-root", help="kitti: root of the raw images (default --root)")
    g.add_argument("--depth-root", help="kitti: root of the annotated depth (default --root)")
    g.add_argument("--pass-name", help="sintel: final|clean")
    g.add_argument("--encoding", help="generic: metres|mm|kitti|tum|redwood|sun3d|nyu_kinect")
    p.add_argument("--output", help="write the results (mean, per image, excluded) as JSON")
    p.add_argument(
        "--compare-paper",
        action="store_true",
        help="show Depth Anything Table 2 (AbsRel, δ1) beside ours",
    )
    p.add_argument(
        "--size",
        choices=SIZES,
        help="model size for --compare-paper (default: the model's encoder)",
    )
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_run_evaluate)


def _reader_options(args: argparse.Namespace) -> dict[str, Any]:
    options: dict[str, Any] = {"limit": args.limit, "load_images": args.predictions is None}
    names = ("split", "split_file", "image_root", "depth_root", "pass_name", "encoding")
    # the depth range also limits the reader's validity mask (its default is the dataset's)
    for name in ("min_depth", "max_depth", *names):
        value = getattr(args, name)
        if value is not None:
            options[name] = value
    if args.crop is not None:
        options["crop"] = None if args.crop.lower() == "none" else args.crop
    return options


def _fmt(value: float | None) -> str:
    return (
        "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"
    )


def format_table(rows: list[tuple[str, dict[str, float | None]]]) -> str:
    """Rows of (label, metrics) as a fixed-width table with the paper's column order."""
    label_width = max(len(label) for label, _ in rows) + 2
    header = "".ljust(label_width) + "".join(h.rjust(9) for _, h in COLUMNS)
    lines = [header]
    for label, metrics in rows:
        lines.append(
            label.ljust(label_width) + "".join(_fmt(metrics.get(k)).rjust(9) for k, _ in COLUMNS)
        )
    return "\n".join(lines)


class _CommandError(Exception):
    """A reason to stop with `error: <message>` and exit status `code`."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


def _run_evaluate(args: argparse.Namespace) -> int:
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    try:
        reader = _open_reader(args)
        predictions, metric, size = _open_predictions(args)
        scoring = _scoring(args, metric)
        result = _evaluate(args, reader, predictions, scoring)
    except _CommandError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.code
    _print_counts(result, reader)
    rows: list[tuple[str, dict[str, float | None]]] = [("ours", dict(result.mean))]
    paper = _paper_rows(result, size) if args.compare_paper else {}
    rows += [(f"paper {label}", dict(numbers)) for label, numbers in paper.values()]
    print(format_table(rows))
    if args.output:
        _write_output(args, result, {key: numbers for key, (_, numbers) in paper.items()})
    return 0


def _open_reader(args: argparse.Namespace) -> Any:
    """The benchmark reader of --dataset over --root with the options given."""
    from depth_anything_fast.evaluate.datasets import get_reader

    if args.weights is None and args.predictions is None:
        from depth_anything_fast.inference.predictor import MISSING_WEIGHTS_MESSAGE

        raise _CommandError(f"pass --predictions DIR, or {MISSING_WEIGHTS_MESSAGE}")
    try:
        return get_reader(args.dataset, args.root, **_reader_options(args))
    except TypeError as exc:  # an option the chosen reader does not have
        raise _CommandError(f"{args.dataset} does not take that option ({exc})") from exc
    except (ValueError, FileNotFoundError, ImportError) as exc:
        raise _CommandError(str(exc)) from exc


def _open_predictions(args: argparse.Namespace) -> tuple[Any, bool, str | None]:
    """(the predictions directory or the model's predict function, whether they are metric
    depth, the model size for --compare-paper)."""
    if args.predictions is not None:
        from depth_anything_fast.evaluate.runner import PredictionDirectory

        try:
            directory = PredictionDirectory(args.predictions)
        except (ValueError, FileNotFoundError) as exc:
            raise _CommandError(str(exc)) from exc
        return directory, directory.metric, args.size
    from depth_anything_fast.inference.predictor import Predictor, load_model, metric_max_depth

    try:
        model = load_model(args.weights)
        predictor = Predictor(model, **predictor_options(args))
    except (ValueError, FileNotFoundError, ImportError) as exc:
        raise _CommandError(str(exc)) from exc
    size = args.size or getattr(getattr(model, "config", None), "encoder", None)
    return predictor.predict, metric_max_depth(model) is not None, size


def _scoring(args: argparse.Namespace, metric: bool) -> Any:
    """--alignment / --space over the defaults for relative or metric predictions."""
    from depth_anything_fast.evaluate.runner import Scoring

    try:
        return Scoring.choose(metric, args.alignment, args.space)
    except ValueError as exc:  # exit 1 as when evaluate_predictions checked the combination
        raise _CommandError(str(exc), code=1) from exc


def _evaluate(args: argparse.Namespace, reader: Any, predictions: Any, scoring: Any) -> Any:
    """`evaluate_predictions` with a progress bar; its errors stop the command (exit 1)."""
    from tqdm import tqdm

    from depth_anything_fast.evaluate.runner import evaluate_predictions

    bar = tqdm(total=len(reader), unit="img", disable=args.no_progress, file=sys.stderr)
    try:
        return evaluate_predictions(
            reader,
            predictions,
            scoring=scoring,
            min_depth=args.min_depth,
            max_depth=args.max_depth,
            batch_size=args.batch_size,
            on_image=lambda _: bar.update(1),
        )
    except (ValueError, FileNotFoundError) as exc:
        raise _CommandError(str(exc), code=1) from exc
    finally:
        bar.close()


def _print_counts(result: Any, reader: Any) -> None:
    depth_range = f"{result.min_depth or 'GT min'}..{result.max_depth or 'GT max'} m"
    print(
        f"{result.dataset}: {result.n_evaluated} of {result.n_images} images evaluated "
        f"({len(result.degenerate)} degenerate, {len(result.missing)} without prediction"
        f"{f', {len(reader.skipped)} without ground truth' if reader.skipped else ''}); "
        f"{result.alignment} alignment, {result.space} space, depth range {depth_range}"
    )


def _paper_rows(result: Any, size: str | None) -> dict[str, tuple[str, dict[str, float]]]:
    """model key -> (label, Table 2 numbers) of MiDaS and our size on this dataset; notes on
    stderr when there is nothing to compare or the conventions differ."""
    from depth_anything_fast.evaluate.paper import MODEL_LABELS, PAPER_SPACE, paper_numbers

    if size not in SIZES:
        print("note: --compare-paper needs --size vits|vitb|vitl (model size unknown)",
              file=sys.stderr)
        return {}
    paper = {}
    for model_key in ("midas_v3.1_beit_l_512", size):
        numbers = paper_numbers(model_key, result.dataset)
        if numbers is not None:
            paper[model_key] = (MODEL_LABELS[model_key], numbers)
    if not paper:
        print(f"note: Table 2 has no {result.dataset} column", file=sys.stderr)
    if result.space != PAPER_SPACE or result.alignment != "scale_shift":
        print(
            f"note: Table 2 is in {PAPER_SPACE} space with scale_shift alignment; "
            f"ours is {result.space} space with {result.alignment}",
            file=sys.stderr,
        )
    return paper


def _write_output(args: argparse.Namespace, result: Any, paper: dict[str, Any]) -> None:
    out = result.to_dict()
    out["source"] = {
        "weights": args.weights,
        "predictions": args.predictions,
        "root": str(args.root),
    }
    if paper:
        out["paper_table2"] = paper
    path = Path(args.output)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {path}")
