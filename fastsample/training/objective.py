"""A drop-in diffusion training objective: timestep sampling, noising, target, loss weights and MixFlow.

It replaces the ~15 lines that every diffusers training script writes by hand (draw timesteps, add noise, pick
the target, compute Min-SNR weights) with two calls, for VP schedulers (``DDPMScheduler`` & co.: ε, x0 and v
targets) and flow matching (``FlowMatchEulerDiscreteScheduler``: target ``u = ε − x0``)::

    from fastsample.training import DiffusionObjective

    objective = DiffusionObjective(noise_scheduler, weighting="min_snr", gamma=5.0, sampler="uniform")
    for batch in dataloader:                      # the usual accelerate loop
        with accelerator.accumulate(model):
            b = objective.prepare(latents, generator=generator)
            pred = model(b.model_input, b.timesteps, class_labels=labels).sample
            loss = objective.loss(pred, b)
            accelerator.backward(loss)
            ...

``weighting="min_snr"`` applies :func:`~fastsample.training.weights.min_snr_weights` at the conditioning
timestep. ``sampler`` names a density from :mod:`fastsample.training.samplers` (VP timesteps are
``floor(t · T)``). ``mixflow_gamma`` turns on MixFlow (Li et al., arXiv 2512.19311): the network is
conditioned on the drawn level ``τ`` but sees the interpolation at a *slowed* level
``τ' ~ U[τ, τ + γ(1 − τ)]`` built from the same ``x0`` and ``ε``; the target is unchanged (``u = ε − x0``
for flow). The paper pairs it with the training-time density ``Beta(1, 2)`` (``sampler="beta"``) and γ = 0.4,
as post-training. The VP variant (``t' ~ U[t, t + γ(T − 1 − t)]``, target ε / x0 / v taken at the
conditioning ``t``) is this library's **experimental** extension, not in the paper.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch

from .samplers import sample_noise_levels, to_vp_timesteps
from .weights import PREDICTION_TYPES, _check_gamma, _is_flow_scheduler, min_snr_weights

__all__ = ["DiffusionObjective", "ObjectiveBatch", "WEIGHTINGS", "mixflow_slowed_levels"]

logger = logging.getLogger(__name__)

WEIGHTINGS = ("none", "min_snr")


@dataclass
class ObjectiveBatch:
    """What the model is called with (``model_input``, ``timesteps``) and what its output is scored on."""

    model_input: torch.Tensor
    timesteps: torch.Tensor
    target: torch.Tensor
    weights: torch.Tensor  # per-sample loss weights, shape [batch]
    noise: torch.Tensor


def mixflow_slowed_levels(
    t: torch.Tensor, gamma: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """MixFlow's slowed levels ``τ' = τ + ρ γ (1 − τ)``, ``ρ ~ U(0, 1)``: uniform on ``[τ, τ + γ(1 − τ)]``.

    ``t`` are noise levels in [0, 1] (1 = pure noise); ``0 < γ ≤ 1`` (the paper's default 0.4).
    """
    gamma = _check_gamma(gamma)
    if gamma > 1:
        raise ValueError(f"MixFlow gamma must lie in (0, 1], got {gamma}")
    rho = torch.rand(t.shape, generator=generator, dtype=torch.float64).to(t.device)
    return (t.to(torch.float64) + rho * gamma * (1.0 - t.to(torch.float64))).to(t.dtype)


class DiffusionObjective:
    """Training objective for a VP or flow-matching noise scheduler (see the module docstring for usage).

    Args:
        scheduler: the diffusers noise scheduler used for training (it is read, never modified).
        prediction_type: ``epsilon``, ``sample``, ``v_prediction`` (VP) or ``flow`` (FlowMatch); defaults to
            the scheduler's.
        weighting: ``none`` or ``min_snr`` (Min-SNR-γ, Hang et al. 2023).
        gamma: Min-SNR γ (> 0).
        sampler: noise-level density name (``uniform``, ``logit_normal``, ``mode``, ``cosmap``, ``beta``).
        sampler_kwargs: keyword arguments of :func:`~fastsample.training.samplers.sample_noise_levels`
            (``mean``, ``std``, ``mode_scale``, ``beta_a``, ``beta_b``, ``shift``).
        mixflow_gamma: MixFlow's mixture range γ in (0, 1], or None (off).
    """

    def __init__(
        self,
        scheduler: Any,
        *,
        prediction_type: str | None = None,
        weighting: str = "min_snr",
        gamma: float = 5.0,
        sampler: str = "uniform",
        sampler_kwargs: dict[str, float] | None = None,
        mixflow_gamma: float | None = None,
    ) -> None:
        self.is_flow = _is_flow_scheduler(scheduler)
        if not self.is_flow and not hasattr(scheduler, "alphas_cumprod"):
            raise TypeError(
                f"{type(scheduler).__name__} is not supported: use a VP scheduler (with alphas_cumprod) or a "
                "FlowMatch scheduler"
            )
        if prediction_type is None:
            prediction_type = "flow" if self.is_flow else scheduler.config.prediction_type
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")
        if self.is_flow != (prediction_type == "flow"):
            raise ValueError(f"prediction_type {prediction_type!r} does not match {type(scheduler).__name__}")
        if weighting not in WEIGHTINGS:
            raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
        self.scheduler = scheduler
        self.prediction_type = prediction_type
        self.weighting = weighting
        self.gamma = _check_gamma(gamma)
        self.sampler = sampler
        self.sampler_kwargs = dict(sampler_kwargs or {})
        sample_noise_levels(sampler, 1, **self.sampler_kwargs)  # validates the name and arguments early
        if mixflow_gamma is not None:
            mixflow_slowed_levels(torch.zeros(1), mixflow_gamma)  # validates the range
            if not self.is_flow:
                logger.warning("MixFlow on a VP schedule is experimental (not in the paper)")
        self.mixflow_gamma = mixflow_gamma
        self.num_train_timesteps = int(scheduler.config.num_train_timesteps)

    def prepare(
        self,
        x0: torch.Tensor,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> ObjectiveBatch:
        """Draw levels and noise for the clean batch ``x0`` and build the model input, target and weights.

        Randomness comes from ``generator`` (a CPU generator; results are moved to ``x0.device``).
        """
        if not isinstance(x0, torch.Tensor) or x0.ndim < 2:
            raise ValueError("x0 must be a tensor of shape [batch, ...]")
        n = x0.shape[0]
        if noise is None:
            noise = torch.randn(x0.shape, generator=generator, dtype=torch.float32).to(x0.device, x0.dtype)
        elif noise.shape != x0.shape:
            raise ValueError(f"noise shape {tuple(noise.shape)} differs from x0 shape {tuple(x0.shape)}")
        levels = sample_noise_levels(self.sampler, n, generator=generator, **self.sampler_kwargs)
        view = (n,) + (1,) * (x0.ndim - 1)
        if self.is_flow:
            sigma = levels.to(torch.float64)
            seen = sigma
            if self.mixflow_gamma is not None:
                seen = mixflow_slowed_levels(sigma, self.mixflow_gamma, generator)
            s = seen.to(x0.device, x0.dtype).view(view)
            model_input = (1.0 - s) * x0 + s * noise
            target = noise - x0
            timesteps = (sigma * self.num_train_timesteps).to(x0.device, torch.float32)
            snr = ((1.0 - sigma) / sigma) ** 2
            weights = (
                min_snr_weights(snr=snr, gamma=self.gamma, prediction_type="flow")
                if self.weighting == "min_snr"
                else torch.ones(n)
            )
        else:
            timesteps = to_vp_timesteps(levels, self.num_train_timesteps)
            seen = timesteps
            if self.mixflow_gamma is not None:
                # Uniform over the integers t' in [t, t + floor(γ (T - 1 - t))].
                span = torch.floor(self.mixflow_gamma * (self.num_train_timesteps - 1 - timesteps).double())
                rho = torch.rand(n, generator=generator, dtype=torch.float64)
                seen = timesteps + torch.minimum(torch.floor(rho * (span + 1.0)), span).long()
            abar = torch.as_tensor(self.scheduler.alphas_cumprod, dtype=torch.float64)
            a_seen = abar[seen].sqrt().to(x0.device, x0.dtype).view(view)
            s_seen = (1.0 - abar[seen]).sqrt().to(x0.device, x0.dtype).view(view)
            model_input = a_seen * x0 + s_seen * noise
            if self.prediction_type == "epsilon":
                target = noise
            elif self.prediction_type == "sample":
                target = x0
            else:  # v at the conditioning timestep
                a_t = abar[timesteps].sqrt().to(x0.device, x0.dtype).view(view)
                s_t = (1.0 - abar[timesteps]).sqrt().to(x0.device, x0.dtype).view(view)
                target = a_t * noise - s_t * x0
            weights = (
                min_snr_weights(self.scheduler, timesteps, self.gamma, self.prediction_type)
                if self.weighting == "min_snr"
                else torch.ones(n)
            )
            timesteps = timesteps.to(x0.device)
        return ObjectiveBatch(model_input, timesteps, target, weights.to(x0.device), noise)

    @staticmethod
    def loss(model_output: torch.Tensor, batch: ObjectiveBatch) -> torch.Tensor:
        """``mean_b( w_b · mean_{c,h,w} (pred − target)² )`` computed in float32."""
        if model_output.shape != batch.target.shape:
            raise ValueError(
                f"model output shape {tuple(model_output.shape)} differs from the target's "
                f"{tuple(batch.target.shape)} (split learned-variance channels off first)"
            )
        err = (model_output.float() - batch.target.float()) ** 2
        per_sample = err.flatten(1).mean(1)
        return (batch.weights.float() * per_sample).mean()

    def __repr__(self) -> str:
        mix = "" if self.mixflow_gamma is None else f", mixflow_gamma={self.mixflow_gamma}"
        return (
            f"{type(self).__name__}(prediction_type={self.prediction_type!r}, weighting={self.weighting!r}, "
            f"gamma={self.gamma}, sampler={self.sampler!r}{mix})"
        )
