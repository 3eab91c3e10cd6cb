"""The cache's router-training engine: the controller HarmoniCa's training drives (Huang et al. 2025).

It hooks the denoiser like the inference cache (:func:`fastsample.cache.api.attach_controller`), but never
decides anything itself: the training loop (:mod:`fastsample.cache.train`) sets, before each forward, one
of two modes:

- ``"teacher"``: compute every unit and leave the cache untouched (the target ε*);
- ``"soft"``: HarmoniCa's training forward ``U = r·U_fresh + (1 − r)·C`` with router scores ``r`` (with
  gradient), and the refresh rule ``C ← U_fresh`` where ``r > τ``.

Every forward computes every site; nothing is logged or MAC-profiled. Units only (router training caches at
the unit level); a block-level site runs its forward unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from fastsample.cache.controller import CacheController, _signature

MODES = ("teacher", "soft")


def _clone(value: Any) -> Any:
    if isinstance(value, tuple):
        return tuple(v if v is None else v.clone() for v in value)
    return value.clone()


def _mix(r: torch.Tensor, fresh: Any, cached: Any) -> Any:
    if isinstance(fresh, tuple):
        return tuple(f if f is None else r * f + (1 - r) * c for f, c in zip(fresh, cached))
    return r * fresh + (1 - r) * cached


class RouterTrainingController(CacheController):
    """A :class:`~fastsample.cache.controller.CacheController` in the training modes (module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["profile_macs"] = False
        super().__init__(*args, **kwargs)
        self.mode = "teacher"
        self.soft_scores: torch.Tensor | None = None  # per-site r (with grad)
        self.soft_refresh: list[bool] = []  # per-site r > τ

    def set_mode(self, mode: str, scores: torch.Tensor | None = None, threshold: float | None = None) -> None:
        """``"teacher"``, or ``"soft"`` with the per-site ``scores`` r and the refresh ``threshold`` τ."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}.")
        if mode == "soft":
            if scores is None or threshold is None:
                raise ValueError("the soft mode needs the router `scores` and the `threshold` τ.")
            self.soft_scores = scores
            self.soft_refresh = (scores > threshold).tolist()
        self.mode = mode

    def begin_forward(self, context: str, args: tuple, kwargs: dict) -> bool:
        state = self._enter(context)
        self.active, self.flags = state, [True] * len(self.sites)
        state.signature = _signature(args, kwargs)
        self.profiling = False
        return False

    def end_forward(self, completed: bool) -> None:
        self.active, self.profiling = None, False

    def run_unit(self, index: int, forward: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
        state = self.active
        if state is None or self.mode == "teacher":
            return forward(*args, **kwargs)
        slot = state.slots[index]
        fresh = forward(*args, **kwargs)
        # mix with a clone: autograd keeps the cached value for d/dr while the slot may be refreshed below
        out = _mix(self.soft_scores[index], fresh, _clone(slot.load())) if slot.valid else fresh
        if self.soft_refresh[index] or not slot.valid:
            slot.store(fresh)
        return out

    def run_block(
        self, index: int, streams: tuple[str, ...], forward: Callable[..., Any], args: tuple, kwargs: dict
    ) -> Any:
        return forward(*args, **kwargs)


__all__ = ["MODES", "RouterTrainingController"]
