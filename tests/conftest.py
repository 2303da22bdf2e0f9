"""Shared test set-up.

Triton runs on a CPU-only machine only through its interpreter, which must be switched on before
`triton` is first imported: this file is imported by pytest before any test module.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Real images and RGB-D pairs live beside the checkout (../shared/data); a user's clone has none.
SHARED_DATA = Path(
    os.environ.get("DAF_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")
)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real test data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _seed() -> None:
    # Fresh random inputs per run are wanted; a per-test seed from the clock keeps failures
    # reproducible through the printed seed.
    seed = int.from_bytes(os.urandom(4), "little")
    torch.manual_seed(seed)
    print(f"torch seed: {seed}")
