"""Signal-to-noise ratios and Min-SNR-γ loss weights for any diffusers noise scheduler.

Min-SNR-γ (Hang et al., "Efficient Diffusion Training via Min-SNR Weighting Strategy", ICCV 2023) clamps the
weight on the x0-space error to ``min(SNR, γ)``. A model trained on another target sees the same objective
through the factor ``k`` between its error and the x0 error (``‖x̂0 − x0‖² = k · ‖pred − target‖²``):

==================  =======================  ==========================================
prediction type     k                        weight on that target's per-sample MSE
==================  =======================  ==========================================
``epsilon``         1 / SNR                  min(SNR, γ) / SNR = min(1, γ / SNR)
``sample`` (x0)     1                        min(SNR, γ)
``v_prediction``    1 / (SNR + 1)            min(SNR, γ) / (SNR + 1)
``flow`` (u = ε−x0) s² = 1 / (1 + √SNR)²     s² · min(SNR, γ) = min((1 − s)², γ s²)
==================  =======================  ==========================================

VP schedules (DDPM, DiT, SD): ``x_t = √ᾱ x0 + √(1−ᾱ) ε`` and ``SNR = ᾱ / (1 − ᾱ)``. Flow matching (SD3, Flux,
diffusers ``FlowMatchEulerDiscreteScheduler``): ``x_s = (1 − s) x0 + s ε``, ``SNR = ((1 − s) / s)²``.

All weights are finite at the ends: at SNR = 0 (zero-terminal-SNR schedules) the ε weight is its limit 1 (the
official code's fix, where diffusers' example formula gives 0/0 = NaN), and the v, x0 and flow weights are
0, 0 and 0; at SNR = ∞ they are 0, γ, 0 and 0. Apply the weight to the per-sample MSE (mean over C, H, W) and
then average over the batch: ``loss = (min_snr_weights(scheduler, t) * mse_per_sample).mean()``.
"""

from __future__ import annotations

import math
from typing import Any

import torch

__all__ = ["PREDICTION_TYPES", "compute_snr", "min_snr_weights"]

PREDICTION_TYPES = ("epsilon", "sample", "v_prediction", "flow")


def _is_flow_scheduler(scheduler: Any) -> bool:
    return not hasattr(scheduler, "alphas_cumprod") and "FlowMatch" in type(scheduler).__name__


def compute_snr(scheduler: Any, timesteps: torch.Tensor) -> torch.Tensor:
    """SNR at ``timesteps`` for a VP scheduler (has ``alphas_cumprod``) or a flow-matching scheduler.

    VP: ``timesteps`` are integer training indices, ``SNR = ᾱ_t / (1 − ᾱ_t)``.
    Flow matching: ``timesteps`` are diffusers' ``1000 · s`` (``s = timesteps / num_train_timesteps``),
    ``SNR = ((1 − s) / s)²``. Returned in float64 on ``timesteps``' device; may contain 0 and ``inf``.
    """
    if not isinstance(timesteps, torch.Tensor):
        raise TypeError(f"timesteps must be a torch.Tensor, got {type(timesteps).__name__}")
    if hasattr(scheduler, "alphas_cumprod"):
        if timesteps.dtype.is_floating_point and not torch.equal(timesteps, timesteps.round()):
            raise ValueError("timesteps for a VP scheduler must be integer training indices")
        alphas_cumprod = torch.as_tensor(scheduler.alphas_cumprod).to(timesteps.device, torch.float64)
        index = timesteps.long()
        if index.numel() and (index.min() < 0 or index.max() >= len(alphas_cumprod)):
            raise ValueError(f"timesteps must lie in [0, {len(alphas_cumprod)})")
        abar = alphas_cumprod[index]
        return abar / (1.0 - abar)
    if _is_flow_scheduler(scheduler):
        s = timesteps.to(torch.float64) / float(scheduler.config.num_train_timesteps)
        if s.numel() and (s.min() < 0 or s.max() > 1):
            raise ValueError("flow-matching timesteps must lie in [0, num_train_timesteps]")
        return ((1.0 - s) / s) ** 2
    raise TypeError(
        f"cannot compute the SNR of {type(scheduler).__name__}: supported are VP schedulers with "
        "`alphas_cumprod` (DDPM, DDIM, DPM-Solver, Euler, ...) and FlowMatch schedulers; otherwise pass snr="
    )


def _check_gamma(gamma: float) -> float:
    is_number = isinstance(gamma, int | float) and not isinstance(gamma, bool)
    if not is_number or not math.isfinite(gamma) or gamma <= 0:
        raise ValueError(f"gamma must be a finite number > 0, got {gamma!r}")
    return float(gamma)


def _check_prediction_type(prediction_type: str) -> str:
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")
    return prediction_type


def min_snr_weights(
    scheduler: Any = None,
    timesteps: torch.Tensor | None = None,
    gamma: float = 5.0,
    prediction_type: str | None = None,
    *,
    snr: torch.Tensor | None = None,
) -> torch.Tensor:
    """Min-SNR-γ weights for the per-sample MSE of ``prediction_type`` (formulas in the module docstring).

    Args:
        scheduler: the noise scheduler used for training (VP or FlowMatch); or None when ``snr`` is given.
        timesteps: the training timesteps of the batch (see :func:`compute_snr`).
        gamma: γ > 0 (the paper's default 5).
        prediction_type: ``epsilon``, ``sample``, ``v_prediction`` or ``flow``. Defaults to the scheduler's
            ``config.prediction_type`` (``flow`` for FlowMatch schedulers); required with ``snr``.
        snr: the SNR per sample instead of ``scheduler`` + ``timesteps`` (values in [0, ∞]).

    Returns:
        float32 weights with the shape of ``timesteps`` / ``snr``, finite everywhere.
    """
    gamma = _check_gamma(gamma)
    if snr is not None:
        if scheduler is not None or timesteps is not None:
            raise ValueError("pass either snr or scheduler + timesteps, not both")
        if prediction_type is None:
            raise ValueError("prediction_type is required when snr is given")
        if not isinstance(snr, torch.Tensor):
            raise TypeError(f"snr must be a torch.Tensor, got {type(snr).__name__}")
        if torch.isnan(snr).any() or (snr < 0).any():
            raise ValueError("snr must be >= 0 and not NaN")
        snr = snr.to(torch.float64)
    else:
        if scheduler is None or timesteps is None:
            raise ValueError("pass scheduler and timesteps, or snr")
        if prediction_type is None:
            prediction_type = "flow" if _is_flow_scheduler(scheduler) else scheduler.config.prediction_type
        snr = compute_snr(scheduler, timesteps)
    prediction_type = _check_prediction_type(prediction_type)

    clamped = torch.clamp(snr, max=gamma)  # min(SNR, γ), finite everywhere
    if prediction_type == "sample":
        weight = clamped
    elif prediction_type == "epsilon":
        # min(1, γ / SNR): 1 at SNR = 0 (the limit), 0 at SNR = ∞.
        weight = torch.clamp(gamma / snr, max=1.0)
    elif prediction_type == "v_prediction":
        weight = clamped / (snr + 1.0)  # γ / ∞ = 0 at SNR = ∞
    else:  # flow: s² min(SNR, γ) with s = 1 / (1 + √SNR)
        weight = clamped / (1.0 + torch.sqrt(snr)) ** 2
    return weight.to(torch.float32)
