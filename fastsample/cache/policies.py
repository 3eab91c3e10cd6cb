"""Reuse policies: which cached sites to recompute at each denoising step.

A policy answers, for step ``k`` (0-based count of denoiser calls in the current pipeline call, per CFG
context), which sites compute. Static policies return the whole row up front (``plan``), so the decision is
made in plain Python before any compiled region runs and costs no host sync. The dynamic policy decides
from the first block's residual (one ``.item()`` per step). Step 0 always computes everything: the
controller enforces it whatever the policy says.

- :class:`NoCache` (``"none"``): compute everything; the reference.
- :class:`StaticSchedule`: an explicit boolean mask ``[steps, sites]`` (``True`` = compute).
- :class:`FORA` (``"fora"``; Selvaraju et al. 2024): compute every ``interval``-th step, reuse in between.
- :class:`DynamicThreshold` (``"dynamic"``; FirstBlockCache / TeaCache-like): always compute block 0; skip
  blocks 1..L-1 (adding their cached residuals) while ``mean|r0 - r0_ref| / mean|r0_ref| < threshold``,
  where ``r0`` is block 0's residual and ``r0_ref`` the one at the last fully computed step.
- :class:`TaylorSeer` (``"taylorseer"``): FORA's schedule with a forecast instead of a copy.
- ``HarmoniCaPolicy`` (``"harmonica"``) lives in :mod:`fastsample.cache.router`.

**Forecasting** (``order``, on :class:`StaticSchedule`, :class:`FORA` and :class:`DynamicThreshold`): with
``order = 0`` a skipped site returns its last computed value; with ``order = 1`` or ``2`` it returns the
degree-``order`` polynomial in the step index through its last ``order + 1`` computed values, evaluated at the
current step (Newton divided differences; TaylorSeer, Liu et al. 2025; :mod:`fastsample.cache.forecast`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from fastsample.cache.forecast import check_order
from fastsample.cache.units import CacheSite, Level


def _check_level(level: Any) -> Level:
    if level not in ("unit", "block"):
        raise ValueError(f"level must be 'unit' or 'block', got {level!r}.")
    return level


class CachePolicy:
    """Base class. Subclasses set ``name``, ``level`` and implement ``plan`` (static) or ``dynamic``."""

    name = "policy"
    level: Level = "unit"
    dynamic = False  # True: the controller asks `skip_tail` after block 0 instead of `plan`
    order = 0  # 0: reuse the last computed value; 1, 2: forecast (module docstring)

    def bind(self, model: torch.nn.Module, sites: Sequence[CacheSite]) -> None:
        """Check that the policy fits ``model`` (once, in ``enable_cache``); raise ``ValueError`` if not."""

    def plan(self, step: int, num_sites: int) -> Sequence[bool]:
        """Compute flags for every site at ``step`` (``step >= 1``)."""
        raise NotImplementedError

    def check_call(
        self, step: int, timestep: Any, pipe: Any | None, call_args: dict[str, Any] | None = None
    ) -> None:
        """Called at step 0 of every context (``call_args``: the pipeline call's bound arguments, ``None``
        for a bare model); policies tied to a schedule validate it here."""

    def describe(self) -> str:
        return self.name

    def _order_suffix(self) -> str:
        return f", order={self.order}" if self.order else ""


class NoCache(CachePolicy):
    """Compute every site at every step (the uncached reference)."""

    name = "none"

    def plan(self, step: int, num_sites: int) -> Sequence[bool]:
        return [True] * num_sites


class StaticSchedule(CachePolicy):
    """A fixed schedule: ``mask[k, i]`` is ``True`` when site ``i`` computes at step ``k``.

    ``mask[0]`` must be all ``True`` (step 0 fills the cache). A run with more steps than rows is refused.
    ``order``: 0 reuses, 1 or 2 forecasts (module docstring).
    """

    name = "static"

    def __init__(self, mask: Any, level: Level = "unit", order: int = 0) -> None:
        array = np.asarray(mask.detach().cpu() if isinstance(mask, torch.Tensor) else mask)
        if array.ndim != 2 or array.shape[0] < 1 or array.shape[1] < 1:
            raise ValueError(f"mask must be a 2-D [steps, sites] boolean array, got shape {array.shape}.")
        if array.dtype != np.bool_:
            raise TypeError(f"mask must be boolean (True = compute), got dtype {array.dtype}.")
        if not array[0].all():
            raise ValueError("mask[0] must be all True: step 0 always computes and fills the cache.")
        self.mask = array.copy()
        self.level = _check_level(level)
        self.order = check_order(order)

    def bind(self, model: torch.nn.Module, sites: Sequence[CacheSite]) -> None:
        if self.mask.shape[1] != len(sites):
            raise ValueError(
                f"mask has {self.mask.shape[1]} columns but {type(model).__name__} has {len(sites)} "
                f"{self.level}-level sites."
            )

    def plan(self, step: int, num_sites: int) -> Sequence[bool]:
        if step >= self.mask.shape[0]:
            raise RuntimeError(
                f"{self.describe()} covers {self.mask.shape[0]} steps but step {step} was requested; use as "
                "many inference steps as the schedule has (and call handle.new_run() between runs of a bare "
                "model)."
            )
        return self.mask[step].tolist()

    def describe(self) -> str:
        return f"{self.name}({self.mask.shape[0]}x{self.mask.shape[1]}, {self.level}{self._order_suffix()})"


class FORA(CachePolicy):
    """FORA(N): compute all sites at steps 0, N, 2N, ..., reuse them in between (Selvaraju et al. 2024).

    ``order``: 0 reuses (FORA), 1 or 2 forecasts from the last computed steps (module docstring)."""

    name = "fora"

    def __init__(self, interval: int = 2, level: Level = "unit", order: int = 0) -> None:
        if isinstance(interval, bool) or not isinstance(interval, int) or interval < 1:
            raise ValueError(f"interval must be an integer >= 1 (1 = no reuse), got {interval!r}.")
        self.interval = interval
        self.level = _check_level(level)
        self.order = check_order(order)

    def plan(self, step: int, num_sites: int) -> Sequence[bool]:
        return [step % self.interval == 0] * num_sites

    def describe(self) -> str:
        return f"{self.name}(interval={self.interval}, {self.level}{self._order_suffix()})"


class TaylorSeer(FORA):
    """FORA's schedule (compute every ``interval``-th step) with forecasting instead of reuse: a skipped site
    returns the degree-``order`` extrapolation of its last ``order + 1`` computed values in the step index
    (TaylorSeer, Liu et al. 2025, arXiv 2503.06923; the Newton form of :mod:`fastsample.cache.forecast`).
    The same as ``FORA(interval, level, order)`` with a forecasting default."""

    name = "taylorseer"

    def __init__(self, interval: int = 2, level: Level = "unit", order: int = 1) -> None:
        super().__init__(interval, level, order)


class DynamicThreshold(CachePolicy):
    """First-block-residual threshold (FirstBlockCache, ParaAttention; TeaCache-like indicator).

    Block 0 always computes. With ``d = mean|r0 - r0_ref| / mean|r0_ref|`` (``r0_ref``: block 0's residual at
    the last step that computed every block), blocks 1..L-1 are skipped, each adding its cached residual, when
    ``d < threshold``, ``step >= warmup_steps`` and fewer than ``max_consecutive`` steps in a row were
    skipped.
    Costs one host sync per step (the comparison). ``order``: the skipped blocks add their last residual
    (0) or its forecast from the last computed steps (1, 2; module docstring). ``rescale``: polynomial
    coefficients (highest degree first) of a calibrated error model ``p``
    (:mod:`fastsample.cache.calibration`); the comparison is then ``p(d) < threshold``, the threshold being
    a predicted relative L1 change of the model output.
    """

    name = "dynamic"
    level: Level = "block"
    dynamic = True

    def __init__(
        self,
        threshold: float = 0.05,
        warmup_steps: int = 1,
        max_consecutive: int | None = None,
        order: int = 0,
        rescale: Sequence[float] | None = None,
    ) -> None:
        if (
            isinstance(threshold, bool)
            or not isinstance(threshold, (int, float))
            or not math.isfinite(threshold)
        ):
            raise ValueError(f"threshold must be a finite number >= 0, got {threshold!r}.")
        if threshold < 0:
            raise ValueError(f"threshold must be >= 0, got {threshold!r}.")
        if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or warmup_steps < 1:
            raise ValueError(
                f"warmup_steps must be an integer >= 1 (step 0 always computes), got {warmup_steps!r}."
            )
        if max_consecutive is not None and (
            isinstance(max_consecutive, bool) or not isinstance(max_consecutive, int) or max_consecutive < 1
        ):
            raise ValueError(f"max_consecutive must be None or an integer >= 1, got {max_consecutive!r}.")
        self.threshold = float(threshold)
        self.warmup_steps = warmup_steps
        self.max_consecutive = max_consecutive
        self.order = check_order(order)
        if rescale is not None:
            rescale = [float(c) for c in rescale]
            if not rescale or not all(math.isfinite(c) for c in rescale):
                raise ValueError(f"rescale must be a non-empty sequence of finite numbers, got {rescale!r}.")
        self.rescale = rescale

    def bind(self, model: torch.nn.Module, sites: Sequence[CacheSite]) -> None:
        if len(sites) < 2:
            raise ValueError(
                "the dynamic policy needs at least 2 transformer blocks (block 0 is the indicator)."
            )

    def skip_tail(self, step: int, relative_change: float, consecutive_skips: int) -> bool:
        """Whether blocks 1..L-1 reuse their residuals at ``step``."""
        if step < self.warmup_steps:
            return False
        if self.max_consecutive is not None and consecutive_skips >= self.max_consecutive:
            return False
        if self.rescale is not None:
            relative_change = float(np.polyval(self.rescale, relative_change))
        return relative_change < self.threshold

    def describe(self) -> str:
        extra = f", max_consecutive={self.max_consecutive}" if self.max_consecutive is not None else ""
        return (
            f"dynamic(threshold={self.threshold:g}, warmup_steps={self.warmup_steps}{extra}"
            f"{self._order_suffix()}{', calibrated' if self.rescale is not None else ''})"
        )
