"""Depth Anything (V1 / V2, relative / metric): DINOv2 encoder + DPT head."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from depth_anything_fast.transforms import preprocess, resize_prediction

from . import hub, weights
from .architecture import DepthAnythingConfig
from .dinov2 import DinoVisionTransformer
from .dpt import DPTHead


class DepthAnything(nn.Module):
    """Depth Anything model.

    Args:
        encoder: "vits" | "vitb" | "vitl" | "vitg" (ignored when `config` is given).
        version: "v1" | "v2" (intermediate blocks; V1 has no vitg).
        metric: V2 metric head (Sigmoid * max_depth); `max_depth` 20 indoor, 80 outdoor.
        attn_backend: "auto" | "sdpa" | "xformers" | "math".
        config: full architecture, e.g. a small custom size for tests.
        checkpoint_activations: recompute each encoder block in backward (saves memory).

    `model(x)`: x (B, 3, H, W) ImageNet-normalised float, H and W multiples of 14 ->
    (B, H, W) relative disparity (metric models: depth in metres), in the compute dtype.
    """

    def __init__(
        self,
        encoder: str = "vitl",
        version: str = "v2",
        metric: bool | None = None,
        max_depth: float | None = None,
        attn_backend: str = "auto",
        *,
        config: DepthAnythingConfig | None = None,
        checkpoint_activations: bool = False,
    ) -> None:
        super().__init__()
        if config is None:
            extra: dict[str, Any] = {}
            if metric:
                extra.update(metric=True, max_depth=max_depth)
            config = DepthAnythingConfig.preset(encoder, version, **extra)
        self.config = config
        self.encoder = DinoVisionTransformer(
            embed_dim=config.embed_dim,
            depth=config.depth,
            num_heads=config.num_heads,
            ffn=config.ffn,
            mlp_ratio=config.mlp_ratio,
            patch_size=config.patch_size,
            img_size=config.img_size,
            interpolate_offset=config.interpolate_offset,
            attn_backend=attn_backend,
            checkpoint_activations=checkpoint_activations,
        )
        self.head = DPTHead(
            config.embed_dim,
            config.features,
            config.out_channels,
            metric=config.metric,
            patch_size=config.patch_size,
        )

    @property
    def patch_size(self) -> int:
        return self.config.patch_size

    def forward(
        self, x: torch.Tensor, return_features: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """x (B, 3, H, W) -> disparity (B, H, W); with return_features also the final-normed
        patch tokens of the last block (B, H/14 * W/14, embed_dim).

        V1's final bilinear resize to the input size is the identity here (H and W are
        multiples of 14), and the final ReLU is already the head's last layer.
        """
        patch_h, patch_w = x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size
        features, last = self.encoder.forward_features(
            x, self.config.intermediate_layers, last=return_features
        )
        out = self.decode(features, patch_h, patch_w)
        if return_features:
            return out, last
        return out

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The encoder's part of `forward`: x (B, 3, H, W) -> the head's inputs, the normed
        patch tokens (B, H/14 * W/14, embed_dim) of the `config.intermediate_layers` blocks."""
        return self.encoder.forward_features(x, self.config.intermediate_layers)[0]

    def decode(self, features: list[torch.Tensor], patch_h: int, patch_w: int) -> torch.Tensor:
        """The head's part of `forward`: `encode`'s features of a patch_h x patch_w grid ->
        (B, patch_h * 14, patch_w * 14) disparity (metric models: depth in metres)."""
        out = self.head(features, patch_h, patch_w)[:, 0]
        if self.config.metric:
            out = out * self.config.max_depth
        return out

    @torch.no_grad()
    def infer_image(self, image: np.ndarray, input_size: int = 518) -> np.ndarray:
        """Official V2 single-image inference.

        Args:
            image: (H, W, 3) RGB uint8 (also grey (H, W) / (H, W, 1) and RGBA (H, W, 4)).
            input_size: lower bound of the short side of the network input.
        Returns:
            (H, W) float32 disparity (metric models: depth) at the input resolution.
        """
        was_training = self.training
        self.eval()
        try:
            param = next(self.parameters())
            x = preprocess(image, input_size, device=param.device).to(param.dtype)
            pred = self(x)
            pred = resize_prediction(pred.float(), tuple(np.asarray(image).shape[:2]))
        finally:
            self.train(was_training)
        return pred[0].cpu().numpy()

    def set_attention_backend(self, backend: str) -> None:
        """Switch the encoder's attention kernel ("auto" | "sdpa" | "xformers" | "math")."""
        self.encoder.set_attention_backend(backend)

    # ----------------------------------------------------------------------------- weights
    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        *,
        encoder: str | None = None,
        version: str | None = None,
        metric: bool | None = None,
        max_depth: float | None = None,
        config: DepthAnythingConfig | None = None,
        attn_backend: str = "auto",
        map_location: str | torch.device = "cpu",
        strict: bool = True,
        revision: str | None = None,
        cache_dir: str | Path | None = None,
    ) -> DepthAnything:
        """Load official V1/V2 (.pth), transformers (dir / .safetensors / .bin, both key styles),
        a bare DINOv2 backbone (head left random) or our safetensors.

        `path` may also be a Hugging Face Hub repo id, e.g. "depth-anything/Depth-Anything-V2-
        Small-hf" or "depth-anything/Depth-Anything-V2-Large" (`org/name[@revision]`, see
        `hub.resolve_weights`; `revision` and `cache_dir` apply to it); an existing local path
        of the same spelling wins. Format, size, version and metric-ness are detected where the
        keys, a config, the official repo or the file name allow (see
        `weights.infer_config`); the keyword arguments override. A mismatch raises a
        ValueError listing missing/unexpected keys and wrongly sized tensors.
        """
        source = hub.resolve_weights(path, revision=revision, cache_dir=cache_dir)
        # what an official repo says about the architecture, unless the caller says otherwise
        asked = {"encoder": encoder, "version": version, "metric": metric, "max_depth": max_depth}
        hinted = {k: source.hints.get(k) if v is None else v for k, v in asked.items()}
        raw, file_config = weights.read_checkpoint(source.path, map_location)
        fmt = weights.detect_format(raw)
        state = weights.to_ours(raw, fmt)
        if config is None:
            config = _checkpoint_config(state, fmt, file_config, source.name, **hinted)
        # built without initialisation (meta tensors): vitg has 1.3B parameters to fill
        with torch.device("meta"):
            model = cls(config=config, attn_backend=attn_backend)
        model.to_empty(device=map_location)
        expected = model.state_dict().keys()
        if any(key not in state for key in expected):
            model.reset_parameters()  # what the checkpoint does not cover stays initialised
        # a bare backbone, or an encoder-only file of ours, leaves the head initialised
        encoder_only = fmt == "dinov2" or not any(k.startswith("head.") for k in state)
        weights.load_into(
            model, state, strict=strict, allow_missing="head." if encoder_only else ""
        )
        return model

    def reset_parameters(self) -> None:
        """Fresh initialisation: PyTorch defaults for convolutions and norms, DINOv2's for
        the encoder (trunc-normal linears and position embeddings, LayerScale 1)."""
        for module in self.modules():
            if module not in (self, self.encoder) and hasattr(module, "reset_parameters"):
                module.reset_parameters()
        self.encoder.reset_parameters()

    def save_pretrained(self, path: str | Path) -> Path:
        """Write safetensors + JSON config.

        `path` ending in .safetensors: one self-contained file (config in its metadata).
        Otherwise a directory with model.safetensors and config.json. Returns the weights path.
        """
        path = Path(path)
        if path.suffix == ".safetensors":
            path.parent.mkdir(parents=True, exist_ok=True)
            weights_file = path
        else:
            path.mkdir(parents=True, exist_ok=True)
            weights_file = path / weights.WEIGHTS_NAME
            config_json = {"format": weights.FORMAT_TAG, **self.config.to_dict()}
            (path / weights.CONFIG_NAME).write_text(json.dumps(config_json, indent=2) + "\n")
        weights.save_file(self.state_dict(), weights_file, self.config)
        return weights_file


def _checkpoint_config(
    state: dict[str, torch.Tensor],
    fmt: str,
    file_config: dict[str, Any] | None,
    source_name: str,
    *,
    encoder: str | None,
    version: str | None,
    metric: bool | None,
    max_depth: float | None,
) -> DepthAnythingConfig:
    """The architecture of a checkpoint in format `fmt`: our file's config (with the given
    version / metric / max_depth over it), else inferred from the keys, a transformers config
    and the file name (`weights.infer_config`)."""
    if fmt == "ours" and file_config is not None:
        values = {k: v for k, v in file_config.items() if k != "format"}
        given = {"version": version, "metric": metric, "max_depth": max_depth}
        values.update({k: v for k, v in given.items() if v is not None})
        return DepthAnythingConfig.from_dict(values)
    hf_config = file_config if fmt == "hf" else None
    if fmt == "dinov2" and version is None:
        version = "v2"  # a bare backbone: the version only picks the head's layers
    return weights.infer_config(
        state,
        source_name=source_name,
        hf_config=hf_config,
        encoder=encoder,
        version=version,
        metric=metric,
        max_depth=max_depth,
    )


def build_frozen_encoder(
    source: DepthAnything | DinoVisionTransformer | str | Path, **load_kwargs: Any
) -> DinoVisionTransformer:
    """A frozen copy of a DINOv2 encoder (eval mode, requires_grad False), e.g. the teacher of
    the feature-alignment loss.

    Args:
        source: a DepthAnything (its encoder is deep-copied), an encoder, or a checkpoint path of
            any format `DepthAnything.from_pretrained` reads (a bare DINOv2 backbone included).
        load_kwargs: passed to `from_pretrained` for a path.
    Returns:
        the encoder; `encoder.patch_tokens(x)` gives (B, N, dim) tokens as `return_features`.
    """
    if isinstance(source, DepthAnything):
        encoder = copy.deepcopy(source.encoder)
    elif isinstance(source, DinoVisionTransformer):
        encoder = copy.deepcopy(source)
    else:
        encoder = DepthAnything.from_pretrained(source, **load_kwargs).encoder
    encoder.checkpoint_activations = False
    encoder.eval()
    encoder.requires_grad_(False)
    return encoder
