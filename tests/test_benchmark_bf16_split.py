"""benchmarks/benchmark_bf16_split.py retraces the model's forward stage by stage: cut after any
stage, its two parts must compose to exactly the model's forward (else the split experiment
would measure another model)."""

from __future__ import annotations

import pytest
import torch
from conftest import load_benchmark, varied_tiny_model


@pytest.fixture(scope="module")
def split_module():
    return load_benchmark("benchmark_bf16_split")


@pytest.mark.parametrize("metric", [False, True])
def test_every_cut_composes_to_the_models_forward(split_module, metric: bool) -> None:
    model = varied_tiny_model(**({"metric": True, "max_depth": 20.0} if metric else {}))
    x = torch.randn(2, 3, 5 * 14, 7 * 14)  # a non-square grid: rows and columns not swapped
    with torch.no_grad():
        expected = model(x)
        assert expected.std() > 0  # a varied map: a wrong stage would show
        for split in split_module.STAGES:
            middle = split_module.Before(model, split)(x)
            assert all(isinstance(t, torch.Tensor) for t in middle)
            got = middle[0] if split == "end" else split_module.After(model, split)(middle, x)
            torch.testing.assert_close(got, expected, rtol=0, atol=0, msg=split)


def test_markdown_marks_the_splits_over_budget(split_module) -> None:
    base = {"model": "vits random init", "n_images": 28, "cpu": "cpu", "torch": "t",
            "openvino": "o", "date": "d"}
    table = split_module.markdown([
        {**base, "split": "encoder", "abs_rel_mean": 3.9e-4, "abs_rel_max": 5.0e-4},
        {**base, "split": "refinenet2", "abs_rel_mean": 9.9e-4, "abs_rel_max": 1.1e-3}])
    assert "| vits random init | encoder | 3.90e-04 | 5.00e-04 | 28 | yes |" in table
    assert "| vits random init | refinenet2 | 9.90e-04 | 1.10e-03 | 28 | NO |" in table
