"""Console entry point `depth-anything-fast` (also `python -m depth_anything_fast`).

Each subcommand lives beside the code it drives and exposes `register(subparsers)`, which adds
its parser and sets `func(args) -> int`. Those modules import heavy dependencies inside `func`
so that `--help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib

# module path -> registers one or more subcommands
_COMMAND_MODULES = (
    "depth_anything_fast.inference.cli",  # pseudo-label, predict
    "depth_anything_fast.evaluate.cli",  # evaluate
    "depth_anything_fast.models.cli",  # convert, export
    "depth_anything_fast.train.cli",  # train
    "depth_anything_fast.app.cli",  # app
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="depth-anything-fast",
        description="Train and run Depth Anything models fast.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in _COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)
