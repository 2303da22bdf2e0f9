"""List files: one sample per line, columns of paths (`image [target ...]`).

Columns are separated by whitespace or commas; empty lines and lines starting with `#` are
skipped; relative paths are relative to the list file's directory.
"""

from __future__ import annotations

import os
from pathlib import Path

LIST_EXTENSIONS = (".txt", ".lst", ".list", ".csv")


def read_list_file(
    path: str | os.PathLike[str], columns: tuple[str, ...] = ("image",)
) -> list[list[str]]:
    """Rows of a list file, each a list of at least `len(columns)` paths (relative ones
    resolved against the list's directory; extra columns kept).

    `columns` names the required columns for the error message. Raises `ValueError` naming the
    file, line and expected columns for a line with fewer columns.
    """
    path = Path(path)
    rows = []
    for line_no, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        cols = line.replace(",", " ").split()
        if len(cols) < len(columns):
            raise ValueError(f"{path}:{line_no}: expected '{' '.join(columns)}', got {line!r}")
        rows.append([c if os.path.isabs(c) else str(path.parent / c) for c in cols])
    return rows
