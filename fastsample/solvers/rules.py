"""Update rules: how a multistep method turns the slope history into the update slope U.

The core (``core.py``) hands every rule the slope f_n = dy/dτ of the current call (ε̂ in (x̄, σ̄), the flow
velocity in (x, s)) and moves the sample by y_{n+1} = y_n + Δτ·U. A rule returns U as a short list of
(weight, tensor) pairs so that the core can apply it as one chain of fused multiply-adds.

- :class:`AdamsBashforth` (PLMS-k): U = Σ_j b^{(r)}_j f_{n−j}, r = min(k, history).
- :class:`HeavyBall` (PLMS-k + HB, Wizadwongsa et al. 2024 §2.2): P = AB_r(f), v_n = (1−β)v_{n−1} + βP,
  U = v_n; Nesterov: U = (1−β)v_n + βP. v_0 = P_0.
- :class:`GeneralizedHeavyBall` (GHVB): v_n = (1−β)v_{n−1} + βf_n, U = (1/β)·Σ_j c^{(r)}_j(β) v_{n−j}.
"""

from __future__ import annotations

import torch

from fastsample.solvers.coefficients import (
    adams_bashforth,
    exponential_adams_bashforth,
    ghvb,
    variable_adams_bashforth,
    variable_ghvb,
)

Terms = list[tuple[float, torch.Tensor]]


def _combine(weights: tuple[float, ...], history: list[torch.Tensor]) -> torch.Tensor:
    """Σ_j w_j·h_{n−j} as a fresh tensor (history is oldest first)."""
    out = history[-1] * weights[0]
    for w, h in zip(weights[1:], reversed(history[:-1])):
        out.add_(h, alpha=w)
    return out


class Rule:
    """Base class: ``reset`` clears the state, ``terms`` consumes one slope and returns U.

    ``variable_step``: Adams–Bashforth weights from the actual node spacing
    (:func:`~fastsample.solvers.coefficients.variable_adams_bashforth`) instead of the equal-step tables.
    ``terms(f, tau, tau_next, max_order)`` gets the point of f, the end of the step and a cap on the order
    used at this step (lower-order start/final steps); the equal-step rules ignore the points.
    """

    def __init__(self, k: int, variable_step: bool = False) -> None:
        self.k = k
        self.variable_step = variable_step
        self.exponential = False  # set by the core: data space, weights in λ = log τ
        self.history: list[torch.Tensor] = []
        self.taus: list[float] = []

    def reset(self) -> None:
        self.history = []
        self.taus = []

    def _push(self, f: torch.Tensor, tau: float) -> None:
        self.history.append(f)
        self.taus.append(tau)
        if len(self.history) > self.k:
            del self.history[0], self.taus[0]

    def _nodes(self, max_order: int | None) -> int:
        r = len(self.history)
        r = r if max_order is None else max(1, min(r, max_order))
        if self.exponential:  # λ = log τ is −∞ at zero SNR (a flow run's s = 1): drop such old nodes
            while r > 1 and self.taus[-r] <= 0.0:
                r -= 1
        return r

    def _weight_fn(self):
        return exponential_adams_bashforth if self.exponential else variable_adams_bashforth

    def _ab(self, r: int, tau_next: float) -> tuple[float, ...]:
        if self.variable_step:
            return self._weight_fn()(tuple(reversed(self.taus[-r:])), tau_next)
        return adams_bashforth(r)

    def record(self, f: torch.Tensor, tau: float) -> None:
        """Add a slope computed by a warm-up stage to the history without producing an update."""
        raise NotImplementedError(f"{type(self).__name__} has no Runge–Kutta warm-up")

    def terms(self, f: torch.Tensor, tau: float, tau_next: float, max_order: int | None = None) -> Terms:
        raise NotImplementedError


class AdamsBashforth(Rule):
    """PLMS-k: Adams–Bashforth on the slope history, ramping up AB1, AB2, ... while the history fills."""

    def record(self, f: torch.Tensor, tau: float) -> None:
        self._push(f, tau)

    def terms(self, f: torch.Tensor, tau: float, tau_next: float, max_order: int | None = None) -> Terms:
        self._push(f, tau)
        b = self._ab(self._nodes(max_order), tau_next)
        return [(w, h) for w, h in zip(b, reversed(self.history))]


class HeavyBall(Rule):
    """PLMS-k with heavy-ball momentum β ∈ (0, 1] (β = 1: plain PLMS-k); optionally Nesterov's form."""

    def __init__(self, k: int, beta: float, nesterov: bool = False, variable_step: bool = False) -> None:
        super().__init__(k, variable_step)
        self.beta = beta
        self.nesterov = nesterov
        self.velocity: torch.Tensor | None = None

    def reset(self) -> None:
        super().reset()
        self.velocity = None

    def terms(self, f: torch.Tensor, tau: float, tau_next: float, max_order: int | None = None) -> Terms:
        self._push(f, tau)
        r = self._nodes(max_order)
        p = _combine(self._ab(r, tau_next), self.history[-r:])
        if self.velocity is None or self.beta == 1.0:
            self.velocity = p
        else:
            self.velocity = torch.lerp(self.velocity, p, self.beta)
        if self.nesterov and self.beta != 1.0:
            return [(1.0 - self.beta, self.velocity), (self.beta, p)]
        return [(1.0, self.velocity)]


class GeneralizedHeavyBall(Rule):
    """GHVB of order k with β ∈ (0, 1]: momentum inside the multistep (q = k − 1 + β)."""

    def __init__(self, k: int, beta: float, variable_step: bool = False) -> None:
        super().__init__(k, variable_step)
        self.beta = beta
        self.velocity: torch.Tensor | None = None

    def reset(self) -> None:
        super().reset()
        self.velocity = None

    def terms(self, f: torch.Tensor, tau: float, tau_next: float, max_order: int | None = None) -> Terms:
        if self.velocity is None or self.beta == 1.0:
            self.velocity = f
        else:
            self.velocity = torch.lerp(self.velocity, f, self.beta)
        self._push(self.velocity, tau)
        r = self._nodes(max_order)
        if max_order == 1:  # a first-order step is the Euler/DDIM step on the slope itself
            return [(1.0, f)]
        if self.variable_step:
            c = variable_ghvb(tuple(reversed(self.taus[-r:])), tau_next, self.beta, self._weight_fn())
        else:
            c = tuple(w / self.beta for w in ghvb(r, self.beta))
        return [(w, h) for w, h in zip(c, reversed(self.history))]
