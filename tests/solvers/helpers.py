"""Shared pieces for the solver tests: SD1.5's scheduler config, deterministic pseudo-models and a loop."""

from __future__ import annotations

import torch

SD15 = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    set_alpha_to_one=False,
    steps_offset=1,
    clip_sample=False,
)


def vp_pseudo_model(alphas_cumprod: torch.Tensor, data_std: float = 0.5):
    """A smooth deterministic ε-model: the exact denoiser of N(0, s²) plus a nonlinear term, at integer t."""
    ac = alphas_cumprod.double()

    def model(x: torch.Tensor, t) -> torch.Tensor:
        abar = ac[int(t)]
        a, s = abar.sqrt(), (1 - abar).sqrt()
        xd = x.double()
        return (s * xd / (a * a * data_std**2 + s * s) + 0.05 * torch.sin(3 * xd)).float()

    return model


def flow_pseudo_model(x: torch.Tensor, t) -> torch.Tensor:
    """A smooth deterministic velocity model for flow-matching schedules."""
    return x - 0.3 * torch.tanh(x) + 0.01 * float(t) / 1000


def sample_loop(scheduler, model, x: torch.Tensor, *, record: bool = False, **set_kwargs):
    """set_timesteps then the pipeline loop; the final sample (and every intermediate if ``record``)."""
    scheduler.set_timesteps(**set_kwargs)
    trace = []
    for t in scheduler.timesteps:
        model_input = scheduler.scale_model_input(x, t) if hasattr(scheduler, "scale_model_input") else x
        x = scheduler.step(model(model_input, t), t, x).prev_sample
        trace.append(x)
    return (x, trace) if record else x
