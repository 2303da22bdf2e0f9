"""`depth-anything-fast convert SRC DST`: write our safetensors format from any checkpoint.

SRC: official V1/V2 .pth, a transformers directory or file (either key style), a bare DINOv2
backbone, our own format, or a Hugging Face Hub repo id (org/name[@revision], e.g.
depth-anything/Depth-Anything-V2-Small; needs the `hub` extra). DST: a directory (model.safetensors + config.json) or a
.safetensors file (config in its metadata).
"""

from __future__ import annotations

import argparse
import logging
import sys

from .config import ENCODERS, VERSIONS


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `convert` subcommand."""
    parser = subparsers.add_parser(
        "convert",
        help="convert official / Hugging Face / DINOv2 weights to depth_anything_fast safetensors",
        description=__doc__,
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
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
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
