"""Percentile-bootstrap intervals: medians, paired differences, and Fréchet distance with its floor.

Percentile bootstrap (Efron & Tibshirani, *An Introduction to the Bootstrap*, 1993, ch. 13): draw ``n_boot``
resamples of the ``n`` per-sample values with replacement, compute the statistic θ* on each, and report

    [lo, hi] = [q_{α/2}(θ*), q_{1−α/2}(θ*)],     α = 1 − confidence,

with the empirical quantiles taken without interpolation (``inverted_cdf``, so an infinite PSNR of an exact
copy never turns into NaN). The generator is ``numpy.random.default_rng(seed)``: the same inputs and seed give
the same interval.

**Paired comparison.** Two candidates measured against the same reference on the same samples i = 1…n are
resampled with the *same* indices, and the interval is that of median(a*) − median(b*): the sample-to-sample
variation common to both (hard and easy samples) cancels, so the difference is resolved far more sharply than
by comparing the two separate intervals.

**Fréchet distance.** :func:`frechet_distance_interval` resamples the generated features (the reference
statistics, from a large real set, are held fixed), recomputing μ, Σ (``np.cov``, ddof = 1, as
:class:`~fastsample.eval.stats.FeatureStatistics`) and :func:`~fastsample.eval.frechet.frechet_distance` on
each resample. The *floor* is the same measurement for an independent set of real features with the same
sample count: FD is biased upwards at finite n (the estimated Σ carries sampling noise), so a generated FD
can only be compared with the floor at its own n. Resampling with replacement repeats samples and so shifts
FD* upwards by about the estimate's own finite-n bias (for FD near 0 the whole percentile interval then lies
above the estimate). The interval reported is therefore the percentile interval moved down by the bootstrap
bias estimate b̂ = mean(FD*) − FD̂ (Efron & Tibshirani ch. 10), clipped at 0:

    [q_{α/2}(FD*) − b̂, q_{1−α/2}(FD*) − b̂],

an interval for E[FD̂ₙ], the expected distance at this sample count n, centred where the estimate is. The
floor's interval estimates the same for real data, so a verdict compares the two intervals ("FD interval
overlaps the floor's", "FD interval above the floor's").

**Stratified resampling.** A balanced batch (k samples of each class) is a fixed design: its class counts do
not vary from run to run. ``strata=labels`` resamples within each class, so every resample keeps them; a
plain bootstrap would add the variance of random class proportions, which dominates FD in a feature space
where classes are far apart.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from fastsample.eval.frechet import frechet_distance
from fastsample.eval.stats import Statistics

__all__ = [
    "FrechetInterval",
    "Interval",
    "bootstrap_interval",
    "frechet_distance_interval",
    "paired_difference_interval",
]


@dataclass(frozen=True)
class Interval:
    """A point estimate with its percentile-bootstrap interval ``[low, high]`` at ``confidence``."""

    estimate: float
    low: float
    high: float
    confidence: float
    n_boot: int
    num_samples: int

    def contains(self, value: float) -> bool:
        """Whether ``low ≤ value ≤ high``."""
        return self.low <= value <= self.high

    @property
    def width(self) -> float:
        return self.high - self.low

    def __str__(self) -> str:
        return f"{self.estimate:.4g} [{self.low:.4g}, {self.high:.4g}]"


@dataclass(frozen=True)
class FrechetInterval:
    """FD of generated features to a reference, its bootstrap interval, and the real-vs-real floor at the same
    sample count with its own interval (``floor`` is ``None`` when no real features were given)."""

    fd: Interval
    floor: Interval | None

    @property
    def separated_from_floor(self) -> bool | None:
        """True when the FD interval lies entirely above the floor's interval (None without a floor)."""
        return None if self.floor is None else self.fd.low > self.floor.high


def _check_settings(n_boot: int, confidence: float) -> None:
    if isinstance(n_boot, bool) or not isinstance(n_boot, int) or n_boot < 1:
        raise ValueError(f"`n_boot` must be a positive int, got {n_boot!r}.")
    if not isinstance(confidence, (int, float)) or not 0.0 < confidence < 1.0:
        raise ValueError(f"`confidence` must lie in (0, 1), got {confidence!r}.")


def _as_values(name: str, values: Any) -> np.ndarray:
    if hasattr(values, "detach"):
        values = values.detach().cpu().double().numpy()
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1 or array.shape[0] < 1:
        raise ValueError(
            f"`{name}` must be a non-empty 1-D sequence of per-sample values, got {array.shape}."
        )
    if np.isnan(array).any():
        raise ValueError(f"`{name}` contains NaN.")
    return array


def _percentiles(samples: np.ndarray, confidence: float) -> tuple[float, float]:
    alpha = 1.0 - confidence
    low, high = np.quantile(samples, [alpha / 2, 1 - alpha / 2], method="inverted_cdf")
    return float(low), float(high)


def _as_strata(strata: Any, n: int) -> np.ndarray | None:
    if strata is None:
        return None
    if hasattr(strata, "detach"):
        strata = strata.detach().cpu().numpy()
    array = np.asarray(strata)
    if array.shape != (n,):
        raise ValueError(f"`strata` must hold one group id per sample ({n}), got shape {array.shape}.")
    return array


def _resamples(n: int, n_boot: int, seed: int, strata: np.ndarray | None = None) -> np.ndarray:
    """``[n_boot, n]`` indices drawn uniformly with replacement by ``default_rng(seed)``; with ``strata``,
    drawn within each group, so every resample keeps the group sizes (a stratified bootstrap)."""
    rng = np.random.default_rng(seed)
    if strata is None:
        return rng.integers(0, n, size=(n_boot, n))
    index = np.empty((n_boot, n), dtype=np.int64)
    for group in np.unique(strata):
        members = np.flatnonzero(strata == group)
        index[:, members] = members[rng.integers(0, members.size, size=(n_boot, members.size))]
    return index


def _per_resample(statistic: Callable[..., Any], resampled: np.ndarray) -> np.ndarray:
    """``statistic`` of each row of ``[k, n]``: vectorised with ``axis=-1`` when accepted, else row by row."""
    try:
        return np.asarray(statistic(resampled, axis=-1), dtype=np.float64)
    except TypeError:
        return np.array([float(statistic(row)) for row in resampled])


def bootstrap_interval(
    values: Any,
    statistic: Callable[[np.ndarray], float] = np.median,
    n_boot: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
    strata: Any | None = None,
) -> Interval:
    """Percentile-bootstrap interval of ``statistic`` (median by default) of per-sample ``values`` ``[n]``.

    ``strata`` (one group id per sample, e.g. the class labels of a balanced batch) resamples within each
    group, so that each resample has the design's group sizes.

    ``statistic`` maps an array of shape ``[k, n]`` along ``axis=-1`` when it accepts ``axis`` (NumPy
    reductions do, and are vectorised), else it is called on each resample.
    """
    _check_settings(n_boot, confidence)
    array = _as_values("values", values)
    estimate = float(statistic(array))
    resampled = array[_resamples(array.shape[0], n_boot, seed, _as_strata(strata, array.shape[0]))]
    boot = _per_resample(statistic, resampled)
    low, high = _percentiles(boot, confidence)
    return Interval(estimate, low, high, float(confidence), n_boot, int(array.shape[0]))


def paired_difference_interval(
    values_a: Any,
    values_b: Any,
    statistic: Callable[[np.ndarray], float] = np.median,
    n_boot: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
    strata: Any | None = None,
) -> Interval:
    """Interval of ``statistic(a) − statistic(b)`` for paired per-sample values (sample i of ``a`` and of
    ``b`` measured on the same noise/label against the same reference), resampling both with the same indices.

    Differences of infinite values (two exact copies) are not defined: pass finite values (e.g. PSNR capped).
    ``strata``: as in :func:`bootstrap_interval`.
    """
    _check_settings(n_boot, confidence)
    a = _as_values("values_a", values_a)
    b = _as_values("values_b", values_b)
    if a.shape != b.shape:
        raise ValueError(
            f"`values_a` and `values_b` must be paired (same length), got {a.shape} and {b.shape}."
        )
    index = _resamples(a.shape[0], n_boot, seed, _as_strata(strata, a.shape[0]))
    with np.errstate(invalid="ignore"):  # inf − inf is reported below, not warned about
        estimate = float(statistic(a) - statistic(b))
        boot = _per_resample(statistic, a[index]) - _per_resample(statistic, b[index])
    if np.isnan(estimate) or np.isnan(boot).any():
        raise ValueError(
            "the paired difference is undefined (infinite values on both sides); cap them first."
        )
    low, high = _percentiles(boot, confidence)
    return Interval(estimate, low, high, float(confidence), n_boot, int(a.shape[0]))


def _as_features(name: str, features: Any) -> np.ndarray:
    if hasattr(features, "detach"):
        features = features.detach().cpu().double().numpy()
    array = np.asarray(features, dtype=np.float64)
    if array.ndim != 2 or array.shape[0] < 2:
        raise ValueError(f"`{name}` must be features of shape [N ≥ 2, D], got {array.shape}.")
    if not np.isfinite(array).all():
        raise ValueError(f"`{name}` contains NaN or infinite values.")
    return array


def _fd_interval(
    features: np.ndarray,
    reference: Statistics,
    n_boot: int,
    confidence: float,
    seed: int,
    strata: np.ndarray | None,
) -> Interval:
    def fd(rows: np.ndarray) -> float:
        return frechet_distance(rows.mean(axis=0), np.cov(rows, rowvar=False), reference.mu, reference.sigma)

    estimate = fd(features)
    resamples = _resamples(features.shape[0], n_boot, seed, strata)
    boot = np.array([fd(features[index]) for index in resamples])
    low, high = _percentiles(boot, confidence)
    bias = float(boot.mean()) - estimate  # resampling's own upward shift, removed from both ends
    count = int(features.shape[0])
    return Interval(estimate, max(low - bias, 0.0), high - bias, float(confidence), n_boot, count)


def frechet_distance_interval(
    features: Any,
    reference: Statistics | Any,
    real_features: Any | None = None,
    n_boot: int = 200,
    confidence: float = 0.95,
    seed: int = 0,
    strata: Any | None = None,
) -> FrechetInterval:
    """FD of ``features`` ``[N, D]`` to ``reference`` with a percentile-bootstrap interval, and the floor.

    Args:
        features: features of the generated images, ``[N, D]`` (NumPy or torch).
        reference: the reference :class:`~fastsample.eval.stats.Statistics` (held fixed), or reference
            features ``[M, D]`` (summarised with ``np.cov``, ddof = 1); use many more than ``N``.
        real_features: independent real features (not those of the reference), at least ``N`` rows; the first
            ``N`` give the floor at the same sample count. They must have the same class make-up as the
            generated set (for a balanced batch: the same labels, row by row): in the zoo feature space a
            floor of 200 real images with random labels is ~10× that of 200 balanced ones, because the class
            proportions move the mean. ``None``: no floor.
        n_boot: bootstrap resamples (each costs one D×D eigendecomposition pair).
        confidence: two-sided level of the percentile intervals.
        seed: seed of ``numpy.random.default_rng``; the floor uses ``seed + 1``.
        strata: one group id per row of ``features`` (and of the floor's rows), e.g. the class labels of a
            balanced batch: a stratified bootstrap that keeps the class counts of the design in every
            resample. Without it, resampling also varies the class proportions, which a balanced design
            does not, and the interval is much wider than the design's real uncertainty.
    """
    _check_settings(n_boot, confidence)
    generated = _as_features("features", features)
    if not isinstance(reference, Statistics):
        rows = _as_features("reference", reference)
        reference = Statistics(rows.mean(axis=0), np.cov(rows, rowvar=False), rows.shape[0])
    if reference.feature_dim != generated.shape[1]:
        raise ValueError(
            f"`features` have {generated.shape[1]} dimensions, `reference` {reference.feature_dim}."
        )
    groups = _as_strata(strata, generated.shape[0])
    fd = _fd_interval(generated, reference, n_boot, confidence, seed, groups)
    floor = None
    if real_features is not None:
        real = _as_features("real_features", real_features)
        if real.shape[0] < generated.shape[0] or real.shape[1] != generated.shape[1]:
            raise ValueError(
                f"`real_features` must have at least {generated.shape[0]} rows of {generated.shape[1]} "
                f"features (the floor is taken at the same sample count), got {real.shape}."
            )
        floor = _fd_interval(real[: generated.shape[0]], reference, n_boot, confidence, seed + 1, groups)
    return FrechetInterval(fd, floor)
