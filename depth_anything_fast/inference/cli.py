"""`pseudo-label` and `predict` subcommands (heavy imports happen inside the handlers)."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the handlers import it: `--help` must not import torch
    from depth_anything_fast.inference.pseudo_label import Summary

PSEUDO_LABEL_EPILOG = """\
Outputs: DST/<input path relative to SRC, extension replaced>.png (16-bit; code 0..65535 maps
to the manifest's min..max disparity) or .npy (float32), or tar shards (--format webdataset);
DST/manifest.jsonl (input, output, shape, min, max, checksum) and DST/errors.jsonl; under
torchrun one manifest.rank{r}.jsonl / errors.rank{r}.jsonl per rank, each rank a disjoint shard.
Rerunning with the same arguments resumes (finished outputs are skipped); other weights (by
content) or settings are refused unless --overwrite. Ctrl-C stops after the current batch with
the manifest flushed; a second Ctrl-C aborts at once. A disk that fills up stops the run at once.
Precision "auto": bf16 on CUDA and on CPUs with native bf16 (AVX512-BF16/AMX), else fp32;
runtime "auto": OpenVINO on the CPU when installed, else torch (bf16) or ONNX Runtime (fp32).
Exit status: 0 all done, 1 some inputs failed (see the errors file), 2 usage error,
3 stopped because outputs could not be written (disk full, read-only), 130 interrupted."""


# The Predictor's options, as CLI flags; `evaluate` takes the same ones.
PREDICTOR_OPTIONS = ("batch_size", "precision", "compile", "input_size", "resize", "device",
                     "runtime")


def add_predictor_options(parser: argparse.ArgumentParser, *, batch_size: int) -> None:
    """Add the `Predictor` flags (`PREDICTOR_OPTIONS`) with `batch_size` as the default batch."""
    parser.add_argument("--batch-size", type=int, default=batch_size)
    parser.add_argument("--precision", choices=("auto", "bf16", "fp16", "fp32"), default="auto")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--input-size", type=int, default=518)
    parser.add_argument("--resize", choices=("keep-aspect", "square"), default="keep-aspect")
    parser.add_argument("--device", default=None, help="default: CUDA when available, else CPU")
    parser.add_argument(
        "--runtime", choices=("auto", "torch", "openvino", "onnxruntime"), default="auto",
        help="what runs the model (default auto: the fastest installed that is exact enough; "
        "on the CPU OpenVINO, else torch bf16 or ONNX Runtime fp32; on CUDA torch)",
    )


def predictor_options(args: argparse.Namespace) -> dict[str, Any]:
    """The parsed `add_predictor_options` flags as keyword arguments of `Predictor`."""
    return {name: getattr(args, name) for name in PREDICTOR_OPTIONS}


def add_model_options(parser: argparse.ArgumentParser, batch_size: int) -> None:
    """Add --weights, the checkpoint hints (`model_hints`) and the `Predictor` flags."""
    parser.add_argument(
        "--weights",
        help="checkpoint: an official Depth Anything V1/V2 .pth, a transformers or converted "
        "checkpoint, or a Hugging Face Hub repo id org/name[@revision] "
        "(e.g. depth-anything/Depth-Anything-V2-Small-hf)",
    )
    parser.add_argument(
        "--version", choices=("v1", "v2"), default=None,
        help="Depth Anything version of a checkpoint whose name does not say (V1 and V2 files "
        "hold the same tensors; default: from the file name, else v2 with a warning)",
    )
    parser.add_argument(
        "--metric", action="store_true", default=None,
        help="the checkpoint is a metric-depth model (default: from the file name or config)",
    )
    parser.add_argument(
        "--max-depth", type=float, default=None,
        help="metric models: depth range in metres (20 indoor, 80 outdoor)",
    )
    add_predictor_options(parser, batch_size=batch_size)


def model_hints(args: argparse.Namespace) -> dict[str, Any]:
    """The parsed checkpoint hints as keyword arguments of `load_model`."""
    return {"version": args.version, "metric": args.metric, "max_depth": args.max_depth}


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the `pseudo-label` and `predict` subcommands."""
    p = subparsers.add_parser(
        "pseudo-label",
        help="predict and store disparity for a large image collection (resumable, torchrun)",
        epilog=PSEUDO_LABEL_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_options(p, batch_size=8)
    p.add_argument("--input", required=True, help="directory, list file, glob or .tar shards")
    p.add_argument("--output", required=True, help="output directory")
    p.add_argument("--format", choices=("png16", "npy", "webdataset"), default="png16")
    p.add_argument(
        "--original-size", action="store_true", help="store at the input's size, not the network's"
    )
    p.add_argument(
        "--num-workers", type=int, default=None,
        help="decode threads (default: on CUDA this rank's share of the cores, at most 16; "
        "else 2)",
    )
    p.add_argument(
        "--writer-threads", type=int, default=None,
        help="encode/write threads (default: on CUDA half the decode threads; else 2)",
    )
    p.add_argument("--backend", choices=("auto", "dali", "pil"), default="auto")
    p.add_argument("--verify-checksum", action="store_true", help="checksum outputs when resuming")
    p.add_argument(
        "--overwrite", action="store_true",
        help="label everything again in an output folder made with other weights or settings "
        "(its manifests are replaced; single process)",
    )
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_run_pseudo_label)

    q = subparsers.add_parser(
        "predict",
        help="colourised depth for images and videos (like the official run.py and "
        "run_video.py, batched), point clouds of metric depth",
        description="Writes OUTDIR/<name>.png per image: the image, a white gap and its depth "
        "in Spectral_r (a metric model's depth in Spectral: near is red either way; or "
        "grayscale), or only the depth with --pred-only; and OUTDIR/<name>.mp4 per video (any "
        "container and codec PyAV decodes: the `video` extra), the same pictures at the "
        "source's frame rate and size. A video's disparity is aligned frame to frame to a "
        "running reference (robust least-squares scale and shift) and every frame is coloured "
        "with one range (set by its first 8 frames), so the depth does not flicker.",
    )
    add_model_options(q, batch_size=4)
    q.add_argument("inputs", nargs="+", metavar="INPUT", help="image, directory, list file or glob")
    q.add_argument("--outdir", default="./vis_depth")
    q.add_argument("--grayscale", action="store_true")
    q.add_argument("--pred-only", action="store_true")
    q.add_argument("--save-npy", action="store_true",
                   help="also save raw disparity as .npy (videos: OUTDIR/<name>_frames/"
                   "NNNNNN.npy per frame, aligned unless --no-temporal-align)")
    q.add_argument("--no-progress", action="store_true")
    _add_video_and_pointcloud_options(q)
    q.set_defaults(func=_run_predict)


def _add_video_and_pointcloud_options(parser: argparse.ArgumentParser) -> None:
    """`predict`'s options for videos and point clouds."""
    v = parser.add_argument_group("videos")
    v.add_argument("--no-temporal-align", dest="temporal_align", action="store_false",
                   help="colour each frame's disparity as it comes (per-frame min-max, as the "
                   "official run_video.py) instead of aligned to the video's reference")
    v.add_argument("--save-png16", action="store_true",
                   help="also save each frame's disparity as a 16-bit PNG (as pseudo-label "
                   "writes it) in OUTDIR/<name>_frames/, min/max in its manifest.jsonl")
    c = parser.add_argument_group("point clouds (metric models; the `pointcloud` extra)")
    c.add_argument("--pointcloud", action="store_true",
                   help="also write OUTDIR/<name>.ply per image: every pixel back-projected "
                   "with the focal length, coloured by the image (metric models only)")
    focal = c.add_mutually_exclusive_group()
    focal.add_argument("--focal-length", type=float, default=None, metavar="PX",
                       help="focal length in pixels (default 470.4, as the official "
                       "depth_to_pointcloud.py)")
    focal.add_argument("--fov", type=float, default=None, metavar="DEG",
                       help="horizontal field of view in degrees, instead of --focal-length")


def _no_weights() -> int:
    from depth_anything_fast.inference.predictor import MISSING_WEIGHTS_MESSAGE

    print(f"error: {MISSING_WEIGHTS_MESSAGE}", file=sys.stderr)
    return 2


def _run_pseudo_label(args: argparse.Namespace) -> int:
    if not args.weights:
        return _no_weights()
    import logging

    from depth_anything_fast.inference.pseudo_label import pseudo_label

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    distributed = _init_process_group()
    summary = None
    try:
        summary = pseudo_label(
            args.weights,
            args.input,
            args.output,
            **predictor_options(args),
            **model_hints(args),
            format=args.format,
            original_size=args.original_size,
            num_workers=args.num_workers,
            writer_threads=args.writer_threads,
            backend=args.backend,
            verify_checksum=args.verify_checksum,
            overwrite=args.overwrite,
            progress=not args.no_progress,
        )
    except (ValueError, FileNotFoundError, ImportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
    except KeyboardInterrupt:
        print("\naborted: the outputs written are complete (with their manifest lines); rerun "
              "the same command to resume", file=sys.stderr)
        return 130
    if summary is not None:
        if summary.error:
            print(f"error: {summary.error}", file=sys.stderr)
        print(summary.line(), flush=True)
    if not distributed:
        return 2 if summary is None else summary.exit_code
    return _combine_ranks(summary)


def _combine_ranks(summary: Summary | None) -> int:
    """Exit status shared by all ranks of a torchrun job (None: this rank stopped with an
    error); rank 0 prints the total. Leaves the process group."""
    import torch
    import torch.distributed as dist

    from depth_anything_fast.inference.pseudo_label import combine_summaries

    # Every rank joins the final collectives, also one that stopped with an error, and all exit
    # with the same status: a rank leaving early would tear down the ranks still working (under
    # torchrun) or leave them waiting in the all-reduce (ranks started by another launcher).
    stopped = torch.tensor([summary is None], dtype=torch.int64)
    dist.all_reduce(stopped)
    if stopped.item():
        if dist.get_rank() == 0:
            ranks = f"{stopped.item()} of {dist.get_world_size()} ranks"
            print(f"error: {ranks} stopped with an error (see above)", file=sys.stderr)
        dist.destroy_process_group()
        return 2
    assert summary is not None  # no rank stopped
    total = combine_summaries(summary)
    if summary.rank == 0:
        print(total.line(f"all {total.world_size} ranks: "), flush=True)
    dist.destroy_process_group()
    return total.exit_code


def _init_process_group() -> bool:
    """Join torchrun's process group (gloo, only used to combine the ranks' summaries)."""
    from depth_anything_fast.runtime import launch_env

    env = launch_env()
    if env.world_size <= 1 or not env.has_rendezvous:
        return False
    from datetime import timedelta

    import torch.distributed as dist

    if not dist.is_initialized():
        # ranks can finish hours apart on large collections: the final all_reduce must wait
        dist.init_process_group("gloo", timeout=timedelta(hours=48))
    return True


def _run_predict(args: argparse.Namespace) -> int:
    if not args.weights:
        return _no_weights()
    import time

    from depth_anything_fast.inference.pictures import predict_files
    from depth_anything_fast.inference.writers import OutputWriteError

    start = time.perf_counter()
    try:
        written, failed = predict_files(
            args.weights,
            args.inputs,
            args.outdir,
            **predictor_options(args),
            **model_hints(args),
            grayscale=args.grayscale,
            pred_only=args.pred_only,
            save_npy=args.save_npy,
            progress=not args.no_progress,
            pointcloud=args.pointcloud,
            focal_length=args.focal_length,
            fov=args.fov,
            temporal_align=args.temporal_align,
            save_png16=args.save_png16,
        )
    except (ValueError, FileNotFoundError, ImportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OutputWriteError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print("\ninterrupted: the images written are complete", file=sys.stderr)
        return 130
    for path, reason in failed:
        print(f"skipped {path}: {reason}", file=sys.stderr)
    seconds = time.perf_counter() - start
    print(f"{len(written)} written to {args.outdir}, {len(failed)} failed in {seconds:.1f}s "
          f"({len(written) / max(seconds, 1e-9):.2f} images/s, model loading included)",
          flush=True)
    return 1 if failed else 0
