"""Architecture configuration of Depth Anything (DINOv2 encoder + DPT head).

Official sizes (the `model_configs` of the official Depth Anything V1/V2 code): vits/vitb/vitl
for V1 and V2, vitg for V2. Any other size (used by tests and the tiny demo model) is a custom
configuration: give at least `embed_dim`, `depth` and `num_heads`; the remaining fields follow
the rules in `DepthAnythingConfig`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

# encoder -> (embed_dim, depth, num_heads, ffn, features, out_channels)
_SIZES: dict[str, tuple[int, int, int, str, int, tuple[int, int, int, int]]] = {
    "vits": (384, 12, 6, "mlp", 64, (48, 96, 192, 384)),
    "vitb": (768, 12, 12, "mlp", 128, (96, 192, 384, 768)),
    "vitl": (1024, 24, 16, "mlp", 256, (256, 512, 1024, 1024)),
    "vitg": (1536, 40, 24, "swiglu", 384, (1536, 1536, 1536, 1536)),
}
# Depth Anything V2 uses fixed blocks; V1 the last four.
_V2_LAYERS: dict[str, tuple[int, ...]] = {
    "vits": (2, 5, 8, 11),
    "vitb": (2, 5, 8, 11),
    "vitl": (4, 11, 17, 23),
    "vitg": (9, 19, 29, 39),
}
ENCODERS = tuple(_SIZES)
VERSIONS = ("v1", "v2")
# Official metric models: hypersim (indoor) 20 m, vkitti (outdoor) 80 m.
METRIC_MAX_DEPTH = {"indoor": 20.0, "outdoor": 80.0}


def default_intermediate_layers(depth: int, version: str) -> tuple[int, ...]:
    """Blocks whose (normed) outputs feed the DPT head, for a custom depth.

    V1: the last four. V2: the ends of four equal quarters (12 -> 2,5,8,11; 40 -> 9,19,29,39),
    which matches every official V2 size except vitl (4,11,17,23, given by the preset).
    """
    if depth < 4:
        raise ValueError(f"depth must be >= 4 (the DPT head takes four blocks), got {depth}")
    if version == "v1":
        return tuple(range(depth - 4, depth))
    return tuple(round(depth * (k + 1) / 4) - 1 for k in range(4))


@dataclass
class DepthAnythingConfig:
    """Everything that fixes the architecture (not the weights).

    Fields left as None are derived in `__post_init__`: `intermediate_layers` from
    `default_intermediate_layers`, `out_channels` = (dim/8, dim/4, dim/2, dim) as for vits/vitb,
    `features` = max(8, dim // 6) (vits 64, vitb 128). `max_depth` must be set for metric models.
    `interpolate_offset`: 0.1 is the official DINOv2 position-embedding interpolation
    (scale factor (n + 0.1) / 37); 0.0 interpolates to an exact size as transformers does.
    """

    encoder: str = "vitl"
    embed_dim: int = 1024
    depth: int = 24
    num_heads: int = 16
    ffn: str = "mlp"
    intermediate_layers: tuple[int, ...] | None = None
    features: int | None = None
    out_channels: tuple[int, int, int, int] | None = None
    version: str = "v2"
    metric: bool = False
    max_depth: float | None = None
    interpolate_offset: float = 0.1
    patch_size: int = 14
    img_size: int = 518
    mlp_ratio: float = 4.0

    def __post_init__(self) -> None:
        self._check_encoder()
        self._fill_head()

    def _check_encoder(self) -> None:
        """Version, block type and ViT sizes (raises ValueError naming the field)."""
        if self.version not in VERSIONS:
            raise ValueError(f"version must be one of {VERSIONS}, got {self.version!r}")
        if self.ffn not in ("mlp", "swiglu"):
            raise ValueError(f"ffn must be 'mlp' or 'swiglu', got {self.ffn!r}")
        for name in ("embed_dim", "depth", "num_heads", "patch_size", "img_size"):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.embed_dim % self.num_heads != 0:
            raise ValueError(
                f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}"
            )
        if self.img_size % self.patch_size != 0:
            raise ValueError(
                f"img_size {self.img_size} is not a multiple of patch_size {self.patch_size}"
            )

    def _fill_head(self) -> None:
        """The head's defaults from the encoder (taps, channels, features), checked."""
        if self.intermediate_layers is None:
            self.intermediate_layers = default_intermediate_layers(self.depth, self.version)
        self.intermediate_layers = tuple(int(i) for i in self.intermediate_layers)
        if len(self.intermediate_layers) != 4 or not all(
            0 <= i < self.depth for i in self.intermediate_layers
        ):
            raise ValueError(
                f"intermediate_layers must be four block indices in [0, {self.depth}), "
                f"got {self.intermediate_layers}"
            )
        dim = self.embed_dim
        if self.out_channels is None:
            self.out_channels = (max(dim // 8, 1), max(dim // 4, 1), max(dim // 2, 1), dim)
        self.out_channels = tuple(int(c) for c in self.out_channels)  # type: ignore[assignment]
        if len(self.out_channels) != 4:
            raise ValueError(f"out_channels must have four entries, got {self.out_channels}")
        if self.features is None:
            self.features = max(8, dim // 6)
        if self.features < 2:
            raise ValueError(f"features must be >= 2, got {self.features}")
        if self.metric and (self.max_depth is None or self.max_depth <= 0):
            raise ValueError("a metric model needs max_depth > 0 (20 indoor, 80 outdoor)")

    @classmethod
    def preset(cls, encoder: str, version: str = "v2", **overrides: Any) -> DepthAnythingConfig:
        """Official configuration of `encoder` ("vits", "vitb", "vitl", "vitg"), or a custom one.

        `overrides` replace any field. Changing `depth` (or `embed_dim`) of an official size
        re-derives `intermediate_layers` (or `out_channels`/`features`) unless they are given
        too, so `preset("vits", embed_dim=64, depth=4, num_heads=2, features=32)` is a valid
        tiny model. An encoder name that is not official needs embed_dim, depth and num_heads.
        """
        if version not in VERSIONS:
            raise ValueError(f"version must be one of {VERSIONS}, got {version!r}")
        if encoder == "vitg" and version == "v1":
            raise ValueError("Depth Anything V1 has no vitg model; use version='v2'")
        values: dict[str, Any] = {"encoder": encoder, "version": version}
        if encoder in _SIZES:
            dim, depth, heads, ffn, features, out_channels = _SIZES[encoder]
            values.update(embed_dim=dim, depth=depth, num_heads=heads, ffn=ffn)
            if overrides.get("embed_dim", dim) == dim:
                values.update(features=features, out_channels=out_channels)
            if overrides.get("depth", depth) == depth:
                values["intermediate_layers"] = (
                    _V2_LAYERS[encoder] if version == "v2" else tuple(range(depth - 4, depth))
                )
        else:
            missing = [k for k in ("embed_dim", "depth", "num_heads") if k not in overrides]
            if missing:
                raise ValueError(
                    f"unknown encoder {encoder!r} (official: {ENCODERS}); a custom size needs "
                    f"{missing}"
                )
        unknown = set(overrides) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise TypeError(f"unknown DepthAnythingConfig fields: {sorted(unknown)}")
        values.update(overrides)
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict (tuples become lists)."""
        return {
            k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()
        }

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> DepthAnythingConfig:
        """Inverse of `to_dict`; unknown keys raise a ValueError naming them."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - names
        if unknown:
            raise ValueError(f"unknown DepthAnythingConfig fields in config: {sorted(unknown)}")
        return cls(**values)
