"""`depth-anything-fast export --weights W --format onnx|pt2 OUT` (see `export`).

The exporter (and torch) is imported inside the handler, so that `--help` stays light.
"""

from __future__ import annotations

import argparse
import sys

# export.FORMATS, spelled out here: importing the exporter would import torch for --help
FORMATS = ("onnx", "pt2")


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the `export` subcommand."""
    parser = subparsers.add_parser(
        "export",
        help="export a model to ONNX or a torch.export program (.pt2)",
        description="Export to ONNX (dynamic batch, height and width, multiples of 14) or to a "
        "torch.export ExportedProgram. Input x (B, 3, H, W) float32 ImageNet-normalised; "
        "output (B, H, W) disparity (metric models: depth in metres).",
    )
    parser.add_argument("--weights", required=True,
                        help="checkpoint path or Hugging Face Hub repo id org/name[@revision]")
    parser.add_argument("--format", choices=FORMATS, required=True)
    parser.add_argument("--opset", type=int, default=18, help="ONNX opset (default 18)")
    parser.add_argument("output", help="output file (.onnx or .pt2)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
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
