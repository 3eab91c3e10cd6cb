"""Measured vs theoretical speed-up of a cache, in one process, against the uncached run of the same code.

``measure_speedup(run, pipe_or_model, method, **knobs)`` times ``run()`` alternately without and with a fresh
cache (so that drift on a shared machine hits both alike), takes medians, and sets the stats'
``measured_speedup = median(uncached) / median(cached)`` next to the theoretical ``1 / computed-MAC
fraction`` (from one extra, untimed cached run). A fresh cache per timed run means each run starts at step 0,
as a pipeline call does.
Times come from the one clock of :mod:`fastsample.integration.measure` on the denoiser's device.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from fastsample.cache.api import enable_cache
from fastsample.cache.stats import CacheStats
from fastsample.integration.adapters import resolve_denoiser
from fastsample.integration.measure import Stopwatch


@dataclass
class SpeedupReport:
    """Medians in seconds; ``efficiency = measured / theoretical`` (target ≥ 0.9)."""

    stats: CacheStats
    uncached_s: float
    cached_s: float

    @property
    def measured(self) -> float:
        return self.uncached_s / self.cached_s

    @property
    def theoretical(self) -> float | None:
        return self.stats.theoretical_speedup

    @property
    def efficiency(self) -> float | None:
        return self.measured / self.theoretical if self.theoretical else None


def _timed(run: Callable[[], Any], device: torch.device) -> float:
    with Stopwatch(device) as watch:
        run()
    return watch.seconds


def measure_speedup(
    run: Callable[[], Any],
    pipe_or_model: Any,
    method: Any,
    *,
    repeats: int = 3,
    warmup: int = 1,
    **knobs: Any,
) -> SpeedupReport:
    """Time ``run`` (one full sampling run) uncached and cached; see the module docstring."""
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0, got {repeats}, {warmup}.")
    device = next(resolve_denoiser(pipe_or_model, "measure_speedup").parameters()).device
    for _ in range(warmup):
        run()
    # one untimed cached run gives the statistics (and pays for the MAC profile)
    handle = enable_cache(pipe_or_model, method, **knobs)
    try:
        run()
        stats = handle.stats()
    finally:
        handle.disable()

    def cached_run() -> float:
        handle = enable_cache(pipe_or_model, method, profile_macs=False, **knobs)
        try:
            return _timed(run, device)
        finally:
            handle.disable()

    uncached, cached = [], []
    for _ in range(repeats):  # alternate, so that load changes on a shared machine hit both alike
        uncached.append(_timed(run, device))
        cached.append(cached_run())
    report = SpeedupReport(stats, float(np.median(uncached)), float(np.median(cached)))
    stats.measured_speedup = report.measured
    return report
