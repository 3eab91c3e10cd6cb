"""Row identity of the batch a denoiser forward carries: which (CFG half, sample) each row is.

A pipeline builds one *canonical* batch per step (for batched CFG ``2B`` rows, ``[uncond; cond]`` or
``[cond; uncond]`` as the adapter table says). A capability that sends the denoiser only some of those rows
(Adaptive Guidance re-packing: every conditional row plus the unconditional rows of the samples that have not
switched; the conditional half alone) says which ones with :func:`carrying_rows`; a capability that keeps
state per row (the feature cache) reads it with :func:`current_rows` from anywhere inside that forward, at
any depth (the denoiser's blocks and units included) and whatever the order in which the two hooks wrap the
denoiser. Outside such a block (a forward on the whole canonical batch, or any forward nobody re-packed)
:func:`current_rows` returns ``None``: row ``r`` of the forward is canonical row ``r``.

The map lives on the denoiser module (``module.__dict__``) only for the duration of the forward, and is
removed afterwards, so the module is left exactly as it was.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch

_ATTR = "_fastsample_row_map"


@dataclass(frozen=True)
class RowMap:
    """``rows[j]``: the canonical index (in ``[0, full)``) of row ``j`` of the current forward."""

    rows: torch.Tensor  # 1-D int64, on CPU
    full: int

    def __post_init__(self) -> None:
        if self.rows.ndim != 1 or self.rows.dtype != torch.int64 or self.rows.device.type != "cpu":
            raise ValueError("RowMap.rows must be a 1-D int64 CPU tensor.")
        if self.rows.numel() and (int(self.rows.min()) < 0 or int(self.rows.max()) >= self.full):
            raise ValueError(f"RowMap.rows must lie in [0, {self.full}).")

    def __len__(self) -> int:
        return int(self.rows.numel())


@contextlib.contextmanager
def carrying_rows(module: torch.nn.Module, rows: torch.Tensor | slice, full: int) -> Iterator[RowMap]:
    """Declare that forwards of ``module`` inside this block carry the canonical rows ``rows`` (an index
    tensor or a slice of ``range(full)``) of a canonical batch of ``full`` rows. Nested blocks stack."""
    if isinstance(rows, slice):
        rows = torch.arange(full)[rows]
    row_map = RowMap(torch.as_tensor(rows).reshape(-1).to("cpu", torch.int64), int(full))
    stack = module.__dict__.setdefault(_ATTR, [])
    stack.append(row_map)
    try:
        yield row_map
    finally:
        stack.pop()
        if not stack:
            module.__dict__.pop(_ATTR, None)


def current_rows(module: torch.nn.Module) -> RowMap | None:
    """The innermost :func:`carrying_rows` map active on ``module``, or ``None`` (identity)."""
    stack = module.__dict__.get(_ATTR)
    return stack[-1] if stack else None


__all__ = ["RowMap", "carrying_rows", "current_rows"]
