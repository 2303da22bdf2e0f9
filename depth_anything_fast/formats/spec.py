"""How a dataset's ground truth is stored: `LabelledSpec`, its `spec.json`, and the spec of
pseudo-labels."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

SPEC_FILE = "spec.json"  # a dataset folder's LabelledSpec


@dataclass(frozen=True)
class LabelledSpec:
    """How to read a dataset's ground truth.

    value = raw * scale + offset, where raw is the stored number (after `bit_rotate`: rotate each
    16-bit value right by that many bits; SUN RGB-D needs 3, a little-endian PGM read as the
    standard big-endian needs 8). `kind="depth"`: value is metric depth (metres) and disparity is
    1/value; `kind="disparity"`: value is (affine) disparity already. Raw values in `invalid`,
    non-finite values, non-positive depth and depth outside [min_depth, max_depth] are masked.
    `sky_mask`: suffix of a mask file next to each target (`<target stem><suffix>`, nonzero = sky);
    sky pixels become valid with disparity 0.
    """

    kind: str = "depth"
    scale: float = 1.0
    offset: float = 0.0
    invalid: tuple[float, ...] = (0,)
    min_depth: float | None = None
    max_depth: float | None = None
    sky_mask: str | None = None
    bit_rotate: int = 0

    def __post_init__(self) -> None:
        if self.kind not in ("depth", "disparity"):
            raise ValueError(f"LabelledSpec.kind must be 'depth' or 'disparity', got {self.kind!r}")
        if not np.isfinite(self.scale) or self.scale == 0:
            raise ValueError(f"LabelledSpec.scale must be finite and nonzero, got {self.scale}")
        if not 0 <= self.bit_rotate < 16:
            raise ValueError(f"LabelledSpec.bit_rotate must be in [0, 16), got {self.bit_rotate}")
        object.__setattr__(self, "invalid", tuple(float(v) for v in self.invalid))

    def dumps(self) -> str:
        """The spec as JSON text (what `to_json` writes)."""
        return json.dumps(asdict(self), indent=2) + "\n"

    def to_json(self, path: str | os.PathLike) -> None:
        """Write the spec as JSON (the `spec.json` of a dataset folder)."""
        Path(path).write_text(self.dumps())

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> LabelledSpec:
        """Read a spec written by `to_json`; unknown fields are an error naming the file."""
        data = json.loads(Path(path).read_text())
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"{path}: unknown LabelledSpec fields {sorted(unknown)}")
        return cls(**data)


# Pseudo-labels are normalised teacher disparity: every stored value is valid.
PSEUDO_LABEL_SPEC = LabelledSpec(kind="disparity", scale=1.0 / 65535.0, invalid=())


def folder_spec(folder: str | os.PathLike) -> LabelledSpec | None:
    """The `LabelledSpec` in `folder/spec.json`, or None when the folder has none."""
    path = os.path.join(folder or ".", SPEC_FILE)
    return LabelledSpec.from_json(path) if os.path.isfile(path) else None


def spec_from_folder(folder: str, default: LabelledSpec | None) -> LabelledSpec:
    """`folder_spec(folder)`, else `default`; raises `FileNotFoundError` naming the missing
    `spec.json` when both are None."""
    spec = folder_spec(folder) or default
    if spec is None:
        path = os.path.join(folder or ".", SPEC_FILE)
        raise FileNotFoundError(f"no LabelledSpec given and {path} does not exist")
    return spec
