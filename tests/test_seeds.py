"""conftest's seed override: every test and every module's fixtures are seeded, a failure
prints both seeds, and DAF_MODULE_SEED / DAF_TEST_SEED replay them."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

PROBE = """
import pytest
import torch

@pytest.fixture(scope="module")
def shared_draw():
    return float(torch.rand(()))

def test_draw(shared_draw, np_rng, test_seed):
    print("draw", shared_draw, float(torch.rand(())), float(np_rng.random()), test_seed)
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
    monkeypatch.delenv("DAF_MODULE_SEED", raising=False)
    first = _run(pytester)
    replay = _line(first, "replay with: DAF_MODULE_SEED=").split()
    module_seed = int(replay[2].split("=", 1)[1])
    seed = int(replay[3].split("=", 1)[1])
    assert replay[3].startswith("DAF_TEST_SEED=")
    monkeypatch.setenv("DAF_MODULE_SEED", str(module_seed))
    monkeypatch.setenv("DAF_TEST_SEED", str(seed))
    again = _run(pytester)
    assert f"test seeds: DAF_TEST_SEED={seed}" in again
    # the same module-fixture, torch and numpy draws
    assert _line(again, "draw") == _line(first, "draw")
    assert _line(again, "draw").endswith(f" {seed}")
