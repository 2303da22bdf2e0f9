"""conftest's seed override: every test is seeded, a failure prints the seed, and
DAF_TEST_SEED replays it."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

PROBE = """
import torch

def test_draw(np_rng, test_seed):
    print("draw", float(torch.rand(())), float(np_rng.random()), test_seed)
    assert False
"""


def _run(pytester: pytest.Pytester) -> str:
    pytester.makeconftest((Path(__file__).parent / "conftest.py").read_text())
    pytester.makepyfile(test_probe=PROBE)
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    return result.stdout.str()


def _line(output: str, start: str) -> str:
    return next(line for line in output.splitlines() if line.startswith(start))


def test_failure_prints_seed_and_the_seed_replays_it(pytester, monkeypatch):
    monkeypatch.delenv("DAF_TEST_SEED", raising=False)
    first = _run(pytester)
    replay = _line(first, "replay with: DAF_TEST_SEED=")
    seed = int(replay.split("=", 1)[1].split()[0])
    monkeypatch.setenv("DAF_TEST_SEED", str(seed))
    again = _run(pytester)
    assert f"test seeds: DAF_TEST_SEED={seed}" in again
    # the same torch and numpy draws
    assert _line(again, "draw") == _line(first, "draw")
    assert _line(again, "draw").endswith(f" {seed}")
