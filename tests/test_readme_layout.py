"""The README's layout block lists every module of the tree, and nothing that is not there."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# folders whose files the block lists: the package's (modules other than __init__.py), the
# Triton kernels and the C++ sources
LISTED = ("depth_anything_fast", "kernels", "csrc")


def _block() -> dict[str, set[str]]:
    """folder -> the file names the README's layout block gives for it."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Layout"):]
    block = re.search(r"```\n(.*?)```", section, re.S).group(1)
    listed: dict[str, set[str]] = {}
    folder = ""
    for line in block.splitlines():
        if not line.strip():
            continue
        words = line.split()
        if not line[0].isspace():
            folder, words = words[0].rstrip("/"), words[1:]
            assert folder not in listed, f"{folder} listed twice"
            listed[folder] = set()
        listed[folder].update(words)
    return listed


def _tree() -> dict[str, set[str]]:
    tree: dict[str, set[str]] = {}
    for top in LISTED:
        for path in sorted((ROOT / top).rglob("*")):
            if not path.is_file() or "__pycache__" in path.parts:
                continue
            if top == "depth_anything_fast" and (path.suffix != ".py" or
                                                 path.name == "__init__.py"):
                continue
            tree.setdefault(path.parent.relative_to(ROOT).as_posix(), set()).add(path.name)
    return tree


def test_readme_layout_block_matches_the_tree():
    listed, tree = _block(), _tree()
    assert "depth_anything_fast/ops" in listed and "kernels" in listed
    missing = {f: sorted(tree[f] - listed.get(f, set())) for f in tree}
    extra = {f: sorted(listed[f] - tree.get(f, set())) for f in listed}
    assert not any(missing.values()), f"in the tree, not in the README layout: {missing}"
    assert not any(extra.values()), f"in the README layout, not in the tree: {extra}"
