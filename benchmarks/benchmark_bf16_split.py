"""Where the bf16 part of OpenVINO's CPU inference may end (issue 20): accuracy of every split.

    python benchmarks/benchmark_bf16_split.py --out benchmarks/results/inference_bf16_split \
        [--splits encoder reassemble ...] [--encoder vits]

The model is cut after one stage of its forward pass (`STAGES`: the encoder, then the DPT
head's reassembly, fusion blocks and output layers); the first part (x -> the intermediate
tensors) is converted to OpenVINO and compiled with `INFERENCE_PRECISION_HINT` bf16, the second
(intermediate, x -> disparity) with f32. Split "encoder" is what `Predictor`'s OpenVINO bf16
runs; "end" is the whole model in bf16. Accuracy as `benchmark_inference_accuracy.py` (the same
real images, keep-aspect resize to 518, batch 1, least-squares-aligned AbsRel against torch
fp32; the budget for a default is 1e-3). Each split's record is appended to `<out>.jsonl` as
it finishes; `<out>.md` is the table of the records there.

`run_stages` retraces `DPTHead.forward` stage by stage (the cut needs its intermediate
tensors); tests/test_benchmark_bf16_split.py checks that the stages compose to the model's
forward.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

STAGES = ("encoder", "reassemble", "refinenet4", "refinenet3", "refinenet2", "refinenet1",
          "output_conv1", "upsample", "conv2a", "end")
BUDGET = 1e-3

State = Any  # the tensors between two stages (`flatten` / `unflatten` give their tuple form)


def run_stages(model: torch.nn.Module, state: State, after: str | None, until: str,
               patch_h: int, patch_w: int) -> State:
    """Run `model`'s stages after `after` (None: from the image) up to `until`, inclusive,
    on `state` (the image x (B, 3, H, W) when `after` is None)."""
    head, start = model.head, (STAGES.index(after) + 1 if after else 0)
    s = head.scratch
    for name in STAGES[start:STAGES.index(until) + 1]:
        if name == "encoder":
            state = tuple(model.encode(state))
        elif name == "reassemble":
            layers = []
            for i, x in enumerate(state):
                x = x.permute(0, 2, 1).reshape(x.shape[0], x.shape[-1], patch_h, patch_w)
                layers.append(getattr(s, f"layer{i + 1}_rn")(
                    head.resize_layers[i](head.projects[i](x))))
            state = (tuple(layers), None)
        elif name == "refinenet4":
            layers, _ = state
            state = (layers, s.refinenet4(layers[3], size=layers[2].shape[2:]))
        elif name in ("refinenet3", "refinenet2"):
            level = 3 if name == "refinenet3" else 2
            layers, path = state
            state = (layers, getattr(s, name)(path, layers[level - 1],
                                               size=layers[level - 2].shape[2:]))
        elif name == "refinenet1":
            layers, path = state
            state = s.refinenet1(path, layers[0])
        elif name == "output_conv1":
            state = s.output_conv1(state)
        elif name == "upsample":
            size = (patch_h * head.patch_size, patch_w * head.patch_size)
            state = F.interpolate(state, size=size, mode="bilinear", align_corners=True)
        elif name == "conv2a":
            conv, relu, _, _ = s.output_conv2
            state = relu(conv(state))
        else:  # "end": the last 1x1 convolution and activation; a metric model's scale
            _, _, last, activation = s.output_conv2
            state = activation(F.conv2d(state, last.weight, last.bias))[:, 0]
            if model.config.metric:
                state = state * model.config.max_depth
    return state


def flatten(state: State) -> tuple[torch.Tensor, ...]:
    """The tensors of a stage's state, in order."""
    if isinstance(state, torch.Tensor):
        return (state,)
    return tuple(t for item in state if item is not None for t in flatten(item))


def unflatten(split: str, tensors: Sequence[torch.Tensor]) -> State:
    """`flatten`'s inverse for the state after stage `split`."""
    if split == "encoder":
        return tuple(tensors)
    if split == "reassemble":
        return (tuple(tensors), None)
    if split in ("refinenet4", "refinenet3", "refinenet2"):
        return (tuple(tensors[:4]), tensors[4])
    return tensors[0]


class Before(torch.nn.Module):
    """x -> the flattened state after stage `split`."""

    def __init__(self, model: torch.nn.Module, split: str) -> None:
        super().__init__()
        self.model, self.split = model, split

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        patch = self.model.config.patch_size
        return flatten(run_stages(self.model, x, None, self.split, x.shape[-2] // patch,
                                  x.shape[-1] // patch))


class After(torch.nn.Module):
    """(the flattened state after stage `split`, x) -> (B, H, W); x is read for its shape."""

    def __init__(self, model: torch.nn.Module, split: str) -> None:
        super().__init__()
        self.model, self.split = model, split

    def forward(self, tensors: tuple[torch.Tensor, ...], x: torch.Tensor) -> torch.Tensor:
        patch = self.model.config.patch_size
        return run_stages(self.model, unflatten(self.split, tensors), self.split, "end",
                          x.shape[-2] // patch, x.shape[-1] // patch)


def convert(model: torch.nn.Module, split: str, folder: Path) -> list[Path]:
    """OpenVINO IR of the two parts (one for "end") under `folder`, dynamic batch and size."""
    import openvino

    from depth_anything_fast.models.export import _example_and_shapes, exportable

    folder.mkdir(parents=True, exist_ok=True)
    example, shapes = _example_and_shapes(model)
    paths = []
    with exportable(model, "sdpa"), torch.no_grad():
        before = torch.export.export(Before(model, split), (example,), dynamic_shapes=shapes,
                                     strict=False)
        paths.append(folder / "before.xml")
        openvino.save_model(openvino.convert_model(before), str(paths[-1]),
                            compress_to_fp16=False)
        if split != "end":
            middle = Before(model, split)(example)
            dims = tuple({0: shapes["x"][0], **{d: torch.export.Dim.AUTO
                                                 for d in range(1, t.dim())}} for t in middle)
            after = torch.export.export(After(model, split), (middle, example),
                                        dynamic_shapes={"tensors": dims, "x": shapes["x"]},
                                        strict=False)
            paths.append(folder / "after.xml")
            openvino.save_model(openvino.convert_model(after), str(paths[-1]),
                                compress_to_fp16=False)
    return paths


class SplitRunner:
    """The parts compiled for the CPU per input shape, as `Predictor`'s OpenVINO runtime
    compiles its stages: the first with hint bf16, the second f32."""

    def __init__(self, paths: list[Path]) -> None:
        import openvino

        from depth_anything_fast.inference.runtimes import OpenVINOStage

        core = openvino.Core()
        self._stages = [OpenVINOStage(core, core.read_model(str(p)), hint)
                        for p, hint in zip(paths, ("bf16", "f32"))]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        tensors = self._stages[0]([x])
        if len(self._stages) == 1:
            return tensors[0]
        return self._stages[1]([*tensors, x])[0]


def markdown(records: list[dict[str, Any]]) -> str:
    lines = [
        "# OpenVINO bf16 up to a stage, f32 after it: accuracy against torch fp32",
        "",
        "`benchmarks/benchmark_bf16_split.py` (module docstring: the protocol). Split "
        "\"encoder\" is `Predictor`'s OpenVINO bf16; \"end\" is the whole model in bf16. "
        f"Budget for a default: mean and max AbsRel < {BUDGET:g}.",
        "",
    ]
    if records:
        first = records[0]
        lines += [f"Machine: {first['cpu']}; torch {first['torch']}, openvino "
                  f"{first['openvino']}; recorded {first['date']}.", ""]
    lines += ["| model | bf16 up to and including | AbsRel mean | AbsRel max | images | "
              "within budget |", "|---|---|---:|---:|---:|---|"]
    for r in records:
        ok = "yes" if r["abs_rel_max"] < BUDGET else "NO"
        lines.append(f"| {r['model']} | {r['split']} | {r['abs_rel_mean']:.2e} | "
                     f"{r['abs_rel_max']:.2e} | {r['n_images']} | {ok} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    import openvino
    from benchmark_inference_accuracy import compare, real_images
    from benchmark_support import cpu_description

    from depth_anything_fast.data.decode import decode_rgb
    from depth_anything_fast.models import DepthAnything
    from depth_anything_fast.transforms import preprocess

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="benchmarks/results/inference_bf16_split")
    parser.add_argument("--encoder", default="vits")
    parser.add_argument("--splits", nargs="+", default=list(STAGES), choices=STAGES)
    parser.add_argument("--input-size", type=int, default=518)
    parser.add_argument("--work", default="bf16_split_ir", help="folder for the converted parts")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = DepthAnything(encoder=args.encoder).eval()
    inputs = {p.name: preprocess(decode_rgb(p.read_bytes(), str(p)), args.input_size)
              for p in real_images()}
    with torch.no_grad():
        refs = {name: model(x)[0].numpy() for name, x in inputs.items()}
    inputs = {name: x for name, x in inputs.items() if (refs[name] > 0).any()}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    jsonl = out.with_suffix(".jsonl")
    for split in args.splits:
        runner = SplitRunner(convert(model, split, Path(args.work) / args.encoder / split))
        rows = [compare(runner(x.numpy())[0], refs[name]) for name, x in inputs.items()]
        record = {"model": f"{args.encoder} random init", "split": split,
                  "abs_rel_mean": float(np.mean([r["abs_rel"] for r in rows])),
                  "abs_rel_max": float(np.max([r["abs_rel"] for r in rows])),
                  "n_images": len(rows), "cpu": cpu_description(),
                  "torch": torch.__version__, "openvino": openvino.__version__,
                  "date": time.strftime("%Y-%m-%d %H:%M"),
                  "load_average": [round(v, 2) for v in os.getloadavg()]}
        print(json.dumps(record), flush=True)
        with jsonl.open("a") as f:
            f.write(json.dumps(record) + "\n")
        records = [json.loads(line) for line in jsonl.read_text().splitlines()]
        out.with_suffix(".md").write_text(markdown(records))


if __name__ == "__main__":
    main()
