"""Coefficient tables: Adams–Bashforth and generalized heavy-ball (GHVB) weights; the (k, β) split of q.

Adams–Bashforth of order k on equally spaced steps: U = Σ_j b^{(k)}_j f_{n−j}.
GHVB (Wizadwongsa et al., ICLR 2024, "Generalized heavy ball"): with the velocity v_n = (1−β)v_{n−1} + βf_n,
U = (1/β)·Σ_j c^{(k)}_j(β)·v_{n−j}, where c^{(k)}(β) is linear in β and c^{(k)}(1) = b^{(k)}.
"""

from __future__ import annotations

import math

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
