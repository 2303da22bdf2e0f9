"""Checkpoint formats: detection, key conversion to our names, safe loading and saving.

Formats:
- "official": Depth Anything V1/V2 `.pth` state dicts (`pretrained.*`, `depth_head.*`).
- "hf": transformers `DepthAnythingForDepthEstimation` (`backbone.*`, `neck.*`, `head.*`), both
  the on-disk names (`attention.attention.query`, `attention.output.dense`, SwiGLU
  `mlp.weights_in/weights_out`) and the in-memory names of transformers 5 (`attention.q_proj`,
  `o_proj`, `gate_proj/up_proj/down_proj`).
- "dinov2": a bare DINOv2 backbone, official (`blocks.*`) or transformers `Dinov2Model`
  (`embeddings.*`, `encoder.layer.*`); the DPT head is left freshly initialised.
- "ours": `DepthAnything.state_dict()` names (`encoder.*`, `head.*`), saved as safetensors with
  the JSON config in the metadata (and in `config.json` beside it for a directory).
Loading never executes code from a file: `torch.load(weights_only=True)` or safetensors.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .architecture import _SIZES, METRIC_MAX_DEPTH, DepthAnythingConfig

logger = logging.getLogger(__name__)

FORMAT_TAG = "depth_anything_fast"
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
StateDict = dict[str, torch.Tensor]


# ----------------------------------------------------------------------------- reading files
def read_checkpoint(
    path: str | Path, map_location: str | torch.device = "cpu"
) -> tuple[StateDict, dict[str, Any] | None]:
    """Read tensors (and an embedded/adjacent config dict, if any) from a file or directory.

    Accepts .pth/.pt/.bin/.ckpt (torch, weights_only), .safetensors, or a directory holding
    model.safetensors or pytorch_model.bin (+ config.json). Wrapper dicts ({"model": ...},
    {"state_dict": ...}) and DistributedDataParallel "module." prefixes are unwrapped.

    Raises:
        FileNotFoundError: path missing, or a directory without weights.
        ValueError: unreadable/truncated file, or no tensors in it.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    config: dict[str, Any] | None = None
    if path.is_dir():
        for name in (WEIGHTS_NAME, "pytorch_model.bin"):
            if (path / name).is_file():
                weights = path / name
                break
        else:
            raise FileNotFoundError(
                f"no {WEIGHTS_NAME} or pytorch_model.bin in checkpoint directory {path}"
            )
        if (path / CONFIG_NAME).is_file():
            try:
                config = json.loads((path / CONFIG_NAME).read_text())
            except json.JSONDecodeError as err:
                raise ValueError(f"invalid JSON in {path / CONFIG_NAME}: {err}") from err
        path = weights
    if path.suffix == ".safetensors":
        state, metadata = _read_safetensors(path, map_location)
        if metadata and "config" in metadata:
            config = json.loads(metadata["config"])
    else:
        state = _read_torch(path, map_location)
    return _unwrap(state, path), config


def _read_safetensors(
    path: Path, map_location: str | torch.device
) -> tuple[StateDict, dict[str, str] | None]:
    from safetensors import safe_open

    device = str(map_location)
    try:
        with safe_open(str(path), framework="pt", device=device) as handle:
            metadata = handle.metadata()
            state = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    except Exception as err:  # safetensors raises its own error types for corrupt headers
        raise ValueError(
            f"cannot read safetensors checkpoint {path} (truncated or corrupt?): {err}"
        ) from err
    return state, metadata


def _read_torch(path: Path, map_location: str | torch.device) -> Any:
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        raise ValueError(
            f"cannot read torch checkpoint {path}: truncated or corrupt, not a PyTorch file, or "
            "it pickles objects other than tensors, which are not loaded because unpickling "
            f"them can run code ({_load_error_reason(err)})"
        ) from None


def _load_error_reason(err: Exception) -> str:
    """The core of a `torch.load` error, without PyTorch's advice to retry with
    weights_only=False (which would run whatever the file pickles)."""
    text = str(err)
    match = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\n\s*\n|$)", text, re.S)
    if match:
        return " ".join(match.group(1).split())
    lines = [line for line in text.strip().splitlines() if "weights_only" not in line]
    return lines[0].strip() if lines else type(err).__name__


def _unwrap(state: Any, path: Path) -> StateDict:
    for wrapper in ("model", "state_dict", "module"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not state:
        raise ValueError(f"{path} holds no state dict (got {type(state).__name__})")
    state = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if not state:
        raise ValueError(f"{path} holds no tensors")
    if all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


# ----------------------------------------------------------------------------- format detection
def detect_format(state: StateDict) -> str:
    """ "official" | "hf" | "dinov2" | "ours" from the key names; ValueError if none fits."""
    keys = state.keys()
    if any(k.startswith("pretrained.") for k in keys):
        return "official"
    if any(k.startswith("backbone.embeddings.") for k in keys):
        return "hf"
    if any(k.startswith("encoder.blocks.") for k in keys):
        return "ours"
    if "cls_token" in keys or "embeddings.cls_token" in keys:
        return "dinov2"
    sample = ", ".join(sorted(keys)[:5])
    raise ValueError(
        "unrecognised checkpoint layout: expected Depth Anything official (pretrained.*), "
        f"transformers (backbone.*), DINOv2 or depth_anything_fast keys; first keys: {sample}"
    )


# ----------------------------------------------------------------------------- key conversion
def official_to_ours(state: StateDict) -> StateDict:
    """Official Depth Anything names -> ours (a prefix rename)."""
    out = {}
    for key, value in state.items():
        if key.startswith("pretrained."):
            out["encoder." + key[len("pretrained.") :]] = value
        elif key.startswith("depth_head."):
            out["head." + key[len("depth_head.") :]] = value
        else:
            out[key] = value  # reported as unexpected by the loader
    return out


_HF_BACKBONE_RENAMES = (
    (r"^embeddings\.cls_token$", "cls_token"),
    (r"^embeddings\.mask_token$", "mask_token"),
    (r"^embeddings\.position_embeddings$", "pos_embed"),
    (r"^embeddings\.patch_embeddings\.projection\.", "patch_embed.proj."),
    (r"^layernorm\.", "norm."),
    (r"^encoder\.layer\.(\d+)\.attention\.output\.dense\.", r"blocks.\1.attn.proj."),
    (r"^encoder\.layer\.(\d+)\.attention\.o_proj\.", r"blocks.\1.attn.proj."),
    (r"^encoder\.layer\.(\d+)\.layer_scale1\.lambda1$", r"blocks.\1.ls1.gamma"),
    (r"^encoder\.layer\.(\d+)\.layer_scale2\.lambda1$", r"blocks.\1.ls2.gamma"),
    (r"^encoder\.layer\.(\d+)\.mlp\.weights_in\.", r"blocks.\1.mlp.w12."),
    (r"^encoder\.layer\.(\d+)\.mlp\.weights_out\.", r"blocks.\1.mlp.w3."),
    (r"^encoder\.layer\.(\d+)\.mlp\.down_proj\.", r"blocks.\1.mlp.w3."),
    (r"^encoder\.layer\.(\d+)\.(norm1|norm2|mlp\.fc1|mlp\.fc2)\.", r"blocks.\1.\2."),
)
# q/k/v (and SwiGLU gate/up) are separate linears in transformers, fused in DINOv2
_HF_QKV = re.compile(
    r"^encoder\.layer\.(\d+)\.attention\.(?:attention\.(query|key|value)|(q|k|v)_proj)\.(weight|bias)$"
)
_HF_GATE_UP = re.compile(r"^encoder\.layer\.(\d+)\.mlp\.(gate|up)_proj\.(weight|bias)$")
_QKV_ORDER = {"query": 0, "key": 1, "value": 2, "q": 0, "k": 1, "v": 2}


def hf_backbone_to_dinov2(state: StateDict) -> StateDict:
    """transformers Dinov2 backbone names (either style, no prefix) -> official DINOv2 names."""
    out: StateDict = {}
    fused: dict[str, dict[int, torch.Tensor]] = {}
    for key, value in state.items():
        match = _HF_QKV.match(key)
        if match:
            layer, long_name, short_name, kind = match.groups()
            part = _QKV_ORDER[long_name or short_name]
            fused.setdefault(f"blocks.{layer}.attn.qkv.{kind}", {})[part] = value
            continue
        match = _HF_GATE_UP.match(key)
        if match:
            layer, which, kind = match.groups()
            fused.setdefault(f"blocks.{layer}.mlp.w12.{kind}", {})[0 if which == "gate" else 1] = (
                value
            )
            continue
        for pattern, replacement in _HF_BACKBONE_RENAMES:
            new_key, count = re.subn(pattern, replacement, key)
            if count:
                out[new_key] = value
                break
        else:
            out["unexpected." + key] = value
    for key, parts in fused.items():
        expected = 2 if ".mlp.w12." in key else 3
        if sorted(parts) != list(range(expected)):
            raise ValueError(f"incomplete transformers projection for {key}: parts {sorted(parts)}")
        out[key] = torch.cat([parts[i] for i in range(expected)], dim=0)
    return out


_HF_HEAD_RENAMES = (
    (r"^neck\.reassemble_stage\.layers\.(\d)\.projection\.", r"projects.\1."),
    (r"^neck\.reassemble_stage\.layers\.(\d)\.resize\.", r"resize_layers.\1."),
    (r"^head\.conv1\.", "scratch.output_conv1."),
    (r"^head\.conv2\.", "scratch.output_conv2.0."),
    (r"^head\.conv3\.", "scratch.output_conv2.2."),
)
_HF_CONVS = re.compile(r"^neck\.convs\.(\d)\.(.*)$")
_HF_FUSION = re.compile(
    r"^neck\.fusion_stage\.layers\.(\d)\.(?:projection|residual_layer(\d)\.convolution(\d))\.(weight|bias)$"
)


def hf_to_ours(state: StateDict) -> StateDict:
    """transformers DepthAnythingForDepthEstimation names (either style) -> ours."""
    backbone = {k[len("backbone.") :]: v for k, v in state.items() if k.startswith("backbone.")}
    out = {"encoder." + k: v for k, v in hf_backbone_to_dinov2(backbone).items()}
    for key, value in state.items():
        if key.startswith("backbone."):
            continue
        match = _HF_CONVS.match(key)
        if match:
            out[f"head.scratch.layer{int(match.group(1)) + 1}_rn.{match.group(2)}"] = value
            continue
        match = _HF_FUSION.match(key)
        if match:
            stage, unit, conv, kind = match.groups()
            # fusion stage 0 is the deepest: official refinenet4
            prefix = f"head.scratch.refinenet{4 - int(stage)}."
            name = "out_conv" if unit is None else f"resConfUnit{unit}.conv{conv}"
            out[f"{prefix}{name}.{kind}"] = value
            continue
        for pattern, replacement in _HF_HEAD_RENAMES:
            new_key, count = re.subn(pattern, replacement, key)
            if count:
                out["head." + new_key] = value
                break
        else:
            out[key] = value
    return out


def dinov2_to_ours(state: StateDict) -> StateDict:
    """A bare DINOv2 backbone (official or transformers Dinov2Model names) -> `encoder.*`."""
    if "embeddings.cls_token" in state:
        state = hf_backbone_to_dinov2(state)
    if any(k.startswith("register_tokens") for k in state):
        raise ValueError("DINOv2 with registers is not supported (Depth Anything uses none)")
    return {"encoder." + k: v for k, v in state.items()}


def to_ours(state: StateDict, fmt: str | None = None) -> StateDict:
    """Convert a state dict of any supported format to our names."""
    fmt = fmt or detect_format(state)
    if fmt == "official":
        return official_to_ours(state)
    if fmt == "hf":
        return hf_to_ours(state)
    if fmt == "dinov2":
        return dinov2_to_ours(state)
    return dict(state)


# ----------------------------------------------------------------------------- config inference
_NAME_BY_DIM = {dims[0]: name for name, dims in _SIZES.items()}
_HEADS_BY_DIM = {dims[0]: dims[2] for dims in _SIZES.values()}


def infer_config(
    state: StateDict,
    *,
    source_name: str = "",
    hf_config: dict[str, Any] | None = None,
    encoder: str | None = None,
    version: str | None = None,
    metric: bool | None = None,
    max_depth: float | None = None,
) -> DepthAnythingConfig:
    """Architecture from our-named tensors (+ a transformers config.json, + name hints).

    The keys fix the sizes. They cannot tell V1 from V2 or relative from metric (identical
    tensors): these come from the arguments, the transformers config, or the file name
    ("v2", "metric", "hypersim" -> indoor 20 m, "vkitti" -> outdoor 80 m); V2 relative is the
    fallback, with a logged warning.
    """
    sizes = _TensorSizes.of(state)
    detected = _official_size(sizes, encoder)
    overrides: dict[str, Any] = {"patch_size": sizes.patch_size,
                                 "img_size": sizes.grid * sizes.patch_size}
    if hf_config is not None:
        hf_overrides, version, metric, max_depth = _read_hf_config(
            hf_config, sizes, version, metric, max_depth
        )
        overrides.update(hf_overrides)
    if version is None:
        version = _version_from_name(source_name, sizes.ffn, metric)
    metric, max_depth = _metric_from_name(source_name, metric, max_depth)
    if metric:
        overrides.update(metric=True, max_depth=float(max_depth))  # type: ignore[arg-type]
    if detected != "custom":
        if sizes.ffn == "swiglu" and version == "v1":
            raise ValueError("a vitg (SwiGLU) checkpoint cannot be Depth Anything V1")
        return DepthAnythingConfig.preset(detected, version, **overrides)
    return _custom_config(state, sizes, encoder, version, overrides)


@dataclass(frozen=True)
class _TensorSizes:
    """What the encoder's tensors say about its size."""

    embed_dim: int
    depth: int
    ffn: str
    patch_size: int
    grid: int  # position-embedding grid side (37 for 518 px at patch 14)

    @classmethod
    def of(cls, state: StateDict) -> _TensorSizes:
        needed = ("encoder.cls_token", "encoder.patch_embed.proj.weight", "encoder.pos_embed")
        lacking = [key for key in needed if key not in state]
        if lacking:
            sample = ", ".join(sorted(state)[:5])
            raise ValueError(
                f"checkpoint lacks the encoder tensors {lacking} (a Depth Anything or DINOv2 "
                "checkpoint has them); cannot infer the model size. First keys read, in this "
                f"project's names: {sample}")
        blocks = {int(m.group(1)) for k in state if (m := re.match(r"encoder\.blocks\.(\d+)\.", k))}
        return cls(
            embed_dim=state["encoder.cls_token"].shape[-1],
            depth=max(blocks) + 1 if blocks else 0,
            ffn="swiglu" if "encoder.blocks.0.mlp.w12.weight" in state else "mlp",
            patch_size=state["encoder.patch_embed.proj.weight"].shape[-1],
            grid=round((state["encoder.pos_embed"].shape[1] - 1) ** 0.5),
        )


def _official_size(sizes: _TensorSizes, encoder: str | None) -> str:
    """The official encoder name of these sizes, or "custom"; checks a requested `encoder`."""
    detected = _NAME_BY_DIM.get(sizes.embed_dim, "custom")
    if detected != "custom" and sizes.depth != _SIZES[detected][1]:
        detected = "custom"
    if encoder is not None and encoder in _SIZES and encoder != detected:
        raise ValueError(
            f"checkpoint holds a {detected} encoder (embed_dim {sizes.embed_dim}, depth "
            f"{sizes.depth}) but encoder={encoder!r} was requested"
        )
    return detected


def _read_hf_config(
    hf_config: dict[str, Any],
    sizes: _TensorSizes,
    version: str | None,
    metric: bool | None,
    max_depth: float | None,
) -> tuple[dict[str, Any], str | None, bool | None, float | None]:
    """(config overrides, version, metric, max_depth) with what a transformers config.json
    adds to the arguments: heads, blocks fed to the head (1-based `out_indices`; the last four
    means V1), metric type and range."""
    backbone = hf_config.get("backbone_config") or {}
    overrides: dict[str, Any] = {
        "num_heads": backbone.get("num_attention_heads", _HEADS_BY_DIM.get(sizes.embed_dim))
    }
    if "out_indices" in backbone:
        overrides["intermediate_layers"] = tuple(i - 1 for i in backbone["out_indices"])
    if hf_config.get("depth_estimation_type") == "metric" and metric is None:
        metric = True
        max_depth = max_depth or float(hf_config.get("max_depth") or 0) or None
    if version is None and "intermediate_layers" in overrides:
        last_four = tuple(range(sizes.depth - 4, sizes.depth))
        version = "v1" if overrides["intermediate_layers"] == last_four else "v2"
    return overrides, version, metric, max_depth


def _version_from_name(source_name: str, ffn: str, metric: bool | None) -> str:
    """V1 or V2 from the file name (official V1 names), SwiGLU (vitg: V2 only) or metric (V2
    only); V2 with a warning when nothing tells."""
    lower = source_name.lower()
    if "v2" in lower or ffn == "swiglu" or metric:
        return "v2"
    if re.search(r"depth_anything_vit[sblg]|depth-anything-(small|base|large)-hf", lower):
        return "v1"
    logger.warning(
        "%s: V1 and V2 checkpoints hold identical tensors and nothing names the "
        "version; assuming v2 (for a V1 checkpoint: --version v1 on the command line, "
        "version='v1' in Python)",
        source_name or "checkpoint",
    )
    return "v2"


def _metric_from_name(
    source_name: str, metric: bool | None, max_depth: float | None
) -> tuple[bool, float | None]:
    """(metric, max_depth), the unknowns read from the file name ("metric", "hypersim" indoor
    20 m, "vkitti" outdoor 80 m). Raises ValueError for a metric model of unknown range."""
    lower = source_name.lower()
    if metric is None:
        metric = any(tag in lower for tag in ("metric", "hypersim", "vkitti"))
    if metric and max_depth is None:
        if "hypersim" in lower or "indoor" in lower:
            max_depth = METRIC_MAX_DEPTH["indoor"]
        elif "vkitti" in lower or "outdoor" in lower:
            max_depth = METRIC_MAX_DEPTH["outdoor"]
        else:
            raise ValueError(
                f"{source_name or 'checkpoint'} is a metric model but its max_depth is unknown; "
                "pass max_depth (20 indoor, 80 outdoor)"
            )
    return metric, max_depth


def _custom_config(
    state: StateDict,
    sizes: _TensorSizes,
    encoder: str | None,
    version: str,
    overrides: dict[str, Any],
) -> DepthAnythingConfig:
    """A custom size: widths from the tensors; heads from the transformers config or
    head_dim 64."""
    heads = overrides.pop("num_heads", None) or (
        sizes.embed_dim // 64 if sizes.embed_dim % 64 == 0 else None
    )
    if heads is None:
        raise ValueError(
            f"custom checkpoint (embed_dim {sizes.embed_dim}, depth {sizes.depth}) without a "
            "config: the number of heads cannot be read from the weights; pass "
            "config=DepthAnythingConfig(...)"
        )
    if "head.scratch.layer1_rn.weight" in state:
        overrides["features"] = state["head.scratch.layer1_rn.weight"].shape[0]
        overrides["out_channels"] = tuple(
            state[f"head.projects.{i}.weight"].shape[0] for i in range(4)
        )
    return DepthAnythingConfig.preset(
        encoder or "custom",
        version,
        embed_dim=sizes.embed_dim,
        depth=sizes.depth,
        num_heads=heads,
        ffn=sizes.ffn,
        **overrides,
    )


# ----------------------------------------------------------------------------- loading
def load_into(
    model: torch.nn.Module, state: StateDict, *, strict: bool = True, allow_missing: str = ""
) -> None:
    """Copy our-named tensors into `model`, with a readable report of what does not match.

    Wrong shapes always raise a ValueError naming each tensor and both shapes. Missing and
    unexpected keys raise with strict=True, else are logged. Keys starting with
    `allow_missing` may be missing silently (the head of a bare DINOv2 checkpoint).
    """
    expected = model.state_dict()
    wrong = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
        for k, v in state.items()
        if k in expected and v.shape != expected[k].shape
    ]
    if wrong:
        raise ValueError(
            f"{len(wrong)} tensors have the wrong size (different model size or config?):\n  "
            + "\n  ".join(wrong[:20])
        )
    missing = [
        k
        for k in expected
        if k not in state and not (allow_missing and k.startswith(allow_missing))
    ]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        report = (
            f"checkpoint does not match the model: {len(missing)} missing keys "
            f"{missing[:10]}{' ...' if len(missing) > 10 else ''}, {len(unexpected)} unexpected "
            f"keys {unexpected[:10]}{' ...' if len(unexpected) > 10 else ''}"
        )
        if strict:
            raise ValueError(report)
        logger.warning(report)
    model.load_state_dict({k: v for k, v in state.items() if k in expected}, strict=False)


def save_file(state: StateDict, path: str | Path, config: DepthAnythingConfig) -> None:
    """Write our-named tensors as safetensors with the config JSON in the metadata."""
    from safetensors.torch import save_file as _save

    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    metadata = {"format": FORMAT_TAG, "config": json.dumps(config.to_dict())}
    _save(tensors, str(path), metadata=metadata)


def weights_fingerprint(weights_or_model: str | os.PathLike[str] | torch.nn.Module) -> str:
    """`"sha256:<hex>"` of the weights' content: the file's bytes (a directory: each regular
    file's name and bytes, sorted by name), or a model's state dict (names, dtypes, shapes,
    values)."""
    digest = hashlib.sha256()
    if isinstance(weights_or_model, torch.nn.Module):
        for name, tensor in weights_or_model.state_dict().items():
            t = tensor.detach().cpu().contiguous()
            digest.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
            digest.update(t.view(torch.uint8).numpy() if t.numel() else b"")  # no copy
        return "sha256:" + digest.hexdigest()
    path = Path(weights_or_model)
    files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():  # the file's own name is not content (a moved file is the same)
            digest.update(file.name.encode() + b"\0")
        with open(file, "rb") as f:
            while chunk := f.read(1 << 24):
                digest.update(chunk)
    return "sha256:" + digest.hexdigest()
