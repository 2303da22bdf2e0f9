"""``python -m depth_anything_fast.train`` (and under ``torchrun ... -m depth_anything_fast.train``):
the `train` subcommand of `depth-anything-fast` (`train.cli`)."""

import sys

from depth_anything_fast.train.cli import main

if __name__ == "__main__":
    sys.exit(main())
