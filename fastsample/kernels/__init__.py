"""Attention paths and fused kernels for DiT-style transformers, each with a pure-torch reference.

- :func:`set_attention` (``attention.py``): SDPA with kernel sub-selection, xformers, fastsample's Triton
  attention or ``"auto"``, on DiT/PixArt as well as on dispatcher models, and on Flux the fused QK RMSNorm +
  RoPE prologue (``fused_prologue``, on by default with ``"triton"``); ``handle.disable()`` undoes it.
- :func:`enable_dit_savings` (``dit_savings.py``): exact DiT savings (shared embedding, batched adaLN) and,
  with Triton, the fused adaLN modulate (``fused_modulate``) and gated residual (``fused_gated_residual``).
- ``triton_ops`` (needs ``triton``, imported lazily) and ``reference`` (pure torch): fused adaLN modulation,
  gated residual, QK-RMSNorm + RoPE and attention; each fused path is used by one of the two functions above.
"""

from fastsample.kernels.attention import AttentionHandle, set_attention
from fastsample.kernels.dit_savings import DiTSavingsHandle, enable_dit_savings

__all__ = ["AttentionHandle", "DiTSavingsHandle", "enable_dit_savings", "set_attention"]
