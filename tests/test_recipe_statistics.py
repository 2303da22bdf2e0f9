"""The statistics of the recipe's seed-paired reports (`recipe.statistics`): the two-way
bootstrap over seeds and images against brute-force enumeration of every resample, its exact
variance, the seed pairing of per-image records, and the t-interval against scipy."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from depth_anything_fast.recipe import statistics


def _enumerated_means(diffs: np.ndarray) -> np.ndarray:
    """The grand mean of every equally likely two-way resample of `diffs` (S, I): S^S seed
    draws x I^I image draws, each the mean over the drawn grid (float64)."""
    s, i = diffs.shape
    return np.array([diffs[np.ix_(seeds, images)].mean()
                     for seeds in itertools.product(range(s), repeat=s)
                     for images in itertools.product(range(i), repeat=i)])


def _crossed(np_rng: np.random.Generator, s: int, i: int) -> np.ndarray:
    """Seed effects + image effects + noise: the structure of a (seeds, images) difference."""
    return (np_rng.normal(0, 0.02, (s, 1)) + np_rng.normal(-0.01, 0.05, (1, i))
            + np_rng.normal(0, 0.01, (s, i)))


def test_replicates_follow_the_enumerated_bootstrap_distribution(np_rng) -> None:
    diffs = _crossed(np_rng, 2, 3)
    exact = np.sort(_enumerated_means(diffs))  # 4 x 27 = 108 equally likely resamples
    draws = statistics.seed_image_replicates(diffs, 200_000, np_rng)
    # Kolmogorov distance between the Monte-Carlo and the exact CDF just above every atom
    # (atoms equal but for float rounding are one atom); the KS 99.9% bound for 200k draws is
    # 1.95 / sqrt(2e5) = 0.0044
    grid = np.unique(np.round(exact, 9)) + 1e-8
    exact_cdf = np.searchsorted(exact, grid, side="right") / exact.size
    mc_cdf = np.searchsorted(np.sort(draws), grid, side="right") / draws.size
    assert np.abs(exact_cdf - mc_cdf).max() < 0.0044
    assert draws.mean() == pytest.approx(diffs.mean(), abs=4 * exact.std() / np.sqrt(2e5))


def test_crossed_variance_is_the_variance_of_every_resample(np_rng) -> None:
    for s, i in ((1, 4), (2, 3), (3, 3), (3, 4)):
        diffs = _crossed(np_rng, s, i)
        exact = _enumerated_means(diffs)
        assert statistics.crossed_bootstrap_variance(diffs) == pytest.approx(
            exact.var(), rel=1e-10)
        assert exact.mean() == pytest.approx(diffs.mean(), rel=1e-12, abs=1e-15)


def test_interval_matches_the_enumerated_percentiles(np_rng) -> None:
    diffs = _crossed(np_rng, 3, 4)  # 27 x 256 = 6912 resamples
    exact = _enumerated_means(diffs)
    interval = statistics.seed_image_bootstrap(diffs, seed=int(np_rng.integers(2**31)))
    assert interval.mean == pytest.approx(diffs.mean())
    # Each bound sits at its level of the exact distribution: the share of resamples below it
    # and the share at most it bracket 2.5% (97.5%) within 0.008, 5 sd of the level of a
    # percentile of 10,000 replicates (sqrt(0.025 x 0.975 / 1e4) = 0.0016). Measured on 1000
    # draws: at most 0.0055 outside; resampling the images within each seed (nested, not
    # crossed) is outside by more than 0.008 in 998 of them (median 0.08). Levels, not values:
    # the exact distribution is lumpy (gaps between atoms), and the bounds' distance to the
    # interpolated exact percentiles in sd, which this test asked to be under 0.15, exceeded it
    # in 3 of 300 draws (0.18 at most; DAF_TEST_SEED=95, 149, 236).
    scale = 1e-12 * np.abs(exact).max()
    for bound, level in ((interval.lo, 0.025), (interval.hi, 0.975)):
        below, at_most = (exact < bound - scale).mean(), (exact <= bound + scale).mean()
        assert below - 0.008 <= level <= at_most + 0.008, (bound, level, below, at_most)
    # reproducible: a fixed seed gives the same interval
    assert statistics.seed_image_bootstrap(diffs, seed=5) == statistics.seed_image_bootstrap(
        diffs, seed=5)


def test_shared_images_are_not_averaged_away(np_rng) -> None:
    """Image effects shared by every seed stay in the interval's width (an independent
    resample of images within each seed would divide their variance by the seeds)."""
    images = np_rng.normal(0, 0.05, 200)
    diffs = np.tile(images, (8, 1)) + np_rng.normal(0, 1e-4, (8, 200))
    interval = statistics.seed_image_bootstrap(diffs, seed=1)
    se = images.std() / np.sqrt(200)
    assert interval.hi - interval.lo == pytest.approx(2 * 1.96 * se, rel=0.1)


def test_one_seed_is_the_image_bootstrap_and_bad_input_is_refused(np_rng) -> None:
    diffs = _crossed(np_rng, 1, 300)
    interval = statistics.seed_image_bootstrap(diffs, seed=2)
    mean, lo, hi = statistics.bootstrap_ci(diffs[0], seed=2)
    assert interval.mean == pytest.approx(mean)
    se = diffs.std() / np.sqrt(300)
    # the same distribution drawn by two generators: each bound differs by ~0.04 se (two
    # percentiles of 10,000 replicates); measured over 1000 draws: at most 0.154 se (0.15 was
    # this test's bound: DAF_TEST_SEED=160 failed). A bootstrap that does not resample the
    # images of a lone seed is 1.96 se off.
    assert (interval.lo, interval.hi) == pytest.approx((lo, hi), abs=0.25 * se)
    for bad in (np.zeros((0, 3)), np.zeros(4), np.array([[0.1, np.nan]])):
        with pytest.raises(ValueError):
            statistics.seed_image_bootstrap(bad)


def test_t_interval_against_scipy(np_rng) -> None:
    from scipy import stats

    for n in (2, 3, 5, 10, 31, 32, 80):
        values = np_rng.normal(0.25, 0.01, n)
        interval = statistics.t_interval(values.tolist())
        half = stats.t.ppf(0.975, n - 1) * values.std(ddof=1) / np.sqrt(n)
        # the quantile to 3 decimals (table) or 1e-4 (expansion)
        assert interval.hi - interval.mean == pytest.approx(half, rel=3e-4)
        assert interval.mean - interval.lo == pytest.approx(half, rel=3e-4)
        assert interval.mean == pytest.approx(values.mean())
    with pytest.raises(ValueError, match="at least 2"):
        statistics.t_interval([0.3])


def _records(values: dict[str, float], kinds: dict[str, str]) -> list[dict]:
    return [{"name": n, "kind": kinds[n], "abs_rel": v, "delta1": 0.5}
            for n, v in values.items()]


def test_seed_matrix_pairs_each_seed_with_its_own_control(np_rng) -> None:
    kinds = {"a": "room", "b": "field", "c": "field", "d": "room"}
    student, control = {}, {}
    for seed in (0, 1, 3):
        values = np_rng.uniform(0.1, 0.4, (2, 4))
        student[seed] = _records(dict(zip("abcd", values[0])), kinds)
        control[seed] = _records(dict(zip("dcba", values[1][::-1])), kinds)  # other order
    control[7] = student[0]  # a seed the student lacks is not used
    seeds, diffs = statistics.seed_matrix(student, control)
    assert seeds == [0, 1, 3] and diffs.shape == (3, 4)
    for row, seed in zip(diffs, seeds):
        s = {r["name"]: r["abs_rel"] for r in student[seed]}
        c = {r["name"]: r["abs_rel"] for r in control[seed]}
        np.testing.assert_allclose(row, [s[n] - c[n] for n in "abcd"], rtol=0, atol=1e-15)
    _, field = statistics.seed_matrix(student, control, kind="field")
    np.testing.assert_array_equal(field, diffs[:, 1:3])
    # an image one model lost in one seed (degenerate) is dropped from every seed
    control[1] = [r for r in control[1] if r["name"] != "c"]
    _, lost = statistics.seed_matrix(student, control)
    np.testing.assert_array_equal(lost, diffs[:, [0, 1, 3]])
    report = statistics.paired_report(student, control, ["room", "field"])
    assert report["field"]["n_images"] == 1 and report["overall"]["seeds"] == [0, 1, 3]
    np.testing.assert_allclose(report["room"]["per_seed"], diffs[:, [0, 3]].mean(axis=1))
    assert report["overall"]["mean"] == pytest.approx(lost.mean())
    with pytest.raises(ValueError, match="no seed in common"):
        statistics.seed_matrix({0: student[0]}, {2: control[0]})
    with pytest.raises(ValueError, match="no image of kind closeup"):
        statistics.seed_matrix(student, control, kind="closeup")
