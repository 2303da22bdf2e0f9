"""Zero-shot relative depth numbers of the Depth Anything (V1) paper, Table 2.

AbsRel (lower is better) and delta1 (higher is better), each after per-image least-squares
scale-and-shift alignment in disparity space (`metrics.relative_depth_metrics`).
"""

from __future__ import annotations

PAPER_DATASETS: tuple[str, ...] = ("kitti", "nyuv2", "sintel", "ddad", "eth3d", "diode")
PAPER_SPACE = "disparity"

# model -> dataset -> (abs_rel, delta1)
PAPER_TABLE2: dict[str, dict[str, tuple[float, float]]] = {
    "midas_v3.1_beit_l_512": {
        "kitti": (0.127, 0.850),
        "nyuv2": (0.048, 0.980),
        "sintel": (0.587, 0.699),
        "ddad": (0.251, 0.766),
        "eth3d": (0.139, 0.867),
        "diode": (0.075, 0.942),
    },
    "vits": {
        "kitti": (0.080, 0.936),
        "nyuv2": (0.053, 0.972),
        "sintel": (0.464, 0.739),
        "ddad": (0.247, 0.768),
        "eth3d": (0.127, 0.885),
        "diode": (0.076, 0.939),
    },
    "vitb": {
        "kitti": (0.080, 0.939),
        "nyuv2": (0.046, 0.979),
        "sintel": (0.432, 0.756),
        "ddad": (0.232, 0.786),
        "eth3d": (0.126, 0.884),
        "diode": (0.069, 0.946),
    },
    "vitl": {
        "kitti": (0.076, 0.947),
        "nyuv2": (0.043, 0.981),
        "sintel": (0.458, 0.760),
        "ddad": (0.230, 0.789),
        "eth3d": (0.127, 0.882),
        "diode": (0.066, 0.952),
    },
}

MODEL_LABELS: dict[str, str] = {
    "midas_v3.1_beit_l_512": "MiDaS v3.1 BEiT-L-512",
    "vits": "Depth Anything ViT-S",
    "vitb": "Depth Anything ViT-B",
    "vitl": "Depth Anything ViT-L",
}


def paper_numbers(model: str, dataset: str) -> dict[str, float] | None:
    """`{"abs_rel", "delta1"}` reported in Table 2 for `model` (a key of `PAPER_TABLE2`, e.g.
    "vitl") on `dataset` (one of `PAPER_DATASETS`), or None if the paper has no such entry."""
    entry = PAPER_TABLE2.get(model, {}).get(dataset)
    if entry is None:
        return None
    return {"abs_rel": entry[0], "delta1": entry[1]}
