"""Subpackages whose files live in a top-level folder of the repository (`kernels/`, `configs/`).

Those folders have no `__init__.py`, on purpose: a checkout on `sys.path` (pytest, `python -m`, any
script run in the repository) would otherwise make them importable as the top-level packages
`kernels` and `configs`, shadowing installed distributions of those names (transformers imports
Hugging Face's `kernels`). The wheel copies their files into the subpackage (setup.py); in a
checkout the subpackage's `__path__` is pointed at the folder instead.
"""

from __future__ import annotations

from pathlib import Path


def checkout_folder(init_file: str, name: str) -> Path | None:
    """The repository folder `name` that holds the files of the subpackage whose `__init__.py` is
    `init_file`, when running from a checkout (the folder beside `pyproject.toml`); None in an
    installed wheel, whose subpackage directory holds the files itself."""
    root = Path(init_file).resolve().parents[2]
    folder = root / name
    if (root / "pyproject.toml").is_file() and (root / "depth_anything_fast").is_dir() \
            and folder.is_dir():
        return folder
    return None
