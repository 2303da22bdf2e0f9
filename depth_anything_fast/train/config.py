"""Training configuration: nested pydantic models, YAML files and `--set a.b=value` overrides.

The sections are pydantic (v2) models in strict mode: pydantic checks every field's type (an int
field takes no float or bool, a float no NaN or inf; numeric strings, which PyYAML makes of
`5e-6`, are read as floats), rejects unknown fields and turns YAML lists into tuples;
`ConfigError` names the offending field with its dotted path (``optim.lr: expected float, got
str 'abc'``), so a typo in a YAML file or on the command line never reaches the training loop. Why pydantic rather than OmegaConf structured configs: it is
already installed (a dependency of our dependencies), checks `Literal` choices and `X | None`
unions, which OmegaConf's structured configs do not support, and leaves the YAML and `--set`
syntax as they were (OmegaConf has its own interpolation and merge rules).
"""

from __future__ import annotations

import logging
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
    with_config,
)
from typing_extensions import TypedDict

from depth_anything_fast.formats.spec import LabelledSpec
from depth_anything_fast.models.architecture import DepthAnythingConfig

logger = logging.getLogger(__name__)


class _Section(BaseModel):
    """A config section: strict types, no unknown fields, finite floats."""

    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _yaml_floats(cls, values: Any) -> Any:
        """Numbers that PyYAML reads as strings (`5e-6`: YAML 1.1 wants a dot) become floats
        for the float fields."""
        if not isinstance(values, dict):
            return values
        return {k: _float_or_same(v) if _is_float_field(cls, k) else v for k, v in values.items()}


def _is_float_field(section: type[BaseModel], name: str) -> bool:
    field = section.model_fields.get(name)
    return field is not None and (field.annotation is float
                                  or float in typing.get_args(field.annotation))


def _float_or_same(value: Any) -> Any:
    try:
        return float(value) if isinstance(value, str) else value
    except ValueError:
        return value


def _tuple_from_list(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value  # YAML has lists, no tuples


def _from_yaml(hint: Any) -> Any:
    """`hint` taking what YAML gives for it: a list for a tuple, a numeric string for a float."""
    if hint is float or float in typing.get_args(hint):
        return Annotated[hint, BeforeValidator(_tuple_from_list), BeforeValidator(_float_or_same)]
    return Annotated[hint, BeforeValidator(_tuple_from_list)]


# The `DepthAnythingConfig` fields a `model` section may override, written flat beside encoder
# and version (not those `ModelConfig` sets itself).
_SET_BY_MODEL_CONFIG = ("encoder", "version", "metric", "max_depth")
ARCHITECTURE_FIELDS: dict[str, Any] = {
    name: _from_yaml(hint) for name, hint in typing.get_type_hints(DepthAnythingConfig).items()
    if name not in _SET_BY_MODEL_CONFIG
}
Architecture = with_config(ConfigDict(strict=True, extra="forbid", allow_inf_nan=False))(
    TypedDict("Architecture", ARCHITECTURE_FIELDS, total=False)  # type: ignore[operator]
)


class ModelConfig(_Section):
    """Network to train: the `DepthAnythingConfig` preset of ``encoder`` (vits/vitb/vitl/vitg)
    and ``version``, with any other `DepthAnythingConfig` field written beside them overriding
    the preset (``model: {encoder: tiny, embed_dim: 64, depth: 4, num_heads: 2}`` is how the
    tiny test and demo models are made); those land in ``architecture``. The stage decides
    ``metric``. `depth_anything_config` builds the schema the model is made from."""

    encoder: str = "vits"
    version: Literal["v1", "v2"] = "v2"
    # DepthAnythingConfig fields overriding the preset (written flat in YAML, see above)
    architecture: Architecture = Field(default_factory=dict)  # type: ignore[valid-type]
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


class DataConfig(_Section):
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


class OptimConfig(_Section):
    """AdamW with separate encoder / decoder learning rates, linear warm-up then poly decay
    ``(1 - it / total) ** poly_power`` as in the V2 metric code. ``preset`` fills in the fields
    of ``OPTIM_PRESETS[preset]`` that the config does not set itself."""

    preset: Literal["default", "paper"] = "default"
    lr: float = 5e-6
    decoder_lr_mult: float = 10.0
    weight_decay: float = 0.01
    betas: list[float] = Field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    warmup_steps: int = 0
    poly_power: float = 0.9
    grad_clip: float = 1.0
    # False: no weight decay on 1-D tensors (norms, biases) and learned tokens (usual for ViTs)
    decay_all_params: bool = False
    # None: fused AdamW where the parameters' device supports it, else foreach.
    fused: bool | None = None


class LossConfig(_Section):
    # which backend computes the fused losses (`losses.*(backend=)`)
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


class DistConfig(_Section):
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


class TrainConfig(_Section):
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
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    dist: DistConfig = Field(default_factory=DistConfig)


class ConfigError(ValueError):
    """A configuration value is unknown, of the wrong type or out of range."""


# Old names of renamed fields: (section, old key) -> new key. Old YAML files keep working.
RENAMED: dict[tuple[str, str], str] = {
    ("data", "backend"): "pipeline",
    ("loss", "backend"): "implementation",
    ("dist", "backend"): "comm_backend",
}


def _renamed(values: dict[str, Any]) -> dict[str, Any]:
    """`values` with the old keys of `RENAMED` under their new names (a warning each)."""
    values = dict(values)
    for (section, old), new in RENAMED.items():
        fields = values.get(section)
        if not isinstance(fields, dict) or old not in fields:
            continue
        where, now = f"{section}.{old}", f"{section}.{new}"
        if new in fields:
            raise ConfigError(f"{where}: renamed to {now}; give only {now}")
        logger.warning("%s is now called %s (the old name still works)", where, now)
        values[section] = {**{k: v for k, v in fields.items() if k != old}, new: fields[old]}
    return values


def _flat_architecture(values: dict[str, Any]) -> dict[str, Any]:
    """`model`'s `DepthAnythingConfig` fields, written flat beside encoder and version, moved
    into `model.architecture`."""
    model = values.get("model")
    if not isinstance(model, dict):
        return values
    flat = {k: v for k, v in model.items() if k in ARCHITECTURE_FIELDS}
    if not flat:
        return values
    rest = {k: v for k, v in model.items() if k not in ARCHITECTURE_FIELDS}
    return {**values, "model": {**rest, "architecture": {**(model.get("architecture") or {}),
                                                         **flat}}}


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
    values = _flat_architecture(_renamed(_apply_optim_preset(values)))
    try:
        cfg = TrainConfig.model_validate(values)
    except ValidationError as err:
        raise _config_error(err.errors()[0], values) from None
    return validate(cfg)


def _config_error(error: Any, values: dict[str, Any]) -> ConfigError:
    """pydantic's first error as a ConfigError naming the field by its dotted path, with what
    it expected (architecture fields by their flat names: ``model.depth``)."""
    path, owner, hint = _field_at(error["loc"])
    unknown = error["type"] == "extra_forbidden"
    if unknown:
        path, owner = [*path, str(error["loc"][len(path)])], owner
    flat = [k for k in path if k != "architecture"] if not unknown else path
    where = ".".join(flat)
    value: Any = values
    for key in path:
        value = value.get(key) if isinstance(value, dict) else error["input"]
    if unknown:
        known = sorted(k for k in _field_names(owner) if k != "architecture")
        return ConfigError(f"{where}: unknown field (known: {', '.join(known)})")
    if error["type"] == "literal_error":
        return ConfigError(f"{where}: expected one of {list(typing.get_args(hint))}, got "
                           f"{value!r}")
    if error["type"] == "finite_number":
        return ConfigError(f"{where}: expected a finite float, got {value!r}")
    if isinstance(hint, type) and issubclass(hint, BaseModel):
        return ConfigError(f"{where}: expected a mapping of {hint.__name__} fields, got "
                           f"{type(value).__name__} {value!r}")
    expected = "a list" if typing.get_origin(hint) is list else (
        getattr(hint, "__name__", None) or str(hint).replace("typing.", ""))
    return ConfigError(f"{where}: expected {expected}, got {type(value).__name__} {value!r}")


def _field_names(owner: Any) -> set[str]:
    if owner is Architecture:
        return set(ARCHITECTURE_FIELDS)
    return set(owner.model_fields) | (set(ARCHITECTURE_FIELDS) if owner is ModelConfig else set())


def _field_at(loc: tuple[Any, ...]) -> tuple[list[str], Any, Any]:
    """(the leading field names of an error location, the section holding the last one, its
    annotation); the rest of `loc` (union members, list indices) is left out."""
    path: list[str] = []
    owner: Any = TrainConfig
    hint: Any = TrainConfig
    for key in loc:
        if owner is Architecture and key in ARCHITECTURE_FIELDS:
            hint = typing.get_args(ARCHITECTURE_FIELDS[key])[0]  # the Annotated's type
        elif isinstance(owner, type) and issubclass(owner, BaseModel) \
                and key in owner.model_fields:
            hint = owner.model_fields[key].annotation
        else:
            break
        path.append(key)
        if hint is Architecture or (isinstance(hint, type) and issubclass(hint, BaseModel)):
            owner = hint
        else:
            owner = None
    return path, owner if owner is not None else _owner_of(path), hint


def _owner_of(path: list[str]) -> Any:
    """The section that holds the field at `path` (a leaf)."""
    owner: Any = TrainConfig
    for key in path[:-1]:
        owner = Architecture if key == "architecture" else owner.model_fields[key].annotation
    return owner


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
    values = cfg.model_dump()
    model = values["model"]
    architecture = model.pop("architecture")
    model.update({k: list(v) if isinstance(v, tuple) else v for k, v in architecture.items()})
    return values
