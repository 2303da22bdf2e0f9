"""``depth-anything-fast train --config configs/teacher.yaml [--set a.b=v] [--resume]``

The same as ``python -m depth_anything_fast.train ...``, which also runs under
``torchrun --nproc-per-node N -m depth_anything_fast.train ...`` (FSDP2). The trainer (and torch)
is imported inside the handler, so that `--help` stays light.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

DESCRIPTION = ("Train Depth Anything: teacher, student (pseudo-labels + CutMix + feature "
               "alignment) or finetune-metric. Launch with torchrun for FSDP2 "
               "(torchrun --nproc-per-node N -m depth_anything_fast.train ...).")


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the `train` subcommand."""
    parser = subparsers.add_parser("train", help="train a teacher, a student or a metric model",
                                   description=DESCRIPTION)
    add_arguments(parser)
    parser.set_defaults(func=run)


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``python -m depth_anything_fast.train``."""
    parser = argparse.ArgumentParser(prog="python -m depth_anything_fast.train",
                                     description=DESCRIPTION)
    add_arguments(parser)
    return parser


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The training options: --config, --set, --resume / --overwrite."""
    parser.add_argument("--config", help="YAML file (see configs/); defaults when omitted")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="FIELD=VALUE", help="override a config field, e.g. optim.lr=1e-5")
    start = parser.add_mutually_exclusive_group()
    start.add_argument("--resume", action="store_true",
                       help="continue from the newest readable checkpoint in "
                            "<out_dir>/checkpoints")
    start.add_argument("--overwrite", action="store_true",
                       help="start afresh in an out_dir that holds an earlier run, removing its "
                            "checkpoints, metrics, tensorboard logs and export")


def main(argv: list[str] | None = None) -> int:
    """``python -m depth_anything_fast.train``: parse `argv`, train. Returns the exit code."""
    return run(build_parser().parse_args(argv))


def run(args: argparse.Namespace) -> int:
    """Load the config, train, print the result as JSON. Returns the exit code: 0 done, 2 bad
    config or data, 3 non-finite loss, 130/143 interrupted/terminated."""
    from .config import ConfigError, load_config

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_config(args.config, args.overrides)
    except (ConfigError, FileNotFoundError) as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    from depth_anything_fast.runtime import EXIT_SIGINT, EXIT_SIGTERM

    from .distributed import shutdown_distributed
    from .trainer import NonFiniteLossError, Trainer, json_safe

    try:
        result = Trainer(cfg, resume=args.resume, overwrite=args.overwrite).run()
    except (ValueError, FileNotFoundError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except NonFiniteLossError as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print("aborted by a second Ctrl-C: the steps since the last checkpoint are lost",
              file=sys.stderr)
        return EXIT_SIGINT
    finally:
        shutdown_distributed()
    print(json.dumps(json_safe(result), allow_nan=False))
    return {"terminated": EXIT_SIGTERM, "interrupted": EXIT_SIGINT}.get(result["status"], 0)

