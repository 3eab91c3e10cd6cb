"""CUDA-graph-safe storage for one cached output.

Outputs of a ``torch.compile(mode="reduce-overhead")`` region live in the CUDA-graph pool and are
overwritten on the next replay (pytorch#170604), so a cache must never keep a reference to them. A
:class:`CacheSlot` allocates its buffers once (on the first store, or when the shape/dtype/device changes)
and afterwards only ``copy_``-es into them, so their addresses stay fixed across steps and pipeline calls.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def _leaves(value: Any) -> tuple[torch.Tensor | None, ...]:
    if isinstance(value, torch.Tensor) or value is None:
        return (value,)
    if isinstance(value, tuple) and all(v is None or isinstance(v, torch.Tensor) for v in value):
        return value
    raise TypeError(f"cannot cache a {type(value).__name__}; expected a tensor or a tuple of tensors/None.")


class CacheSlot:
    """Preallocated buffers for a tensor (or a tuple of tensors/``None``); ``valid`` says it holds data.

    Rows: every leaf's leading dimension is the batch. A value stored with ``rows`` (the canonical indices of
    its rows in a canonical batch of ``full`` rows, :mod:`fastsample.integration.rows`) is copied into those
    rows of ``[full, ...]`` buffers, and :meth:`load` with ``rows`` gathers them back, so a forward that
    carries only some rows of the canonical batch reads and refreshes exactly those. Without ``rows`` the
    value is the whole batch."""

    __slots__ = ("_buffers", "_is_tuple", "_rows_valid", "allocations", "valid")

    def __init__(self) -> None:
        self._buffers: tuple[torch.Tensor | None, ...] | None = None
        self._is_tuple = False
        self._rows_valid: np.ndarray | None = None  # None: every row valid (when `valid`)
        self.allocations = 0  # how many times buffers were (re)allocated, for tests and diagnostics
        self.valid = False

    def _fits(self, leaves: tuple[torch.Tensor | None, ...], lead: int | None = None) -> bool:
        if self._buffers is None or len(self._buffers) != len(leaves):
            return False
        for buf, value in zip(self._buffers, leaves):
            if (buf is None) != (value is None):
                return False
            if value is not None:
                shape = value.shape if lead is None else (lead, *value.shape[1:])
                if buf.shape != shape or buf.dtype != value.dtype or buf.device != value.device:
                    return False
        return True

    @property
    def full(self) -> int | None:
        """Leading dimension of the buffers (``None`` before the first store)."""
        leaf = next((b for b in self._buffers or () if b is not None), None)
        return None if leaf is None else int(leaf.shape[0])

    def store(self, value: Any, rows: torch.Tensor | None = None, full: int | None = None) -> None:
        """Copy ``value`` (detached) into the buffers, allocating them only if they do not fit; with
        ``rows``/``full``, into those rows of a ``full``-row batch (class docstring)."""
        leaves = _leaves(value)
        self._is_tuple = isinstance(value, tuple)
        if rows is None:
            if not self._fits(leaves):
                self._buffers = tuple(
                    None if v is None else torch.empty_like(v, requires_grad=False) for v in leaves
                )
                self.allocations += 1
            with torch.no_grad():
                for buf, v in zip(self._buffers, leaves):
                    if buf is not None:
                        buf.copy_(v.detach())
            self._rows_valid = None
            self.valid = True
            return
        if not self._fits(leaves, full):
            self._buffers = tuple(
                None
                if v is None
                else torch.zeros((full, *v.shape[1:]), dtype=v.dtype, device=v.device, requires_grad=False)
                for v in leaves
            )
            self.allocations += 1
            self.valid = False
        if not self.valid:
            self._rows_valid = np.zeros(full, dtype=bool)
        elif self._rows_valid is None:
            self._rows_valid = np.ones(full, dtype=bool)
        with torch.no_grad():
            for buf, v in zip(self._buffers, leaves):
                if buf is not None:
                    buf.index_copy_(0, rows.to(buf.device), v.detach())
        self._rows_valid[rows.numpy()] = True
        self.valid = True

    def holds(self, rows: torch.Tensor | None = None, full: int | None = None) -> bool:
        """Whether :meth:`load` can serve ``rows`` of a ``full``-row batch (without ``rows``: every row)."""
        if not self.valid:
            return False
        if full is not None and self.full != full:
            return False
        if self._rows_valid is None:
            return True
        return bool(self._rows_valid.all() if rows is None else self._rows_valid[rows.numpy()].all())

    def load_leaves(self, rows: torch.Tensor | None = None) -> tuple[torch.Tensor | None, ...]:
        """The stored leaves (the buffers themselves without ``rows``; gathered copies with ``rows``)."""
        if not self.valid:
            raise RuntimeError("cache slot read before anything was stored in it.")
        if rows is None or is_identity(rows, self.full):
            return self._buffers
        return tuple(None if b is None else b.index_select(0, rows.to(b.device)) for b in self._buffers)

    def pack(self, leaves: tuple[torch.Tensor | None, ...]) -> Any:
        """``leaves`` in the structure that was stored (a tensor or a tuple)."""
        return leaves if self._is_tuple else leaves[0]

    def load(self, rows: torch.Tensor | None = None) -> Any:
        """The cached value, as the same structure that was stored (the buffers themselves, not copies,
        unless ``rows`` selects a subset)."""
        return self.pack(self.load_leaves(rows))

    def invalidate(self) -> None:
        """Mark empty while keeping the buffers, so the next store reuses their memory."""
        self.valid = False
        self._rows_valid = None

    def nbytes(self) -> int:
        return sum(b.numel() * b.element_size() for b in self._buffers or () if b is not None)


def is_identity(rows: torch.Tensor, full: int | None) -> bool:
    """Whether ``rows`` is ``0, 1, ..., full - 1``."""
    return full is not None and rows.numel() == full and bool(torch.equal(rows, torch.arange(full)))
