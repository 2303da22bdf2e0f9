"""Hugging Face Hub repo ids as weights, served from an on-disk Hub cache in offline mode.

There is no network to the Hub here: each test writes the cache layout huggingface_hub documents
(`models--org--name/{blobs,refs,snapshots}`, snapshot files linking to blobs) under a temporary
directory and sets HF_HUB_OFFLINE=1, so `hf_hub_download` must find everything in the cache.
Weights are tiny random models; the official repos (whose table fixes the architecture) get a
real ViT-S sized state dict, written once and hard-linked into each repo.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from depth_anything_fast.models import DepthAnything, DepthAnythingConfig
from depth_anything_fast.models.hub import OFFICIAL_REPOS, parse_hub_id, resolve_weights

hub_constants = pytest.importorskip("huggingface_hub.constants")


def random_ours(**overrides: object) -> DepthAnything:
    """A tiny randomly initialised model (distinct weights on every call)."""
    config = DepthAnythingConfig.preset(
        "custom", "v2", embed_dim=64, depth=4, num_heads=2, features=16, **overrides
    )
    return DepthAnything(config=config).eval()


def official_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our names -> the official .pth names (pretrained.*, depth_head.*)."""
    return {
        ("pretrained." + k[len("encoder."):]) if k.startswith("encoder.")
        else "depth_head." + k[len("head."):]: v
        for k, v in state.items()
    }


def add_to_hub_cache(
    cache: Path, repo_id: str, files: dict[str, Path], *, ref: str | None = "main"
) -> str:
    """Store `files` (name in repo -> local file) as one commit of `repo_id` in the Hub cache
    layout; `ref` (a branch) points to it. Returns the commit hash."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    digest = hashlib.sha1()
    for name in sorted(files):
        digest.update(name.encode() + files[name].read_bytes())
    commit = digest.hexdigest()
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    for name, source in files.items():
        blob = repo / "blobs" / hashlib.sha256(source.read_bytes()).hexdigest()
        if not blob.exists():
            os.link(source, blob)  # big weights: no copy
        target = snapshot / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(os.path.relpath(blob, target.parent))
    if ref is not None:
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / ref).write_text(commit)
    return commit


@pytest.fixture
def hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty Hub cache that huggingface_hub uses by default, in offline mode."""
    cache = tmp_path / "hf_home" / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # huggingface_hub read HF_HOME when it was imported; its default cache is this attribute
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(cache))
    return cache


def save_hf_format(model: DepthAnything, directory: Path) -> dict[str, Path]:
    """A Hugging Face-format repo (config.json + model.safetensors) of `model`."""
    model.save_pretrained(directory)
    return {name: directory / name for name in ("config.json", "model.safetensors")}


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_parse_hub_id(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert parse_hub_id("depth-anything/Depth-Anything-V2-Small-hf") == (
        "depth-anything/Depth-Anything-V2-Small-hf", None
    )
    assert parse_hub_id("org/name@refs/pr/2") == ("org/name", "refs/pr/2")
    for local in ("model.pth", "ckpt/model.pth", "/abs/org/name", "./org/name", "a/b/c", "org/"):
        assert parse_hub_id(local) is None, local
    # an existing local path always wins over the repo id of the same spelling
    monkeypatch.chdir(tmp_path)
    (tmp_path / "org" / "name").mkdir(parents=True)
    assert parse_hub_id("org/name") is None


def test_hf_format_repo_with_revision(
    hub_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("transformers")
    from test_model import TINY, make_hf_model

    repo = "depth-anything/Depth-Anything-V2-Small-hf"
    # main: a transformers DepthAnythingForDepthEstimation; another commit: our own format
    make_hf_model(**TINY).save_pretrained(tmp_path / "transformers")
    first = DepthAnything.from_pretrained(tmp_path / "transformers")
    files = {name: tmp_path / "transformers" / name for name in ("config.json",
                                                                 "model.safetensors")}
    add_to_hub_cache(hub_cache, repo, files)
    second = random_ours(metric=True, max_depth=20.0)
    commit = add_to_hub_cache(
        hub_cache, repo, save_hf_format(second, tmp_path / "second"), ref=None
    )
    from_hub = DepthAnything.from_pretrained(repo)
    assert from_hub.config == first.config
    assert_same_weights(from_hub, first)
    for loaded in (
        DepthAnything.from_pretrained(f"{repo}@{commit}"),
        DepthAnything.from_pretrained(repo, revision=commit),
    ):
        assert loaded.config == second.config
        assert_same_weights(loaded, second)
    with pytest.raises(ValueError, match="two revisions"):
        resolve_weights(f"{repo}@main", revision=commit)
    # an explicit cache directory instead of the default one
    other = tmp_path / "other_cache"
    add_to_hub_cache(other, "someone/finetuned", save_hf_format(second, tmp_path / "second"))
    assert_same_weights(
        DepthAnything.from_pretrained("someone/finetuned", cache_dir=other), second
    )
    # a local directory spelled like the repo id wins
    monkeypatch.chdir(tmp_path)
    first.save_pretrained(tmp_path / "someone" / "finetuned")
    assert_same_weights(DepthAnything.from_pretrained("someone/finetuned", cache_dir=other), first)


def test_official_pth_repos_choose_file_and_architecture(hub_cache: Path, tmp_path: Path) -> None:
    weights = tmp_path / "vits.pth"
    torch.save(official_names(DepthAnything("vits", "v2").state_dict()), weights)
    expected = {  # repo id (any case) -> what the table says
        "depth-anything/Depth-Anything-V2-Small": {"encoder": "vits", "version": "v2"},
        "depth-anything/depth-anything-v2-metric-vkitti-small": {
            "encoder": "vits", "version": "v2", "metric": True, "max_depth": 80.0
        },
        "LiheYoung/depth_anything_vits14": {"encoder": "vits", "version": "v1"},
    }
    for repo_id, hints in expected.items():
        canonical = next(r for r in OFFICIAL_REPOS if r.lower() == repo_id.lower())
        filename = OFFICIAL_REPOS[canonical].filename
        add_to_hub_cache(hub_cache, canonical, {filename: weights})
        source = resolve_weights(repo_id)
        assert source.hints == hints and source.name == f"{canonical}/{filename}"
    metric = DepthAnything.from_pretrained("depth-anything/depth-anything-v2-metric-vkitti-small")
    assert metric.config.metric and metric.config.max_depth == 80.0
    assert metric.config.intermediate_layers == (2, 5, 8, 11)
    v1 = DepthAnything.from_pretrained("LiheYoung/depth_anything_vits14")
    assert v1.config.version == "v1" and v1.config.intermediate_layers == (8, 9, 10, 11)
    assert not v1.config.metric
    # explicit arguments override what the table says
    model = DepthAnything.from_pretrained("depth-anything/Depth-Anything-V2-Small", version="v1")
    assert model.config.version == "v1" and not model.config.metric


def test_unknown_repo_and_missing_files(
    hub_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from depth_anything_fast.cli import main

    with pytest.raises(FileNotFoundError, match="neither a local path nor a repo in the Hub cache"):
        DepthAnything.from_pretrained("nobody/no-such-model")
    assert main(["predict", "--weights", "nobody/no-such-model", str(tmp_path)]) == 2
    assert "nobody/no-such-model is neither a local path nor a repo" in capsys.readouterr().err
    # an official repo cached without its checkpoint
    readme = tmp_path / "README.md"
    readme.write_text("model card\n")
    add_to_hub_cache(hub_cache, "depth-anything/Depth-Anything-V2-Base", {"README.md": readme})
    with pytest.raises(FileNotFoundError, match=r"has no depth_anything_v2_vitb\.pth"):
        DepthAnything.from_pretrained("depth-anything/Depth-Anything-V2-Base")
    # a Hugging Face-format repo without weights, and a repo without config.json
    files = save_hf_format(random_ours(), tmp_path / "m")
    add_to_hub_cache(hub_cache, "someone/config-only", {"config.json": files["config.json"]})
    with pytest.raises(FileNotFoundError, match="has no pytorch_model.bin nor model.safetensors"):
        DepthAnything.from_pretrained("someone/config-only")
    add_to_hub_cache(hub_cache, "someone/weights-only", {"weights.pth": files["model.safetensors"]})
    with pytest.raises(FileNotFoundError, match="has no config.json: it is neither"):
        DepthAnything.from_pretrained("someone/weights-only")
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        DepthAnything.from_pretrained(tmp_path / "missing.pth")
    # without huggingface_hub: the error names the extra
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    with pytest.raises(ImportError, match=r"depth_anything_fast\[hub\]"):
        DepthAnything.from_pretrained("depth-anything/Depth-Anything-V2-Small-hf")


def test_training_init_weights_from_hub(hub_cache: Path, tmp_path: Path) -> None:
    from depth_anything_fast.train.config import load_config
    from depth_anything_fast.train.trainer import check_paths, load_init_weights

    source = random_ours()
    add_to_hub_cache(hub_cache, "someone/teacher", save_hf_format(source, tmp_path / "t"))
    target = random_ours()
    assert load_init_weights(target, "someone/teacher")
    assert_same_weights(target, source)
    labelled = tmp_path / "labelled"
    labelled.mkdir()
    cfg = load_config(None, [f"data.labelled={labelled}", "val_every=0",
                             "model.init=someone/teacher"])
    check_paths(cfg)  # a repo id is not a missing path
    cfg = load_config(None, [f"data.labelled={tmp_path}/nothing", "val_every=0",
                             "model.init=someone/teacher"])
    with pytest.raises(FileNotFoundError, match="data.labelled"):
        check_paths(cfg)


def test_cli_weights_repo_id_with_hf_home(tmp_path: Path) -> None:
    """The CLI in a fresh process: HF_HOME and HF_HUB_OFFLINE from the environment."""
    cache = tmp_path / "hf_home" / "hub"
    add_to_hub_cache(cache, "someone/tiny-depth", save_hf_format(random_ours(), tmp_path / "m"))
    Image.fromarray(np.random.randint(0, 255, (40, 60, 3), dtype=np.uint8)).save(
        tmp_path / "photo.png"
    )
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_OFFLINE": "1"}
    env.pop("HF_HUB_CACHE", None)
    command = [sys.executable, "-m", "depth_anything_fast", "predict", str(tmp_path / "photo.png"),
               "--outdir", str(tmp_path / "out"), "--input-size", "56", "--device", "cpu",
               "--weights", "someone/tiny-depth"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out" / "photo.png").is_file()
