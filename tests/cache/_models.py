"""Tiny bare transformers of the four supported families and a scheduler-free sampling loop for them."""

from __future__ import annotations

import torch

from fastsample import testing

FAMILIES = ("dit", "pixart", "sd3", "flux")

_BUILDERS = {
    "dit": testing.tiny_dit_transformer,
    "pixart": testing.tiny_pixart_transformer,
    "sd3": testing.tiny_sd3_transformer,
    "flux": testing.tiny_flux_transformer,
}


def tiny_model(family: str, seed: int = 0) -> torch.nn.Module:
    return _BUILDERS[family](seed=seed)


def model_inputs(
    model: torch.nn.Module, family: str, batch: int = 2, seed: int = 0
) -> tuple[torch.Tensor, dict]:
    """(initial latents, constant conditioning kwargs) for ``model``; batch = CFG-doubled batch."""
    g = torch.Generator().manual_seed(seed)
    c = model.config
    if family == "dit":
        x = torch.randn(batch, c.in_channels, c.sample_size, c.sample_size, generator=g)
        labels = torch.tensor([1, c.num_embeds_ada_norm] * (batch // 2)).reshape(2, -1).flatten()
        return x, {"class_labels": labels}
    if family == "pixart":
        x = torch.randn(batch, c.in_channels, c.sample_size, c.sample_size, generator=g)
        text = torch.randn(batch, 5, c.caption_channels, generator=g)
        return x, {
            "encoder_hidden_states": text,
            "added_cond_kwargs": {"resolution": None, "aspect_ratio": None},
        }
    if family == "sd3":
        x = torch.randn(batch, c.in_channels, c.sample_size, c.sample_size, generator=g)
        text = torch.randn(batch, 5, c.joint_attention_dim, generator=g)
        pooled = torch.randn(batch, c.pooled_projection_dim, generator=g)
        return x, {"encoder_hidden_states": text, "pooled_projections": pooled}
    if family == "flux":
        side, length = 4, 5
        x = torch.randn(batch, side * side, c.in_channels, generator=g)
        img_ids = torch.zeros(side * side, 3)
        img_ids[:, 1] = torch.arange(side).repeat_interleave(side)
        img_ids[:, 2] = torch.arange(side).repeat(side)
        return x, {
            "encoder_hidden_states": torch.randn(batch, length, c.joint_attention_dim, generator=g),
            "pooled_projections": torch.randn(batch, c.pooled_projection_dim, generator=g),
            "img_ids": img_ids,
            "txt_ids": torch.zeros(length, 3),
            "guidance": torch.full((batch,), 3.5),
        }
    raise ValueError(family)


@torch.no_grad()
def sample(model: torch.nn.Module, family: str, steps: int = 4, seed: int = 0) -> torch.Tensor:
    """A deterministic Euler-like loop x ← x − 0.2·f(x, t) over ``steps`` decreasing timesteps."""
    x, cond = model_inputs(model, family, seed=seed)
    for t in torch.linspace(900, 100, steps):
        timestep = (t / 1000 if family == "flux" else t).expand(x.shape[0])
        out = model(x, timestep=timestep, **cond).sample
        x = x - 0.2 * out[:, : x.shape[1]]
    return x
