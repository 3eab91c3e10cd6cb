"""Triton kernels (optional dependency ``triton``): fused adaLN modulation, gated residual, QK-RMSNorm + RoPE
and a flash-style attention forward. Each has a pure-torch reference of the same name in
:mod:`fastsample.kernels.reference`; the tests run them on CPU under ``TRITON_INTERPRET=1``.

``triton`` is imported when this module is imported; the rest of fastsample imports it lazily. Under
``torch.compile`` the launches are captured by dynamo on CUDA (not verified here: no GPU); in the CPU
interpreter they are excluded from the graph (``torch.compiler.disable``, a graph break each).
Rows are processed by one program each with the feature dimension padded to the next power of two and
masked, so any width works (DiT/PixArt head dimension 72 runs as a 128-wide block with 56 masked lanes).
"""

from __future__ import annotations

import math
import os
from typing import Any

import torch
import triton
import triton.language as tl


def _launch(kernel: Any, grid: tuple[int, ...], *args: Any, **meta: Any) -> None:
    kernel[grid](*args, **meta)


if os.environ.get("TRITON_INTERPRET") == "1":
    # dynamo cannot trace Triton's CPU interpreter (it fails inside it): under torch.compile the launches then
    # run eagerly, outside the graph (one graph break each). On CUDA dynamo captures the Triton kernels.
    _launch = torch.compiler.disable(_launch)


def _rows(x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    x2 = x.contiguous()
    width = x2.shape[-1]
    return x2, x2.numel() // width, width


@triton.jit
def _adaln_kernel(x_ptr, scale_ptr, shift_ptr, out_ptr, n_tokens, width, eps, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    batch = row // n_tokens
    cols = tl.arange(0, BLOCK)
    mask = cols < width
    x = tl.load(x_ptr + row * width + cols, mask=mask, other=0.0).to(tl.float32)
    mean = tl.sum(x, axis=0) / width
    diff = tl.where(mask, x - mean, 0.0)
    var = tl.sum(diff * diff, axis=0) / width
    normed = diff / tl.sqrt(var + eps)
    scale = tl.load(scale_ptr + batch * width + cols, mask=mask, other=0.0).to(tl.float32)
    shift = tl.load(shift_ptr + batch * width + cols, mask=mask, other=0.0).to(tl.float32)
    out = normed * (1.0 + scale) + shift
    tl.store(out_ptr + row * width + cols, out.to(out_ptr.dtype.element_ty), mask=mask)


def adaln_modulate(
    x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, eps: float = 1e-6
) -> torch.Tensor:
    """Fused ``LN(x) * (1 + scale[:, None]) + shift[:, None]`` (see :func:`reference.adaln_modulate`)."""
    x2, n_rows, width = _rows(x)
    out = torch.empty_like(x2)
    _launch(
        _adaln_kernel,
        (n_rows,),
        x2,
        scale.contiguous(),
        shift.contiguous(),
        out,
        x.shape[1],
        width,
        eps,
        BLOCK=triton.next_power_of_2(width),
    )
    return out


@triton.jit
def _gated_residual_kernel(res_ptr, gate_ptr, y_ptr, out_ptr, n_tokens, width, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    batch = row // n_tokens
    cols = tl.arange(0, BLOCK)
    mask = cols < width
    res = tl.load(res_ptr + row * width + cols, mask=mask, other=0.0).to(tl.float32)
    y = tl.load(y_ptr + row * width + cols, mask=mask, other=0.0).to(tl.float32)
    gate = tl.load(gate_ptr + batch * width + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * width + cols, (res + gate * y).to(out_ptr.dtype.element_ty), mask=mask)


def gated_residual(residual: torch.Tensor, gate: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Fused ``residual + gate[:, None] * y`` (see :func:`reference.gated_residual`)."""
    res2, n_rows, width = _rows(residual)
    out = torch.empty_like(res2)
    _launch(
        _gated_residual_kernel,
        (n_rows,),
        res2,
        gate.contiguous(),
        y.contiguous(),
        out,
        residual.shape[1],
        width,
        BLOCK=triton.next_power_of_2(width),
    )
    return out


@triton.jit
def _qk_norm_rope_kernel(
    x_ptr,
    w_ptr,
    cos_ptr,
    sin_ptr,
    out_ptr,
    n_seq,
    n_heads,
    width,
    sx_b,
    sx_s,
    sx_h,
    so_b,
    so_s,
    so_h,
    eps,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0)  # rows enumerate (batch, token, head)
    head = row % n_heads
    token = (row // n_heads) % n_seq
    batch = row // (n_heads * n_seq)
    x_row = x_ptr + batch * sx_b + token * sx_s + head * sx_h
    cols = tl.arange(0, BLOCK)
    mask = cols < width
    partner = cols ^ 1  # the other element of the RoPE pair (2i <-> 2i+1)
    x = tl.load(x_row + cols, mask=mask, other=0.0).to(tl.float32)
    xp = tl.load(x_row + partner, mask=mask, other=0.0).to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(x * x, axis=0) / width + eps)
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    wp = tl.load(w_ptr + partner, mask=mask, other=0.0).to(tl.float32)
    y = x * rstd * w
    yp = xp * rstd * wp
    rotated = tl.where(cols % 2 == 0, -yp, yp)
    c = tl.load(cos_ptr + token * width + cols, mask=mask, other=0.0).to(tl.float32)
    s = tl.load(sin_ptr + token * width + cols, mask=mask, other=0.0).to(tl.float32)
    out_row = out_ptr + batch * so_b + token * so_s + head * so_h
    tl.store(out_row + cols, (y * c + rotated * s).to(out_ptr.dtype.element_ty), mask=mask)


def qk_rmsnorm_rope(
    x: torch.Tensor,
    weight: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    eps: float = 1e-6,
    sequence_dim: int = 2,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Fused RMSNorm + interleaved RoPE (see :func:`reference.qk_rmsnorm_rope`) on ``[B, H, N, Dh]``
    (``sequence_dim=2``) or ``[B, N, H, Dh]`` (``sequence_dim=1``, Flux's layout), any strides with a unit
    last stride. ``out``: a tensor of ``x``'s shape and dtype to write into (e.g. a slice of a concatenation
    or a transposed view, so the concatenation and the layout change cost no extra pass); returned.
    """
    if x.dim() != 4 or x.shape[-1] % 2:
        raise ValueError(
            f"qk_rmsnorm_rope: x must be 4-D with an even head dimension (RoPE pairs), got {tuple(x.shape)}"
        )
    if sequence_dim not in (1, 2):
        raise ValueError(f"qk_rmsnorm_rope: sequence_dim must be 1 or 2, got {sequence_dim}")
    head_dim_of = 3 - sequence_dim
    n_seq, n_heads, width = x.shape[sequence_dim], x.shape[head_dim_of], x.shape[-1]
    for name, t in (("cos", cos), ("sin", sin)):
        if tuple(t.shape) != (n_seq, width):
            raise ValueError(f"qk_rmsnorm_rope: {name} must be [{n_seq}, {width}], got {tuple(t.shape)}")
    if x.stride(-1) != 1:
        x = x.contiguous()
    if out is None:
        out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    elif out.shape != x.shape or out.dtype != x.dtype or out.stride(-1) != 1:
        raise ValueError(
            f"qk_rmsnorm_rope: out must be a {x.dtype} tensor of shape {tuple(x.shape)} with a unit last "
            f"stride, got {out.dtype} {tuple(out.shape)} strides {out.stride()}"
        )
    _launch(
        _qk_norm_rope_kernel,
        (x.shape[0] * n_seq * n_heads,),
        x,
        weight.contiguous(),
        cos.contiguous(),
        sin.contiguous(),
        out,
        n_seq,
        n_heads,
        width,
        x.stride(0),
        x.stride(sequence_dim),
        x.stride(head_dim_of),
        out.stride(0),
        out.stride(sequence_dim),
        out.stride(head_dim_of),
        eps,
        BLOCK=triton.next_power_of_2(width),
    )
    return out


@triton.jit
def _attention_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    b_ptr,
    o_ptr,
    n_heads,
    n_q,
    n_k,
    head_dim,
    sm_scale,
    stride_bb,
    stride_bh,
    stride_bk,
    HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    batch = bh // n_heads
    head = bh % n_heads
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    offs_n0 = tl.arange(0, BLOCK_N)
    d_mask = offs_d < head_dim
    q_base = q_ptr + bh * n_q * head_dim
    k_base = k_ptr + bh * n_k * head_dim
    v_base = v_ptr + bh * n_k * head_dim
    q = tl.load(
        q_base + offs_m[:, None] * head_dim + offs_d[None, :],
        mask=(offs_m[:, None] < n_q) & d_mask[None, :],
        other=0.0,
    ).to(tl.float32)
    m_i = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
    l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)
    acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    for start in range(0, n_k, BLOCK_N):
        offs_n = start + offs_n0
        n_mask = offs_n < n_k
        kv_mask = n_mask[:, None] & d_mask[None, :]
        k = tl.load(k_base + offs_n[:, None] * head_dim + offs_d[None, :], mask=kv_mask, other=0.0)
        v = tl.load(v_base + offs_n[:, None] * head_dim + offs_d[None, :], mask=kv_mask, other=0.0)
        s = tl.dot(q, tl.trans(k.to(tl.float32))) * sm_scale
        if HAS_BIAS:
            bias = tl.load(
                b_ptr + batch * stride_bb + head * stride_bh + offs_n * stride_bk, mask=n_mask, other=0.0
            ).to(tl.float32)
            s = s + bias[None, :]
        s = tl.where(n_mask[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # fully masked rows so far
        p = tl.exp(s - m_safe[:, None])
        alpha = tl.exp(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + tl.dot(p, v.to(tl.float32))
        m_i = m_new
    acc = acc / l_i[:, None]
    tl.store(
        o_ptr + bh * n_q * head_dim + offs_m[:, None] * head_dim + offs_d[None, :],
        acc.to(o_ptr.dtype.element_ty),
        mask=(offs_m[:, None] < n_q) & d_mask[None, :],
    )


def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """Flash-style attention forward (Dao et al. 2022, online softmax) on ``[B, H, N, Dh]``.

    ``bias``: ``None`` or an additive key mask broadcastable to ``[B, H, 1, Nk]`` (PixArt's caption mask);
    anything else raises ``ValueError`` (the caller falls back to SDPA). The head dimension is padded to the
    next power of two (at least 16) with masked lanes. Accumulation is fp32; fp32 dots may use TF32 on GPU.
    """
    batch, heads, n_q, head_dim = q.shape
    n_k = k.shape[2]
    q2, k2, v2 = q.contiguous(), k.contiguous(), v.contiguous()
    out = torch.empty_like(q2)
    strides = (0, 0, 0)
    bias2 = q2  # unused placeholder pointer when there is no bias
    if bias is not None:
        if bias.dim() != 4 or bias.shape[2] != 1 or bias.shape[3] != n_k:
            raise ValueError(f"attention: bias must broadcast to [B, H, 1, {n_k}], got {tuple(bias.shape)}")
        bias2 = bias.expand(batch, heads, 1, n_k)
        strides = (bias2.stride(0), bias2.stride(1), bias2.stride(3))
    block_d = max(16, triton.next_power_of_2(head_dim))
    block_m = 64 if n_q >= 64 else 16
    block_n = 64 if n_k >= 64 else 16
    grid = (triton.cdiv(n_q, block_m), batch * heads)
    _launch(
        _attention_kernel,
        grid,
        q2,
        k2,
        v2,
        bias2,
        out,
        heads,
        n_q,
        n_k,
        head_dim,
        1.0 / math.sqrt(head_dim),
        *strides,
        HAS_BIAS=bias is not None,
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        BLOCK_D=block_d,
    )
    return out


__all__ = ["adaln_modulate", "attention", "gated_residual", "qk_rmsnorm_rope"]
