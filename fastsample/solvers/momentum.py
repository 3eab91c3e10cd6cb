"""Heavy-ball momentum and GHVB (Wizadwongsa, Chinchuthakun, Khungurn, Raj, Suwajanakorn, ICLR 2024,
"Diffusion sampling with momentum for mitigating divergence artifacts", arXiv 2307.11118).

High-order multistep solvers (PLMS4, DPM-Solver++ at few steps) diverge at few steps and high guidance
because their stability region is small: on y' = λy the real interval of PLMS4 is only [−0.30, 0]. Momentum
enlarges it:

- :class:`HeavyBallScheduler` (PLMS-k + HB): P_n = AB_k(f), v_n = (1−β)v_{n−1} + βP_n, x̄_{n+1} = x̄_n + Δ·v_n
  (Nesterov: Δ·((1−β)v_n + βP_n)). The interval grows by (2−β)/β. **First order** for β < 1 (the
  velocity lags by (1−β)/β·h·f'); β = 1 is plain PLMS-k.
- :class:`GHVBScheduler` (generalized heavy ball, fractional order q = k − 1 + β): the velocity enters the
  multistep, U = (1/β)·Σ c_j(β)·v_{n−j}; it slides from PLMS-(k−1) (β → 0) to PLMS-k (β = 1). With the
  AB1 start-up used here it is **about second order**: q = 1.5 measures 2.0; q = 3.8 measures ≈ 3.5 at
  40 → 80 steps but tends to 2 asymptotically (the AB1 start and v_0 = f_0 cap it,
  docs/design/solvers.md#convergence-order), so higher q lowers the error constant rather than raising the
  order.

What they buy: no divergence artifacts at low NFE (≤ 10) and high guidance (w = 7.5–15), at about the error
of first/second-order solvers. What they do not buy: accuracy at 20+ steps without guidance, where the time
grid (e.g. Karras) matters more than the solver.

Defaults (measured on the exact Gaussian-mixture oracle, SD1.5 VP and SD3 flow schedules, mixture seeds 0–4,
w ∈ {1, 7.5, 15}, NFE 5–10; ``benchmarks/results/solvers.md``): ``GHVBScheduler.from_config(config)`` with
no arguments is q = 1.8 (``grid="auto"``) on the Karras grid ending at σ̄ = 0 for VP, with variable-step
weights (``variable_step``: the exact integrals of the Lagrange interpolant on the actual non-uniform grid),
and on the flow schedule's own shifted spacing with the equal-step tables for flow (variable-step weights in
s diverge more there; the Karras grid ignores the shift and cost the embedded flow DiT 15 dB of paired PSNR
at 10 steps: 16.6 against 30.3 dB, ``benchmarks/results/solvers.md`` (j)). Without guidance
(w ≈ 1, guidance-distilled models) ``solver_space="data"`` (exponential Adams–Bashforth on the data
prediction in λ = log(α/σ)) is 3–10× more accurate, but it diverges at w ≥ 7.5.
"""

from __future__ import annotations

import math

import numpy as np
from diffusers.configuration_utils import register_to_config

from fastsample.solvers.coefficients import MAX_ORDER, split_ghvb_order
from fastsample.solvers.core import MultistepCore
from fastsample.solvers.rules import GeneralizedHeavyBall, HeavyBall, Rule


def _check_beta(beta) -> float:
    if isinstance(beta, bool) or not isinstance(beta, int | float) or not math.isfinite(beta):
        raise TypeError(f"`momentum` must be a number in (0, 1], got {beta!r}")
    if not 0.0 < beta <= 1.0:
        raise ValueError(f"`momentum` (β) must lie in (0, 1], got {beta}")
    return float(beta)


class HeavyBallScheduler(MultistepCore):
    """PLMS-k with heavy-ball (or Nesterov) momentum β; ``plms_order`` k in 1..5, ``momentum`` β in (0, 1]."""

    @register_to_config
    def __init__(
        self,
        plms_order: int = 4,
        momentum: float = 0.8,
        nesterov: bool = False,
        grid: str = "spacing",
        solver_space: str = "auto",
        variable_step: bool = False,
        lower_order_final: bool = False,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: np.ndarray | list[float] | None = None,
        prediction_type: str = "epsilon",
        timestep_spacing: str = "linspace",
        steps_offset: int = 0,
        set_alpha_to_one: bool | None = None,
        final_sigmas_type: str | None = None,
        rescale_betas_zero_snr: bool = False,
        clip_sample: bool = False,
        thresholding: bool = False,
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        shift: float = 1.0,
        use_dynamic_shifting: bool = False,
        base_shift: float = 0.5,
        max_shift: float = 1.15,
        base_image_seq_len: int = 256,
        max_image_seq_len: int = 4096,
        time_shift_type: str = "exponential",
        shift_terminal: float | None = None,
        use_flow_sigmas: bool = False,
        flow_shift: float = 1.0,
    ):
        is_int = isinstance(plms_order, int) and not isinstance(plms_order, bool)
        if not (is_int and 1 <= plms_order <= MAX_ORDER):
            raise ValueError(f"`plms_order` must be an integer in 1..{MAX_ORDER}, got {plms_order!r}")
        _check_beta(momentum)
        self._init_core()

    def _make_rule(self) -> Rule:
        cfg = self.config
        return HeavyBall(cfg.plms_order, float(cfg.momentum), bool(cfg.nesterov), bool(cfg.variable_step))


class GHVBScheduler(MultistepCore):
    """Generalized heavy ball of fractional order ``ghvb_order`` q in (0, 5]: k = ⌊q⌋ + 1, β = q − ⌊q⌋
    (an integer q is plain PLMS-q, q = 1 is DDIM / FlowMatch-Euler).

    Own keys: ``ghvb_order`` (1.8), ``grid`` ("auto": Karras for VP, "spacing" for flow; or "karras",
    "exponential", "beta", "spacing" = ``timestep_spacing``; a ``use_*_sigmas`` flag or custom
    ``timesteps``/``sigmas`` take precedence), ``solver_space`` ("auto": ε̂ in σ̄ for VP, the velocity in s
    for flow; "data": x̂0 in λ), ``variable_step`` (None: on for VP, off for flow), ``lower_order_final``
    (first order at the last step when N < 15).
    """

    @register_to_config
    def __init__(
        self,
        ghvb_order: float = 1.8,
        grid: str = "auto",
        solver_space: str = "auto",
        variable_step: bool | None = None,
        lower_order_final: bool = False,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: np.ndarray | list[float] | None = None,
        prediction_type: str = "epsilon",
        timestep_spacing: str = "linspace",
        steps_offset: int = 0,
        set_alpha_to_one: bool | None = None,
        final_sigmas_type: str | None = None,
        rescale_betas_zero_snr: bool = False,
        clip_sample: bool = False,
        thresholding: bool = False,
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        shift: float = 1.0,
        use_dynamic_shifting: bool = False,
        base_shift: float = 0.5,
        max_shift: float = 1.15,
        base_image_seq_len: int = 256,
        max_image_seq_len: int = 4096,
        time_shift_type: str = "exponential",
        shift_terminal: float | None = None,
        use_flow_sigmas: bool = False,
        flow_shift: float = 1.0,
    ):
        split_ghvb_order(ghvb_order)
        self._init_core()

    def _make_rule(self) -> Rule:
        k, beta = split_ghvb_order(self.config.ghvb_order)
        variable = self.config.variable_step
        if variable is None:  # measured best: on in σ̄ (VP), off in s (flow); benchmarks/results/solvers.md
            variable = not self.is_flow
        return GeneralizedHeavyBall(k, beta, bool(variable))
