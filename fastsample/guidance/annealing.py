"""Annealed guidance scales: analytic schedules over the noise level and the learned annealing scheduler.

Analytic schedules (τ = ``ctx.noise_fraction``: t/T for VP models, s for flow models; 1 = pure noise):

- ``"linear"``:  w_τ = 1 + 2 (w − 1)(1 − τ)          (guidance grows as the noise falls; mean over τ is w)
- ``"cosine"``:  w_τ = 1 + (w − 1)(1 + cos(π τ))     (same mean, flatter at both ends)
- ``"interval"``: w inside ρ ∈ (ρ_lo, ρ_hi] (ρ = σ/α, the EDM sigma), 1 outside, and outside the interval the
  unconditional pass is skipped (Kynkäänniemi et al., NeurIPS 2024, arXiv 2404.07724; SDXL interval
  (0.28, 5.42]). Using ρ makes the setting independent of the scheduler, step count and shift.

Learned (Yehezkel et al., "Navigating with Annealing Guidance Scale in Diffusion Space", arXiv 2506.24108):
a small MLP w_θ(t, ‖ε_u − ε_c‖, λ) (:class:`AnnealingHead`) picks the scale per sample and step, and the step
is CFG++-style (renoise with ε_u), which for one DDIM/Euler step equals CFG with
w_eff = w_θ σ α' / (σ α' − σ' α) (see :class:`~fastsample.guidance.methods.CFGPlusPlus`). λ ∈ [0, 1] trades
prompt alignment (high) against image quality (low). A head is tied to the model it was trained for.
"""

from __future__ import annotations

import math

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin

from .context import GuidanceContext, compute_dtype
from .methods import CFGPlusPlus, GuidanceMethod, GuidanceWindow, cfg_combine

SCHEDULES = ("linear", "cosine", "interval", "learned")


class AnnealingHead(ModelMixin, ConfigMixin):
    """w_θ of the annealing-guidance paper: three scalars, each embedded as [v, cos v, cos 2v, cos 3v] (12
    features), then Linear(12→H), ReLU, ``depth`` × [Linear(H→H), ReLU], Linear(H→1); w = w_scale·out +
    w_bias.

    Inputs per sample: the noise fraction τ (t/1000 in the paper), ‖ε_u − ε_c‖₂ / ``delta_scale`` (L2 over all
    latent elements) and λ.
    """

    @register_to_config
    def __init__(
        self,
        hidden_dim: int = 128,
        depth: int = 3,
        delta_scale: float = 5.0,
        w_scale: float = 1.0,
        w_bias: float = 1.0,
    ) -> None:
        super().__init__()
        layers: list[torch.nn.Module] = [torch.nn.Linear(12, hidden_dim), torch.nn.ReLU()]
        for _ in range(depth):
            layers += [torch.nn.Linear(hidden_dim, hidden_dim), torch.nn.ReLU()]
        layers.append(torch.nn.Linear(hidden_dim, 1))
        self.mlp = torch.nn.Sequential(*layers)

    @staticmethod
    def _embed(v: torch.Tensor) -> torch.Tensor:
        return torch.stack([v, torch.cos(v), torch.cos(2 * v), torch.cos(3 * v)], dim=-1)

    def forward(
        self, noise_fraction: torch.Tensor, delta_norm: torch.Tensor, lam: torch.Tensor
    ) -> torch.Tensor:
        """The guidance scale w (shape (B,)) for per-sample τ, ‖ε_u − ε_c‖ and λ."""
        dtype = self.mlp[0].weight.dtype
        b = delta_norm.shape[0]
        feats = [
            torch.as_tensor(v, dtype=dtype, device=self.mlp[0].weight.device).reshape(-1).expand(b)
            for v in (noise_fraction, delta_norm / self.config.delta_scale, lam)
        ]
        x = torch.cat([self._embed(f) for f in feats], dim=-1)
        return self.config.w_scale * self.mlp(x).squeeze(-1) + self.config.w_bias

    def window(
        self,
        *,
        lam: float = 0.4,
        delta_norm: float | None = None,
        fraction: float = 0.5,
        inner: GuidanceMethod | None = None,
        points: int = 1001,
    ) -> GuidanceWindow:
        """The guidance window this head's scale schedule asks for (a :class:`GuidanceWindow` over progress).

        w_θ(τ, δ, λ) is evaluated on ``points`` noise fractions τ ∈ [0, 1] at a fixed ‖ε_u − ε_c‖ = δ =
        ``delta_norm`` (default the head's own ``delta_scale``, i.e. a normalised input of 1) and λ = ``lam``;
        the window is the smallest progress interval [1 − τ_max, 1 − τ_min] holding every τ with
        w_θ − 1 ≥ ``fraction`` · max_τ (w_θ − 1). Inside it ``inner`` (default CFG) guides; outside, the
        unconditional pass is skipped.
        """
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"fraction must be in (0, 1], got {fraction}.")
        if not 0.0 <= lam <= 1.0:
            raise ValueError(f"lam (λ) must be in [0, 1], got {lam}.")
        if isinstance(points, bool) or not isinstance(points, int) or points < 2:
            raise ValueError(f"points must be an int >= 2, got {points!r}.")
        delta = float(self.config.delta_scale if delta_norm is None else delta_norm)
        if not math.isfinite(delta) or delta < 0:
            raise ValueError(f"delta_norm must be a finite number >= 0, got {delta_norm}.")
        tau = torch.linspace(0.0, 1.0, points, dtype=torch.float64)
        with torch.no_grad():
            w = self(tau, torch.full((points,), delta), torch.tensor(float(lam))).double().cpu()
        excess = w - 1.0
        peak = float(excess.max())
        if not peak > 0.0:
            raise ValueError(
                f"the annealing head asks for no guidance at any noise level (max w = {1 + peak:.4g} at "
                f"delta_norm={delta:g}, lam={lam:g}): there is no window to read."
            )
        selected = tau[excess >= fraction * peak]
        return GuidanceWindow(float(1.0 - selected.max()), float(1.0 - selected.min()), inner=inner)


def eps_from(pred: torch.Tensor, ctx: GuidanceContext) -> torch.Tensor:
    """ε̂ for any parameterisation: ε = (x_t − α x̂0)/σ (flow: x_t + (1 − s) v̂)."""
    if ctx.parameterization == "epsilon":
        return pred.to(compute_dtype(pred))
    x0 = ctx.to_x0(pred)
    x, a, s = ctx._coeffs(x0)
    return (x - a * x0) / s


class AnnealedGuidance(GuidanceMethod):
    """A guidance scale that changes with the noise level (analytic schedule) or is predicted (learned head).

    Args:
        schedule: ``"linear"``, ``"cosine"``, ``"interval"`` or ``"learned"`` (see the module docstring).
        guidance_scale: w ≥ 1 of the analytic schedules (``None``: the pipeline's). Unused by ``"learned"``.
        sigma_interval: (ρ_lo, ρ_hi) with 0 ≤ ρ_lo < ρ_hi for ``"interval"`` (default SDXL's (0.28, 5.42)).
        head: a trained :class:`AnnealingHead` (``schedule="learned"``).
        lam: λ ∈ [0, 1] for the learned head (paper's sample script: 0.4).
    """

    def __init__(
        self,
        schedule: str = "linear",
        guidance_scale: float | None = None,
        sigma_interval: tuple[float, float] = (0.28, 5.42),
        head: AnnealingHead | None = None,
        lam: float = 0.4,
    ) -> None:
        super().__init__(guidance_scale)
        if schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}.")
        lo, hi = sigma_interval
        if not (0.0 <= lo < hi):
            raise ValueError(f"sigma_interval must satisfy 0 <= lo < hi, got {sigma_interval}.")
        self._window = GuidanceWindow(lo, hi, over="sigma")
        if schedule == "learned" and not isinstance(head, AnnealingHead):
            raise ValueError(
                "schedule='learned' needs head=AnnealingHead (train one with `fastsample train-guidance`)."
            )
        if not 0.0 <= lam <= 1.0:
            raise ValueError(f"lam (λ) must be in [0, 1], got {lam}.")
        self.schedule = schedule
        self.sigma_interval = (float(lo), float(hi))
        self.head = head
        self.lam = float(lam)
        self.needs_next_sigma = schedule == "learned"

    def _noise_fraction(self, ctx: GuidanceContext) -> torch.Tensor:
        if ctx.noise_fraction is None:
            raise ValueError("AnnealedGuidance needs ctx.noise_fraction (t/T or s).")
        tau = torch.as_tensor(ctx.noise_fraction, dtype=torch.float64).reshape(-1)
        return tau.expand(ctx.batch_size) if tau.numel() == 1 else tau

    def _inside(self, ctx: GuidanceContext) -> torch.Tensor:
        return self._window.inside(ctx)

    def scale(self, ctx: GuidanceContext) -> torch.Tensor:
        """The analytic schedule's w per sample (float64, (B,))."""
        w = ctx.guidance_scale
        if self.schedule == "linear":
            return 1.0 + 2.0 * (w - 1.0) * (1.0 - self._noise_fraction(ctx))
        if self.schedule == "cosine":
            return 1.0 + (w - 1.0) * (1.0 + torch.cos(math.pi * self._noise_fraction(ctx)))
        if self.schedule == "interval":
            return torch.where(
                self._inside(ctx),
                torch.tensor(w, dtype=torch.float64),
                torch.tensor(1.0, dtype=torch.float64),
            )
        raise ValueError("the learned schedule has no analytic scale")

    def plan(self, ctx: GuidanceContext):
        if self.schedule == "interval" and not bool(self._inside(ctx).any()):
            return "cond"
        return "full"

    def learned_scale(self, cond: torch.Tensor, uncond: torch.Tensor, ctx: GuidanceContext) -> torch.Tensor:
        """w_θ per sample from the head (differentiable w.r.t. the head's parameters)."""
        delta = (eps_from(uncond, ctx) - eps_from(cond, ctx)).flatten(1).norm(dim=1)
        return self.head(self._noise_fraction(ctx), delta, torch.tensor(self.lam))

    def __call__(self, cond, uncond, ctx):
        if uncond is None:
            return cond
        dtype = compute_dtype(cond)
        if self.schedule == "learned":
            with torch.no_grad():
                w_theta = self.learned_scale(cond, uncond, ctx).double().cpu()
            w = CFGPlusPlus.effective_scale(w_theta, ctx)
        else:
            w = self.scale(ctx)
        w = w.to(cond.device, dtype).reshape(-1, *([1] * (cond.ndim - 1)))
        return cfg_combine(cond.to(dtype), uncond.to(dtype), w).to(cond.dtype)


__all__ = ["AnnealedGuidance", "AnnealingHead", "SCHEDULES", "eps_from"]
