"""Percentile bootstrap (fastsample.eval.bootstrap): agreement with scipy.stats.bootstrap, paired differences,
and the Fréchet-distance interval with its floor on Gaussians with a known distance."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import scipy.stats
import torch

from fastsample.eval.bootstrap import (
    bootstrap_interval,
    frechet_distance_interval,
    paired_difference_interval,
)
from fastsample.eval.stats import Statistics


def test_median_interval_agrees_with_scipy_percentile_bootstrap():
    values = np.random.default_rng(0).lognormal(size=300)
    ours = bootstrap_interval(values, np.median, n_boot=4000, confidence=0.9, seed=1)
    theirs = scipy.stats.bootstrap(
        (values,),
        np.median,
        n_resamples=4000,
        confidence_level=0.9,
        method="percentile",
        rng=np.random.default_rng(2),
    ).confidence_interval
    assert ours.estimate == pytest.approx(np.median(values))
    width = theirs.high - theirs.low
    assert abs(ours.low - theirs.low) < 0.1 * width and abs(ours.high - theirs.high) < 0.1 * width
    # a statistic without an `axis` argument is applied resample by resample, to the same result
    looped = bootstrap_interval(values, lambda v: float(np.median(v)), n_boot=4000, confidence=0.9, seed=1)
    assert (looped.low, looped.high) == (ours.low, ours.high)
    assert bootstrap_interval(torch.from_numpy(values), n_boot=4000, confidence=0.9, seed=1) == ours


def test_paired_difference_is_sharper_than_separate_intervals():
    rng = np.random.default_rng(3)
    difficulty = rng.normal(30.0, 4.0, size=200)  # per-sample variation common to both candidates
    a = difficulty + 0.5 + rng.normal(0, 0.2, size=200)
    b = difficulty + rng.normal(0, 0.2, size=200)
    paired = paired_difference_interval(a, b, n_boot=2000)
    assert paired.contains(0.5) and paired.low > 0
    separate_a, separate_b = bootstrap_interval(a), bootstrap_interval(b)
    assert separate_a.low < separate_b.high  # the separate intervals overlap: no verdict without pairing
    assert paired.width < 0.5 * separate_a.width


def test_bootstrap_refuses_bad_input():
    with pytest.raises(ValueError, match="n_boot"):
        bootstrap_interval([1.0, 2.0], n_boot=0)
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_interval([1.0, 2.0], confidence=1.0)
    with pytest.raises(ValueError, match="NaN"):
        bootstrap_interval([1.0, float("nan")])
    with pytest.raises(ValueError, match="paired"):
        paired_difference_interval([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="cap"):
        paired_difference_interval([np.inf, np.inf], [np.inf, np.inf])


def scipy_fd(mu1, sigma1, mu2, sigma2) -> float:
    root = scipy.linalg.sqrtm(sigma1 @ sigma2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(sigma1 + sigma2 - 2 * root))


def test_fd_interval_point_estimate_matches_scipy_and_known_gaussians():
    rng = np.random.default_rng(4)
    dim, n = 4, 20000
    reference = Statistics(np.zeros(dim), np.eye(dim))
    shift = 0.5
    generated = rng.normal(shift, 1.0, size=(n, dim))
    real = rng.normal(0.0, 1.0, size=(n, dim))
    result = frechet_distance_interval(generated, reference, real, n_boot=200, seed=0)
    expected = scipy_fd(generated.mean(0), np.cov(generated, rowvar=False), reference.mu, reference.sigma)
    assert result.fd.estimate == pytest.approx(expected, rel=1e-8)
    # population FD = D·shift² = 1.0 (sd of the estimate ≈ 2·shift·√(D/n) ≈ 0.014), floor ≈ 0
    assert result.fd.estimate == pytest.approx(dim * shift**2, abs=0.05) and result.fd.contains(1.0)
    assert 0 < result.floor.estimate < 0.01
    for interval in (result.fd, result.floor):
        assert interval.low <= interval.estimate <= interval.high and interval.num_samples == n
    assert result.separated_from_floor
    # reference given as features gives the same as the Statistics of those features
    rows = rng.normal(0.0, 1.0, size=(5000, dim))
    from_rows = frechet_distance_interval(generated, rows, n_boot=20)
    stats = Statistics(rows.mean(0), np.cov(rows, rowvar=False))
    assert from_rows.fd == frechet_distance_interval(generated, stats, n_boot=20).fd
    assert from_rows.floor is None and from_rows.separated_from_floor is None


def test_fd_interval_of_identical_distributions_overlaps_the_floor():
    rng = np.random.default_rng(5)
    dim, n = 8, 200
    reference = Statistics(np.zeros(dim), np.eye(dim))
    generated = rng.normal(size=(n, dim))
    real = rng.normal(size=(n, dim))
    result = frechet_distance_interval(generated, reference, real, n_boot=300)
    assert result.fd.estimate > 0 and result.floor.estimate > 0  # finite-n bias, no true distance
    assert result.fd.low < result.floor.high and result.floor.low < result.fd.high
    assert not result.separated_from_floor


def test_fd_interval_refuses_mismatched_input():
    reference = Statistics(np.zeros(3), np.eye(3))
    with pytest.raises(ValueError, match="dimensions"):
        frechet_distance_interval(np.zeros((10, 4)), reference)
    with pytest.raises(ValueError, match="at least 10 rows"):
        frechet_distance_interval(np.random.default_rng(0).normal(size=(10, 3)), reference, np.zeros((5, 3)))
    with pytest.raises(ValueError, match=r"\[N ≥ 2, D\]"):
        frechet_distance_interval(np.zeros(3), reference)


def test_stratified_resampling_keeps_the_design_and_narrows_a_balanced_fd():
    from fastsample.eval.bootstrap import _resamples

    labels = np.repeat(np.arange(4), 25)
    index = _resamples(100, 50, seed=0, strata=labels)
    assert all((np.bincount(labels[row], minlength=4) == 25).all() for row in index)
    assert all((labels[row] == labels).all() for row in index)  # each slot resampled within its class
    # four far-apart classes, 25 each: class proportions dominate a plain bootstrap of FD
    rng = np.random.default_rng(6)
    centres = 10.0 * np.eye(4)
    generated = centres[labels] + rng.normal(size=(100, 4))
    population = Statistics(centres.mean(0), np.cov(centres, rowvar=False, bias=True) + np.eye(4))
    plain = frechet_distance_interval(generated, population, n_boot=200)
    stratified = frechet_distance_interval(generated, population, n_boot=200, strata=labels)
    assert stratified.fd.estimate == plain.fd.estimate
    assert stratified.fd.width < 0.5 * plain.fd.width
    median = bootstrap_interval(generated[:, 0], strata=labels, n_boot=100)
    assert median.estimate == np.median(generated[:, 0])
    with pytest.raises(ValueError, match="strata"):
        bootstrap_interval(generated[:, 0], strata=labels[:10])
