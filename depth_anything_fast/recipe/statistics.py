"""The statistics of the recipe's reports: paired per-image differences, the bootstrap over
images, the two-way bootstrap over seeds and images, and the t-interval over seeds.

Every model of a comparison is trained with several seeds and scored on the same validation
images, so a difference between two models (student - control of the same seed) is a
(seeds x images) matrix. Two things vary in it: the seed (a new training run gives another
model) and the image (another draw of validation images from the world). The seeds are
independent draws; the images are the same for every seed, so they are crossed with the seeds,
not nested in them: an image that is hard for the student is hard for it under every seed.
`seed_image_bootstrap` therefore resamples both ways at once (the "pigeonhole" bootstrap of
crossed designs, Owen 2007): S seeds with replacement and, independently, I images with
replacement, one image draw shared by every drawn seed; each replicate is the mean difference
over that grid. Its variance is, exactly (`crossed_bootstrap_variance`),
``var(seed effects) / S + var(image effects) / I + var(interaction) / (S I)``, plug-in (1/n)
variances of the two-way decomposition, whereas resampling images independently within each
seed would divide the image term by S as well and so understate it.

With few seeds no bootstrap can show more seed-to-seed spread than the seeds drawn; a
bootstrap over S seeds also understates the seed variance by the factor (S - 1) / S. The
reports therefore give every seed's own mean next to the interval.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

# 97.5% quantiles of Student's t by degrees of freedom (1-30; beyond, `t975`'s expansion)
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
         2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
         2.060, 2.056, 2.052, 2.048, 2.045, 2.042)
N_BOOT = 10_000
METHOD = ("two-way bootstrap over seeds and images: 10,000 replicates, each resampling the "
          "seeds and, independently, the validation images (one image draw shared by every "
          "drawn seed, as every seed is scored on the same images) with replacement; 2.5th and "
          "97.5th percentiles of the replicates' mean difference")

Records = list[dict[str, Any]]


@dataclass(frozen=True)
class Interval:
    """A mean with the bounds of its 95% interval."""

    mean: float
    lo: float
    hi: float

    def excludes_zero(self) -> bool:
        return self.hi < 0 or self.lo > 0

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    def text(self, digits: int = 4) -> str:
        """``+0.0123 (-0.0050 … +0.0301)``."""
        return f"{self.mean:+.{digits}f} ({self.lo:+.{digits}f} … {self.hi:+.{digits}f})"


def paired_differences(a: Records, b: Records, metric: str = "abs_rel") -> np.ndarray:
    """Per-image `metric` of a minus b over the images both scored (matched by name), in a's
    order; float64 (N,)."""
    values_b = {r["name"]: r[metric] for r in b}
    return np.array([r[metric] - values_b[r["name"]] for r in a if r["name"] in values_b],
                    dtype=np.float64)


def bootstrap_ci(values: np.ndarray, n_boot: int = N_BOOT, seed: int = 0,
                 level: float = 0.95) -> tuple[float, float, float]:
    """(mean, lower, upper): percentile bootstrap CI of the mean of `values` (N,) (resampling
    the images with replacement; a fixed seed, so the report is reproducible)."""
    if values.size == 0:
        raise ValueError("bootstrap of an empty sample")
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, values.size, (n_boot, values.size))].mean(axis=1)
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(means, [tail, 100 - tail])
    return float(values.mean()), float(lo), float(hi)


def seed_image_replicates(diffs: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """`n_boot` replicates (float64) of the grand mean of `diffs` (S seeds, I images) under the
    two-way bootstrap: seeds and images each resampled with replacement, independently.

    A replicate is ``sum_s sum_i (c_s / S) (k_i / I) diffs[s, i]`` with c, k the multinomial
    counts of the seed and image draws, the same as averaging over the drawn grid."""
    s, i = diffs.shape
    seed_w = rng.multinomial(s, np.full(s, 1 / s), size=n_boot) / s
    image_w = rng.multinomial(i, np.full(i, 1 / i), size=n_boot) / i
    return np.einsum("bs,si,bi->b", seed_w, diffs, image_w)


def seed_image_bootstrap(diffs: np.ndarray, n_boot: int = N_BOOT, seed: int = 0,
                         level: float = 0.95) -> Interval:
    """Mean of `diffs` (S seeds, I images, paired differences) with the percentile interval
    of `seed_image_replicates` (fixed `seed`: the report is reproducible). One seed gives the
    bootstrap over images alone."""
    diffs = np.asarray(diffs, dtype=np.float64)
    if diffs.ndim != 2 or diffs.size == 0:
        raise ValueError(f"expected a non-empty (seeds, images) matrix, got shape {diffs.shape}")
    if not np.isfinite(diffs).all():
        raise ValueError("the paired differences hold NaN or inf")
    means = seed_image_replicates(diffs, n_boot, np.random.default_rng(seed))
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(means, [tail, 100 - tail])
    return Interval(float(diffs.mean()), float(lo), float(hi))


def crossed_bootstrap_variance(diffs: np.ndarray) -> float:
    """The exact variance of `seed_image_replicates` (infinitely many replicates) of `diffs`
    (S, I): var(row effects) / S + var(column effects) / I + var(residual) / (S I), with
    plug-in (divide by n) variances of the two-way decomposition."""
    d = np.asarray(diffs, dtype=np.float64)
    s, i = d.shape
    rows = d.mean(axis=1) - d.mean()
    cols = d.mean(axis=0) - d.mean()
    resid = d - d.mean() - rows[:, None] - cols[None, :]
    return float((rows**2).mean() / s + (cols**2).mean() / i + (resid**2).mean() / (s * i))


def t975(df: int) -> float:
    """The 97.5% quantile of Student's t with `df` >= 1 degrees of freedom: a 3-decimal table
    up to 30, the Cornish-Fisher expansion around the normal quantile beyond (error < 1e-4)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if df <= len(_T975):
        return _T975[df - 1]
    z = 1.959964
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def t_interval(values: Sequence[float]) -> Interval:
    """Mean of per-seed values with the 95% Student-t interval over them (needs >= 2)."""
    v = np.asarray(values, dtype=np.float64)
    if v.size < 2:
        raise ValueError(f"a t-interval needs at least 2 values, got {v.size}")
    half = t975(v.size - 1) * v.std(ddof=1) / np.sqrt(v.size)
    return Interval(float(v.mean()), float(v.mean() - half), float(v.mean() + half))


def seed_matrix(a: Mapping[int, Records], b: Mapping[int, Records], kind: str | None = None,
                metric: str = "abs_rel") -> tuple[list[int], np.ndarray]:
    """(seeds, (S, I) matrix) of the per-image `metric` of a minus b, seed by seed (a's seed s
    against b's seed s: the pair shares its seed), over the seeds both have and the images
    every one of them scored (an image excluded as degenerate for one model of one seed is left
    out for all, so the columns line up); `kind` keeps the images of that kind (None: all).
    Raises ValueError when no seed or no image is shared."""
    seeds = sorted(set(a) & set(b))
    if not seeds:
        raise ValueError("no seed in common between the two models")
    common: set[str] | None = None
    for s in seeds:
        scored = {r["name"] for r in a[s] if kind is None or r["kind"] == kind}
        scored &= {r["name"] for r in b[s]}
        common = scored if common is None else common & scored
    names = sorted(common or ())
    if not names:
        raise ValueError(f"no image{'' if kind is None else ' of kind ' + kind} scored by both "
                         "models in every seed")
    rows = []
    for s in seeds:
        va = {r["name"]: r[metric] for r in a[s]}
        vb = {r["name"]: r[metric] for r in b[s]}
        rows.append([va[n] - vb[n] for n in names])
    return seeds, np.array(rows, dtype=np.float64)


def paired_report(a: Mapping[int, Records], b: Mapping[int, Records], kinds: Sequence[str],
                  metric: str = "abs_rel") -> dict[str, dict[str, Any]]:
    """Per kind and "overall": the seed-paired difference a - b with its two-way bootstrap
    interval, the seeds, each seed's mean difference and the images per seed."""
    out = {}
    for group in [*kinds, "overall"]:
        seeds, diffs = seed_matrix(a, b, None if group == "overall" else group, metric)
        interval = seed_image_bootstrap(diffs)
        out[group] = {**interval.to_dict(), "seeds": seeds,
                      "per_seed": [float(m) for m in diffs.mean(axis=1)],
                      "n_images": int(diffs.shape[1])}
    return out
