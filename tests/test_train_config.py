"""Training configuration: YAML + `--set` overrides, field-named errors, the model section as a
`DepthAnythingConfig` preset, and the renamed backend keys."""

from __future__ import annotations

from pathlib import Path

import pytest

from depth_anything_fast.train.cli import main as train_main
from depth_anything_fast.train.config import (
    ConfigError,
    config_from_dict,
    config_to_dict,
    load_config,
)


def test_config_overrides_and_types(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("stage: student\noptim:\n  lr: 5e-6\n  betas: [0.9, 0.99]\n")
    cfg = load_config(path, ["optim.lr=1e-4", "data.batch_size=3", "model.init=null"])
    assert cfg.stage == "student" and cfg.optim.lr == 1e-4 and cfg.data.batch_size == 3
    assert cfg.optim.betas == [0.9, 0.99] and cfg.model.init is None


def test_override_inside_a_null_section(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  labelled_spec: null\n")
    cfg = load_config(path, ["data.labelled_spec.scale=0.001"])
    assert cfg.data.labelled_spec == {"scale": 0.001}


def test_model_section_is_a_depth_anything_config_preset() -> None:
    from depth_anything_fast.models import DepthAnythingConfig

    cfg = load_config(None, ["model.depth=4", "model.out_channels=[8, 16, 32, 64]"])
    assert cfg.model.depth_anything_config(metric=False) == DepthAnythingConfig.preset(
        "vits", "v2", depth=4, out_channels=(8, 16, 32, 64))
    metric = load_config(None, ["stage=finetune-metric", "model.max_depth=40"])
    arch = metric.model.depth_anything_config(metric=True)
    assert arch.metric and arch.max_depth == 40.0
    assert config_from_dict(config_to_dict(cfg)) == cfg  # the saved config.json reads back
    assert config_to_dict(cfg)["model"]["out_channels"] == [8, 16, 32, 64]
    for override, message in [
        ("model.depth=2.5", "model.depth: expected int"),
        ("model.out_channels=[8, 16]", "model.out_channels: expected tuple"),
        ("model.num_heads=5", "model: embed_dim 384 is not divisible by num_heads 5"),
        ("model.dept=4", "model.dept: unknown field"),
        ("model.metric=true", "model.metric: unknown field"),
    ]:
        with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
            load_config(None, [override])


def test_renamed_backend_fields_keep_old_yaml_working(caplog) -> None:
    cfg = load_config(None, ["data.backend=pil", "loss.backend=reference", "dist.backend=gloo"])
    assert (cfg.data.pipeline, cfg.loss.implementation, cfg.dist.comm_backend) == (
        "pil", "reference", "gloo")
    assert "data.backend is now called data.pipeline" in caplog.text
    with pytest.raises(ConfigError, match=r"data\.backend: renamed to data\.pipeline"):
        load_config(None, ["data.backend=pil", "data.pipeline=dali"])


@pytest.mark.parametrize(("override", "message"), [
    ("optim.lrr=1", "optim.lrr: unknown field"),
    ("optim.lr=fast", "optim.lr: expected float"),
    ("data.batch_size=2.5", "data.batch_size: expected int"),
    ("dist.precision=fp8", "dist.precision: expected one of"),
    ("data.crop_size=100", "data.crop_size: must be a multiple of 14"),
    ("model=3", "model: expected a mapping"),
    ("optim.lr", "expected FIELD=VALUE"),
    ("optim.lr=.nan", "optim.lr: expected a finite float"),
    ("keep_checkpoints=0", "^keep_checkpoints: must be > 0"),
    ("data.labelled_spec.kind=dpeth", "data.labelled_spec: LabelledSpec.kind must be"),
    ("data.val_spec.scal=0.001", "data.val_spec: "),
    ("model.max_depth=inf", "model.max_depth: expected a finite float"),
])
def test_bad_config_names_the_field(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        load_config(None, [override])


def test_student_needs_pseudo_labelled_images() -> None:
    with pytest.raises(ConfigError, match=r"data\.unlabelled_ratio: the student stage"):
        load_config(None, ["stage=student", "data.unlabelled_ratio=0"])
    assert load_config(None, ["data.unlabelled_ratio=0"]).data.unlabelled_ratio == 0  # teacher


def test_train_subcommand_is_the_module_command(tmp_path: Path, capsys) -> None:
    """`depth-anything-fast train` parses and runs as `python -m depth_anything_fast.train`."""
    from depth_anything_fast.cli import main

    assert main(["train", "--set", "optim.momentum=0.9"]) == 2
    assert "optim.momentum: unknown field" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--resume", "--overwrite"])  # mutually exclusive, as in the module
    assert "not allowed with argument" in capsys.readouterr().err


def test_cli_bad_config_and_missing_path(tmp_path: Path, capsys) -> None:
    assert train_main(["--set", "optim.momentum=0.9"]) == 2
    assert "optim.momentum: unknown field" in capsys.readouterr().err
    assert train_main(["--config", str(tmp_path / "nope.yaml")]) == 2
    assert "nope.yaml" in capsys.readouterr().err
    missing = tmp_path / "no_such_data"
    assert train_main(["--set", f"data.labelled={missing}", "--set", f"out_dir={tmp_path}/o"]) == 2
    err = capsys.readouterr().err
    assert "data.labelled" in err and str(missing) in err
    # failed before any model work: nothing was written
    assert not (tmp_path / "o").exists()


def test_yaml_numbers_lists_and_nested_unknown_fields(tmp_path: Path) -> None:
    """What pydantic is given from YAML: `5e-6` (a string to PyYAML) is a float, YAML lists
    fill tuple fields, `.inf` is refused; unknown keys are named where they are, also inside
    `model.architecture`; every shipped config loads and reads back from its dict."""
    import yaml

    from depth_anything_fast.configs import CONFIG_DIR

    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  lr: 5e-6\nmodel:\n  interpolate_offset: 1e-1\n"
                    "  out_channels: [8, 16, 32, 64]\n")
    cfg = load_config(path)
    assert cfg.optim.lr == 5e-6 and isinstance(cfg.optim.lr, float)
    assert cfg.model.architecture == {"interpolate_offset": 0.1, "out_channels": (8, 16, 32, 64)}
    with pytest.raises(ConfigError, match=r"^model\.architecture\.zzz: unknown field \(known: "):
        load_config(None, ["model.architecture.zzz=1"])
    with pytest.raises(ConfigError, match=r"^optim\.eps: expected a finite float, got inf"):
        load_config(None, ["optim.eps=.inf"])
    with pytest.raises(ConfigError, match=r"^loss\.gradient_scales: expected int, got bool"):
        load_config(None, ["loss.gradient_scales=true"])
    for shipped in sorted(CONFIG_DIR.glob("*.yaml")):
        cfg = load_config(shipped)
        again = tmp_path / shipped.name
        again.write_text(yaml.safe_dump(config_to_dict(cfg)))
        assert load_config(again) == cfg == config_from_dict(config_to_dict(cfg)), shipped.name
