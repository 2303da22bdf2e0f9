"""The affine-invariant statistics layout is written once per language and the two agree.

`kernels/stats_layout.py` (used by the Triton kernels and the ops) and `csrc/stats_layout.h`
(the C++ kernels) must name the same columns, code bits and epsilon with the same values.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from depth_anything_fast.kernels import stats_layout as layout
from depth_anything_fast.ops import cpu_available

HEADER = Path(__file__).resolve().parents[1] / "csrc" / "stats_layout.h"


def _header_constants() -> dict[str, float]:
    pattern = re.compile(r"constexpr\s+(?:int|float)\s+k(\w+)\s*=\s*([-+0-9.eE]+)f?\s*;")
    found = {}
    for name, value in pattern.findall(HEADER.read_text()):
        snake = re.sub(r"(?<!^)(?=[A-Z])", "_", name).upper()
        found[snake] = float(value)
    return found


def _python_constants() -> dict[str, float]:
    return {
        name: float(value)
        for name, value in vars(layout).items()
        if name.isupper() and isinstance(value, (int, float))
    }


def test_python_and_cpp_layouts_agree() -> None:
    if not HEADER.is_file():
        pytest.skip("csrc/ is not part of this installation")
    header, python = _header_constants(), _python_constants()
    assert header == python, (
        f"only in C++: {sorted(header.keys() - python.keys())}, only in Python: "
        f"{sorted(python.keys() - header.keys())}, different: "
        f"{sorted(k for k in header.keys() & python.keys() if header[k] != python[k])}"
    )


def test_layout_is_consistent() -> None:
    columns = [layout.T_PRED, layout.S_PRED, layout.T_TARGET, layout.S_TARGET, layout.A_SUM,
               layout.B_SUM, layout.C_SUM, layout.SCALE_ACTIVE, layout.COEF_R, layout.COEF_P,
               layout.COEF_MEDIAN]  # fmt: skip
    assert sorted(columns) == list(range(layout.NUM_STATS))
    assert sorted([layout.COUNT, layout.MEDIAN_INDEX]) == list(range(layout.NUM_COUNTS))
    bits = [layout.CODE_R_POS, layout.CODE_R_NEG, layout.CODE_P_POS, layout.CODE_P_NEG]
    assert sum(bits) == (1 << layout.CODE_SEGMENT_SHIFT) - 1  # four distinct low bits
    assert layout.CODE_MAX_SEGMENTS << layout.CODE_SEGMENT_SHIFT == 256  # segments fill a byte


@pytest.mark.skipif(not cpu_available(), reason="C++ extension not built")
def test_cpp_writes_the_named_columns() -> None:
    """The C++ kernels fill the columns the names say (a constant image: s clamps, inactive)."""
    from depth_anything_fast.ops import AffineInvariantArgs, cpu

    pred = torch.tensor([[3.0, 1.0, 2.0, 2.0]])
    target = torch.tensor([[5.0, 5.0, 5.0, 5.0]])
    _, stats, counts, codes = cpu.affine_invariant_forward(
        AffineInvariantArgs(pred, target, None, None, None, 1, False)
    )
    row = stats[0, 0]
    assert row[layout.T_PRED] == 2.0 and row[layout.T_TARGET] == 5.0
    assert row[layout.S_PRED] == pytest.approx(0.5) and row[layout.S_TARGET] == layout.SCALE_EPS
    assert row[layout.SCALE_ACTIVE] == 1.0 and row[layout.C_SUM] == 0.0  # one above, one below
    assert counts[0, 0, layout.COUNT] == 4 and counts[0, 0, layout.MEDIAN_INDEX] == 2
    # pixel 0: p above t, residual p^ - g^ = 2 - 0 > 0
    assert codes[0, 0] == layout.CODE_R_POS | layout.CODE_P_POS
