"""``set_attention(pipe_or_model, backend)``: choose what computes attention, on every model, never a no-op.

diffusers' ``set_attention_backend`` only reaches processors that call ``dispatch_attention_fn`` (Flux and
other new models); DiT, PixArt (``AttnProcessor2_0``) and SD3 (``JointAttnProcessor2_0``) call
``F.scaled_dot_product_attention`` directly, so it silently changes nothing there. This module swaps the
processors instead and checks that every attention module now runs the requested path:

- ``AttnProcessor2_0`` modules (DiT, PixArt, SD/SDXL UNets) get :class:`FastsampleAttnProcessor`, the same
  computation with a pluggable attention core;
- other legacy processors (SD3's joint attention, ...) are wrapped in :class:`SDPAKernelProcessor`, which
  redirects their ``F.scaled_dot_product_attention`` calls to the chosen kernels (``"sdpa"`` only);
- dispatcher processors are shallow-copied with their ``_attention_backend`` set (the originals are not
  touched; diffusers' global active backend is not changed);
- Flux's ``FluxAttnProcessor`` gets :class:`FastsampleFluxAttnProcessor` for ``"triton"`` (Triton attention
  core) or whenever ``fused_prologue`` is on: its QK RMSNorm + RoPE prologue then runs as one Triton kernel
  per tensor (:func:`fastsample.kernels.triton_ops.qk_rmsnorm_rope`).

The previous processor objects are put back by :meth:`AttentionHandle.disable`.

A ``kernels=`` choice changes no process-wide state: the chosen kernel's op is called directly
(:func:`sdpa_with_kernels`), and processors that call SDPA themselves run under a thread-local torch function
mode that redirects that call. ``torch.nn.attention.sdpa_kernel`` is never used (its flags are global, so a
plain pipeline in another thread would run with the same backends disabled).
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

from fastsample.integration.adapters import resolve_denoiser
from fastsample.integration.handles import Handle, deprecated_alias

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "sdpa", "xformers", "triton")
SDPA_KERNELS = ("flash", "efficient", "cudnn", "math")


def _additive_mask(mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """SDPA's boolean mask (True = attend) as the additive mask its kernels take (``-inf`` where False),
    as ``F.scaled_dot_product_attention`` converts it."""
    if mask is None or mask.dtype != torch.bool:
        return mask
    return torch.zeros_like(mask, dtype=dtype).masked_fill_(mask.logical_not(), float("-inf"))


def _pad_last(t: torch.Tensor, multiple: int) -> torch.Tensor:
    pad = -t.shape[-1] % multiple
    return F.pad(t, (0, pad)) if pad else t


def _flash(q, k, v, mask, dropout_p, is_causal, scale):
    if q.device.type == "cpu":
        return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            q, k, v, dropout_p, is_causal, attn_mask=mask, scale=scale
        )[0]
    if mask is not None:
        raise RuntimeError("the flash kernel takes no attention mask on this device")
    head_dim = q.shape[-1]  # flash needs a head dimension that is a multiple of 8: pad, as SDPA does
    scale = head_dim**-0.5 if scale is None else scale
    out = torch.ops.aten._scaled_dot_product_flash_attention(
        _pad_last(q, 8), _pad_last(k, 8), _pad_last(v, 8), dropout_p, is_causal, False, scale=scale
    )[0]
    return out[..., :head_dim]


def _expanded_bias(q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor | None:
    """The additive bias as the CUDA kernels take it: [B, H, Nq, Nk], its last dimension padded to a multiple
    of 16 for alignment (a view of the first Nk columns), as SDPA prepares it."""
    if mask is None:
        return None
    shape = (q.shape[0], q.shape[1], q.shape[2], k.shape[2])
    return _pad_last(mask.expand(shape), 16)[..., : shape[-1]]


def _efficient(q, k, v, mask, dropout_p, is_causal, scale):
    if q.device.type != "cuda":
        raise RuntimeError(f"the memory-efficient kernel does not run on {q.device.type}")
    return torch.ops.aten._scaled_dot_product_efficient_attention(
        q, k, v, _expanded_bias(q, k, mask), records_grad(q, k, v), dropout_p, is_causal, scale=scale
    )[0]


def _cudnn(q, k, v, mask, dropout_p, is_causal, scale):
    if q.device.type != "cuda":
        raise RuntimeError(f"the cuDNN kernel does not run on {q.device.type}")
    return torch.ops.aten._scaled_dot_product_cudnn_attention(
        q, k, v, _expanded_bias(q, k, mask), records_grad(q, k, v), dropout_p, is_causal, False, scale=scale
    )[0]


def _math(q, k, v, mask, dropout_p, is_causal, scale):
    return torch.ops.aten._scaled_dot_product_attention_math(
        q, k, v, mask, dropout_p, is_causal, None, scale=scale
    )[0]


_KERNEL_OPS = {"flash": _flash, "efficient": _efficient, "cudnn": _cudnn, "math": _math}


def sdpa_with_kernels(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
    *,
    kernels: Sequence[str],
) -> torch.Tensor:
    """``F.scaled_dot_product_attention`` computed by the first of ``kernels`` (in torch's order flash →
    efficient → cuDNN → math) that can run these inputs, calling that kernel's op directly.

    Unlike ``torch.nn.attention.sdpa_kernel``, whose backend flags are process-wide (a pipeline in another
    thread would run with the same kernels disabled), this changes no global state. The inputs are
    prepared as SDPA prepares them (boolean mask → additive ``-inf`` mask; on CUDA a head dimension padded to
    a multiple of 8 for flash, the bias expanded and aligned for efficient/cuDNN). A ``RuntimeError`` ("no
    available kernel") names every chosen kernel and why it could not run.
    """
    if enable_gqa and key.shape[-3] != query.shape[-3]:  # grouped-query attention: repeat the k/v heads
        repeat = query.shape[-3] // key.shape[-3]
        key, value = key.repeat_interleave(repeat, -3), value.repeat_interleave(repeat, -3)
    mask = _additive_mask(attn_mask, query.dtype)
    reasons = []
    for name in SDPA_KERNELS:
        if name not in kernels:
            continue
        try:
            return _KERNEL_OPS[name](query, key, value, mask, dropout_p, is_causal, scale)
        except (RuntimeError, NotImplementedError) as error:
            reasons.append(f"{name}: {str(error).splitlines()[0] if str(error) else type(error).__name__}")
    raise RuntimeError(
        f"set_attention(kernels={tuple(kernels)}): no available kernel among the chosen ones runs these "
        "inputs "
        f"(query {tuple(query.shape)} {query.dtype} on {query.device.type}, "
        f"mask {None if attn_mask is None else tuple(attn_mask.shape)}): {'; '.join(reasons)}. "
        "Add 'math' to kernels= (it runs everything), or pass kernels=None to let torch choose."
    )


class _KernelChoice(torch.overrides.TorchFunctionMode):
    """Redirects ``F.scaled_dot_product_attention`` to :func:`sdpa_with_kernels` in the thread that enters it
    (torch function modes are thread-local), for processors that call SDPA themselves."""

    def __init__(self, kernels: tuple[str, ...]) -> None:
        super().__init__()
        self.kernels = kernels

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            return sdpa_with_kernels(*args, **kwargs, kernels=self.kernels)
        return func(*args, **kwargs)


def _kernel_context(kernels: tuple[str, ...] | None):
    """Nothing (torch chooses), or :class:`_KernelChoice` for the current thread only."""
    return contextlib.nullcontext() if not kernels else _KernelChoice(kernels)


# ------------------------------------------------------------------------------------------------------
# attention cores: f(q, k, v, mask) on [B, H, N, Dh], mask additive/boolean broadcastable to [B, H, Nq, Nk]
# ------------------------------------------------------------------------------------------------------


def _sdpa_core(kernels: tuple[str, ...] | None) -> Callable[..., torch.Tensor]:
    if not kernels:

        def core(q, k, v, mask):
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=0.0, is_causal=False)

        return core

    def core_with_kernels(q, k, v, mask):
        return sdpa_with_kernels(q, k, v, mask, kernels=kernels)

    return core_with_kernels


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


def records_grad(*tensors: torch.Tensor) -> bool:
    """True while autograd records a graph through any of ``tensors``. fastsample's Triton kernels have no
    backward, so their callers then run the stock computation instead (training stays correct)."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def _triton_core(q, k, v, mask):
    """Triton flash attention; masks other than a per-key additive bias, and calls under autograd, fall back
    to SDPA (documented)."""
    from fastsample.kernels import triton_ops

    unsupported_mask = mask is not None and (
        mask.dtype == torch.bool or mask.dim() != 4 or mask.shape[2] != 1
    )
    if unsupported_mask or records_grad(q, k, v):
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


def _rms_norm_parameters(norm: torch.nn.RMSNorm, x: torch.Tensor) -> tuple[torch.Tensor, float]:
    """``torch.nn.RMSNorm``'s weight (ones without affine) and eps (``finfo(x.dtype).eps`` when ``None``)."""
    weight = (
        norm.weight if norm.weight is not None else torch.ones(x.shape[-1], dtype=x.dtype, device=x.device)
    )
    return weight, norm.eps if norm.eps is not None else torch.finfo(x.dtype).eps


def _fused_qk_prologue(
    x: torch.Tensor,
    context: torch.Tensor | None,
    norm: torch.nn.RMSNorm,
    context_norm: torch.nn.RMSNorm | None,
    rope: tuple[torch.Tensor, torch.Tensor],
    heads_major: bool,
) -> torch.Tensor:
    """Flux's query (or key) prologue, ``RoPE(cat([context_norm(context), norm(x)], dim=1))`` on
    ``[B, S, H, Dh]``, as one :func:`~fastsample.kernels.triton_ops.qk_rmsnorm_rope` call per part, each
    writing its slice of the concatenation. With ``heads_major`` the result is a ``[B, S, H, Dh]`` view of a
    contiguous ``[B, H, S, Dh]`` tensor (the layout an attention core on ``[B, H, S, Dh]`` reads)."""
    from fastsample.kernels import triton_ops

    cos, sin = (t.to(x.device) for t in rope)
    n_ctx = 0 if context is None else context.shape[1]
    batch, n_x, heads, head_dim = x.shape
    if heads_major:
        out = torch.empty(batch, heads, n_ctx + n_x, head_dim, dtype=x.dtype, device=x.device).transpose(1, 2)
    else:
        out = torch.empty(batch, n_ctx + n_x, heads, head_dim, dtype=x.dtype, device=x.device)
    parts = [(x, norm, n_ctx, n_ctx + n_x)]
    if context is not None:
        parts.insert(0, (context, context_norm, 0, n_ctx))
    for part, part_norm, lo, hi in parts:
        weight, eps = _rms_norm_parameters(part_norm, part)
        triton_ops.qk_rmsnorm_rope(
            part, weight, cos[lo:hi], sin[lo:hi], eps=eps, sequence_dim=1, out=out[:, lo:hi]
        )
    return out


class FastsampleFluxAttnProcessor:
    """diffusers 0.42.1 ``FluxAttnProcessor`` with two parts replaceable.

    - ``fused_prologue``: q/k RMSNorm (``norm_q``/``norm_k``, and ``norm_added_q``/``norm_added_k`` for the
      text tokens of double-stream blocks), the text/image concatenation and RoPE (``apply_rotary_emb``,
      ``use_real=True``, ``use_real_unbind_dim=-1``: interleaved pairs) are one Triton kernel per tensor part
      (:func:`_fused_qk_prologue`). The stock norm + RoPE run instead while autograd records (the kernel has
      no backward) or when the call has no ``image_rotary_emb``.
    - ``core``: ``None`` calls diffusers' ``dispatch_attention_fn`` with ``_attention_backend``; otherwise
      ``core(q, k, v, mask)`` on ``[B, H, S, Dh]`` (the Triton core; the prologue then writes q and k in
      that layout directly).
    """

    _attention_backend = None
    _parallel_config = None

    def __init__(self, core: Callable[..., torch.Tensor] | None, fused_prologue: bool, label: str) -> None:
        self.core = core
        self.fused_prologue = fused_prologue
        self.label = label

    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        from diffusers.models.attention_dispatch import dispatch_attention_fn
        from diffusers.models.embeddings import apply_rotary_emb
        from diffusers.models.transformers.transformer_flux import _get_qkv_projections

        query, key, value, encoder_query, encoder_key, encoder_value = _get_qkv_projections(
            attn, hidden_states, encoder_hidden_states
        )
        query, key, value = (t.unflatten(-1, (-1, attn.head_dim)) for t in (query, key, value))
        joint = attn.added_kv_proj_dim is not None
        if joint:
            encoder_query, encoder_key, encoder_value = (
                t.unflatten(-1, (-1, attn.head_dim)) for t in (encoder_query, encoder_key, encoder_value)
            )
        if self.fused_prologue and image_rotary_emb is not None and not records_grad(query, key):
            heads_major = self.core is not None
            query = _fused_qk_prologue(
                query,
                encoder_query if joint else None,
                attn.norm_q,
                attn.norm_added_q if joint else None,
                image_rotary_emb,
                heads_major,
            )
            key = _fused_qk_prologue(
                key,
                encoder_key if joint else None,
                attn.norm_k,
                attn.norm_added_k if joint else None,
                image_rotary_emb,
                heads_major,
            )
            if joint:
                value = torch.cat([encoder_value, value], dim=1)
        else:
            query, key = attn.norm_q(query), attn.norm_k(key)
            if joint:
                query = torch.cat([attn.norm_added_q(encoder_query), query], dim=1)
                key = torch.cat([attn.norm_added_k(encoder_key), key], dim=1)
                value = torch.cat([encoder_value, value], dim=1)
            if image_rotary_emb is not None:
                query = apply_rotary_emb(query, image_rotary_emb, sequence_dim=1)
                key = apply_rotary_emb(key, image_rotary_emb, sequence_dim=1)
        if self.core is None:
            hidden_states = dispatch_attention_fn(
                query,
                key,
                value,
                attn_mask=attention_mask,
                backend=self._attention_backend,
                parallel_config=self._parallel_config,
            )
        else:
            q, k, v = (t.transpose(1, 2) for t in (query, key, value))
            hidden_states = self.core(q, k, v, attention_mask).transpose(1, 2)
        hidden_states = hidden_states.flatten(2, 3).to(query.dtype)
        if encoder_hidden_states is None:
            return hidden_states
        n_ctx = encoder_hidden_states.shape[1]
        encoder_hidden_states, hidden_states = hidden_states.split_with_sizes(
            [n_ctx, hidden_states.shape[1] - n_ctx], dim=1
        )
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states.contiguous()))
        return hidden_states, attn.to_add_out(encoder_hidden_states.contiguous())

    def __repr__(self) -> str:
        return f"FastsampleFluxAttnProcessor({self.label}, fused_prologue={self.fused_prologue})"


def _check_flux_module(name: str, module: torch.nn.Module, proc: Any, fused_prologue: bool) -> None:
    """Refuse a ``FluxAttention`` that :class:`FastsampleFluxAttnProcessor` would not compute exactly."""
    if getattr(proc, "_parallel_config", None) is not None:
        raise ValueError(
            f"set_attention: {name} runs context parallelism (_parallel_config); the Triton paths do not "
            "implement it. Use backend='sdpa' with fused_prologue=False."
        )
    if not fused_prologue:
        return
    norms = ["norm_q", "norm_k"] + (["norm_added_q", "norm_added_k"] if module.added_kv_proj_dim else [])
    odd = [n for n in norms if type(getattr(module, n, None)) is not torch.nn.RMSNorm]
    if odd or module.head_dim % 2:
        raise ValueError(
            f"set_attention(fused_prologue=True): {name} needs torch.nn.RMSNorm q/k norms and an even head "
            f"dimension (got {', '.join(f'{n}={type(getattr(module, n, None)).__name__}' for n in odd)} "
            f"head_dim={module.head_dim})."
        )


def _dispatcher_backend(backend: str):
    """diffusers' dispatcher backend for ``"xformers"`` (requirements checked) or ``"sdpa"`` (native)."""
    from diffusers.models.attention_dispatch import (
        AttentionBackendName,
        _check_attention_backend_requirements,
    )

    if backend == "xformers":
        _check_attention_backend_requirements(AttentionBackendName.XFORMERS)
        return AttentionBackendName.XFORMERS
    return AttentionBackendName.NATIVE


class SDPAKernelProcessor:
    """Runs another processor with its ``F.scaled_dot_product_attention`` calls computed by ``kernels``
    (:class:`_KernelChoice`, in the calling thread only), for processors that call SDPA themselves.

    Cost: every torch call inside the wrapped processor passes through the mode's ``__torch_function__``
    (measured 4–6 µs per call on the project's loaded 2-core CPU machine, about 0.1–0.3 ms per SD3 joint
    attention call there); ``AttnProcessor2_0`` models call the kernel directly and pay nothing."""

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


class AttentionHandle(Handle):
    """From :func:`set_attention`: the :class:`~fastsample.integration.handles.Handle` verbs (``disable()``
    puts the previous processor objects back); ``summary()`` is ``describe()``; ``reset()`` is a deprecated
    alias of ``disable()``."""

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

    def _undo(self) -> None:
        """Put the previous processor objects back (identical objects)."""
        for module, original in reversed(self._originals):
            module.set_processor(original)
        self._originals = []

    reset = deprecated_alias("disable", "reset")


def set_attention(
    pipe_or_model: Any,
    backend: str = "auto",
    kernels: Sequence[str] | None = None,
    fused_prologue: bool | None = None,
) -> AttentionHandle:
    """Choose the attention path of every attention module of a pipeline's denoiser (or of a model).

    Args:
        pipe_or_model: a diffusers pipeline (``pipe.transformer`` or ``pipe.unet`` is used) or a model.
        backend: ``"sdpa"`` (``F.scaled_dot_product_attention``), ``"xformers"`` (needs ``xformers``
            installed; ``memory_efficient_attention``), ``"triton"`` (fastsample's flash-style Triton kernel,
            :func:`fastsample.kernels.triton_ops.attention`; CUDA, or CPU under ``TRITON_INTERPRET=1``;
            ``AttnProcessor2_0`` models (DiT, PixArt, SD UNets) and Flux's ``FluxAttnProcessor``; masks
            other than a per-key additive bias, and calls under autograd, fall back to SDPA) or ``"auto"``
            (SDPA with torch's kernel priority, see ``_auto_choice``).
        kernels: with ``"sdpa"`` only, a list (or one name) from ``("flash", "efficient", "cudnn", "math")``:
            attention runs on the first of them (in that order) that supports the inputs, by calling the
            kernel directly (:func:`sdpa_with_kernels`; no process-wide setting is changed, so other threads
            are unaffected); ``None`` lets torch choose.
        fused_prologue: Flux's q/k RMSNorm + RoPE as one Triton kernel per tensor
            (:class:`FastsampleFluxAttnProcessor`; needs Triton like ``"triton"``). ``None`` (default): on for
            ``"triton"``, off otherwise; ``True`` combines it with ``"sdpa"``/``"xformers"`` attention and
            raises if the model has no ``FluxAttnProcessor``. SD3 (``JointAttnProcessor2_0``) is not
            covered: it has QK RMSNorm (``qk_norm="rms_norm"``) but no RoPE, so there is no norm + RoPE
            pair to fuse and its norm stays diffusers' own.

    Head dimension 72 (DiT-XL/2, PixArt): SDPA's flash and efficient kernels accept it (multiple of 8);
    the Triton kernel pads it to 128 with masked lanes; if a restricted ``kernels`` list supports none of
    the shapes a ``RuntimeError`` ("no available kernel", naming each kernel's reason) is raised at the first
    call rather than falling back silently.

    Returns an :class:`AttentionHandle`; ``handle.disable()`` restores the previous processor objects.
    Raises ``ValueError`` if the model has no attention module, and ``ValueError``/``ImportError`` if a
    module cannot run the requested backend (nothing is changed then).
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if kernels is not None:
        if backend != "sdpa":
            raise ValueError(f"kernels= is only for backend='sdpa', got backend={backend!r}")
        if isinstance(kernels, str):  # one kernel by name, not its letters
            kernels = (kernels,)
        if not isinstance(kernels, Sequence):
            raise TypeError(
                f"kernels must be a list of names from {SDPA_KERNELS} (or one name), got "
                f"{type(kernels).__name__}"
            )
        kernels = tuple(kernels)
        bad = [k for k in kernels if k not in SDPA_KERNELS]
        if not kernels or bad:
            raise ValueError(f"kernels must be a non-empty subset of {SDPA_KERNELS}, got {kernels!r}")
    model = resolve_denoiser(pipe_or_model, "set_attention")
    modules = _attention_modules(model)
    if not modules:
        raise ValueError(f"set_attention: {type(model).__name__} has no diffusers attention module")
    stacked = [name for name, m in modules if getattr(m.processor, "_fastsample_attention", False)]
    if stacked:
        raise ValueError(
            f"set_attention: {stacked[0]} already runs a fastsample attention path; disable() the first "
            "handle before choosing another backend."
        )
    if fused_prologue is not None and not isinstance(fused_prologue, bool):
        raise TypeError(f"fused_prologue must be None or a bool, got {type(fused_prologue).__name__}")
    if backend == "auto":
        backend, kernels = _auto_choice(model)
    explicit_prologue = fused_prologue is not None
    fused_prologue = backend == "triton" if fused_prologue is None else fused_prologue
    if backend == "xformers":
        _require_xformers()
    if backend == "triton":
        require_triton(model, "set_attention(backend='triton')")
    if fused_prologue:
        require_triton(model, "set_attention(fused_prologue=True)")
    from diffusers.models.attention_processor import AttnProcessor2_0
    from diffusers.models.transformers.transformer_flux import FluxAttnProcessor

    if (
        explicit_prologue
        and fused_prologue
        and not any(type(m.processor) is FluxAttnProcessor for _, m in modules)
    ):
        raise ValueError(
            f"set_attention(fused_prologue=True): {type(model).__name__} has no FluxAttnProcessor (the fused "
            "QK RMSNorm + RoPE covers Flux only; SD3 has no RoPE)."
        )
    plan = []
    for name, module in modules:
        proc = module.processor
        if type(proc) is AttnProcessor2_0:
            core = {"sdpa": lambda: _sdpa_core(kernels), "xformers": lambda: _xformers_core}.get(
                backend, lambda: _triton_core
            )()
            plan.append((module, FastsampleAttnProcessor(core, backend), "FastsampleAttnProcessor"))
        elif type(proc) is FluxAttnProcessor and (backend == "triton" or fused_prologue):
            _check_flux_module(name, module, proc, fused_prologue)
            core = _triton_core if backend == "triton" else None
            new = FastsampleFluxAttnProcessor(core, fused_prologue, backend)
            if core is None:
                new._attention_backend = _dispatcher_backend(backend)
            what = "triton attention" if core is not None else f"{new._attention_backend.value} attention"
            if fused_prologue:
                what += ", fused QK RMSNorm+RoPE"
            wrapped = SDPAKernelProcessor(new, kernels, backend) if kernels else new
            plan.append((module, wrapped, f"FastsampleFluxAttnProcessor({what})"))
        elif hasattr(proc, "_attention_backend"):
            new = copy.copy(proc)
            if backend == "triton":
                raise ValueError(
                    f"set_attention: backend='triton' does not cover dispatcher processors "
                    f"({type(proc).__name__} at {name}); use 'sdpa' or 'xformers' on this model."
                )
            new._attention_backend = _dispatcher_backend(backend)
            if backend == "xformers":
                plan.append((module, new, f"{type(proc).__name__}(xformers)"))
            else:
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
        handle.disable()
        raise
    logger.info(handle.describe())
    return handle


__all__ = [
    "BACKENDS",
    "SDPA_KERNELS",
    "AttentionHandle",
    "FastsampleAttnProcessor",
    "FastsampleFluxAttnProcessor",
    "SDPAKernelProcessor",
    "sdpa_with_kernels",
    "set_attention",
]
