"""Export a Depth Anything model: ONNX (dynamic batch, height, width) and torch.export (.pt2).

`depth-anything-fast export --weights W --format onnx|pt2 OUT` (`models.cli`). The graph takes
x (B, 3, H, W) float32, ImageNet-normalised, H and W multiples of 14, any B, H, W (the exported
ranges are up to `MAX_BATCH` images and `MAX_PATCHES` patches per side), and returns
(B, H, W) float32 disparity (depth in metres for a metric model), as `DepthAnything.forward`.
Preprocessing (resize, normalise) and the resize back stay outside the graph.

For the export, the position-embedding interpolation is written as two interpolation matrices
(`bicubic_matrix`) instead of `F.interpolate(scale_factor=...)`: the official scale factor
`(n + 0.1) / 37` depends on the input size, which `F.interpolate` turns into a constant of the
traced shape. The matrices give the same bicubic (a = -0.75, border-clamped, PyTorch's source
coordinates) for every grid, and the embeddings unchanged at the training grid, as the model.

Minimal ONNX Runtime inference (`preprocess` is this package's official resize and
normalisation; any equivalent numpy code can replace it):

    import numpy as np, onnxruntime as ort
    from depth_anything_fast.transforms import preprocess
    session = ort.InferenceSession("depth.onnx", providers=["CPUExecutionProvider"])
    x = preprocess(rgb_uint8).numpy()                     # (1, 3, H', W'), H', W' % 14 == 0
    disparity = session.run(None, {"x": x})[0][0]          # (H', W') float32
"""

from __future__ import annotations

import contextlib
import copy
import types
from collections.abc import Iterator
from pathlib import Path

import torch

FORMATS = ("onnx", "pt2")
MAX_BATCH = 1024
MAX_PATCHES = 1024  # per side: 14336 pixels
_CUBIC_A = -0.75  # PyTorch's (and OpenCV's) bicubic coefficient


def bicubic_matrix(size: int, out: torch.Tensor, offset: float | torch.Tensor) -> torch.Tensor:
    """(n, size) matrix M with M @ v = bicubic resampling of v (length `size`) to
    n = out.numel() samples, as `F.interpolate(mode="bicubic", align_corners=False)` with
    scale factor (n + offset) / size, or with size=n for offset 0.0.

    The arithmetic follows PyTorch's CPU kernel (source coordinate, tap weights with
    a = -0.75, border taps clamped); float32 agrees with `F.interpolate` to rounding.

    Args:
        size: input length (the training grid side, 37).
        out: arange(n) as float32 or float64 on the target device; n may be a symbolic size.
        offset: 0.1 for the official DINOv2 interpolation, 0.0 for an exact-size one; a
            float64 tensor for an offset decided in the graph.
    """
    n = out[-1:] + 1  # the output length as a tensor: no branch on a traced shape
    if isinstance(offset, torch.Tensor) or offset:
        # PyTorch inverts the scale factor in float64, then rounds to the compute type
        ratio = (1.0 / ((n.double() + offset) / size)).to(out.dtype)
    else:
        ratio = size / n
    source = (out + 0.5) * ratio - 0.5
    start = torch.floor(source)
    t = source - start
    # distances to the taps at start-1 .. start+2, in PyTorch's order of operations
    d = torch.stack((t + 1, t, 1 - t, (1 - t) + 1), dim=1)
    near = ((_CUBIC_A + 2) * d - (_CUBIC_A + 3)) * d * d + 1
    far = ((_CUBIC_A * d - 5 * _CUBIC_A) * d + 8 * _CUBIC_A) * d - 4 * _CUBIC_A
    weight = torch.cat((far[:, :1], near[:, 1:3], far[:, 3:]), dim=1)  # (n, 4)
    taps = torch.arange(-1, 3, device=out.device)
    index = (start.long()[:, None] + taps).clamp(0, size - 1)  # (n, 4), border taps repeat
    columns = torch.arange(size, device=out.device)
    one_hot = (index[:, :, None] == columns).to(out.dtype)  # (n, 4, size)
    return (one_hot * weight[:, :, None]).sum(dim=1)


def interpolate_pos_encoding(self, grid_h: int, grid_w: int) -> torch.Tensor:
    """`DinoVisionTransformer.interpolate_pos_encoding` with shape-generic matrices (bound to
    an encoder by `exportable`)."""
    pos_embed = self.pos_embed
    side = int((pos_embed.shape[1] - 1) ** 0.5)
    grid = pos_embed[0, 1:].float().reshape(side, side, -1)
    rows = torch.arange(grid_h, device=grid.device).float()
    cols = torch.arange(grid_w, device=grid.device).float()
    offset: float | torch.Tensor = self.interpolate_offset
    if offset:
        # the model keeps the embeddings at the training grid (both sides 37); scale 1 (offset
        # 0 there) gives exactly that, without a branch on the traced sizes
        keep = ((rows[-1:] + 1) == side) & ((cols[-1:] + 1) == side)
        offset = offset * (~keep).double()
    rows = bicubic_matrix(side, rows, offset)
    cols = bicubic_matrix(side, cols, offset)
    patch_pos = torch.einsum("hi,ijd,wj->hwd", rows, grid, cols).reshape(1, -1, grid.shape[-1])
    return torch.cat((pos_embed[:, :1], patch_pos.to(pos_embed.dtype)), dim=1)


@contextlib.contextmanager
def exportable(model: torch.nn.Module, attention: str = "math") -> Iterator[torch.nn.Module]:
    """`model` in eval mode, with the attention backend `attention` and its position-embedding
    interpolation traceable for any input size; all restored on exit.

    "math" (plain matmul-softmax-matmul) is what every exporter and runtime reads (ONNX before
    opset 23 has no attention operator; fused kernels such as xformers' do not export);
    "sdpa" keeps `aten.scaled_dot_product_attention` in a torch.export program, which
    OpenVINO converts to its own fused attention."""
    encoder = model.encoder
    was_training, backend = model.training, encoder.attention_backend
    model.eval()
    encoder.set_attention_backend(attention)
    encoder.interpolate_pos_encoding = types.MethodType(interpolate_pos_encoding, encoder)
    try:
        yield model
    finally:
        del encoder.interpolate_pos_encoding  # back to the class's method
        encoder.set_attention_backend(backend)
        model.train(was_training)


def _example_and_shapes(model: torch.nn.Module) -> tuple[torch.Tensor, dict]:
    patch = model.config.patch_size
    dims = torch.export.Dim
    # an example unlike any special case: batch 2, a non-square grid other than 37 x 37
    example = torch.randn(2, 3, 5 * patch, 7 * patch)
    shapes = {"x": {
        0: dims("batch", min=1, max=MAX_BATCH),
        2: patch * dims("patches_h", min=1, max=MAX_PATCHES),
        3: patch * dims("patches_w", min=1, max=MAX_PATCHES),
    }}
    return example, shapes


class _Encode(torch.nn.Module):
    """`DepthAnything.encode` as a module's forward (its four outputs as a tuple)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.model.encode(x))


class _Decode(torch.nn.Module):
    """`DepthAnything.decode` as a module's forward: (the four token maps, x) -> (B, H, W).
    Only x's shape is read (the patch grid), so the program's sizes follow the input's."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, tokens: tuple[torch.Tensor, ...], x: torch.Tensor) -> torch.Tensor:
        patch = self.model.config.patch_size
        return self.model.decode(list(tokens), x.shape[-2] // patch, x.shape[-1] // patch)


PARTS = ("model", "encoder", "head")


def export_program(model: torch.nn.Module, attention: str = "math", *,
                   part: str = "model") -> torch.export.ExportedProgram:
    """`torch.export` program of `model` (CPU, float32) with dynamic batch, height and width;
    `attention` as in `exportable` ("math" for ONNX). `part`: "model" (x -> (B, H, W)
    disparity), "encoder" (`model.encode`: x -> the four (B, N, embed_dim) token maps the head
    takes) or "head" (`model.decode`: (the four token maps, x) -> (B, H, W), x read for its
    shape only).

    A model on another device or in another dtype is copied, not changed. Run the result with
    `program.module()(x)` (the head's with `(tokens, x)`); save with `torch.export.save`, load
    with `torch.export.load`.
    """
    if part not in PARTS:
        raise ValueError(f"part must be one of {PARTS}, got {part!r}")
    param = next(model.parameters())
    if param.device.type != "cpu" or param.dtype != torch.float32:
        model = copy.deepcopy(model).float().cpu()
    example, shapes = _example_and_shapes(model)
    with exportable(model, attention), torch.no_grad():
        if part == "head":
            tokens = tuple(model.encode(example))
            # N = patches_h * patches_w, a product torch.export's dims cannot state: inferred
            per_token = {0: shapes["x"][0], 1: torch.export.Dim.AUTO}
            shapes = {"tokens": tuple(per_token for _ in tokens), "x": shapes["x"]}
            return torch.export.export(_Decode(model), (tokens, example),
                                       dynamic_shapes=shapes, strict=False)
        program = _Encode(model) if part == "encoder" else model
        return torch.export.export(program, (example,), dynamic_shapes=shapes, strict=False)


def require_onnx_exporter() -> None:
    """ImportError naming the `export` extra when torch.onnx's exporter cannot run."""
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401  (torch.onnx's exporter is built on it)
    except ImportError as err:
        raise ImportError(
            "ONNX export needs onnx and onnxscript: pip install 'depth_anything_fast[export]'"
        ) from err


def save_export(
    program: torch.export.ExportedProgram, path: str | Path, format: str, *, opset: int = 18
) -> Path:
    """Write an `export_program` result as ONNX ("onnx": input "x", output "disparity",
    dynamic batch, height and width; weights over 2 GB, i.e. vitg's, in a data file beside
    it; needs onnx and onnxscript, the `export` extra) or as a torch.export archive ("pt2",
    `torch.export.load` reads it back)."""
    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
    path = Path(path)
    if format == "pt2":
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.export.save(program, str(path))
        return path
    require_onnx_exporter()
    # a program read back by torch.export.load does not translate (its derived sizes fail
    # there): translate the one in memory
    onnx_program = torch.onnx.export(
        program, input_names=["x"], output_names=["disparity"], opset_version=opset,
        dynamo=True,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    # one file up to protobuf's 2 GB (vits..vitl); above (vitg) the weights go to a data file
    onnx_program.save(str(path))
    return path
