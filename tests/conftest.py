"""Shared test set-up.

Triton runs on a CPU-only machine only through its interpreter, which must be switched on before
`triton` is first imported: this file is imported by pytest before any test module.

Random inputs are fresh per test and replayable: each test is seeded (`test_seed`, `np_rng`),
each module's fixtures too (`module_seed`), and a failure prints `DAF_MODULE_SEED=<seed>
DAF_TEST_SEED=<seed>`; set those variables to rerun with the same inputs.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np
import pytest
import torch

if TYPE_CHECKING:
    from depth_anything_fast.models import DepthAnything

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Real images and RGB-D pairs live beside the checkout (../shared/data); a user's clone has none.
SHARED_DATA = Path(
    os.environ.get("DAF_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")
)


BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_benchmark(name: str) -> ModuleType:
    """`benchmarks/<name>.py` loaded as a module (the folder is not a package: its scripts run
    from there and import their helpers by name)."""
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real test data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session", autouse=True)
def runtime_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The folder of this session where `inference.runtimes` keeps converted models (never the
    user's cache); CLI subprocesses inherit it through `DAF_CACHE_DIR`."""
    path = tmp_path_factory.mktemp("runtime_cache")
    with pytest.MonkeyPatch.context() as patch:  # session scope: no `monkeypatch` fixture
        patch.setenv("DAF_CACHE_DIR", str(path))
        yield path


def varied_tiny_model(min_positive: float = 0.2, probe: torch.Tensor | None = None,
                      **metric: object) -> DepthAnything:
    """A tiny ViT-S-shaped `DepthAnything` (embed 32, depth 4) whose random weights give varied
    disparity maps on `probe` ((N, 3, H, W) float32 network input; default 4 normal-noise
    images of 56x84), more than `min_positive` of their pixels above 0 (the final ReLU clips the
    rest) (`metric`: e.g. metric=True, max_depth=20.0)."""
    from depth_anything_fast.models import DepthAnything, DepthAnythingConfig

    config = DepthAnythingConfig.preset(
        "vits", embed_dim=32, depth=4, num_heads=2, features=16, **metric
    )
    model = DepthAnything(config=config).eval()
    # Default init gives an all-zero disparity after the final ReLU; scaled normal weights and
    # positive biases give a varied map, so comparisons are not vacuous. About a third of such
    # draws still collapse to a constant map (dead ReLUs before the last conv), so the weights
    # are drawn again until probe images give varied, mostly nonzero maps (over 100 accepted
    # models x 15 random images, none gave a constant map).
    probe = torch.randn(4, 3, 56, 84) if probe is None else probe
    with torch.no_grad():
        for _ in range(50):
            for p in model.parameters():
                if p.ndim > 1:
                    p.normal_(0.0, p[0].numel() ** -0.5)
                else:
                    p.uniform_(0.0, 0.2)
            out = model(probe).flatten(1)
            if (out.std(1) > 0).all() and (out > 0).float().mean() > min_positive:
                return model
    raise AssertionError("no varied tiny model in 50 draws")


SEED_VARIABLE = "DAF_TEST_SEED"
# module-scoped fixtures (a random model shared by a file's tests) are made before any test's
# seed is set: they get their own seed, printed with a failure beside the test's
MODULE_SEED_VARIABLE = "DAF_MODULE_SEED"
_SEED_KEY = pytest.StashKey[int]()
_MODULE_SEED_KEY = pytest.StashKey[int]()


def _fixed_seed(variable: str = SEED_VARIABLE) -> int | None:
    value = os.environ.get(variable)
    if value is None:
        return None
    try:
        return int(value, 0)
    except ValueError:
        raise pytest.UsageError(f"{variable} must be an integer, got {value!r}") from None


def pytest_report_header(config: pytest.Config) -> str:
    seed = _fixed_seed()
    if seed is None:
        return f"test seeds: fresh per test; a failure prints {SEED_VARIABLE}=<seed> to replay it"
    return f"test seeds: {SEED_VARIABLE}={seed} for every test"


def _seed(node: pytest.Item | pytest.Collector, key: pytest.StashKey[int],
          *variables: str) -> int:
    """The first of `variables` that is set, else a fresh seed from the OS: torch's global
    generator is seeded with it and `node` keeps it under `key` for the failure report."""
    seed = next((s for s in map(_fixed_seed, variables) if s is not None), None)
    if seed is None:
        seed = int.from_bytes(os.urandom(4), "little")
    torch.manual_seed(seed)
    node.stash[key] = seed
    return seed


@pytest.fixture(scope="module", autouse=True)
def module_seed(request: pytest.FixtureRequest) -> int:
    """The seed torch's global generator has while a module's fixtures are made:
    `DAF_MODULE_SEED`, else `DAF_TEST_SEED`, else fresh from the OS (autouse, so it runs before
    the module's other fixtures)."""
    return _seed(request.node, _MODULE_SEED_KEY, MODULE_SEED_VARIABLE, SEED_VARIABLE)


@pytest.fixture(autouse=True)
def test_seed(request: pytest.FixtureRequest) -> int:
    """The seed of this test: `DAF_TEST_SEED` when set, else fresh from the OS. torch's global
    generator is seeded with it; numpy tests take `np_rng`. Printed with any failure."""
    return _seed(request.node, _SEED_KEY, SEED_VARIABLE)


@pytest.fixture
def np_rng(test_seed: int) -> np.random.Generator:
    """A numpy generator seeded with this test's seed."""
    return np.random.default_rng(test_seed)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> pytest.TestReport:
    report = yield
    seed = item.stash.get(_SEED_KEY, None)
    module = item.getparent(pytest.Module)
    module_seed = module.stash.get(_MODULE_SEED_KEY, None) if module is not None else None
    if report.failed and seed is not None:
        both = f"{MODULE_SEED_VARIABLE}={module_seed} " if module_seed is not None else ""
        report.sections.append(
            ("seed", f"replay with: {both}{SEED_VARIABLE}={seed} pytest '{item.nodeid}'")
        )
    return report
