"""The unit of pixel work handed to a backend (DALI or PIL): one image and its parameters."""

from __future__ import annotations

from dataclasses import dataclass

from .augment import StrongParams
from .geometry import CropBox


@dataclass
class ImageJob:
    """Encoded bytes of `path`, the resample box, and the strong perturbation (or None)."""

    path: str
    encoded: bytes
    box: CropBox
    strong: StrongParams | None = None
