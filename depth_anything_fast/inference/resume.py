"""What decides whether a pseudo-label output folder can be resumed, and what is left to do.

`run_config.json` records the weights (by content: new weights copied over the old file must not
pass for the old ones) and the settings that change the stored values or their names
(`RESUME_KEYS`); a rerun with other weights or settings is refused, or with `overwrite` the
earlier run's records are forgotten. An input is finished when a manifest of any rank records
its output as intact on disk (its size, or its checksum with `verify_checksum`); a tar member is
the same item whatever shard holds it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from depth_anything_fast.formats.manifest import MANIFEST_GLOB, finished_records
from depth_anything_fast.inference.writers import atomic_write
from depth_anything_fast.models.weights import weights_fingerprint

RUN_CONFIG = "run_config.json"
RESUME_KEYS = ("weights_sha256", "model", "input_size", "resize", "format", "original_size")


def run_config(weights_or_model: str | os.PathLike[str] | torch.nn.Module | None,
               model: torch.nn.Module, settings: Mapping[str, Any]) -> dict[str, Any]:
    """What `run_config.json` records: the weights (a local file by absolute path, a Hub id
    as written, a module by class name), their fingerprint, the model config and the
    `settings` (e.g. the fields of `pseudo_label.Options`) that a resumed run must share."""
    # a local file is hashed as stored; a module or a Hub repo id by the loaded state dict
    source: str | torch.nn.Module = model
    weights_id = type(model).__name__
    if isinstance(weights_or_model, (str, os.PathLike)):
        weights_id = os.fspath(weights_or_model)
        if os.path.exists(weights_id):
            weights_id = source = os.path.abspath(weights_id)
    config = getattr(model, "config", None)
    return {
        "weights": weights_id,
        "weights_sha256": weights_fingerprint(source),
        "model": config.to_dict() if hasattr(config, "to_dict") else None,
        **{k: v for k, v in settings.items() if k in RESUME_KEYS},
    }


def check_resumable(output_dir: Path, config: dict[str, Any], overwrite: bool) -> None:
    """Refuse to mix outputs of other weights or settings in one directory (or, with
    `overwrite`, forget the earlier run's records); record this run's `config`."""
    path = output_dir / RUN_CONFIG
    if path.exists() and not overwrite:
        try:
            previous = json.loads(path.read_text())
        except ValueError as err:
            raise ValueError(f"{path}: not valid JSON ({err}); --overwrite starts afresh") \
                from None
        changed = {k: (previous.get(k), config[k]) for k in RESUME_KEYS
                   if previous.get(k) != config[k]}
        if "weights_sha256" in changed:
            raise ValueError(
                f"{output_dir} holds labels made by other weights (then {previous.get('weights')}"
                f", {previous.get('weights_sha256')}; now {config['weights']}, "
                f"{config['weights_sha256']}): use another --output, the original weights, or "
                "--overwrite to label everything again")
        if changed:
            detail = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items())
            raise ValueError(
                f"{output_dir} holds outputs made with other settings ({detail}); use another "
                "--output directory, the original settings, or --overwrite")
        return
    if overwrite:
        # the old records must not vouch for old files under names this run may not rewrite
        for old in [*output_dir.glob(MANIFEST_GLOB), *output_dir.glob("errors*.jsonl")]:
            old.unlink()
    atomic_write(path, (json.dumps(config, indent=1) + "\n").encode(), rank=int(os.getpid()))


def unfinished(pairs: list[tuple[str, str]], output_dir: Path,
               verify_checksum: bool = False) -> list[tuple[str, str]]:
    """The (input, output name) `pairs` whose output the manifests in `output_dir` do not
    record as finished and intact."""
    finished = finished_records(output_dir, verify_checksum=verify_checksum)
    # an output's name without its shard: the same item whatever tar shard holds it
    done = {record.member or key for key, record in finished.items()}
    return [(p, n) for p, n in pairs if n not in done]
