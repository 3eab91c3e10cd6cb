"""Attention paths and fused kernels for DiT-style transformers, each with a pure-torch reference.

- :func:`set_attention` (``attention.py``): SDPA with kernel sub-selection, xformers, fastsample's Triton
  attention or ``"auto"``, on DiT/PixArt as well as on dispatcher models; ``handle.reset()`` undoes it.
- :func:`enable_dit_savings` (``dit_savings.py``): exact DiT savings (shared embedding, batched adaLN).
- ``triton_ops`` (needs ``triton``, imported lazily) and ``reference`` (pure torch): fused adaLN modulation,
  gated residual, QK-RMSNorm + RoPE and attention.
"""

from fastsample.kernels.attention import AttentionHandle, set_attention
from fastsample.kernels.dit_savings import DiTSavingsHandle, enable_dit_savings

__all__ = ["AttentionHandle", "DiTSavingsHandle", "enable_dit_savings", "set_attention"]
