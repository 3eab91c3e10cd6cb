"""Forecasting reuse: extrapolate a cached feature from the steps at which it was computed.

TaylorSeer (Liu et al. 2025, "From Reusing to Forecasting: Accelerating Diffusion Models with TaylorSeers",
arXiv 2503.06923) replaces "reuse the last computed feature" by a Taylor expansion whose derivatives are
finite differences over the last fully computed steps. fastsample uses the same idea in Newton's divided-
difference form, **in the step index** ``k`` (the count of denoiser forwards of the CFG context in the current
run, the index the schedules use), over the steps ``k0 > k1 > k2`` at which the feature ``f`` was last
computed (any spacing: the dynamic policy computes irregularly):

    f[k0]            = f(k0)
    f[k0, k1]        = (f(k0) − f(k1)) / (k0 − k1)
    f[k0, k1, k2]    = (f[k0, k1] − f[k1, k2]) / (k0 − k2)

    order 1:  f̂(k) = f(k0) + f[k0, k1] (k − k0)
    order 2:  f̂(k) = f(k0) + f[k0, k1] (k − k0) + f[k0, k1, k2] (k − k0)(k − k1)

that is, the degree-``order`` polynomial through the last ``order + 1`` computed values, evaluated at ``k``;
it is exact when the feature is a polynomial of degree ≤ ``order`` in ``k``. With equally spaced computed
steps ``N`` apart, order 1 equals TaylorSeer's first-order forecast ``f(k0) + (k − k0) Δf / N``; at order 2
TaylorSeer's backward-difference derivative ``Δf/N`` misses the ``N f''/2`` term that the Newton form keeps.
Until ``order + 1`` values exist the order is lowered (one value: plain reuse).

The divided differences are kept in float32 (a difference of half-precision features would lose most of its
bits); the forecast is cast back to the feature's dtype. Per-row bookkeeping follows
:class:`~fastsample.cache.buffers.CacheSlot`: each canonical row has its own computed steps, so a re-packed
batch (Adaptive Guidance) forecasts each row from its own history.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from fastsample.cache.buffers import CacheSlot, _leaves

MAX_ORDER = 2


def check_order(order: Any) -> int:
    """``order`` validated: an integer in ``[0, MAX_ORDER]`` (0 = plain reuse)."""
    if isinstance(order, bool) or not isinstance(order, int) or not 0 <= order <= MAX_ORDER:
        raise ValueError(
            f"order must be an integer in [0, {MAX_ORDER}] (0 = reuse, 1/2 = forecast), got {order!r}."
        )
    return order


def _column(values: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    """A per-row coefficient array as a float32 tensor broadcastable against ``like`` (rows first)."""
    return torch.as_tensor(values, dtype=torch.float32, device=like.device).reshape(
        -1, *[1] * (like.ndim - 1)
    )


class ForecastSlot:
    """Newton divided differences ``f[k0], f[k0,k1], ...`` of one cached value, per canonical row (the module
    docstring); the same ``store``/``holds``/``read`` interface as a plain slot with ``order = 0``."""

    def __init__(self, order: int) -> None:
        self.order = check_order(order)
        self.terms = [CacheSlot() for _ in range(self.order + 1)]
        self.steps: np.ndarray | None = None  # [full, order + 1]: k0, k1, ... per row (NaN: none)

    @property
    def valid(self) -> bool:
        return self.terms[0].valid

    def holds(self, rows: torch.Tensor | None = None, full: int | None = None) -> bool:
        return self.terms[0].holds(rows, full)

    def invalidate(self) -> None:
        for term in self.terms:
            term.invalidate()
        self.steps = None

    def nbytes(self) -> int:
        return sum(term.nbytes() for term in self.terms)

    def _row_steps(self, rows: torch.Tensor | None, full: int) -> np.ndarray:
        if self.steps is None or self.steps.shape[0] != full or not self.terms[0].valid:
            self.steps = np.full((full, self.order + 1), np.nan)
        return self.steps if rows is None else self.steps[rows.numpy()]

    def store(self, value: Any, step: int, rows: torch.Tensor | None = None, full: int | None = None) -> None:
        """Record ``value`` computed at ``step`` (for ``rows`` of a ``full``-row batch) and update the
        differences."""
        leaves = _leaves(value)
        lead = next(v for v in leaves if v is not None).shape[0]
        full = lead if rows is None else full
        previous = self._row_steps(rows, full).copy()  # [n, order + 1]
        had = self.terms[0].holds(rows, full)
        new_terms = [leaves]
        if had and self.order:
            old = [self.terms[j].load_leaves(rows) for j in range(self.order + 1)]
            for j in range(1, self.order + 1):
                span = step - previous[:, j - 1]  # k − k_{j−1}
                known = np.isfinite(span)
                inverse = np.where(known, 1.0 / np.where(known, span, 1.0), 0.0)
                term = []
                for new, prev in zip(new_terms[j - 1], old[j - 1]):
                    if new is None:
                        term.append(None)
                        continue
                    scale = _column(inverse, new)
                    diff = (new.float() - prev.float()) * scale
                    term.append(torch.where(scale != 0, diff, torch.zeros_like(diff)))
                new_terms.append(tuple(term))
        for j in range(self.order + 1):
            if j < len(new_terms):
                leaves_j = new_terms[j]
            else:  # no history yet: the higher differences are zero
                leaves_j = tuple(
                    None if v is None else torch.zeros_like(v, dtype=torch.float32) for v in leaves
                )
            if j:  # differences in float32
                leaves_j = tuple(None if v is None else v.float() for v in leaves_j)
            packed = leaves_j if isinstance(value, tuple) else leaves_j[0]
            self.terms[j].store(packed, rows, full if rows is not None else None)
        shifted = np.concatenate([np.full((previous.shape[0], 1), float(step)), previous[:, :-1]], axis=1)
        if not had:
            shifted[:, 1:] = np.nan
        if rows is None:
            self.steps = shifted
        else:
            self.steps[rows.numpy()] = shifted

    def read(self, step: int, rows: torch.Tensor | None = None) -> Any:
        """The forecast at ``step`` for ``rows`` (module docstring)."""
        base = self.terms[0].load_leaves(rows)
        if self.order == 0:
            return self.terms[0].pack(base)
        history = self.steps if rows is None else self.steps[rows.numpy()]
        # coefficient of f[k0..k_j]: Π_{i<j} (k − k_i), zero where k_j is unknown
        coefficients, running = [], np.ones(history.shape[0])
        for j in range(1, self.order + 1):
            running = running * (step - history[:, j - 1])
            coefficients.append(np.where(np.isfinite(history[:, j]), running, 0.0))
        terms = [self.terms[j].load_leaves(rows) for j in range(1, self.order + 1)]
        out = []
        for i, value in enumerate(base):
            if value is None:
                out.append(None)
                continue
            total = value.float()
            for coefficient, term in zip(coefficients, terms):
                if not coefficient.any():
                    continue
                if np.all(coefficient == coefficient[0]):
                    total = total + float(coefficient[0]) * term[i]
                else:
                    total = total + _column(coefficient, term[i]) * term[i]
            out.append(total.to(value.dtype))
        return self.terms[0].pack(tuple(out))


__all__ = ["MAX_ORDER", "ForecastSlot", "check_order"]
