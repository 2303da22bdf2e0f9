"""Training configuration: nested dataclasses, YAML files and `--set a.b=value` overrides.

Every error names the offending field with its dotted path (``optim.lr: expected float, got
str 'abc'``), so a typo in a YAML file or on the command line never reaches the training loop.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from depth_anything_fast.formats.spec import LabelledSpec
from depth_anything_fast.models.config import DepthAnythingConfig

logger = logging.getLogger(__name__)

STAGES = ("teacher", "student", "finetune-metric")


@dataclass
class ModelConfig:
    """Network to train: the `DepthAnythingConfig` preset of ``encoder`` (vits/vitb/vitl/vitg)
    and ``version``, with any other `DepthAnythingConfig` field written beside them overriding
    the preset (``model: {encoder: tiny, embed_dim: 64, depth: 4, num_heads: 2}`` is how the
    tiny test and demo models are made); those land in ``architecture``. The stage decides
    ``metric``. `depth_anything_config` builds the schema the model is made from."""

    encoder: str = "vits"
    version: Literal["v1", "v2"] = "v2"
    # DepthAnythingConfig fields overriding the preset (written flat in YAML, see above)
    architecture: dict[str, Any] = field(default_factory=dict)
    # finetune-metric: sigmoid * max_depth head (metres)
    max_depth: float = 20.0
    attn_backend: str = "auto"
    # DINOv2 encoder weights or a Depth Anything checkpoint (encoder-only or full): a local file
    # or a Hugging Face Hub repo id (org/name[@revision]).
    init: str | None = None
    # Student only: the frozen encoder used for feature alignment (a DINOv2 / Depth Anything
    # checkpoint); None falls back to ``init``.
    frozen_encoder: str | None = None
    # Student only: accept an ``init`` checkpoint that holds a DPT head (the paper's student
    # starts from DINOv2, not from the teacher, so by default that is an error).
    allow_head_init: bool = False

    def depth_anything_config(self, metric: bool) -> DepthAnythingConfig:
        """The architecture: a metric model (sigmoid * ``max_depth`` head) or a relative one."""
        return DepthAnythingConfig.preset(
            self.encoder, self.version, metric=metric,
            max_depth=self.max_depth if metric else None, **self.architecture,
        )  # fmt: skip


def _architecture_fields() -> dict[str, Any]:
    """name -> annotation of the `DepthAnythingConfig` fields a `model` section may override
    (not those `ModelConfig` sets itself: encoder, version, metric, max_depth)."""
    hints = typing.get_type_hints(DepthAnythingConfig)
    own = {"metric", *(f.name for f in dataclasses.fields(ModelConfig))}
    return {f.name: hints[f.name] for f in dataclasses.fields(DepthAnythingConfig)
            if f.name not in own}


@dataclass
class DataConfig:
    """Data sources. ``batch_size`` is the labelled images per rank and step; the student adds
    ``unlabelled_ratio * batch_size`` pseudo-labelled images to every batch."""

    labelled: str | None = None
    # LabelledSpec of the labelled set; None reads ``<labelled>/spec.json``.
    labelled_spec: dict[str, Any] | None = None
    # Student: output directory of the pseudo-label CLI (images are found through its manifest).
    pseudo_labels: str | None = None
    val: str | None = None
    val_spec: dict[str, Any] | None = None
    crop_size: int = 518
    batch_size: int = 4
    unlabelled_ratio: int = 2
    # image decoding / augmentation pipeline of the loaders (`data.labelled_loader(backend=)`)
    pipeline: Literal["auto", "dali", "pil"] = "auto"
    num_threads: int = 2


# Optimiser presets: values an ``optim.preset`` fills in for the fields a config does not set.
# "default": this project's choices (the field defaults: no decay on norms, biases and tokens,
# gradient clipping at 1.0). "paper": the authors' V2 metric code (no warm-up, weight decay on
# every parameter, no gradient clipping).
OPTIM_PRESETS: dict[str, dict[str, Any]] = {
    "default": {},
    "paper": {"warmup_steps": 0, "grad_clip": 0.0, "decay_all_params": True},
}


@dataclass
class OptimConfig:
    """AdamW with separate encoder / decoder learning rates, linear warm-up then poly decay
    ``(1 - it / total) ** poly_power`` as in the V2 metric code. ``preset`` fills in the fields
    of ``OPTIM_PRESETS[preset]`` that the config does not set itself."""

    preset: Literal["default", "paper"] = "default"
    lr: float = 5e-6
    decoder_lr_mult: float = 10.0
    weight_decay: float = 0.01
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    warmup_steps: int = 0
    poly_power: float = 0.9
    grad_clip: float = 1.0
    # False: no weight decay on 1-D tensors (norms, biases) and learned tokens (usual for ViTs)
    decay_all_params: bool = False
    # None: fused AdamW where the parameters' device supports it, else foreach.
    fused: bool | None = None


@dataclass
class LossConfig:
    # which implementation computes the losses (`losses.*(backend=)`)
    implementation: Literal["auto", "reference", "cpu", "triton"] = "auto"
    # Teacher: weight of the MiDaS multi-scale gradient-matching term (0 = off).
    gradient_weight: float = 0.0
    gradient_scales: int = 4
    # Student: feature-alignment tolerance and CutMix probability on the unlabelled part.
    alpha: float = 0.85
    cutmix_p: float = 0.5
    # CutMix box sampler: "unimatch" (the authors' obtain_cutmix_box) or "yun" (Yun et al.).
    cutmix_box: Literal["unimatch", "yun"] = "unimatch"
    # Student ablation switches (the paper's recipe: both on). strong_perturbation=False feeds
    # the clean view of the pseudo-labelled images; feature_alignment=False drops L_feat from
    # the mean (total = (L_l + L_u) / 2).
    strong_perturbation: bool = True
    feature_alignment: bool = True
    # finetune-metric
    silog_lambda: float = 0.5


@dataclass
class DistConfig:
    """``fsdp``: None shards with FSDP2 only when more than one process runs."""

    fsdp: bool | None = None
    activation_checkpointing: bool = False
    compile: bool = False
    # What the forward passes compute in (`distributed.resolve_compute_dtype`): "auto" is bf16
    # where it is native (CUDA; CPUs with AVX512-BF16 or AMX), else fp32. bf16 means autocast in
    # a single process, bf16 parameters under FSDP2; the master weights, gradients, optimiser
    # state and the losses stay fp32.
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    # torch.distributed process-group backend; "auto": nccl on CUDA, gloo on the CPU
    comm_backend: Literal["auto", "nccl", "gloo"] = "auto"
    # How long a collective waits for the slowest rank before the run fails as hung.
    timeout_minutes: float = 30.0


@dataclass
class TrainConfig:
    stage: Literal["teacher", "student", "finetune-metric"] = "teacher"
    out_dir: str = "runs/default"
    steps: int = 1000
    seed: int = 0
    log_every: int = 10
    # Periodic checkpoint (0 = only at the end and on SIGTERM).
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    # Periodic validation through the evaluate module (0 = off).
    val_every: int = 0
    val_max_images: int = 64
    val_input_size: int = 518
    progress: bool = True
    tensorboard: bool = True
    # Export the final model with save_pretrained into ``<out_dir>/final``.
    export: bool = True
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    dist: DistConfig = field(default_factory=DistConfig)


class ConfigError(ValueError):
    """A configuration value is unknown, of the wrong type or out of range."""


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against annotation ``tp`` and convert the few lossless cases
    (int -> float, numeric strings -> float because PyYAML reads ``5e-6`` as a string)."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        return _coerce_union(value, tp, where)
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{where}: expected one of {list(typing.get_args(tp))}, got "
                              f"{value!r}")
        return value
    if origin in (list, tuple):
        return _coerce_sequence(value, tp, where)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping of {tp.__name__} fields, got "
                              f"{type(value).__name__} {value!r}")
        return _from_dict(tp, value, where)
    if tp is float:
        return _coerce_float(value, where)
    if tp in (int, bool, str):
        # bool is an int subclass: an int field must not take True
        if isinstance(value, tp) and not (tp is int and isinstance(value, bool)):
            return value
        raise ConfigError(f"{where}: expected {tp.__name__}, got {type(value).__name__} "
                          f"{value!r}")
    raise ConfigError(f"{where}: unsupported annotation {tp!r}")


def _coerce_union(value: Any, tp: Any, where: str) -> Any:
    """The first member of the union (`X | None`) that takes ``value``."""
    args = typing.get_args(tp)
    if value is None and type(None) in args:
        return None
    for arg in args:
        if arg is type(None):
            continue
        try:
            return _coerce(value, arg, where)
        except ConfigError:
            continue
    raise ConfigError(f"{where}: expected {_type_name(tp)}, got {type(value).__name__} "
                      f"{value!r}")


def _coerce_sequence(value: Any, tp: Any, where: str) -> Any:
    """A list (``list[X]``) or tuple (``tuple[X, ...]``, ``tuple[X, Y]``) from a YAML list."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{where}: expected a list, got {type(value).__name__} {value!r}")
    fixed = origin is tuple and args[-1] is not Ellipsis
    if fixed and len(value) != len(args):
        raise ConfigError(f"{where}: expected {len(args)} values, got {len(value)}")
    items = [_coerce(v, args[i] if fixed else args[0], f"{where}[{i}]")
             for i, v in enumerate(value)]
    return items if origin is list else tuple(items)


def _coerce_float(value: Any, where: str) -> float:
    if isinstance(value, bool):
        raise ConfigError(f"{where}: expected float, got bool {value!r}")
    number = value
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            number = None
    if isinstance(number, (int, float)):
        if not math.isfinite(number):
            raise ConfigError(f"{where}: expected a finite float, got {value!r}")
        return float(number)
    raise ConfigError(f"{where}: expected float, got {type(value).__name__} {value!r}")


# Old names of renamed fields: (section class, old key) -> new key. Old YAML files keep working.
RENAMED: dict[tuple[type, str], str] = {
    (DataConfig, "backend"): "pipeline",
    (LossConfig, "backend"): "implementation",
    (DistConfig, "backend"): "comm_backend",
}


def _renamed(cls: type, values: dict[str, Any], prefix: str) -> dict[str, Any]:
    values = dict(values)
    for (owner, old), new in RENAMED.items():
        if owner is cls and old in values:
            where, now = (f"{prefix}.{old}", f"{prefix}.{new}") if prefix else (old, new)
            if new in values:
                raise ConfigError(f"{where}: renamed to {now}; give only {now}")
            logger.warning("%s is now called %s (the old name still works)", where, now)
            values[new] = values.pop(old)
    return values


def _from_dict(cls: type, values: dict[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    values = _renamed(cls, values, prefix)
    extra: dict[str, Any] = {}
    if cls is ModelConfig:  # architecture overrides are written flat beside encoder/version
        extra = _architecture_fields()
        values = {**values, "architecture": {**(values.get("architecture") or {}),
                                             **{k: v for k, v in values.items() if k in extra}}}
        values = {k: v for k, v in values.items() if k not in extra}
    kwargs = {}
    for key, value in values.items():
        where = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            known = ", ".join(sorted((names | set(extra)) - {"architecture"}))
            raise ConfigError(f"{where}: unknown field (known: {known})")
        kwargs[key] = _coerce(value, hints[key], where)
    if cls is ModelConfig:
        arch = kwargs["architecture"]
        for key in arch:
            if key not in extra:
                raise ConfigError(f"{prefix}.architecture.{key}: unknown field (known: "
                                  f"{', '.join(sorted(extra))})")
            arch[key] = _coerce(arch[key], extra[key], f"{prefix}.{key}")
    return cls(**kwargs)


def _parse_scalar(text: str) -> Any:
    import yaml

    try:
        return yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"--set value {text!r} is not valid YAML: {err}") from None


def apply_overrides(values: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b=value`` strings (values parsed as YAML) to a nested dict, in place."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected FIELD=VALUE, e.g. optim.lr=1e-5")
        key, text = item.split("=", 1)
        parts = key.strip().split(".")
        node = values
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:  # absent, or `null` in the YAML (e.g. data.labelled_spec)
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"{key}: {part!r} is not a section")
            node = child
        node[parts[-1]] = _parse_scalar(text)
    return values


def validate(cfg: TrainConfig) -> TrainConfig:
    """Range checks that types alone cannot express."""
    positive = {
        "steps": cfg.steps,
        "data.batch_size": cfg.data.batch_size,
        "data.crop_size": cfg.data.crop_size,
        "data.num_threads": cfg.data.num_threads,
        "keep_checkpoints": cfg.keep_checkpoints,
        "dist.timeout_minutes": cfg.dist.timeout_minutes,
    }
    for name, value in positive.items():
        if value <= 0:
            raise ConfigError(f"{name}: must be > 0, got {value}")
    if cfg.data.crop_size % 14:
        raise ConfigError(f"data.crop_size: must be a multiple of 14 (patch size), "
                          f"got {cfg.data.crop_size}")
    for name, value in {"log_every": cfg.log_every, "checkpoint_every": cfg.checkpoint_every,
                        "val_every": cfg.val_every, "optim.warmup_steps": cfg.optim.warmup_steps,
                        "data.unlabelled_ratio": cfg.data.unlabelled_ratio}.items():
        if value < 0:
            raise ConfigError(f"{name}: must be >= 0, got {value}")
    if cfg.stage == "student" and cfg.data.unlabelled_ratio == 0:
        raise ConfigError("data.unlabelled_ratio: the student stage needs >= 1 pseudo-labelled "
                          "image per labelled one, got 0")
    if cfg.optim.lr <= 0:
        raise ConfigError(f"optim.lr: must be > 0, got {cfg.optim.lr}")
    if len(cfg.optim.betas) != 2 or not all(0 <= b < 1 for b in cfg.optim.betas):
        raise ConfigError(f"optim.betas: expected two values in [0, 1), got {cfg.optim.betas}")
    if not 0 <= cfg.loss.cutmix_p <= 1:
        raise ConfigError(f"loss.cutmix_p: must be in [0, 1], got {cfg.loss.cutmix_p}")
    if not -1 <= cfg.loss.alpha <= 1:
        raise ConfigError(f"loss.alpha: must be in [-1, 1], got {cfg.loss.alpha}")
    _check_model_and_specs(cfg)
    return cfg


def _check_model_and_specs(cfg: TrainConfig) -> None:
    """The architecture and the ground-truth specs build (their errors named by field)."""
    if cfg.model.max_depth <= 0:
        raise ConfigError(f"model.max_depth: must be > 0, got {cfg.model.max_depth}")
    try:
        cfg.model.depth_anything_config(metric=cfg.stage == "finetune-metric")
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"model: {exc}") from exc
    for name, spec in {"data.labelled_spec": cfg.data.labelled_spec,
                       "data.val_spec": cfg.data.val_spec}.items():
        if spec is not None:
            try:
                LabelledSpec(**spec)
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"{name}: {exc}") from exc


def _apply_optim_preset(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` with ``optim.preset``'s fields filled in where the config does not set them."""
    optim = values.get("optim")
    if not isinstance(optim, dict) or "preset" not in optim:
        return values
    preset = optim["preset"]
    if preset not in OPTIM_PRESETS:
        raise ConfigError(f"optim.preset: expected one of {list(OPTIM_PRESETS)}, got {preset!r}")
    return {**values, "optim": {**OPTIM_PRESETS[preset], **optim}}


def config_from_dict(values: dict[str, Any]) -> TrainConfig:
    """Build and validate a TrainConfig from a nested dict (YAML content)."""
    return validate(_from_dict(TrainConfig, _apply_optim_preset(values)))


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> TrainConfig:
    """Read a YAML file (or start from defaults with ``path=None``) and apply ``--set``
    overrides. Raises FileNotFoundError for a missing file and ConfigError naming the field."""
    import yaml

    values: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML: {err}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level")
        values = loaded or {}
    apply_overrides(values, overrides or [])
    return config_from_dict(values)


def config_to_dict(cfg: TrainConfig) -> dict[str, Any]:
    """The config as a nested dict in YAML form (architecture overrides flat in ``model``)."""
    values = dataclasses.asdict(cfg)
    model = values["model"]
    architecture = model.pop("architecture")
    model.update({k: list(v) if isinstance(v, tuple) else v for k, v in architecture.items()})
    return values
