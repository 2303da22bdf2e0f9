"""Export: a torch.export program (.pt2) and ONNX (run in onnxruntime on the CPU) against the
PyTorch model, at several batch sizes and input sizes (multiples of 14), one export each.

Tolerance: max |exported - eager| <= 3e-4 * std(eager), the map's own spread (ONNX Runtime's
float32 kernels were measured at up to 6.4e-5 at 518x686; a tolerance relative to the maximum
let 1% of the signal through on the old maps of 0.5 +- 0.01). The random weights are drawn
at O(1) output scale with the final convolution set so that its outputs on a probe have std 1
and 95% of them pass the ReLU; the test asserts the eager maps vary. The position-embedding
interpolation of the export (interpolation matrices) is checked against `F.interpolate` in
float64.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from depth_anything_fast.cli import main
from depth_anything_fast.models import DepthAnything, DepthAnythingConfig
from depth_anything_fast.models.export import (
    bicubic_matrix,
    exportable,
    interpolate_pos_encoding,
)

TOL = 3e-4  # x std of the eager map
# (batch, height, width): shapes unlike the traced example, the 37 x 37 training grid, and one
# side on it (interpolated all the same)
SHAPES = ((1, 56, 84), (3, 126, 42), (1, 518, 518), (2, 518, 686))


@pytest.mark.parametrize("offset", [0.1, 0.0])
def test_bicubic_matrix_matches_interpolate(offset: float) -> None:
    side = 37
    grid = torch.randn(1, 1, side, side, dtype=torch.float64)
    for n in (1, 4, 36, 37, 38, 80):
        matrix = bicubic_matrix(side, torch.arange(n, dtype=torch.float64), offset)
        if offset:
            scale = ((n + offset) / side, (n + offset) / side)
            expected = F.interpolate(grid, scale_factor=scale, mode="bicubic")
        else:
            expected = F.interpolate(grid, size=(n, n), mode="bicubic", align_corners=False)
        got = matrix @ grid[0, 0] @ matrix.T
        assert got.shape == (n, n)
        torch.testing.assert_close(got, expected[0, 0], rtol=0, atol=1e-12)


@pytest.mark.parametrize("offset", [0.1, 0.0])
def test_exportable_pos_encoding_matches_the_model(offset: float) -> None:
    config = DepthAnythingConfig.preset("custom", "v2", embed_dim=64, depth=4, num_heads=2,
                                        interpolate_offset=offset)
    model = DepthAnything(config=config)
    with torch.no_grad():
        model.encoder.pos_embed.normal_()
    encoder = model.encoder
    for grid in ((37, 37), (37, 49), (49, 37), (5, 7), (1, 1)):
        expected = encoder.interpolate_pos_encoding(*grid)
        with exportable(model):
            got = interpolate_pos_encoding(encoder, *grid)
        assert got.shape == expected.shape
        if grid == (37, 37):
            assert torch.equal(got, expected)  # the training grid: unchanged
        # float32 rounding of two summation orders, on N(0, 1) embeddings
        torch.testing.assert_close(got, expected, rtol=0, atol=3e-5)


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random model (official 0.1 interpolation offset) with varied output maps, saved in
    our format."""
    config = DepthAnythingConfig.preset("custom", "v2", embed_dim=64, depth=4, num_heads=2,
                                        features=16)
    model = DepthAnything(config=config).eval()
    final = model.head.scratch.output_conv2[2]
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name in ("encoder.cls_token", "encoder.pos_embed"):
                param.normal_()  # interpolation errors must show
            elif param.ndim > 1:
                param.normal_(0.0, param[0].numel() ** -0.5)
            else:
                param.normal_(0.0, 0.1)
        # the last conv's input, as the ReLU before it returns it (the head applies the conv's
        # weight functionally; a copy: that ReLU works in place), on a probe of every shape the
        # test uses: the level differs with the token grid, and a bias set on one small probe
        # left as few as 38% of a 518x518 map above the ReLU
        inputs: list[torch.Tensor] = []
        hook = model.head.scratch.output_conv2[1].register_forward_hook(
            lambda module, args, out: inputs.append(out.clone()))
        for _, h, w in SHAPES:
            model(torch.randn(1, 3, h, w))
        hook.remove()
        pre = [torch.nn.functional.conv2d(x, final.weight).double().flatten() for x in inputs]
        std = torch.cat(pre).std().item()
        final.weight.div_(std)
        # every probe map 95% above the ReLU
        final.bias.fill_(-min(torch.quantile(p / std, 0.05).item() for p in pre))
    path = tmp_path_factory.mktemp("export") / "tiny"
    model.save_pretrained(path)
    return path


def spread_diff(got: np.ndarray, expected: np.ndarray) -> float:
    """max |got - expected| in units of the expected map's standard deviation."""
    return float(np.abs(got - expected).max() / expected.std())


@pytest.mark.slow
def test_export_pt2_and_onnx_match_the_model(tiny_weights: Path, tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from depth_anything_fast.models.export import export_program, save_export

    model = DepthAnything.from_pretrained(tiny_weights).eval()
    inputs = [torch.randn(b, 3, h, w) for b, h, w in SHAPES]
    with torch.no_grad():
        expected = [model(x).numpy() for x in inputs]
    for e in expected:  # maps that vary: at least half the pixels non-zero, std >= 0.1 mean
        assert (e != 0).mean() >= 0.5 and e.std() >= 0.1 * np.abs(e).mean(), (e.mean(), e.std())

    program = export_program(model)  # one export (the slow part) for both formats
    save_export(program, tmp_path / "tiny.pt2", "pt2")
    module = torch.export.load(str(tmp_path / "tiny.pt2")).module()
    for x, e in zip(inputs, expected, strict=True):
        with torch.no_grad():
            got = module(x).numpy()
        assert got.shape == e.shape and spread_diff(got, e) <= TOL, x.shape

    save_export(program, tmp_path / "tiny.onnx", "onnx")
    session = ort.InferenceSession(str(tmp_path / "tiny.onnx"),
                                   providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["x"]
    for x, e in zip(inputs, expected, strict=True):
        (got,) = session.run(None, {"x": x.numpy()})
        assert got.shape == e.shape and spread_diff(got, e) <= TOL, x.shape


def test_export_parts_compose_to_the_model(tiny_weights: Path) -> None:
    """The encoder's and the head's programs (what OpenVINO bf16 compiles separately) compose
    to the model at shapes unlike the traced example."""
    from depth_anything_fast.models.export import export_program

    model = DepthAnything.from_pretrained(tiny_weights).eval()
    encoder = export_program(model, part="encoder").module()
    head = export_program(model, part="head").module()
    for b, h, w in SHAPES[:2]:
        x = torch.randn(b, 3, h, w)
        with torch.no_grad():
            expected = model(x).numpy()
            got = head(tuple(encoder(x)), x).numpy()
        assert got.shape == expected.shape and spread_diff(got, expected) <= TOL, x.shape
    with pytest.raises(ValueError, match="part must be one of"):
        export_program(model, part="neck")


def test_export_cli_errors(
    tiny_weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from depth_anything_fast.models import cli, export

    assert cli.EXPORT_FORMATS == export.FORMATS
    assert main(["export", "--weights", str(tmp_path / "missing.pth"), "--format", "pt2",
                 str(tmp_path / "a.pt2")]) == 1
    assert "checkpoint not found" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "onnxscript", None)
    assert main(["export", "--weights", str(tiny_weights), "--format", "onnx",
                 str(tmp_path / "a.onnx")]) == 1
    assert "depth_anything_fast[export]" in capsys.readouterr().err
    assert not (tmp_path / "a.onnx").exists()
