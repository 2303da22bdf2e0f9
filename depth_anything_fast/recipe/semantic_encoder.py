"""A frozen semantic encoder for the synthetic world, standing in for pretrained DINOv2.

In the paper teacher and student both start their encoders from DINOv2, and the student's
features are aligned to a frozen DINOv2 (REFERENCE §1.3). No DINOv2 fits a CPU demo, so we
pretrain the project's own `DinoVisionTransformer` once, on semantics only: for each 14x14 patch
the histogram of the generator's per-pixel classes (soft cross-entropy of a linear head on the
patch tokens) and the scene kind (cross-entropy of a linear head on the mean patch token), over
the unlabelled images. Depth never enters: the targets are object identities from the renderer.
Crops, flips and colour jitter make the features hold under the student's perturbations.

The result is an encoder-only checkpoint (`encoder.*` keys of a `DepthAnything`, config in the
safetensors metadata) that `model.init` and `model.frozen_encoder` read; it is cached next to
`info.json`, which records the settings it was trained with and its accuracy on the validation
split's semantic maps, and reused while they match.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

ENCODER_FILE = "encoder.safetensors"
INFO_FILE = "info.json"


@dataclass(frozen=True)
class SemanticTraining:
    """Pretraining budget and optimiser of the semantic encoder."""

    steps: int = 300
    batch_size: int = 32
    crop_size: int = 112
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_steps: int = 50
    kind_weight: float = 0.5
    seed: int = 0
    # what the encoder's forward computes in, as the trainer's `dist.precision` (auto: bf16
    # where the CPU computes it natively); the losses stay fp32
    precision: str = "auto"


def _load_split(data_root: Path, split: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                      list[str], list[str]]:
    """Images (N, 3, H, W) uint8, class maps (N, H, W) int64, kind index (N,) of one split."""
    from PIL import Image

    from depth_anything_fast.recipe.synthetic import KINDS, read_kinds

    kinds = read_kinds(data_root, split)
    if not kinds:
        raise ValueError(f"{data_root}: split {split!r} has no images to learn semantics from")
    image_dir = data_root / split / "images"
    images, classes, kind_ids = [], [], []
    for name in sorted(kinds):
        found = sorted(image_dir.glob(f"{name}.*"))
        if not found:
            raise FileNotFoundError(f"image {name} of {split} not found in {image_dir}")
        with Image.open(found[0]) as img:
            images.append(np.array(img.convert("RGB")))
        with Image.open(data_root / "semantic" / split / f"{name}.png") as img:
            classes.append(np.array(img))
        kind_ids.append(KINDS.index(kinds[name]))
    return (torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous(),
            torch.from_numpy(np.stack(classes)).long(), torch.tensor(kind_ids),
            sorted(kinds), list(KINDS))


def _jitter(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Brightness / contrast / saturation x U(0.6, 1.4), greyscale with p 0.2; x (B,3,h,w) 0..1."""
    b = x.shape[0]
    f = torch.empty(b, 3, 1, 1, 1).uniform_(0.6, 1.4, generator=g)
    grey = x.mul(torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    x = x * f[:, 0]
    x = (x - x.mean(dim=(1, 2, 3), keepdim=True)) * f[:, 1] + x.mean(dim=(1, 2, 3), keepdim=True)
    x = grey + (x - grey) * f[:, 2]
    to_grey = torch.rand(b, 1, 1, 1, generator=g) < 0.2
    return torch.where(to_grey, grey.expand_as(x), x).clamp(0, 1)


def _batch(images: torch.Tensor, classes: torch.Tensor, crop: int, g: torch.Generator,
           train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Random (train) or centre crops, flips and jitter: normalised images (B, 3, c, c) and
    class maps (B, c, c)."""
    from depth_anything_fast.transforms import imagenet_normalise

    n, _, h, w = images.shape
    if h < crop or w < crop:
        raise ValueError(f"images of {h}x{w} are smaller than the crop {crop}")
    if train:
        ys = torch.randint(0, h - crop + 1, (n,), generator=g).tolist()
        xs = torch.randint(0, w - crop + 1, (n,), generator=g).tolist()
    else:
        ys, xs = [(h - crop) // 2] * n, [(w - crop) // 2] * n
    x = torch.stack([images[i, :, y:y + crop, x0:x0 + crop] for i, (y, x0) in
                     enumerate(zip(ys, xs))]).float() / 255
    c = torch.stack([classes[i, y:y + crop, x0:x0 + crop] for i, (y, x0) in
                     enumerate(zip(ys, xs))])
    if train:
        flip = torch.rand(n, generator=g) < 0.5
        x = torch.where(flip.view(n, 1, 1, 1), x.flip(-1), x)
        c = torch.where(flip.view(n, 1, 1), c.flip(-1), c)
        x = _jitter(x, g)
    return imagenet_normalise(x), c


def _patch_histograms(classes: torch.Tensor, n_classes: int, patch: int) -> torch.Tensor:
    """(B, c, c) class maps -> (B, N, n_classes) class fractions per patch (row-major)."""
    b, h, w = classes.shape
    gh, gw = h // patch, w // patch
    ids = classes[:, :gh * patch, :gw * patch].reshape(b, gh, patch, gw, patch)
    ids = ids.permute(0, 1, 3, 2, 4).reshape(b, gh * gw, patch * patch)
    hist = torch.zeros(b, gh * gw, n_classes).scatter_add_(2, ids, torch.ones(ids.shape))
    return hist / (patch * patch)


class _Probe(nn.Module):
    """Linear heads on the encoder's patch tokens: per-patch class, per-image kind."""

    def __init__(self, dim: int, n_classes: int, n_kinds: int) -> None:
        super().__init__()
        self.patch = nn.Linear(dim, n_classes)
        self.kind = nn.Linear(dim, n_kinds)

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.patch(tokens), self.kind(tokens.mean(dim=1))


def _key(data_root: Path, arch: Any, settings: SemanticTraining) -> str:
    kinds = (data_root / "kinds.json").read_bytes()
    blob = json.dumps({"arch": arch.to_dict(), "settings": dataclasses.asdict(settings)},
                      sort_keys=True).encode() + kinds
    return hashlib.sha256(blob).hexdigest()[:16]


def train_semantic_encoder(
    data_root: str | Path,
    arch: Any,
    out_dir: str | Path,
    settings: SemanticTraining = SemanticTraining(),
    log: Callable[[str], None] = print,
) -> Path:
    """Pretrain (or reuse) the semantic encoder of `arch` on `data_root` written by
    `generate_dataset`; returns the path of the encoder-only checkpoint.

    Args:
        data_root: the dataset root (kinds.json, unlabelled/images, semantic/unlabelled, and
            semantic/val for the accuracy recorded in info.json when present).
        arch: a `DepthAnythingConfig`; only its encoder is trained and saved.
        out_dir: where `encoder.safetensors` and `info.json` go; an existing pair trained with
            the same data index, architecture and settings is reused.
    """
    from depth_anything_fast.models import DepthAnything
    from depth_anything_fast.models.weights import save_file
    from depth_anything_fast.recipe.synthetic import SEMANTIC_CLASSES
    from depth_anything_fast.train.distributed import resolve_compute_dtype

    data_root, out_dir = Path(data_root), Path(out_dir)
    key = _key(data_root, arch, settings)
    weights, info_path = out_dir / ENCODER_FILE, out_dir / INFO_FILE
    if weights.is_file() and info_path.is_file():
        info = json.loads(info_path.read_text())
        if info.get("key") == key:
            log(f"[semantic encoder] reusing {weights} (trained with the same settings)")
            return weights
    start = time.perf_counter()
    images, classes, kinds, _, kind_names = _load_split(data_root, "unlabelled")
    g = torch.Generator().manual_seed(settings.seed)
    torch.manual_seed(settings.seed)
    encoder = DepthAnything(config=arch).encoder
    probe = _Probe(arch.embed_dim, len(SEMANTIC_CLASSES), len(kind_names))
    compute_dtype = resolve_compute_dtype(settings.precision, torch.device("cpu"))
    _pretrain(encoder, probe, (images, classes, kinds), settings, arch.patch_size, g, log,
              compute_dtype)
    info: dict[str, Any] = {"key": key, "settings": dataclasses.asdict(settings),
                            "compute_dtype": str(compute_dtype).removeprefix("torch."),
                            "train_images": int(images.shape[0]),
                            "seconds": round(time.perf_counter() - start, 1)}
    if (data_root / "semantic" / "val").is_dir():
        info.update(_accuracy(encoder, probe, data_root, settings.crop_size, arch.patch_size))
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {"encoder." + k: v for k, v in encoder.state_dict().items()}
    save_file(state, weights, arch)
    info_path.write_text(json.dumps(info, indent=2) + "\n")
    log(f"[semantic encoder] {settings.steps} steps in {info['seconds']:.0f}s -> {weights}"
        + (f"; val patch-class accuracy {info['val_patch_accuracy']:.3f}, kind accuracy "
           f"{info['val_kind_accuracy']:.3f}" if "val_patch_accuracy" in info else ""))
    return weights


def _pretrain(encoder: Any, probe: _Probe, data: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
              settings: SemanticTraining, patch_size: int, g: torch.Generator,
              log: Callable[[str], None], compute_dtype: torch.dtype) -> None:
    """Train `encoder` with `probe` on (images, per-pixel classes, scene kinds): the patch
    class histograms (soft cross-entropy) plus `kind_weight` x the scene kind, AdamW with the
    training's warm-up and decay (`train.optim.lr_factor`); batches and crops drawn from `g`.
    The encoder's forward runs under `compute_dtype` autocast, the probe and losses in fp32."""
    from depth_anything_fast.recipe.synthetic import SEMANTIC_CLASSES
    from depth_anything_fast.runtime import keep_freed_memory
    from depth_anything_fast.train.distributed import autocast_context
    from depth_anything_fast.train.optim import lr_factor

    images, classes, kinds = data
    params = [*encoder.parameters(), *probe.parameters()]
    opt = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_factor(s, settings.steps, settings.warmup_steps, 1.0))
    cpu = torch.device("cpu")
    keep_freed_memory()  # as the trainer on the CPU: the same tensors every step
    encoder.train()
    for step in range(settings.steps):
        idx = torch.randint(0, images.shape[0], (settings.batch_size,), generator=g)
        x, c = _batch(images[idx], classes[idx], settings.crop_size, g, train=True)
        with autocast_context(compute_dtype, cpu, fsdp=False):
            tokens = encoder.patch_tokens(x)
        patch_logits, kind_logits = probe(tokens.float())
        target = _patch_histograms(c, len(SEMANTIC_CLASSES), patch_size)
        loss_patch = -(target * patch_logits.log_softmax(-1)).sum(-1).mean()
        loss_kind = F.cross_entropy(kind_logits, kinds[idx])
        loss = loss_patch + settings.kind_weight * loss_kind
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if (step + 1) % max(settings.steps // 5, 1) == 0:
            log(f"[semantic encoder] step {step + 1}/{settings.steps}: patch class "
                f"{loss_patch.item():.3f}, kind {loss_kind.item():.3f}")


@torch.no_grad()
def _accuracy(encoder: nn.Module, probe: _Probe, data_root: Path, crop: int,
              patch: int) -> dict[str, float]:
    """Majority-class accuracy per patch and kind accuracy on the val split (centre crops)."""
    from depth_anything_fast.recipe.synthetic import SEMANTIC_CLASSES

    images, classes, kinds, _, _ = _load_split(data_root, "val")
    encoder.eval()
    x, c = _batch(images, classes, crop, torch.Generator(), train=False)
    patch_logits, kind_logits = probe(encoder.patch_tokens(x))
    majority = _patch_histograms(c, len(SEMANTIC_CLASSES), patch).argmax(-1)
    return {"val_patch_accuracy": float((patch_logits.argmax(-1) == majority).float().mean()),
            "val_kind_accuracy": float((kind_logits.argmax(-1) == kinds).float().mean())}
