"""Weights by name: a local path, or a Hugging Face Hub repo id (`org/name[@revision]`).

`resolve_weights` is the one place where a `--weights` / `from_pretrained` argument becomes a
local file or directory; everything that loads a checkpoint goes through it. A path that exists
always wins over a repo id of the same spelling.

Hub repos served:
- Hugging Face format (`config.json` + `model.safetensors`, or `pytorch_model.bin`): the
  transformers conversions (`depth-anything/Depth-Anything-V2-Small-hf`, `...-Metric-Indoor-
  Small-hf`, `LiheYoung/depth-anything-small-hf`, ...) and this project's `save_pretrained`
  directories pushed to the Hub. The config in the repo fixes the architecture.
- The official repos that hold one `.pth` (`OFFICIAL_REPOS`): Depth Anything V2
  Small/Base/Large, the V2 metric Hypersim (indoor, 20 m) and VKITTI (outdoor, 80 m) models, and
  V1 `LiheYoung/depth_anything_vit{s,b,l}14`. Their weights cannot tell V1 from V2 or relative
  from metric, so the table gives the file and the architecture.

Downloads go through `huggingface_hub` (the `hub` extra) into its cache (`HF_HOME` /
`HF_HUB_CACHE`, or `cache_dir`); with `HF_HUB_OFFLINE=1` only the cache is read.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .architecture import METRIC_MAX_DEPTH

HUB_EXTRA_HINT = "pip install 'depth_anything_fast[hub]'"
_HF_CONFIG = "config.json"
_HF_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
# org/name with Hugging Face's characters, then an optional @revision (branch, tag, commit,
# refs/pr/N)
_REPO_ID = re.compile(r"^(?P<repo>[\w][\w.-]*/[\w][\w.-]*)(?:@(?P<revision>[\w./-]+))?$")
_CHECKPOINT_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".safetensors")


@dataclass(frozen=True)
class OfficialRepo:
    """An official Hub repo holding one checkpoint file, and the architecture of that file."""

    filename: str
    encoder: str
    version: str
    max_depth: float | None = None  # metric models: depth range in metres


def _official_repos() -> dict[str, OfficialRepo]:
    repos: dict[str, OfficialRepo] = {}
    for size, encoder in (("Small", "vits"), ("Base", "vitb"), ("Large", "vitl")):
        repos[f"depth-anything/Depth-Anything-V2-{size}"] = OfficialRepo(
            f"depth_anything_v2_{encoder}.pth", encoder, "v2"
        )
        for scene, dataset, place in (("Hypersim", "hypersim", "indoor"),
                                      ("VKITTI", "vkitti", "outdoor")):
            repos[f"depth-anything/Depth-Anything-V2-Metric-{scene}-{size}"] = OfficialRepo(
                f"depth_anything_v2_metric_{dataset}_{encoder}.pth", encoder, "v2",
                METRIC_MAX_DEPTH[place],
            )
        # V1: pushed with huggingface_hub's PyTorchModelHubMixin (official keys, a small
        # config.json that does not name the version)
        repos[f"LiheYoung/depth_anything_{encoder}14"] = OfficialRepo(
            "pytorch_model.bin", encoder, "v1"
        )
    return repos


OFFICIAL_REPOS: dict[str, OfficialRepo] = _official_repos()
_OFFICIAL_BY_LOWER = {repo.lower(): repo for repo in OFFICIAL_REPOS}


@dataclass(frozen=True)
class WeightsSource:
    """Where a checkpoint lies on disk, and what its origin tells about the architecture.

    path: a file or directory that `checkpoints.read_checkpoint` reads.
    name: the local path, or `org/name/<file>` for a Hub checkpoint (messages and the
        file-name hints of `checkpoints.infer_config`).
    hints: `encoder`, `version`, `metric`, `max_depth` known from an official repo (empty
        otherwise); explicit arguments of the caller take precedence.
    """

    path: Path
    name: str
    hints: dict[str, Any]


def parse_hub_id(spec: str | os.PathLike[str]) -> tuple[str, str | None] | None:
    """(repo_id, revision) when `spec` is spelled as a Hub repo id `org/name[@revision]` and is
    not an existing local path; None otherwise (a local path, or a missing file whose name ends
    in a checkpoint suffix such as .pth)."""
    text = os.fspath(spec)
    if Path(text).exists():
        return None
    match = _REPO_ID.match(text)
    if match is None or match["repo"].lower().endswith(_CHECKPOINT_SUFFIXES):
        return None
    return match["repo"], match["revision"]


def resolve_weights(
    spec: str | os.PathLike[str],
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> WeightsSource:
    """A local checkpoint path for `spec`: the path itself, or the files of a Hub repo.

    Args:
        spec: an existing file or directory (always wins), or a repo id `org/name` with an
            optional `@revision`.
        revision: branch, tag or commit of a Hub repo (instead of `@revision` in `spec`).
        cache_dir: Hub cache directory; default huggingface_hub's (`HF_HUB_CACHE`, or
            `HF_HOME/hub`).
    Raises:
        FileNotFoundError: neither a local path nor a repo id; an unknown repo or revision; a
            file the repo (or, offline, the cache) does not have.
        ImportError: a repo id without huggingface_hub installed (names the `hub` extra).
        ValueError: two different revisions given.
    """
    parsed = parse_hub_id(spec)
    if parsed is None:
        path = Path(spec)
        if not path.exists():
            raise FileNotFoundError(
                f"checkpoint not found: {path} (neither a local path nor a Hugging Face Hub "
                "repo id 'org/name[@revision]')"
            )
        return WeightsSource(path, str(path), {})
    repo_id, spec_revision = parsed
    if revision is not None and spec_revision is not None and revision != spec_revision:
        raise ValueError(f"two revisions for {repo_id}: {spec_revision!r} and {revision!r}")
    # the official repos under their own spelling (the cache folder is named after it)
    canonical = _OFFICIAL_BY_LOWER.get(repo_id.lower())
    fetch = _HubFiles(canonical or repo_id, revision or spec_revision, cache_dir)
    if canonical is not None:
        official = OFFICIAL_REPOS[canonical]
        path = fetch.get(official.filename)
        hints: dict[str, Any] = {"encoder": official.encoder, "version": official.version}
        if official.max_depth is not None:
            hints.update(metric=True, max_depth=official.max_depth)
        return WeightsSource(path, f"{canonical}/{official.filename}", hints)
    # any other repo: Hugging Face layout (transformers, or our save_pretrained pushed)
    config = fetch.get(
        _HF_CONFIG,
        what=": it is neither a Hugging Face-format repo (config.json + model.safetensors) "
        "nor one of the official Depth Anything repos (depth_anything_fast.models.hub."
        "OFFICIAL_REPOS)",
    )
    weights = fetch.get(_HF_WEIGHTS[0], missing_ok=True) or fetch.get(
        _HF_WEIGHTS[1], what=f" nor {_HF_WEIGHTS[0]} (the weights beside its config.json)"
    )
    return WeightsSource(config.parent, f"{repo_id}/{weights.name}", {})


class _HubFiles:
    """hf_hub_download for one repo and revision, with errors that say what is missing."""

    def __init__(self, repo_id: str, revision: str | None, cache_dir: Any) -> None:
        try:
            import huggingface_hub  # noqa: F401
        except ImportError as err:
            raise ImportError(
                f"{repo_id!r} is not a local path, and loading it from the Hugging Face Hub "
                f"needs huggingface_hub: {HUB_EXTRA_HINT}"
            ) from err
        self.repo_id = repo_id
        self.revision = revision
        self.cache_dir = cache_dir
        self.offline = _offline()

    def _where(self) -> str:
        at = f"@{self.revision}" if self.revision else ""
        if not self.offline:
            return f"{self.repo_id}{at}"
        return f"{self.repo_id}{at} in the Hub cache {self._cache()} (HF_HUB_OFFLINE is set)"

    def _cache(self) -> Path:
        from huggingface_hub import constants

        return Path(self.cache_dir or constants.HF_HUB_CACHE)

    def get(self, filename: str, *, missing_ok: bool = False, what: str = "") -> Path | None:
        """Local path of `filename` (downloaded unless offline); None if absent and
        `missing_ok`, else FileNotFoundError ending in `what`."""
        from huggingface_hub import errors, file_download, hf_hub_download

        try:
            return Path(
                hf_hub_download(
                    self.repo_id, filename, revision=self.revision, cache_dir=self.cache_dir,
                    local_files_only=self.offline,
                )
            )
        except errors.RepositoryNotFoundError as err:  # also gated / private without a token
            raise FileNotFoundError(
                f"{self.repo_id} is neither a local path nor a Hugging Face Hub repo you can "
                f"read (no such repo, or private / gated: log in with `hf auth login`)"
            ) from err
        except errors.RevisionNotFoundError as err:
            raise FileNotFoundError(
                f"{self.repo_id} has no revision {self.revision!r}"
            ) from err
        except (errors.EntryNotFoundError, errors.LocalEntryNotFoundError) as err:
            if self.offline:
                cache = self._cache()
                folder = cache / file_download.repo_folder_name(
                    repo_id=self.repo_id, repo_type="model"
                )
                if not folder.is_dir():
                    raise FileNotFoundError(
                        f"{self.repo_id} is neither a local path nor a repo in the Hub cache "
                        f"{cache}, and HF_HUB_OFFLINE is set: download it once with network "
                        "access (or unset HF_HUB_OFFLINE)"
                    ) from err
            elif isinstance(err, errors.LocalEntryNotFoundError):
                # not offline, yet nothing reached the Hub: a network problem
                raise FileNotFoundError(
                    f"cannot download {filename} from {self._where()} and it is not cached: "
                    f"{err}"
                ) from err
            if missing_ok:
                return None
            raise FileNotFoundError(f"{self._where()} has no {filename}{what}") from err


def _offline() -> bool:
    """HF_HUB_OFFLINE as set now (huggingface_hub reads it once, when first imported)."""
    from huggingface_hub import constants

    value = os.environ.get("HF_HUB_OFFLINE", "")
    return value.upper() in {"1", "ON", "YES", "TRUE"} or bool(constants.HF_HUB_OFFLINE)
