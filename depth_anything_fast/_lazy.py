"""Names a package re-exports from its submodules, imported on first use (PEP 562).

A package whose submodules import torch lists its public names here instead of importing them,
so that `depth-anything-fast --help`, a subcommand's parser and the training config import no
torch. Stdlib only (the bottom layer).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_exports(package: str, exports: dict[str, str]) -> Callable[[str], Any]:
    """The module `__getattr__` of `package` that imports the module `exports[name]` (absolute,
    or relative to `package` with a leading dot) on first access of `name` and returns its
    attribute `name`; other names raise AttributeError.

    Use: `__getattr__ = lazy_exports(__name__, {"Predictor": ".predictor", ...})`.
    """

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(exports[name], package), name)

    return __getattr__
