"""Where a diffusion transformer can be cached: its *units* and its *blocks*.

A **unit** is a sub-module whose output a block multiplies by a gate (or adds) outside the sub-module, so
reusing its output while recomputing the current step's adaLN modulation is exact HarmoniCa/L2C/FORA
semantics (HarmoniCa, Huang et al. 2025, §3: the cached objects are the pre-gate attention and MLP outputs):

============================  ==============================================  =========================
block class                   units (in call order)                           models
============================  ==============================================  =========================
``BasicTransformerBlock``     ``attn1``, ``attn2`` (if any), ``ff``           DiT, PixArt
``JointTransformerBlock``     ``attn``, ``attn2`` (SD3.5), ``ff``,            SD3
                              ``ff_context`` (if any)
``FluxTransformerBlock``      ``attn``, ``ff``, ``ff_context``                Flux (double stream)
``FluxSingleTransformerBlock`` ``attn``, ``proj_mlp`` (``proj_out`` is        Flux (single stream)
                              always recomputed: it mixes both branches)
============================  ==============================================  =========================

A **block** is one entry of ``transformer_blocks`` (and Flux's ``single_transformer_blocks``); block-level
caches store its residuals ``out - in`` for each stream it returns (FirstBlockCache / TeaCache style).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

SUPPORTED_MODELS = (
    "DiTTransformer2DModel",
    "PixArtTransformer2DModel",
    "SD3Transformer2DModel",
    "FluxTransformer2DModel",
)

_BLOCK_LISTS = ("transformer_blocks", "single_transformer_blocks")

_UNITS_BY_BLOCK = {
    "BasicTransformerBlock": ("attn1", "attn2", "ff"),
    "JointTransformerBlock": ("attn", "attn2", "ff", "ff_context"),
    "FluxTransformerBlock": ("attn", "ff", "ff_context"),
    "FluxSingleTransformerBlock": ("attn", "proj_mlp"),
}

# What each block class returns, in order: the names of the input streams its outputs continue.
_STREAMS_BY_BLOCK = {
    "BasicTransformerBlock": ("hidden_states",),
    "JointTransformerBlock": ("encoder_hidden_states", "hidden_states"),
    "FluxTransformerBlock": ("encoder_hidden_states", "hidden_states"),
    "FluxSingleTransformerBlock": ("encoder_hidden_states", "hidden_states"),
}

Level = Literal["unit", "block"]


@dataclass(frozen=True, eq=False)
class CacheSite:
    """One cacheable module: ``name`` is its path in the model (``transformer_blocks.3.ff``)."""

    name: str
    module: torch.nn.Module
    block_index: int
    kind: str  # unit attribute name ("attn1", "ff", ...) or "block"
    streams: tuple[str, ...] = ()  # block level only: output streams (see _STREAMS_BY_BLOCK)


def model_family(model: torch.nn.Module) -> str:
    """The supported class ``model`` is (or derives from); else a ``ValueError`` naming the supported ones."""
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"expected a diffusers transformer (torch.nn.Module), got {type(model).__name__}.")
    for klass in type(model).__mro__:
        if klass.__name__ in SUPPORTED_MODELS:
            return klass.__name__
    raise ValueError(
        f"fastsample.cache does not support {type(model).__name__}; supported denoisers: "
        f"{', '.join(SUPPORTED_MODELS)}."
    )


def _blocks(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    model_family(model)
    found = []
    for list_name in _BLOCK_LISTS:
        for i, block in enumerate(getattr(model, list_name, None) or ()):
            block_class = next(
                (k.__name__ for k in type(block).__mro__ if k.__name__ in _UNITS_BY_BLOCK), None
            )
            if block_class is None:
                raise ValueError(
                    f"{list_name}.{i} is a {type(block).__name__}, which fastsample.cache cannot hook."
                )
            found.append((f"{list_name}.{i}", block, block_class))
    if not found:
        raise ValueError(f"{type(model).__name__} has no transformer blocks to cache.")
    return found


def find_units(model: torch.nn.Module) -> list[CacheSite]:
    """The unit-level sites of ``model`` in call order (the table in the module docstring)."""
    sites = []
    for block_index, (block_name, block, block_class) in enumerate(_blocks(model)):
        for attr in _UNITS_BY_BLOCK[block_class]:
            module = getattr(block, attr, None)
            if module is not None:
                sites.append(CacheSite(f"{block_name}.{attr}", module, block_index, attr))
    return sites


def find_blocks(model: torch.nn.Module) -> list[CacheSite]:
    """The block-level sites of ``model`` in call order."""
    return [
        CacheSite(name, block, i, "block", _STREAMS_BY_BLOCK[block_class])
        for i, (name, block, block_class) in enumerate(_blocks(model))
    ]


def find_sites(model: torch.nn.Module, level: Level) -> list[CacheSite]:
    """``find_units`` or ``find_blocks`` by ``level``."""
    if level == "unit":
        return find_units(model)
    if level == "block":
        return find_blocks(model)
    raise ValueError(f"level must be 'unit' or 'block', got {level!r}.")
