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
3. Optionally, ``fused_modulate=True`` computes ``norm1``'s ``LN(x)(1+scale)+shift`` with the Triton kernel
   (CUDA only).

Implemented with diffusers ``ModelHook``s (module identity is kept; ``disable()`` restores exactly) and
composable with fastsample's caches, guidance and ``torch.compile``.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F
from diffusers.hooks import ModelHook

from fastsample.cache.hooks import HookedModules, invalidate_registry_cache

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
        if self.fused:
            from fastsample.kernels import triton_ops

            x = triton_ops.adaln_modulate(x, scale_msa, shift_msa, eps=module.norm.eps)
        else:
            x = module.norm(x) * (1 + scale_msa[:, None]) + shift_msa[:, None]
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


class DiTSavingsHandle:
    """From :func:`enable_dit_savings`: ``describe()``/``summary()``, ``disable()`` (alias ``reset()``)."""

    def __init__(self, model: torch.nn.Module, hooked: HookedModules, description: str) -> None:
        self.model = model
        self._hooked = hooked
        self._description = description
        self.active = True

    def describe(self) -> str:
        return self._description if self.active else f"dit savings on {type(self.model).__name__}: off"

    summary = describe

    def disable(self) -> None:
        if not self.active:
            return
        self._hooked.remove_all()
        invalidate_registry_cache(self.model)
        self.active = False

    reset = disable

    def __enter__(self) -> DiTSavingsHandle:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.disable()

    def __repr__(self) -> str:
        return f"DiTSavingsHandle({self.describe()})"


def enable_dit_savings(
    pipe_or_model: Any,
    shared_embedding: bool = True,
    batched_adaln: bool = True,
    fused_modulate: bool = False,
) -> DiTSavingsHandle:
    """Turn on the exact DiT savings (module docstring) on ``pipe.transformer`` or a DiT model.

    Raises ``TypeError`` for anything but a ``DiTTransformer2DModel`` with adaLN-Zero blocks, ``ValueError``
    if nothing is requested or the model already has them, ``ValueError`` for ``fused_modulate`` off CUDA.
    """
    from diffusers import DiTTransformer2DModel
    from diffusers.models.normalization import AdaLayerNormZero

    from fastsample.kernels.attention import _resolve_model, require_triton

    model = _resolve_model(pipe_or_model)
    if not isinstance(model, DiTTransformer2DModel):
        raise TypeError(f"enable_dit_savings needs a DiTTransformer2DModel, got {type(model).__name__}")
    norms = [block.norm1 for block in model.transformer_blocks]
    if not norms or not all(type(n) is AdaLayerNormZero and n.emb is not None for n in norms):
        raise TypeError(
            "enable_dit_savings: every block's norm1 must be an AdaLayerNormZero with an embedding"
        )
    if not (shared_embedding or batched_adaln or fused_modulate):
        raise ValueError(
            "enable_dit_savings: nothing requested (all of shared_embedding, batched_adaln, "
            "fused_modulate are False)"
        )
    registry = model.__dict__.get("_diffusers_hook")
    if registry is not None and registry.get_hook(_HOOK) is not None:
        raise ValueError("enable_dit_savings: already enabled on this model; disable the first handle")
    if fused_modulate:
        require_triton(model, "enable_dit_savings(fused_modulate=True)")

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
    except BaseException:
        hooked.remove_all()
        raise
    invalidate_registry_cache(model)
    on = [
        name
        for name, flag in (
            ("shared embedding", shared_embedding),
            ("batched adaLN", batched_adaln),
            ("fused modulate", fused_modulate),
        )
        if flag
    ]
    n_groups = len(set(group_of))
    desc = f"dit savings on {type(model).__name__}: {', '.join(on)}; {len(norms)} blocks"
    if shared_embedding:
        desc += f", {n_groups} distinct embedding(s) computed once per forward (was {len(norms) + 1})"
        if n_groups == len(norms) > 1:
            logger.warning("enable_dit_savings: every block has its own embedding weights, none is shared")
    if batch is not None:
        desc += ", adaLN projections in 1 " + ("matmul" if batch.shared else "batched matmul (bmm)")
    logger.info(desc)
    return DiTSavingsHandle(model, hooked, desc)


__all__ = ["DiTSavingsHandle", "enable_dit_savings"]
