"""DPM-Solver++(2M) with heavy-ball momentum (Wizadwongsa et al., ICLR 2024, §4; arXiv 2307.11118).

DPM-Solver++(2M), midpoint form, data prediction (Lu et al. 2022): with λ = log(α/σ), h = λ_{n+1} − λ_n and
r = (λ_n − λ_{n−1})/h, D_n = x̂0_n + (x̂0_n − x̂0_{n−1})/(2r) and

    x_{n+1} = (σ_{n+1}/σ_n)·x_n − α_{n+1}·(e^{−h} − 1)·V_n,   V_n = (1 − β)·V_{n−1} + β·D_n,

V starting at the first second-order D. First-order steps (the first one, ``lower_order_final``) are
unchanged and do not touch V. β = 1 is diffusers' ``DPMSolverMultistepScheduler`` itself: everything except
the second-order update is inherited, and that update equals the parent's up to float rounding.
"""

from __future__ import annotations

import inspect
import math

import torch
from diffusers import DPMSolverMultistepScheduler
from diffusers.configuration_utils import register_to_config

from fastsample.solvers.kwargs_check import StrictKwargsMixin


def _with_momentum_signature(func):
    """Give ``func`` DPMSolverMultistepScheduler's init signature plus ``momentum=0.8`` (for ConfigMixin)."""
    base = inspect.signature(DPMSolverMultistepScheduler.__init__)
    params = list(base.parameters.values())
    params.append(inspect.Parameter("momentum", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=0.8))
    func.__signature__ = base.replace(parameters=params)
    return func


class MomentumDPMSolverMultistepScheduler(StrictKwargsMixin, DPMSolverMultistepScheduler):
    """``DPMSolverMultistepScheduler`` (dpmsolver++, midpoint, ``solver_order=2``) with momentum β in (0, 1].

    All of diffusers' config keys apply (Karras/Lu/exponential/beta sigmas, ``use_flow_sigmas``, ...).
    """

    @register_to_config
    @_with_momentum_signature
    def __init__(self, *args, **kwargs):
        beta = self.config.momentum
        if isinstance(beta, bool) or not isinstance(beta, int | float) or not math.isfinite(beta):
            raise TypeError(f"`momentum` must be a number in (0, 1], got {beta!r}")
        if not 0.0 < beta <= 1.0:
            raise ValueError(f"`momentum` (β) must lie in (0, 1], got {beta}")
        dpm_params = inspect.signature(DPMSolverMultistepScheduler.__init__).parameters
        dpm_keys = [k for k in dpm_params if k != "self"]
        DPMSolverMultistepScheduler.__init__.__wrapped__(self, **{k: self.config[k] for k in dpm_keys})
        cfg = self.config
        if cfg.algorithm_type != "dpmsolver++" or cfg.solver_type != "midpoint" or cfg.solver_order != 2:
            raise ValueError(
                "momentum is implemented for algorithm_type='dpmsolver++', solver_type='midpoint', "
                f"solver_order=2; got {cfg.algorithm_type!r}, {cfg.solver_type!r}, {cfg.solver_order}"
            )
        self._velocity: torch.Tensor | None = None

    def set_timesteps(self, *args, **kwargs) -> None:
        """diffusers' grid; also resets the momentum velocity."""
        super().set_timesteps(*args, **kwargs)
        self._velocity = None

    def multistep_dpm_solver_second_order_update(
        self,
        model_output_list: list[torch.Tensor],
        *args,
        sample: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        **kwargs,
    ) -> torch.Tensor:
        """The DPM-Solver++(2M) midpoint step with the momentum velocity V in place of D."""
        if sample is None:
            if len(args) > 2:
                sample = args[2]
            else:
                raise ValueError("missing `sample` as a required keyword argument")
        i = self.step_index
        alpha_t, sigma_t = self._sigma_to_alpha_sigma_t(self.sigmas[i + 1])
        alpha_s0, sigma_s0 = self._sigma_to_alpha_sigma_t(self.sigmas[i])
        alpha_s1, sigma_s1 = self._sigma_to_alpha_sigma_t(self.sigmas[i - 1])
        lambda_t = torch.log(alpha_t) - torch.log(sigma_t)
        lambda_s0 = torch.log(alpha_s0) - torch.log(sigma_s0)
        lambda_s1 = torch.log(alpha_s1) - torch.log(sigma_s1)
        m0, m1 = model_output_list[-1], model_output_list[-2]
        h, h_0 = lambda_t - lambda_s0, lambda_s0 - lambda_s1
        # schedule scalars live on the CPU (diffusers keeps `sigmas` there): plain floats, fused tensor ops
        r0 = float(h_0 / h)
        decay = float(sigma_t / sigma_s0)
        gain = float(alpha_t * (torch.exp(-h) - 1.0))
        d = torch.add(m0, m0 - m1, alpha=0.5 / r0)  # D = x̂0_n + (x̂0_n − x̂0_{n−1})/(2r)
        beta = float(self.config.momentum)
        if self._velocity is None or beta == 1.0:
            self._velocity = d
        else:
            self._velocity = torch.lerp(self._velocity, d, beta)
        return torch.add(sample * decay, self._velocity, alpha=-gain)
