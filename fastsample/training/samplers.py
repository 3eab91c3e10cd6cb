"""Training-time samplers of the noise level ``t ∈ (0, 1)`` (``t`` = noise level: 0 is data, 1 is pure noise).

The densities are those of Esser et al., "Scaling Rectified Flow Transformers for High-Resolution Image
Synthesis" (SD3, 2024), §3.1, all written in the paper's convention where larger ``t`` means more noise:

* ``uniform``: ``t ~ U(0, 1)``.
* ``logit_normal(m, s)``: ``t = sigmoid(n)``, ``n ~ N(m, s²)``; **m > 0 favours noise**, as in the paper.
  Note on diffusers: its SD3/Flux scripts draw ``u = sigmoid(N(logit_mean, logit_std²))`` and then index the
  *descending* ``scheduler.timesteps`` with ``u``, so their noise level is ≈ ``1 − u``: diffusers'
  ``--logit_mean m`` corresponds to ``logit_normal(mean=-m)`` here.
* ``mode(s)``: ``t = 1 − u − s (cos²(πu/2) − 1 + u)``, ``u ~ U(0, 1)``; symmetric about 1/2, ``s = 0`` is
  uniform, ``s > 0`` favours the middle (monotone for ``-1 ≤ s ≤ 2/(π − 2)``; the paper uses 1.29).
* ``cosmap``: density ``π(t) = 2 / (π (1 − 2t + 2t²))``, drawn by its inverse CDF
  ``t = 1 − 1 / (tan(πu/2) + 1)``. (diffusers' ``compute_density_for_timestep_sampling("cosmap")`` silently
  returns a uniform ``u``.)
* ``beta(a, b)``: ``t ~ Beta(a, b)``; MixFlow's training-time density is ``beta(1, 2)`` (``t = 1 − √r``).

``shift`` applies SD3's resolution shift ``t ← k t / (1 + (k − 1) t)`` after drawing. :func:`to_vp_timesteps`
maps ``t`` to the integer indices of a ``num_train_timesteps``-step VP schedule.
"""

from __future__ import annotations

import math

import torch

__all__ = ["SAMPLER_NAMES", "sample_noise_levels", "shift_noise_levels", "to_vp_timesteps"]

SAMPLER_NAMES = ("uniform", "logit_normal", "mode", "cosmap", "beta")
_MODE_SCALE_MAX = 2.0 / (math.pi - 2.0)


def shift_noise_levels(t: torch.Tensor, shift: float) -> torch.Tensor:
    """SD3's shift ``k t / (1 + (k − 1) t)`` (``k > 0``; ``k > 1`` moves mass towards noise)."""
    if not math.isfinite(shift) or shift <= 0:
        raise ValueError(f"shift must be a finite number > 0, got {shift!r}")
    return shift * t / (1.0 + (shift - 1.0) * t)


def sample_noise_levels(
    name: str,
    n: int,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    mean: float = 0.0,
    std: float = 1.0,
    mode_scale: float = 1.29,
    beta_a: float = 1.0,
    beta_b: float = 2.0,
    shift: float = 1.0,
) -> torch.Tensor:
    """Draw ``n`` noise levels ``t ∈ (0, 1)`` (float32) from the sampler ``name`` (see the module docstring).

    ``mean``/``std`` parametrise ``logit_normal`` (the paper's sign: ``mean > 0`` = more noise),
    ``mode_scale`` parametrises ``mode`` and ``beta_a``/``beta_b`` parametrise ``beta``.
    """
    if name not in SAMPLER_NAMES:
        raise ValueError(f"sampler must be one of {SAMPLER_NAMES}, got {name!r}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    u = torch.rand(n, generator=generator, dtype=torch.float64)
    if name == "uniform":
        t = u
    elif name == "logit_normal":
        if not std > 0:
            raise ValueError(f"std must be > 0, got {std!r}")
        t = torch.sigmoid(mean + std * torch.randn(n, generator=generator, dtype=torch.float64))
    elif name == "mode":
        if not -1.0 <= mode_scale <= _MODE_SCALE_MAX:
            raise ValueError(f"mode_scale must lie in [-1, {_MODE_SCALE_MAX:.4f}] to give a density")
        t = 1.0 - u - mode_scale * (torch.cos(math.pi / 2 * u) ** 2 - 1.0 + u)
    elif name == "cosmap":
        t = 1.0 - 1.0 / (torch.tan(math.pi / 2 * u) + 1.0)
    else:
        if not (beta_a > 0 and beta_b > 0):
            raise ValueError(f"beta_a and beta_b must be > 0, got {beta_a!r}, {beta_b!r}")
        # torch's Beta cannot take a generator, so draw by the inverse CDF.
        t = _beta_draw(u, beta_a, beta_b)
    if shift != 1.0:
        t = shift_noise_levels(t, shift)
    t = t.clamp(1e-6, 1.0 - 1e-6).to(torch.float32)
    return t if device is None else t.to(device)


def _beta_draw(u: torch.Tensor, a: float, b: float) -> torch.Tensor:
    """Inverse CDF of Beta(a, b) at ``u`` (closed form when a or b is 1, scipy otherwise)."""
    if a == 1.0:
        return 1.0 - (1.0 - u) ** (1.0 / b)
    if b == 1.0:
        return u ** (1.0 / a)
    try:
        from scipy.special import betaincinv
    except ImportError as error:  # pragma: no cover - scipy is a test dependency
        raise ImportError("beta sampling with a != 1 and b != 1 needs scipy: pip install scipy") from error
    return torch.from_numpy(betaincinv(a, b, u.numpy()))


def to_vp_timesteps(t: torch.Tensor, num_train_timesteps: int) -> torch.Tensor:
    """Map noise levels ``t ∈ (0, 1)`` to integer VP training indices ``floor(t · T)`` in ``[0, T − 1]``."""
    return torch.clamp((t.to(torch.float64) * num_train_timesteps).long(), 0, num_train_timesteps - 1)
