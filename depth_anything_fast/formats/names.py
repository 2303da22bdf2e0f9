"""Output names of inputs: where the prediction of each input image is stored under an output
folder (pseudo-label maps, predict pictures), relative to the folder, list file, glob or tar
shard the inputs were listed from.
"""

from __future__ import annotations

import glob
import os
from collections import Counter
from pathlib import Path

from .paths import TAR_SEP


def _listing_root(src: str, paths: list[str]) -> str:
    """Absolute directory that output names are made relative to: `src` itself for a directory;
    for a glob its fixed leading folders (names keep the folders the pattern walked), when every
    match lies under them; else the deepest folder holding all `paths`. An existing file (list
    file, image) is never read as a glob, even with `[`, `*` or `?` in its name."""
    if os.path.isdir(src):
        return os.path.abspath(src)
    dirs = [os.path.dirname(os.path.abspath(p)) for p in paths]
    common = os.path.commonpath(dirs) if dirs else os.path.abspath(".")
    if glob.has_magic(src) and not os.path.exists(src):
        static = []
        for part in Path(src).parts:
            if glob.has_magic(part):
                break
            static.append(part)
        prefix = os.path.abspath(os.path.join(*static) if static else ".")
        # a pattern matching list files or shards names images elsewhere
        if os.path.commonpath([prefix, common]) == prefix:
            return prefix
    return common


def output_names(src: str, paths: list[str], suffix: str) -> list[str]:
    """Output name (relative, POSIX) of each input: its path relative to the source root (the
    member name for `shard.tar::member` inputs) with the extension replaced by `suffix`.

    Inputs whose names would collide (a.jpg and a.png in one folder) keep their extension:
    `a.jpg.png`, `a.png.png`. Raises ValueError if names still collide (same member in two
    shards) or a name would leave the output directory (a tar member `../x.jpg`).
    """
    files = [p for p in paths if TAR_SEP not in p]
    root = _listing_root(src, files) if files else ""
    rel = [
        p.split(TAR_SEP, 1)[1]
        if TAR_SEP in p
        else Path(os.path.relpath(os.path.abspath(p), root)).as_posix()
        for p in paths
    ]
    for path, name in zip(paths, rel, strict=True):
        parts = Path(name).parts
        # a tar member named "../x.jpg" or "/x.jpg" would be written outside the output directory
        if not parts or Path(name).is_absolute() or ".." in parts:
            raise ValueError(f"{path}: its output name {name!r} leaves the output directory")
    stems = [os.path.splitext(r)[0] for r in rel]
    counts = Counter(stems)
    names = [
        (stem if counts[stem] == 1 else r) + suffix for stem, r in zip(stems, rel, strict=True)
    ]
    check_unique_names(names)
    return names


def check_unique_names(names: list[str]) -> None:
    """Raise ValueError naming the output names that several inputs map to (one would
    silently overwrite the other)."""
    duplicates = sorted(n for n, c in Counter(names).items() if c > 1)
    if duplicates:
        raise ValueError(f"several inputs map to the output names {duplicates[:5]}; rename them")
