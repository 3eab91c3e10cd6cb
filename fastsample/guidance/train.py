"""Training of the learned annealing scheduler (:class:`~fastsample.guidance.annealing.AnnealingHead`).

Objective (Yehezkel et al., arXiv 2506.24108, as described in docs/design/guidance.md#annealing-guidance):
sample a clean latent z0, a step i of the sampler grid, noise ε and λ ~ U[0, 1]; form z_i = α_i z0 + σ_i ε;
with the frozen denoiser get ε_c, ε_u at z_i; let w = w_θ(τ_i, ‖ε_u − ε_c‖, λ), ε̂ = ε_u + w (ε_c − ε_u) and
take one CFG++ DDIM step z_{i+1} = α_{i+1} x̂0(ε̂) + σ_{i+1} ε_u; run the frozen denoiser again at z_{i+1}
(gradients reach w_θ through z_{i+1}) and minimise

    L = λ ‖ε_c(z_{i+1}) − ε_u(z_{i+1})‖² + (1 − λ) ‖ε̂ − ε‖²      (mean over elements).

Data: no dataset is downloaded, so the clean latents and the conditioning are taken from the pipeline itself:
calibration calls of the pipeline with CFG are recorded (the denoiser's conditioning arguments and
timesteps at
every step, and the final conditional x̂0 of each sample as z0). The head therefore learns for this model, its
conditioning and its sampler grid. Batched CFG pipelines only (not Flux's separate calls). Runs under
``accelerate`` (one head, data-parallel over processes).
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from fastsample.integration.adapters import get_adapter

from .annealing import AnnealingHead
from .context import GuidanceContext

logger = logging.getLogger(__name__)


@dataclass
class _Step:
    args: tuple
    kwargs: dict
    alpha: torch.Tensor
    sigma: torch.Tensor
    noise_fraction: torch.Tensor


@dataclass
class Calibration:
    """One recorded pipeline call: per-step denoiser arguments and noise levels, and z0 per sample."""

    steps: list[_Step]
    z0: torch.Tensor
    cond_first: bool


def _detach(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, dict):
        return {k: _detach(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_detach(v) for v in value)
    return value


def record_calibration(pipe: Any, call_kwargs: dict[str, Any]) -> Calibration:
    """Run ``pipe(**call_kwargs)`` (CFG on) and record what the training loop needs."""
    adapter = get_adapter(pipe)
    if adapter.cfg_layout == "separate_calls":
        raise ValueError(
            f"training the annealing head supports batched CFG pipelines, not {type(pipe).__name__}."
        )
    denoiser = adapter.denoiser(pipe)
    kind = adapter.prediction_type(pipe)
    channels = adapter.guided_channels(pipe)
    cond_first = adapter.cfg_layout == "cond_first"
    steps: list[_Step] = []
    last: dict[str, Any] = {}

    def hook(module, args, kwargs, output):
        hidden = args[0] if args else kwargs.get("hidden_states", kwargs.get("sample"))
        timestep = kwargs["timestep"] if "timestep" in kwargs else args[1]
        n = hidden.shape[0]
        b = n // 2
        t = torch.as_tensor(timestep).reshape(-1)
        alpha, sigma = adapter.alpha_sigma(pipe, t[:1])
        frac = sigma if kind == "flow" else t[:1].double() / pipe.scheduler.config.num_train_timesteps
        steps.append(_Step(_detach(args), _detach(kwargs), alpha, sigma, frac))
        pred = (
            output
            if isinstance(output, torch.Tensor)
            else (output[0] if isinstance(output, tuple) else output.sample)
        )
        half = slice(0, b) if cond_first else slice(b, n)
        cond = pred[half] if channels is None else pred[half][:, :channels]
        ctx = GuidanceContext(hidden[half], alpha, sigma, kind, 1.0)
        last["z0"] = ctx.to_x0(cond).detach()

    handle = denoiser.register_forward_hook(hook, with_kwargs=True)
    try:
        pipe(**call_kwargs)
    finally:
        handle.remove()
    if len(steps) < 2:
        raise ValueError("calibration needs a run with at least 2 denoiser steps and CFG on.")
    if any(
        s.args[0].shape[0] % 2
        if s.args
        else s.kwargs.get("hidden_states", s.kwargs.get("sample")).shape[0] % 2
        for s in steps
    ):
        raise ValueError("calibration call did not run batched CFG (guidance scale must be > 1).")
    return Calibration(steps, last["z0"].float(), cond_first)


def _denoise(denoiser, step: _Step, z: torch.Tensor, cond_first: bool, channels: int | None, ctx_kind: str):
    """ε_c, ε_u of the frozen denoiser at z (both halves fed z)."""
    from .annealing import eps_from

    args, kwargs = list(step.args), dict(step.kwargs)
    hidden = torch.cat([z, z]).to(next(denoiser.parameters()).dtype)
    if args:
        args[0] = hidden
    elif "hidden_states" in kwargs:
        kwargs["hidden_states"] = hidden
    else:
        kwargs["sample"] = hidden
    kwargs["return_dict"] = False
    pred = denoiser(*args, **kwargs)[0].float()
    b = z.shape[0]
    c, u = (pred[:b], pred[b:]) if cond_first else (pred[b:], pred[:b])
    if channels is not None:
        c, u = c[:, :channels], u[:, :channels]
    ctx = GuidanceContext(z, step.alpha.float(), step.sigma.float(), ctx_kind, 1.0)
    return eps_from(c, ctx), eps_from(u, ctx)


def train_annealing_head(
    pipe: Any,
    calibration_calls: list[dict[str, Any]],
    head: AnnealingHead | None = None,
    num_train_steps: int = 1000,
    learning_rate: float = 1e-3,
    seed: int = 0,
    accelerator: Any | None = None,
    progress: bool = True,
) -> AnnealingHead:
    """Train an :class:`AnnealingHead` for ``pipe`` (see the module docstring for the objective and data)."""
    from accelerate import Accelerator

    if num_train_steps < 1:
        raise ValueError(f"num_train_steps must be >= 1, got {num_train_steps}.")
    if not calibration_calls:
        raise ValueError("calibration_calls must contain at least one set of pipeline kwargs.")
    adapter = get_adapter(pipe)
    kind = adapter.prediction_type(pipe)
    channels = adapter.guided_channels(pipe)
    calibrations = [record_calibration(pipe, kw) for kw in calibration_calls]
    # (α', σ') of step i is step i+1's (α, σ): the training pairs use the sampler's own grid

    accelerator = accelerator or Accelerator()
    head = head if head is not None else AnnealingHead()
    optimizer = torch.optim.Adam(head.parameters(), lr=learning_rate)
    head, optimizer = accelerator.prepare(head, optimizer)
    denoiser = adapter.denoiser(pipe)
    denoiser.requires_grad_(False)
    rng = random.Random(seed + accelerator.process_index)
    gen = torch.Generator().manual_seed(seed + accelerator.process_index)
    head.train()
    bar = tqdm(
        range(num_train_steps),
        disable=not (progress and accelerator.is_local_main_process),
        desc="train-guidance",
    )
    for _ in bar:
        cal = calibrations[rng.randrange(len(calibrations))]
        i = rng.randrange(len(cal.steps) - 1)
        step, nxt = cal.steps[i], cal.steps[i + 1]
        z0 = cal.z0
        eps = torch.randn(z0.shape, generator=gen).to(z0.device)
        lam = torch.rand(z0.shape[0], generator=gen).to(z0.device)
        a, s = float(step.alpha), float(step.sigma)
        a_next, s_next = float(nxt.alpha), float(nxt.sigma)
        z_t = a * z0 + s * eps
        with torch.no_grad():
            eps_c, eps_u = _denoise(denoiser, step, z_t, cal.cond_first, channels, kind)
        delta = (eps_u - eps_c).flatten(1).norm(dim=1)
        w = head(step.noise_fraction.float().expand(z0.shape[0]), delta, lam)
        w4 = w.reshape(-1, *([1] * (z0.ndim - 1)))
        eps_hat = eps_u + w4 * (eps_c - eps_u)
        x0_hat = (z_t - s * eps_hat) / a
        z_next = a_next * x0_hat + s_next * eps_u
        eps_c2, eps_u2 = _denoise(denoiser, nxt, z_next, cal.cond_first, channels, kind)
        align = (eps_c2 - eps_u2).pow(2).flatten(1).mean(dim=1)
        quality = (eps_hat - eps).pow(2).flatten(1).mean(dim=1)
        loss = (lam * align + (1 - lam) * quality).mean()
        optimizer.zero_grad()
        accelerator.backward(loss)
        optimizer.step()
        bar.set_postfix(loss=float(loss.detach()))
    head.eval()
    return accelerator.unwrap_model(head)


__all__ = ["Calibration", "record_calibration", "train_annealing_head"]
