"""The model subcommands: `depth-anything-fast convert SRC DST` (our safetensors format from any
checkpoint) and `depth-anything-fast export --weights W --format onnx|pt2 OUT` (see `export`).

The model (and torch) is imported inside the handlers, so that `--help` stays light.
"""

from __future__ import annotations

import argparse
import logging
import sys

from .architecture import ENCODERS, VERSIONS

CONVERT_DESCRIPTION = """\
Write our safetensors format from any checkpoint.

SRC: official V1/V2 .pth, a transformers directory or file (either key style), a bare DINOv2
backbone, our own format, or a Hugging Face Hub repo id (org/name[@revision], e.g.
depth-anything/Depth-Anything-V2-Small; needs the `hub` extra). DST: a directory
(model.safetensors + config.json) or a .safetensors file (config in its metadata).
"""
# export.FORMATS, spelled out here: importing the exporter would import torch for --help
EXPORT_FORMATS = ("onnx", "pt2")


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the `convert` and `export` subcommands."""
    _register_convert(subparsers)
    _register_export(subparsers)


def _register_convert(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser(
        "convert",
        help="convert official / Hugging Face / DINOv2 weights to depth_anything_fast safetensors",
        description=CONVERT_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "src", help="checkpoint file or directory, or a Hugging Face Hub repo id org/name[@rev]"
    )
    parser.add_argument("dst", help="output directory, or a file ending in .safetensors")
    parser.add_argument("--encoder", choices=ENCODERS, help="expected size (checked)")
    parser.add_argument(
        "--version", choices=VERSIONS, help="V1 or V2 (the weights cannot tell; default: guess)"
    )
    parser.add_argument("--metric", action="store_true", default=None, help="V2 metric model")
    parser.add_argument("--max-depth", type=float, help="metric range in metres (20 / 80)")
    parser.add_argument(
        "--interpolate-offset",
        type=float,
        help="position-embedding interpolation offset stored in the config (0.1 official)",
    )
    parser.add_argument(
        "--non-strict", action="store_true", help="warn about missing/unexpected keys, not fail"
    )
    parser.set_defaults(func=run_convert)


def run_convert(args: argparse.Namespace) -> int:
    """Convert; print a one-line summary. Returns the exit code."""
    import dataclasses

    from .depth_anything import DepthAnything

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        model = DepthAnything.from_pretrained(
            args.src,
            encoder=args.encoder,
            version=args.version,
            metric=args.metric,
            max_depth=args.max_depth,
            strict=not args.non_strict,
        )
    except (FileNotFoundError, ValueError, RuntimeError, ImportError) as err:
        print(f"convert: {err}", file=sys.stderr)
        return 1
    if args.interpolate_offset is not None:
        model.config = dataclasses.replace(model.config, interpolate_offset=args.interpolate_offset)
        model.encoder.interpolate_offset = args.interpolate_offset
    weights = model.save_pretrained(args.dst)
    config = model.config
    params = sum(p.numel() for p in model.parameters())
    print(
        f"wrote {weights}: {config.encoder} {config.version}"
        f"{' metric max_depth=' + str(config.max_depth) if config.metric else ''}, "
        f"{params / 1e6:.1f}M parameters, layers {list(config.intermediate_layers)}"
    )
    return 0


def _register_export(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser(
        "export",
        help="export a model to ONNX or a torch.export program (.pt2)",
        description="Export to ONNX (dynamic batch, height and width, multiples of 14) or to a "
        "torch.export ExportedProgram. Input x (B, 3, H, W) float32 ImageNet-normalised; "
        "output (B, H, W) disparity (metric models: depth in metres).",
    )
    parser.add_argument("--weights", required=True,
                        help="checkpoint path or Hugging Face Hub repo id org/name[@revision]")
    parser.add_argument("--format", choices=EXPORT_FORMATS, required=True)
    parser.add_argument("--opset", type=int, default=18, help="ONNX opset (default 18)")
    parser.add_argument("output", help="output file (.onnx or .pt2)")
    parser.set_defaults(func=run_export)


def run_export(args: argparse.Namespace) -> int:
    """Load, export, print one line. Returns the exit code."""
    from .depth_anything import DepthAnything
    from .export import export_program, require_onnx_exporter, save_export

    try:
        model = DepthAnything.from_pretrained(args.weights)
        if args.format == "onnx":
            require_onnx_exporter()  # before the export, not after it
        out = save_export(export_program(model), args.output, args.format, opset=args.opset)
    except (FileNotFoundError, ValueError, ImportError) as err:
        print(f"export: {err}", file=sys.stderr)
        return 1
    print(f"wrote {out} ({args.format}, input x (B, 3, H, W), H and W multiples of "
          f"{model.config.patch_size})")
    return 0
