"""Dry run of benchmarks/gpu_check.sh: collect each step's pytest selection, in one process.

    python benchmarks/benchmark_gpu_collect.py OUT   # reads OUT/dry_steps.txt, writes OUT/<step>.json

`dry_steps.txt` holds one step per line: the step's name and its pytest arguments, separated by
tabs (written by gpu_check.sh with DRY_RUN=1). Each step's JSON records how many tests its
selection collects, so a renamed benchmark or test shows up here instead of on the GPU machine.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest


class _Count:
    def __init__(self) -> None:
        self.collected = 0

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        self.collected = len(session.items)


def main(out: Path) -> int:
    failed = 0
    for line in (out / "dry_steps.txt").read_text().splitlines():
        name, *args = line.split("\t")
        # Outputs of a real run (benchmark JSON, JUnit XML) are not written by a collection.
        args = [a for a in args if not a.startswith(("--benchmark-json", "--junitxml"))]
        counter = _Count()
        rc = pytest.main(["--collect-only", "-q", "-p", "no:cacheprovider", *args],
                         plugins=[counter])  # fmt: skip
        record = {"step": name, "dry_run": True, "rc": int(rc), "collected": counter.collected}
        (out / f"{name}.json").write_text(json.dumps(record))
        failed += rc != 0 or counter.collected == 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
