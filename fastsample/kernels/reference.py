"""Pure-torch references for the fused kernels in :mod:`fastsample.kernels.triton_ops` (same signatures).

Every Triton kernel is tested against the function of the same name here; these are also the fallbacks used
when Triton is not installed. All math is done in fp32 and cast back to the input dtype, as the kernels do.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def adaln_modulate(
    x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, eps: float = 1e-6
) -> torch.Tensor:
    """adaLN modulation (DiT, Peebles & Xie 2023): ``LN(x) * (1 + scale[:, None]) + shift[:, None]``.

    ``x`` is ``[B, N, D]``, ``scale``/``shift`` are ``[B, D]``; LayerNorm has no affine parameters.
    """
    xf = x.float()
    normed = F.layer_norm(xf, (x.shape[-1],), eps=eps)
    return (normed * (1 + scale.float()[:, None]) + shift.float()[:, None]).to(x.dtype)


def gated_residual(residual: torch.Tensor, gate: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """adaLN-Zero gated residual: ``residual + gate[:, None] * y``.

    ``residual`` and ``y`` are ``[B, N, D]``, ``gate`` is ``[B, D]``.
    """
    return (residual.float() + gate.float()[:, None] * y.float()).to(residual.dtype)


def qk_rmsnorm_rope(
    x: torch.Tensor,
    weight: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    eps: float = 1e-6,
    sequence_dim: int = 2,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """SD3/Flux attention prologue: RMSNorm over the head dimension, then interleaved RoPE (Su et al. 2021).

    ``x`` is ``[B, H, N, Dh]`` (``sequence_dim=2``) or ``[B, N, H, Dh]`` (``sequence_dim=1``, Flux's
    processor layout), ``weight`` ``[Dh]``, ``cos``/``sin`` ``[N, Dh]`` (each frequency repeated for its pair,
    as diffusers' Flux ``FluxPosEmbed`` produces). With ``y = x / rms(x) * weight`` and pairs
    ``(y_{2i}, y_{2i+1})``: ``out_{2i} = y_{2i} cos - y_{2i+1} sin`` and
    ``out_{2i+1} = y_{2i+1} cos + y_{2i} sin``: diffusers' ``apply_rotary_emb(use_real=True,
    use_real_unbind_dim=-1)``. ``out``: optional tensor to write the result into (returned).
    """
    xf = x.float()
    y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps) * weight.float()
    even, odd = y[..., 0::2], y[..., 1::2]
    rotated = torch.stack([-odd, even], dim=-1).reshape(y.shape)
    if sequence_dim == 1:
        cos, sin = cos[:, None], sin[:, None]
    result = (y * cos.float() + rotated * sin.float()).to(x.dtype)
    if out is None:
        return result
    return out.copy_(result)


def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """Softmax attention ``softmax(q kᵀ / sqrt(Dh) + bias) v`` on ``[B, H, N, Dh]`` tensors, written out.

    ``bias`` is an additive mask broadcastable to ``[B, H, Nq, Nk]``.
    """
    scores = q.float() @ k.float().transpose(-1, -2) / math.sqrt(q.shape[-1])
    if bias is not None:
        scores = scores + bias.float()
    return (scores.softmax(-1) @ v.float()).to(q.dtype)


__all__ = ["adaln_modulate", "attention", "gated_residual", "qk_rmsnorm_rope"]
