"""What a guidance method sees at one denoising step, and the conversions between prediction spaces.

Notation (docs/design/guidance.md#notation-and-spaces): the model input is x_t = α x0 + σ ε (VP; for
Euler-type schedulers the pipeline has already divided by √(ρ² + 1), so x_t is VP-scaled) or
x_t = (1 − s) x0 + s ε (flow, α = 1 − s, σ = s). The model outputs ε (x̂0 = (x_t − σ ε̂)/α),
v (x̂0 = α x_t − σ v̂), x0 itself, or the flow velocity v = ε − x0 (x̂0 = x_t − s v̂). ρ = σ/α is the
EDM / k-diffusion sigma.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

PARAMETERIZATIONS = ("epsilon", "v_prediction", "sample", "flow")


def _per_sample(value: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor:
    """Broadcast a scalar or a (B,) tensor against ``like`` (B, ...)."""
    value = torch.as_tensor(value, dtype=like.dtype, device=like.device).reshape(-1)
    if value.numel() == 1:
        value = value.expand(like.shape[0])
    return value.reshape(-1, *([1] * (like.ndim - 1)))


def compute_dtype(t: torch.Tensor) -> torch.dtype:
    """float64 stays float64; everything else is computed in float32."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


@dataclass
class GuidanceContext:
    """One guided denoiser evaluation.

    Args:
        x: the model input of ONE half (B, ...), i.e. x_t for each sample.
        alpha: scalar or (B,) tensor α with x_t = α x0 + σ ε.
        sigma: scalar or (B,) tensor σ of the same relation.
        parameterization: ``"epsilon"``, ``"v_prediction"``, ``"sample"`` or ``"flow"``.
        guidance_scale: the scale w the method should use (the method's own or the pipeline's).
        step: index of this guided evaluation within the current generation (0-based).
        noise_fraction: t / T_train for VP models, s for flow models (1 = pure noise).
        next_alpha_sigma: (α', σ') of the sample the scheduler step will produce (only needed by CFG++ and
            the annealing head); ``None`` if unknown.
    """

    x: torch.Tensor
    alpha: torch.Tensor | float
    sigma: torch.Tensor | float
    parameterization: str
    guidance_scale: float
    step: int = 0
    noise_fraction: torch.Tensor | float | None = None
    next_alpha_sigma: tuple[torch.Tensor, torch.Tensor] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.parameterization not in PARAMETERIZATIONS:
            raise ValueError(
                f"parameterization must be one of {PARAMETERIZATIONS}, got {self.parameterization!r}."
            )

    @property
    def batch_size(self) -> int:
        return self.x.shape[0]

    def _coeffs(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        dtype = compute_dtype(like)
        x = self.x.to(dtype)
        return x, _per_sample(self.alpha, x), _per_sample(self.sigma, x)

    @property
    def rho(self) -> torch.Tensor:
        """ρ = σ/α per sample, float64, shape (B,)."""
        a = torch.as_tensor(self.alpha, dtype=torch.float64).reshape(-1)
        s = torch.as_tensor(self.sigma, dtype=torch.float64).reshape(-1)
        return (s / a).expand(self.batch_size) if a.numel() == 1 and s.numel() == 1 else s / a

    def to_x0(self, pred: torch.Tensor) -> torch.Tensor:
        """x̂0 from a model prediction (computed in float32/float64)."""
        x, a, s = self._coeffs(pred)
        p = pred.to(x.dtype)
        if self.parameterization == "epsilon":
            return (x - s * p) / a
        if self.parameterization == "v_prediction":
            return a * x - s * p
        if self.parameterization == "sample":
            return p
        return x - s * p  # flow: x0 = x_t - s v

    def from_x0(self, x0: torch.Tensor) -> torch.Tensor:
        """The model prediction that corresponds to x̂0 (inverse of :meth:`to_x0`, same compute dtype)."""
        x, a, s = self._coeffs(x0)
        d = x0.to(x.dtype)
        if self.parameterization == "epsilon":
            return (x - a * d) / s
        if self.parameterization == "v_prediction":
            return (a * x - d) / s
        if self.parameterization == "sample":
            return d
        return (x - d) / s
