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

from fastsample.solvers.coefficients import adams_bashforth, ghvb

Terms = list[tuple[float, torch.Tensor]]


def _combine(weights: tuple[float, ...], history: list[torch.Tensor]) -> torch.Tensor:
    """Σ_j w_j·h_{n−j} as a fresh tensor (history is oldest first)."""
    out = history[-1] * weights[0]
    for w, h in zip(weights[1:], reversed(history[:-1])):
        out.add_(h, alpha=w)
    return out


class Rule:
    """Base class: ``reset`` clears the state, ``terms`` consumes one slope and returns U."""

    def __init__(self, k: int) -> None:
        self.k = k
        self.history: list[torch.Tensor] = []

    def reset(self) -> None:
        self.history = []

    def _push(self, f: torch.Tensor) -> None:
        self.history.append(f)
        if len(self.history) > self.k:
            del self.history[0]

    def record(self, f: torch.Tensor) -> None:
        """Add a slope computed by a warm-up stage to the history without producing an update."""
        raise NotImplementedError(f"{type(self).__name__} has no Runge–Kutta warm-up")

    def terms(self, f: torch.Tensor) -> Terms:
        raise NotImplementedError


class AdamsBashforth(Rule):
    """PLMS-k: Adams–Bashforth on the slope history, ramping up AB1, AB2, ... while the history fills."""

    def record(self, f: torch.Tensor) -> None:
        self._push(f)

    def terms(self, f: torch.Tensor) -> Terms:
        self._push(f)
        b = adams_bashforth(len(self.history))
        return [(w, h) for w, h in zip(b, reversed(self.history))]


class HeavyBall(Rule):
    """PLMS-k with heavy-ball momentum β ∈ (0, 1] (β = 1: plain PLMS-k); optionally Nesterov's form."""

    def __init__(self, k: int, beta: float, nesterov: bool = False) -> None:
        super().__init__(k)
        self.beta = beta
        self.nesterov = nesterov
        self.velocity: torch.Tensor | None = None

    def reset(self) -> None:
        super().reset()
        self.velocity = None

    def terms(self, f: torch.Tensor) -> Terms:
        self._push(f)
        p = _combine(adams_bashforth(len(self.history)), self.history)
        if self.velocity is None or self.beta == 1.0:
            self.velocity = p
        else:
            self.velocity = torch.lerp(self.velocity, p, self.beta)
        if self.nesterov and self.beta != 1.0:
            return [(1.0 - self.beta, self.velocity), (self.beta, p)]
        return [(1.0, self.velocity)]


class GeneralizedHeavyBall(Rule):
    """GHVB of order k with β ∈ (0, 1]: momentum inside the multistep (q = k − 1 + β)."""

    def __init__(self, k: int, beta: float) -> None:
        super().__init__(k)
        self.beta = beta
        self.velocity: torch.Tensor | None = None

    def reset(self) -> None:
        super().reset()
        self.velocity = None

    def terms(self, f: torch.Tensor) -> Terms:
        if self.velocity is None or self.beta == 1.0:
            self.velocity = f
        else:
            self.velocity = torch.lerp(self.velocity, f, self.beta)
        self._push(self.velocity)
        c = ghvb(len(self.history), self.beta)
        return [(w / self.beta, h) for w, h in zip(c, reversed(self.history))]
