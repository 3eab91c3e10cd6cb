"""``set_attention(pipe_or_model, backend)``: choose what computes attention, on every model, never a no-op.

diffusers' ``set_attention_backend`` only reaches processors that call ``dispatch_attention_fn`` (Flux and
other new models); DiT, PixArt (``AttnProcessor2_0``) and SD3 (``JointAttnProcessor2_0``) call
``F.scaled_dot_product_attention`` directly, so it silently changes nothing there. This module swaps the
processors instead and checks that every attention module now runs the requested path:

- ``AttnProcessor2_0`` modules (DiT, PixArt, SD/SDXL UNets) get :class:`FastsampleAttnProcessor`, the same
  computation with a pluggable attention core;
- other legacy processors (SD3's joint attention, ...) are wrapped in :class:`SDPAKernelProcessor`, which
  runs them under ``torch.nn.attention.sdpa_kernel`` (``"sdpa"`` only);
- dispatcher processors are shallow-copied with their ``_attention_backend`` set (the originals are not
  touched; diffusers' global active backend is not changed).

The previous processor objects are put back by :meth:`AttentionHandle.reset`.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import inspect
import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "sdpa", "xformers", "triton")
SDPA_KERNELS = ("flash", "efficient", "cudnn", "math")


def _sdpa_backend(name: str):
    from torch.nn.attention import SDPBackend

    return {
        "flash": SDPBackend.FLASH_ATTENTION,
        "efficient": SDPBackend.EFFICIENT_ATTENTION,
        "cudnn": SDPBackend.CUDNN_ATTENTION,
        "math": SDPBackend.MATH,
    }[name]


def _kernel_context(kernels: tuple[str, ...] | None):
    if not kernels:
        return contextlib.nullcontext()
    from torch.nn.attention import sdpa_kernel

    return sdpa_kernel([_sdpa_backend(k) for k in kernels])


# ------------------------------------------------------------------------------------------------------
# attention cores: f(q, k, v, mask) on [B, H, N, Dh], mask additive/boolean broadcastable to [B, H, Nq, Nk]
# ------------------------------------------------------------------------------------------------------


def _sdpa_core(kernels: tuple[str, ...] | None) -> Callable[..., torch.Tensor]:
    def core(q, k, v, mask):
        with _kernel_context(kernels):
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=0.0, is_causal=False)

    return core


def _require_xformers():
    if importlib.util.find_spec("xformers") is None:
        raise ImportError(
            "set_attention(backend='xformers') needs xformers: pip install 'fastsample[xformers]' (or "
            "pip install xformers). Each xformers wheel pins one torch version and may replace yours; "
            "backend='sdpa' with kernels=('efficient',) runs the same family of kernels without it."
        )
    import xformers.ops

    return xformers.ops


def _xformers_core(q, k, v, mask):
    ops = _require_xformers()
    if mask is not None:
        mask = mask.expand(q.shape[0], q.shape[1], q.shape[2], k.shape[2]).to(q.dtype)
    out = ops.memory_efficient_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_bias=mask
    )
    return out.transpose(1, 2)


def _triton_core(q, k, v, mask):
    """Triton flash attention; masks other than a per-key additive bias fall back to SDPA (documented)."""
    from fastsample.kernels import triton_ops

    if mask is not None and (mask.dtype == torch.bool or mask.dim() != 4 or mask.shape[2] != 1):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return triton_ops.attention(q, k, v, mask)


# ------------------------------------------------------------------------------------------------------
# processors
# ------------------------------------------------------------------------------------------------------


class FastsampleAttnProcessor:
    """``AttnProcessor2_0``'s computation (diffusers 0.42.1) with the attention core replaced by ``core``."""

    def __init__(self, core: Callable[..., torch.Tensor], label: str) -> None:
        self.core = core
        self.label = label

    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
    ) -> torch.Tensor:
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        batch_size, sequence_length, _ = context.shape
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
            attention_mask = attention_mask.view(batch_size, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)
        head_dim = key.shape[-1] // attn.heads
        query = query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        hidden_states = self.core(query, key, value, attention_mask)
        hidden_states = hidden_states.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim)
        hidden_states = hidden_states.to(query.dtype)
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor

    def __repr__(self) -> str:
        return f"FastsampleAttnProcessor({self.label})"


class SDPAKernelProcessor:
    """Runs another processor under ``sdpa_kernel(kernels)`` (for processors that call SDPA themselves)."""

    def __init__(self, inner: Any, kernels: tuple[str, ...] | None, label: str) -> None:
        self.inner = inner
        self.kernels = kernels
        self.label = label
        params = inspect.signature(inner.__call__).parameters
        self._accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        self._accepted = set(params)

    def __call__(self, attn: Any, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        if not self._accepts_any:  # diffusers filters kwargs by the processor's signature: do it for inner
            kwargs = {k: v for k, v in kwargs.items() if k in self._accepted}
        with _kernel_context(self.kernels):
            return self.inner(attn, hidden_states, *args, **kwargs)

    def __repr__(self) -> str:
        return f"SDPAKernelProcessor({self.label}, inner={type(self.inner).__name__})"


# ------------------------------------------------------------------------------------------------------
# selection
# ------------------------------------------------------------------------------------------------------


def _resolve_model(target: Any) -> torch.nn.Module:
    if isinstance(target, torch.nn.Module):
        return target
    for attr in ("transformer", "unet"):
        model = getattr(target, attr, None)
        if isinstance(model, torch.nn.Module):
            return model
    raise TypeError(
        f"set_attention expects a diffusers pipeline (with .transformer or .unet) or a model, got "
        f"{type(target).__name__}."
    )


def _attention_modules(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    from diffusers.models.attention import AttentionModuleMixin
    from diffusers.models.attention_processor import Attention

    return [
        (name, m)
        for name, m in model.named_modules()
        if isinstance(m, (Attention, AttentionModuleMixin)) and getattr(m, "processor", None) is not None
    ]


def require_triton(model: torch.nn.Module, what: str) -> None:
    """Refuse ``what`` unless triton is installed and ``model`` is on CUDA (or Triton's CPU interpreter,
    ``TRITON_INTERPRET=1``, which is for tests, is on)."""
    if importlib.util.find_spec("triton") is None:
        raise ImportError(f"{what} needs triton: pip install 'fastsample[triton]'")
    device = next(model.parameters()).device
    if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError(
            f"{what} needs a CUDA model (this one is on {device}); on CPU it only runs in Triton's "
            "interpreter (TRITON_INTERPRET=1), which is for tests."
        )


def _auto_choice(model: torch.nn.Module) -> tuple[str, tuple[str, ...] | None]:
    """``auto``: SDPA everywhere, with torch's own kernel priority (flash → efficient → cuDNN → math,
    each used only where it supports the device, dtype and head dimension: on CPU this is the fused CPU
    flash kernel or math; head dimension 72 is accepted by flash and efficient). Triton and xformers are
    never chosen automatically: no GPU measurement of ours shows them faster
    (benchmarks/results/kernels.md)."""
    return "sdpa", None


class AttentionHandle:
    """From :func:`set_attention`: ``describe()``/``summary()``, ``reset()`` (alias ``disable()``)."""

    def __init__(self, model: torch.nn.Module, backend: str, kernels: tuple[str, ...] | None) -> None:
        self.model = model
        self.backend = backend
        self.kernels = kernels
        self._originals: list[tuple[torch.nn.Module, Any]] = []
        self.counts: dict[str, int] = {}
        self.active = True

    def _swap(self, module: torch.nn.Module, new: Any, kind: str) -> None:
        self._originals.append((module, module.processor))
        module.set_processor(new)
        if module.processor is not new:
            raise RuntimeError(f"set_attention: {type(module).__name__}.set_processor did not take {new!r}")
        self.counts[kind] = self.counts.get(kind, 0) + 1

    def describe(self) -> str:
        if not self.active:
            return f"attention on {type(self.model).__name__}: default (reset)"
        what = self.backend + (f"[{','.join(self.kernels)}]" if self.kernels else "")
        parts = ", ".join(f"{n} {k}" for k, n in sorted(self.counts.items()))
        return f"attention on {type(self.model).__name__}: {what} ({parts})"

    summary = describe

    def reset(self) -> None:
        """Put the previous processor objects back (identical objects); idempotent."""
        if not self.active:
            return
        for module, original in reversed(self._originals):
            module.set_processor(original)
        self._originals = []
        self.active = False

    disable = reset

    def __enter__(self) -> AttentionHandle:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.reset()

    def __repr__(self) -> str:
        return f"AttentionHandle({self.describe()})"


def set_attention(
    pipe_or_model: Any, backend: str = "auto", kernels: Sequence[str] | None = None
) -> AttentionHandle:
    """Choose the attention path of every attention module of a pipeline's denoiser (or of a model).

    Args:
        pipe_or_model: a diffusers pipeline (``pipe.transformer`` or ``pipe.unet`` is used) or a model.
        backend: ``"sdpa"`` (``F.scaled_dot_product_attention``), ``"xformers"`` (needs ``xformers``
            installed; ``memory_efficient_attention``), ``"triton"`` (fastsample's flash-style Triton kernel,
            :func:`fastsample.kernels.triton_ops.attention`; CUDA, or CPU under ``TRITON_INTERPRET=1``;
            only ``AttnProcessor2_0`` models: DiT, PixArt, SD UNets; masks other than a per-key additive
            bias fall back to SDPA) or ``"auto"`` (SDPA with torch's kernel priority, see ``_auto_choice``).
        kernels: with ``"sdpa"`` only, a subset of ``("flash", "efficient", "cudnn", "math")`` passed to
            ``torch.nn.attention.sdpa_kernel``; ``None`` lets torch choose.

    Head dimension 72 (DiT-XL/2, PixArt): SDPA's flash and efficient kernels accept it (multiple of 8);
    the Triton kernel pads it to 128 with masked lanes; if a restricted ``kernels`` list supports none of
    the shapes torch raises at the first call (no viable backend) rather than falling back silently.

    Returns an :class:`AttentionHandle`; ``handle.reset()`` restores the previous processor objects.
    Raises ``ValueError`` if the model has no attention module, and ``ValueError``/``ImportError`` if a
    module cannot run the requested backend (nothing is changed then).
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if kernels is not None:
        if backend != "sdpa":
            raise ValueError(f"kernels= is only for backend='sdpa', got backend={backend!r}")
        kernels = tuple(kernels)
        bad = [k for k in kernels if k not in SDPA_KERNELS]
        if not kernels or bad:
            raise ValueError(f"kernels must be a non-empty subset of {SDPA_KERNELS}, got {kernels!r}")
    model = _resolve_model(pipe_or_model)
    modules = _attention_modules(model)
    if not modules:
        raise ValueError(f"set_attention: {type(model).__name__} has no diffusers attention module")
    stacked = [name for name, m in modules if getattr(m.processor, "_fastsample_attention", False)]
    if stacked:
        raise ValueError(
            f"set_attention: {stacked[0]} already runs a fastsample attention path; reset() the first handle "
            "before choosing another backend."
        )
    if backend == "auto":
        backend, kernels = _auto_choice(model)
    if backend == "xformers":
        _require_xformers()
    if backend == "triton":
        require_triton(model, "set_attention(backend='triton')")
    from diffusers.models.attention_processor import AttnProcessor2_0

    plan = []
    for name, module in modules:
        proc = module.processor
        if type(proc) is AttnProcessor2_0:
            core = {"sdpa": lambda: _sdpa_core(kernels), "xformers": lambda: _xformers_core}.get(
                backend, lambda: _triton_core
            )()
            plan.append((module, FastsampleAttnProcessor(core, backend), "FastsampleAttnProcessor"))
        elif hasattr(proc, "_attention_backend"):
            new = copy.copy(proc)
            if backend == "triton":
                raise ValueError(
                    f"set_attention: backend='triton' does not cover dispatcher processors "
                    f"({type(proc).__name__} at {name}); use 'sdpa' or 'xformers' on this model."
                )
            if backend == "xformers":
                from diffusers.models.attention_dispatch import (
                    AttentionBackendName,
                    _check_attention_backend_requirements,
                )

                _check_attention_backend_requirements(AttentionBackendName.XFORMERS)
                new._attention_backend = AttentionBackendName.XFORMERS
                plan.append((module, new, f"{type(proc).__name__}(xformers)"))
            else:
                from diffusers.models.attention_dispatch import AttentionBackendName

                new._attention_backend = AttentionBackendName.NATIVE
                wrapped = SDPAKernelProcessor(new, kernels, backend) if kernels else new
                plan.append((module, wrapped, f"{type(proc).__name__}(native)"))
        else:
            if backend != "sdpa":
                raise ValueError(
                    f"set_attention: backend={backend!r} cannot replace {type(proc).__name__} at {name}; "
                    "only 'sdpa' (with kernels=) covers it."
                )
            if "scaled_dot_product_attention" not in inspect.getsource(type(proc).__call__):
                raise ValueError(
                    f"set_attention: {type(proc).__name__} at {name} does not call "
                    "F.scaled_dot_product_attention, so an SDPA kernel choice would not reach it."
                )
            plan.append((module, SDPAKernelProcessor(proc, kernels, backend), "SDPAKernelProcessor"))
    handle = AttentionHandle(model, backend, kernels)
    try:
        for module, new, kind in plan:
            new._fastsample_attention = True  # on our own object (a copy for dispatcher processors)
            handle._swap(module, new, kind)
    except BaseException:
        handle.reset()
        raise
    logger.info(handle.describe())
    return handle


__all__ = [
    "BACKENDS",
    "SDPA_KERNELS",
    "AttentionHandle",
    "FastsampleAttnProcessor",
    "SDPAKernelProcessor",
    "set_attention",
]
