"""CUDA-graph-safe storage for one cached output.

Outputs of a ``torch.compile(mode="reduce-overhead")`` region live in the CUDA-graph pool and are
overwritten on the next replay (pytorch#170604), so a cache must never keep a reference to them. A
:class:`CacheSlot` allocates its buffers once (on the first store, or when the shape/dtype/device changes)
and afterwards only ``copy_``-es into them, so their addresses stay fixed across steps and pipeline calls.
"""

from __future__ import annotations

from typing import Any

import torch


def _leaves(value: Any) -> tuple[torch.Tensor | None, ...]:
    if isinstance(value, torch.Tensor) or value is None:
        return (value,)
    if isinstance(value, tuple) and all(v is None or isinstance(v, torch.Tensor) for v in value):
        return value
    raise TypeError(f"cannot cache a {type(value).__name__}; expected a tensor or a tuple of tensors/None.")


class CacheSlot:
    """Preallocated buffers for a tensor (or a tuple of tensors/``None``); ``valid`` says it holds data."""

    __slots__ = ("_buffers", "_is_tuple", "allocations", "valid")

    def __init__(self) -> None:
        self._buffers: tuple[torch.Tensor | None, ...] | None = None
        self._is_tuple = False
        self.allocations = 0  # how many times buffers were (re)allocated, for tests and diagnostics
        self.valid = False

    def _fits(self, leaves: tuple[torch.Tensor | None, ...]) -> bool:
        if self._buffers is None or len(self._buffers) != len(leaves):
            return False
        for buf, value in zip(self._buffers, leaves):
            if (buf is None) != (value is None):
                return False
            if value is not None and (
                buf.shape != value.shape or buf.dtype != value.dtype or buf.device != value.device
            ):
                return False
        return True

    def store(self, value: Any) -> None:
        """Copy ``value`` (detached) into the buffers, allocating them only if they do not fit."""
        leaves = _leaves(value)
        if not self._fits(leaves):
            self._buffers = tuple(
                None if v is None else torch.empty_like(v, requires_grad=False) for v in leaves
            )
            self.allocations += 1
        self._is_tuple = isinstance(value, tuple)
        with torch.no_grad():
            for buf, v in zip(self._buffers, leaves):
                if buf is not None:
                    buf.copy_(v.detach())
        self.valid = True

    def load(self) -> Any:
        """The cached value, as the same structure that was stored (the buffers themselves, not copies)."""
        if not self.valid:
            raise RuntimeError("cache slot read before anything was stored in it.")
        return self._buffers if self._is_tuple else self._buffers[0]

    def invalidate(self) -> None:
        """Mark empty while keeping the buffers, so the next store reuses their memory."""
        self.valid = False

    def nbytes(self) -> int:
        return sum(b.numel() * b.element_size() for b in self._buffers or () if b is not None)
