"""Coefficient tables: Adams–Bashforth and generalized heavy-ball (GHVB) weights; the (k, β) split of q.

Adams–Bashforth of order k on equally spaced steps: U = Σ_j b^{(k)}_j f_{n−j}.
GHVB (Wizadwongsa et al., ICLR 2024, "Generalized heavy ball"): with the velocity v_n = (1−β)v_{n−1} + βf_n,
U = (1/β)·Σ_j c^{(k)}_j(β)·v_{n−j}, where c^{(k)}(β) is linear in β and c^{(k)}(1) = b^{(k)}.
"""

from __future__ import annotations

import functools
import math

import numpy as np

# b^{(k)}: numerators and common denominator, newest first
_AB = {
    1: ((1,), 1),
    2: ((3, -1), 2),
    3: ((23, -16, 5), 12),
    4: ((55, -59, 37, -9), 24),
    5: ((1901, -2774, 2616, -1274, 251), 720),
}

# c^{(k)}(β) = (p_j + q_j·β)/den, newest first (docs/design/solvers.md#multistep-coefficients)
_GHVB = {
    1: (((0, 1),), 1),
    2: (((2, 1), (-2, 1)), 2),
    3: (((18, 5), (-24, 8), (6, -1)), 12),
    4: (((46, 9), (-78, 19), (42, -5), (-10, 1)), 24),
    5: (((1650, 251), (-3420, 646), (2880, -264), (-1380, 106), (270, -19)), 720),
}

MAX_ORDER = 5


def adams_bashforth(k: int) -> tuple[float, ...]:
    """b^{(k)}, newest first; k = 1 is Euler (DDIM in σ̄)."""
    if k not in _AB:
        raise ValueError(f"Adams–Bashforth order must be in 1..{MAX_ORDER}, got {k}")
    num, den = _AB[k]
    return tuple(x / den for x in num)


def ghvb(k: int, beta: float) -> tuple[float, ...]:
    """c^{(k)}(β), newest first. ghvb(k, 1) == adams_bashforth(k)."""
    if k not in _GHVB:
        raise ValueError(f"GHVB order must be in 1..{MAX_ORDER}, got {k}")
    pairs, den = _GHVB[k]
    return tuple((p + q * beta) / den for p, q in pairs)


def split_ghvb_order(q: float) -> tuple[int, float]:
    """q → (k, β): an integer q is plain AB-q (β = 1); otherwise k = ⌊q⌋ + 1 and β = q − ⌊q⌋."""
    if not (isinstance(q, int | float) and math.isfinite(q)) or isinstance(q, bool):
        raise TypeError(f"`ghvb_order` must be a finite number, got {q!r}")
    if not 0 < q <= MAX_ORDER:
        raise ValueError(f"`ghvb_order` must lie in (0, {MAX_ORDER}], got {q}")
    if float(q).is_integer():
        return int(q), 1.0
    k = math.floor(q) + 1
    return k, float(q - math.floor(q))


@functools.lru_cache(maxsize=4096)
def variable_adams_bashforth(taus: tuple[float, ...], tau_next: float) -> tuple[float, ...]:
    """Variable-step Adams–Bashforth weights, newest first: U = Σ_j b_j f(τ_{n−j}) with y' = f.

    ``taus`` = (τ_n, τ_{n−1}, ...) are the points of the slope history (newest first), ``tau_next`` the step's
    end; b_j = (1/h)·∫_{τ_n}^{τ_{n+1}} L_j(τ) dτ with h = τ_{n+1} − τ_n and L_j the Lagrange basis polynomial
    of the nodes (the exact integral of the interpolant, Hairer–Nørsett–Wanner I, §III.5). On a uniform grid
    (τ_{n−j} = τ_n − j·h) this is :func:`adams_bashforth` of order ``len(taus)``; one node gives Euler.
    """
    k = len(taus)
    if not 1 <= k <= MAX_ORDER:
        raise ValueError(f"variable-step Adams–Bashforth needs 1..{MAX_ORDER} nodes, got {k}")
    h = tau_next - taus[0]
    if h == 0.0:
        raise ValueError("`tau_next` equals the newest node: zero step")
    u = [(t - taus[0]) / h for t in taus]  # nodes in units of the step, u_0 = 0, the step is [0, 1]
    if len(set(u)) != k:
        raise ValueError(f"the nodes {taus} are not distinct")
    weights = []
    for j in range(k):
        poly = np.polynomial.Polynomial([1.0])
        for m in range(k):
            if m != j:
                poly = poly * np.polynomial.Polynomial([-u[m], 1.0]) / (u[j] - u[m])
        antiderivative = poly.integ()
        weights.append(float(antiderivative(1.0) - antiderivative(0.0)))
    return tuple(weights)


_GAUSS_U, _GAUSS_W = np.polynomial.legendre.leggauss(16)
_GAUSS_U, _GAUSS_W = 0.5 * (_GAUSS_U + 1.0), 0.5 * _GAUSS_W  # on [0, 1]


@functools.lru_cache(maxsize=4096)
def exponential_adams_bashforth(taus: tuple[float, ...], tau_next: float) -> tuple[float, ...]:
    """Exponential Adams–Bashforth weights in λ = log τ, newest first, for y' = x̂0(τ) with τ = α/σ = e^λ.

    The data prediction is interpolated by the Lagrange polynomial in λ through the nodes λ_{n−j} and
    integrated exactly against e^λ (the multistep DPM-Solver++ of Lu et al. 2022 written for any order and
    spacing): b_j = ∫ e^λ L_j(λ) dλ / (e^{λ_{n+1}} − e^{λ_n}), so Σ b_j = 1 and one node is DDIM. With
    u = (λ − λ_n)/h the integral is h·∫_0^1 e^{h(u−1)} L_j(u) du / (1 − e^{−h}) (16-point Gauss–Legendre,
    exact to rounding for these degrees and h ≲ 5).
    """
    k = len(taus)
    if not 1 <= k <= MAX_ORDER:
        raise ValueError(f"exponential Adams–Bashforth needs 1..{MAX_ORDER} nodes, got {k}")
    if k == 1:
        return (1.0,)
    if not math.isfinite(tau_next):
        raise ValueError("a step to σ = 0 (τ = ∞) is first order: pass one node")
    lam = np.log(np.asarray(taus, dtype=np.float64))
    h = math.log(tau_next) - lam[0]
    if h == 0.0:
        raise ValueError("`tau_next` equals the newest node: zero step")
    u = (lam - lam[0]) / h
    if len(set(u.tolist())) != k:
        raise ValueError(f"the nodes {taus} are not distinct")
    kernel = np.exp(h * (_GAUSS_U - 1.0)) * _GAUSS_W * h / (-math.expm1(-h))
    weights = []
    for j in range(k):
        basis = np.ones_like(_GAUSS_U)
        for m in range(k):
            if m != j:
                basis = basis * (_GAUSS_U - u[m]) / (u[j] - u[m])
        weights.append(float((kernel * basis).sum()))
    return tuple(weights)


@functools.lru_cache(maxsize=4096)
def variable_ghvb(taus: tuple[float, ...], tau_next: float, beta: float, ab=None) -> tuple[float, ...]:
    """GHVB weights c_j/β (newest first) on a non-uniform grid, applied to the velocity history v.

    On a uniform grid GHVB's coefficients split as c^{(k)}(z; β) = (1−β)·(1−z)·b^{(k−1)}(z) + β·b^{(k)}(z)
    (z the backward shift; e.g. c^{(2)} = (1 + β/2, −1 + β/2)), i.e.
    U = ((1−β)/β)·AB_{k−1}(Δv) + AB_k(v) with Δv_n = v_n − v_{n−1}. Here both Adams–Bashforth parts use the
    variable-step weights of :func:`variable_adams_bashforth`, so the result equals ``ghvb(k, β)/β`` on a
    uniform grid and variable-step AB-k on the slopes for β = 1. ``ab``: the weight function
    (:func:`variable_adams_bashforth` by default, :func:`exponential_adams_bashforth` in the data space).
    """
    ab = variable_adams_bashforth if ab is None else ab
    k = len(taus)
    out = list(ab(taus, tau_next))
    if k > 1 and beta != 1.0:
        lower = ab(taus[: k - 1], tau_next)
        scale = (1.0 - beta) / beta
        for j, b in enumerate(lower):  # b·(v_{n−j} − v_{n−j−1})
            out[j] += scale * b
            out[j + 1] -= scale * b
    return tuple(out)
