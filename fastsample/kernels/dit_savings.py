"""Exact savings for diffusers' ``DiTTransformer2DModel`` (adaLN-Zero blocks), output unchanged.

1. Shared conditioning embedding: every block's ``norm1`` (``AdaLayerNormZero``) owns a
   ``CombinedTimestepLabelEmbeddings`` and the output layer calls block 0's again, so
   ``c = MLP(sinusoid(t)) + E[y]`` is computed ``L + 1`` times per forward. Blocks whose embedding weights
   are equal (checked with ``torch.equal`` at enable time) share one computation per forward; distinct
   embeddings (e.g. a random init) each keep their own, so the result is exact in every case.
2. Batched adaLN projections: the ``L`` per-block ``Linear(D, 6D)`` of ``silu(c)`` become one matmul per
   forward, computed by the first block that runs, each block taking its slice: ``[B, D] x [D, L·6D]`` when
   all blocks share one embedding, else one ``bmm`` ``[L, B, D] x [L, D, 6D]``. The stacked weight is a
   copy (``L·6D·D`` extra parameters' memory: +33% of DiT-XL/2's parameters), rebuilt when the weights'
   dtype/device changes; enable after loading weights (in-place weight edits afterwards are not seen).
   In training mode (random label dropout) the hooks run the stock computation.
3. Optionally (Triton, CUDA only; inference only: while autograd records, the stock expressions run, as the
   kernels have no backward):
   - ``fused_modulate=True`` computes ``norm1``'s ``LN(x)(1+scale)+shift`` with
     :func:`~fastsample.kernels.triton_ops.adaln_modulate` (and ``norm3``'s as well when
     ``fused_gated_residual`` is on, since the block's forward is then fastsample's);
   - ``fused_gated_residual=True`` computes each block's two adaLN-Zero residual adds
     ``h + gate[:, None] * y`` (after ``attn1`` and after ``ff``) with
     :func:`~fastsample.kernels.triton_ops.gated_residual`. A hook on every ``BasicTransformerBlock`` runs
     the block's ``ada_norm_zero`` forward (diffusers 0.42.1) calling its own submodules ``norm1``, ``attn1``,
     ``norm3`` and ``ff`` as modules, so their hooks (fastsample's unit caches, the savings above) still run.
     Blocks it does not reimplement (another norm type, cross-attention ``attn2``, positional embedding,
     GLIGEN fuser, a forward already replaced by a hook, e.g. a block-level cache enabled first) are
     refused at enable time; a block-level cache enabled afterwards wraps it and works.

Implemented with diffusers ``ModelHook``s (module identity is kept; ``disable()`` restores exactly) and
composable with fastsample's caches, guidance and ``torch.compile``.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F
from diffusers.hooks import ModelHook

from fastsample.integration.adapters import resolve_denoiser
from fastsample.integration.handles import Handle, deprecated_alias
from fastsample.integration.hooks import HookedModules, has_hook, invalidate_registry_cache
from fastsample.kernels.attention import records_grad

logger = logging.getLogger(__name__)

_HOOK = "fastsample_dit_savings"


class _ForwardState:
    """Per-forward memo, cleared by the outer hook at the start and the end of every transformer call."""

    def __init__(self) -> None:
        self.emb: dict[int, tuple[Any, Any, Any, torch.Tensor]] = {}
        self.mods: dict[int, torch.Tensor] = {}

    def clear(self) -> None:
        self.emb.clear()
        self.mods.clear()


class _OuterHook(ModelHook):
    def __init__(self, state: _ForwardState) -> None:
        super().__init__()
        self.state = state

    def new_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        self.state.clear()
        try:
            return self.fn_ref.original_forward(*args, **kwargs)
        finally:
            self.state.clear()


class _EmbeddingHook(ModelHook):
    """On ``norm1.emb``: return the group's embedding if it was already computed for these inputs."""

    def __init__(self, state: _ForwardState, group: int) -> None:
        super().__init__()
        self.state = state
        self.group = group

    def new_forward(self, module, timestep, class_labels, hidden_dtype=None):
        if module.training:  # label dropout is random per call: sharing would change the result
            return self.fn_ref.original_forward(timestep, class_labels, hidden_dtype=hidden_dtype)
        hit = self.state.emb.get(self.group)
        if hit is not None and hit[0] is timestep and hit[1] is class_labels and hit[2] == hidden_dtype:
            return hit[3]
        out = self.fn_ref.original_forward(timestep, class_labels, hidden_dtype=hidden_dtype)
        self.state.emb[self.group] = (timestep, class_labels, hidden_dtype, out)
        return out


class _Batch:
    """All blocks' adaLN projections in one matmul: ``[B, D] x [D, L·6D]`` when every block shares one
    embedding, else one ``bmm`` of ``[L, B, D] x [L, D, 6D]`` (each block with its own embedding's ``c``)."""

    def __init__(self, norms: list[torch.nn.Module], group_of: list[int]) -> None:
        self.norms = norms
        self.group_of = group_of
        self.representative = {g: group_of.index(g) for g in sorted(set(group_of))}
        self.shared = len(self.representative) == 1
        self._key: tuple | None = None
        self._weight: torch.Tensor | None = None
        self._bias: torch.Tensor | None = None

    def _stack(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        linears = [n.linear for n in self.norms]
        has_bias = linears[0].bias is not None
        if self.shared:
            weight = torch.cat([lin.weight for lin in linears])  # [L·6D, D]
            bias = torch.cat([lin.bias for lin in linears]) if has_bias else None
        else:
            weight = torch.stack([lin.weight.t() for lin in linears])  # [L, D, 6D]
            bias = torch.stack([lin.bias for lin in linears])[:, None] if has_bias else None  # [L, 1, 6D]
        return weight, bias

    def parameters(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        linears = [n.linear for n in self.norms]
        if torch.is_grad_enabled() and any(lin.weight.requires_grad for lin in linears):
            return self._stack()  # differentiable, never stale
        w0 = linears[0].weight
        key = (w0.device, w0.dtype)
        if self._key != key:
            with torch.no_grad():
                self._weight, self._bias = self._stack()
            self._key = key
        return self._weight, self._bias

    def compute(self, timestep: Any, class_labels: Any, hidden_dtype: Any) -> torch.Tensor:
        embs = {
            g: self.norms[i].emb(timestep, class_labels, hidden_dtype=hidden_dtype)
            for g, i in self.representative.items()
        }
        silu = self.norms[0].silu
        weight, bias = self.parameters()
        if self.shared:
            return F.linear(silu(next(iter(embs.values()))), weight, bias)  # [B, L·6D]
        x = torch.stack([silu(embs[g]) for g in self.group_of])  # [L, B, D]
        return torch.bmm(x, weight) if bias is None else torch.baddbmm(bias, x, weight)  # [L, B, 6D]

    def slice(self, mods: torch.Tensor, index: int) -> torch.Tensor:
        if not self.shared:
            return mods[index]
        width = self.norms[index].linear.out_features
        return mods[:, index * width : (index + 1) * width]


def _modulate(x: torch.Tensor, norm: torch.nn.Module, scale, shift, fused: bool) -> torch.Tensor:
    """``norm(x) * (1 + scale[:, None]) + shift[:, None]``; by the Triton kernel when ``fused`` and autograd
    is not recording (``norm`` is an affine-free ``LayerNorm``)."""
    if fused and not records_grad(x, scale, shift):
        from fastsample.kernels import triton_ops

        return triton_ops.adaln_modulate(x, scale, shift, eps=norm.eps)
    return norm(x) * (1 + scale[:, None]) + shift[:, None]


def _gated_add(residual: torch.Tensor, gate: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """adaLN-Zero residual ``residual + gate[:, None] * y`` by the Triton kernel (the stock expression while
    autograd records)."""
    if records_grad(residual, gate, y):
        return gate.unsqueeze(1) * y + residual
    if y.shape != residual.shape or residual.dim() != 3 or y.dtype != residual.dtype:
        raise ValueError(
            "enable_dit_savings(fused_gated_residual=True): expected [B, N, D] residual and branch output of "
            f"one dtype, got {tuple(residual.shape)} {residual.dtype} and {tuple(y.shape)} {y.dtype}"
        )
    from fastsample.kernels import triton_ops

    return triton_ops.gated_residual(residual, gate, y)


class _GatedBlockHook(ModelHook):
    """On a DiT ``BasicTransformerBlock``: its ``ada_norm_zero`` forward with the fused residual adds."""

    def __init__(self, fused_modulate: bool) -> None:
        super().__init__()
        self.fused_modulate = fused_modulate

    def new_forward(
        self,
        block,
        hidden_states,
        attention_mask=None,
        encoder_hidden_states=None,
        encoder_attention_mask=None,
        timestep=None,
        cross_attention_kwargs=None,
        class_labels=None,
        added_cond_kwargs=None,
    ):
        from diffusers.models.attention import _chunked_feed_forward

        attn_kwargs = dict(cross_attention_kwargs or {})
        if attn_kwargs.pop("gligen", None) is not None:
            raise ValueError("enable_dit_savings(fused_gated_residual=True) does not implement GLIGEN inputs")
        norm_hidden, gate_msa, shift_mlp, scale_mlp, gate_mlp = block.norm1(
            hidden_states, timestep, class_labels, hidden_dtype=hidden_states.dtype
        )
        attn_output = block.attn1(
            norm_hidden,
            encoder_hidden_states=encoder_hidden_states if block.only_cross_attention else None,
            attention_mask=attention_mask,
            **attn_kwargs,
        )
        hidden_states = _gated_add(hidden_states, gate_msa, attn_output)
        norm_hidden = _modulate(hidden_states, block.norm3, scale_mlp, shift_mlp, self.fused_modulate)
        if block._chunk_size is not None:
            ff_output = _chunked_feed_forward(block.ff, norm_hidden, block._chunk_dim, block._chunk_size)
        else:
            ff_output = block.ff(norm_hidden)
        return _gated_add(hidden_states, gate_mlp, ff_output)


def _check_gated_blocks(model: torch.nn.Module, fused_modulate: bool) -> None:
    """Refuse any block whose forward :class:`_GatedBlockHook` does not reimplement exactly."""
    from diffusers.models.attention import BasicTransformerBlock

    for i, block in enumerate(model.transformer_blocks):
        problem = None
        if type(block) is not BasicTransformerBlock:
            problem = f"is a {type(block).__name__}, not a BasicTransformerBlock"
        elif block.norm_type != "ada_norm_zero":
            problem = f"has norm_type {block.norm_type!r}, not 'ada_norm_zero'"
        elif block.attn2 is not None:
            problem = "has a cross-attention attn2"
        elif block.pos_embed is not None:
            problem = "has a positional embedding"
        elif hasattr(block, "fuser"):
            problem = "has a GLIGEN fuser"
        elif type(block.norm3) is not torch.nn.LayerNorm:
            problem = f"has a norm3 of type {type(block.norm3).__name__}, not LayerNorm"
        elif fused_modulate and block.norm3.weight is not None:
            problem = "has an affine norm3 (the fused modulate kernel has no LayerNorm affine)"
        elif "forward" in block.__dict__:
            problem = (
                "already has its forward replaced (a hook: a block-level cache or offloading enabled "
                "before; enable fused_gated_residual first)"
            )
        if problem:
            raise ValueError(
                f"enable_dit_savings(fused_gated_residual=True): transformer_blocks[{i}] {problem}"
            )


class _NormHook(ModelHook):
    """On ``norm1`` (``AdaLayerNormZero``): the same outputs, the projection taken from the batch."""

    def __init__(self, state: _ForwardState, batch: _Batch | None, index: int, fused: bool) -> None:
        super().__init__()
        self.state, self.batch, self.index, self.fused = state, batch, index, fused

    def new_forward(self, module, x, timestep=None, class_labels=None, hidden_dtype=None, emb=None):
        if self.batch is not None and not module.emb.training:
            all_mods = self.state.mods.get(0)
            if all_mods is None:  # first block of this forward that runs (a cache may skip earlier ones)
                all_mods = self.batch.compute(timestep, class_labels, hidden_dtype)
                self.state.mods[0] = all_mods
            mods = self.batch.slice(all_mods, self.index)
        else:
            if module.emb is not None:
                emb = module.emb(timestep, class_labels, hidden_dtype=hidden_dtype)
            mods = module.linear(module.silu(emb))
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mods.chunk(6, dim=1)
        x = _modulate(x, module.norm, scale_msa, shift_msa, self.fused)
        return x, gate_msa, shift_mlp, scale_mlp, gate_mlp


def _embedding_groups(embs: list[torch.nn.Module]) -> list[int]:
    """Group index per embedding module: equal type and bitwise-equal state dicts share a group."""
    reps: list[tuple[torch.nn.Module, dict]] = []
    groups = []
    for emb in embs:
        sd = emb.state_dict()
        for gi, (rep, rep_sd) in enumerate(reps):
            if (
                type(rep) is type(emb)
                and rep_sd.keys() == sd.keys()
                and all(rep_sd[k].shape == sd[k].shape and torch.equal(rep_sd[k], sd[k]) for k in sd)
            ):
                groups.append(gi)
                break
        else:
            reps.append((emb, sd))
            groups.append(len(reps) - 1)
    return groups


class DiTSavingsHandle(Handle):
    """From :func:`enable_dit_savings`: the :class:`~fastsample.integration.handles.Handle` verbs;
    ``summary()`` is ``describe()``; ``reset()`` is a deprecated alias of ``disable()``."""

    def __init__(self, model: torch.nn.Module, hooked: HookedModules, description: str) -> None:
        self.model = model
        self._hooked = hooked
        self._description = description
        self.active = True

    def describe(self) -> str:
        return self._description if self.active else f"dit savings on {type(self.model).__name__}: off"

    summary = describe

    def _undo(self) -> None:
        self._hooked.remove_all()
        invalidate_registry_cache(self.model)

    reset = deprecated_alias("disable", "reset")


def enable_dit_savings(
    pipe_or_model: Any,
    shared_embedding: bool = True,
    batched_adaln: bool = True,
    fused_modulate: bool = False,
    fused_gated_residual: bool = False,
) -> DiTSavingsHandle:
    """Turn on the exact DiT savings (module docstring) on ``pipe.transformer`` or a DiT model.

    Raises ``TypeError`` for anything but a ``DiTTransformer2DModel`` with adaLN-Zero blocks, ``ValueError``
    if nothing is requested or the model already has them, ``ValueError`` for ``fused_modulate`` or
    ``fused_gated_residual`` off CUDA (without Triton's interpreter) or, for ``fused_gated_residual``, for a
    block configuration it does not reimplement.
    """
    from diffusers import DiTTransformer2DModel
    from diffusers.models.normalization import AdaLayerNormZero

    from fastsample.kernels.attention import require_triton

    model = resolve_denoiser(pipe_or_model, "enable_dit_savings")
    if not isinstance(model, DiTTransformer2DModel):
        raise TypeError(f"enable_dit_savings needs a DiTTransformer2DModel, got {type(model).__name__}")
    norms = [block.norm1 for block in model.transformer_blocks]
    if not norms or not all(type(n) is AdaLayerNormZero and n.emb is not None for n in norms):
        raise TypeError(
            "enable_dit_savings: every block's norm1 must be an AdaLayerNormZero with an embedding"
        )
    if not (shared_embedding or batched_adaln or fused_modulate or fused_gated_residual):
        raise ValueError(
            "enable_dit_savings: nothing requested (all of shared_embedding, batched_adaln, "
            "fused_modulate, fused_gated_residual are False)"
        )
    if has_hook(model, _HOOK):
        raise ValueError("enable_dit_savings: already enabled on this model; disable the first handle")
    if fused_modulate:
        require_triton(model, "enable_dit_savings(fused_modulate=True)")
    if fused_gated_residual:
        require_triton(model, "enable_dit_savings(fused_gated_residual=True)")
        _check_gated_blocks(model, fused_modulate)

    group_of = _embedding_groups([n.emb for n in norms]) if shared_embedding else list(range(len(norms)))
    batch = _Batch(norms, group_of) if batched_adaln and len(norms) > 1 else None
    state = _ForwardState()
    hooked = HookedModules()
    try:
        hooked.add(model, _OuterHook(state), _HOOK)
        for i, norm in enumerate(norms):
            if shared_embedding:
                hooked.add(norm.emb, _EmbeddingHook(state, group_of[i]), _HOOK)
            if batch is not None or fused_modulate:
                hooked.add(norm, _NormHook(state, batch, i, fused_modulate), _HOOK)
        if fused_gated_residual:
            for block in model.transformer_blocks:
                hooked.add(block, _GatedBlockHook(fused_modulate), _HOOK)
    except BaseException:
        hooked.remove_all()
        raise
    invalidate_registry_cache(model)
    on = [
        name
        for name, flag in (
            ("shared embedding", shared_embedding),
            ("batched adaLN", batched_adaln),
            (
                "fused modulate" + (" (norm1 and norm3)" if fused_gated_residual else " (norm1)"),
                fused_modulate,
            ),
            ("fused gated residual (2 per block)", fused_gated_residual),
        )
        if flag
    ]
    n_groups = len(set(group_of))
    desc = f"dit savings on {type(model).__name__}: {', '.join(on)}; {len(norms)} blocks"
    if shared_embedding:
        desc += f", {n_groups} distinct embedding(s) computed once per forward (was {len(norms) + 1})"
        if n_groups == len(norms) > 1:
            logger.warning(
                "enable_dit_savings: every block has its own embedding weights, so no block shares one; the "
                "only embedding saved is the output layer's recomputation of block 0's (%d computed instead "
                "of %d per forward)",
                n_groups,
                len(norms) + 1,
            )
    if batch is not None:
        desc += ", adaLN projections in 1 " + ("matmul" if batch.shared else "batched matmul (bmm)")
    logger.info(desc)
    return DiTSavingsHandle(model, hooked, desc)


__all__ = ["DiTSavingsHandle", "enable_dit_savings"]
