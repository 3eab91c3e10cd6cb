"""diffusers ``ModelHook`` subclasses that connect a denoiser to its :class:`CacheController`.

- :class:`StepHook` wraps the denoiser's forward: it reads the CFG context from diffusers' ``cache_context``
  (so Flux's separate cond/uncond calls get separate caches) and brackets the forward with
  ``begin_forward``/``end_forward``. It is stateful only so that ``cache_context`` reaches it; its
  ``reset_state`` is deliberately a no-op (diffusers calls it from ``maybe_free_model_hooks`` at the *end* of
  a call, which would erase the statistics); fastsample resets at the *start* of each call instead. A
  pipeline's denoiser called outside that pipeline's calls (by another pipeline sharing it, or directly)
  runs uncached and leaves the cache untouched.
- :class:`UnitHook` / :class:`BlockHook` replace a site's forward by "run it, or return the cached value".
  With ``compile_options`` the site's *original* forward is compiled (regional compilation): the decision
  stays in Python outside the compiled region, so dynamo sees the same graph at every step.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers.hooks import ModelHook

from fastsample.cache.controller import DEFAULT_CONTEXT, CacheController
from fastsample.integration.hooks import cache_context_manager, context_name, has_hook

STEP_HOOK = "fastsample_cache_step"
SITE_HOOK = "fastsample_cache_site"


class StepHook(ModelHook):
    """Outer hook on the denoiser: one call = one step of one CFG context."""

    _is_stateful = True

    def __init__(self, controller: CacheController) -> None:
        super().__init__()
        self.controller = controller
        self.context_manager = cache_context_manager()  # receives diffusers' cache_context(name)

    def new_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        if self.controller.bypassed:  # no step is active, so every site hook runs its forward too
            return self.fn_ref.original_forward(*args, **kwargs)
        name = context_name(self.context_manager, DEFAULT_CONTEXT)
        profile = self.controller.begin_forward(name, args, kwargs)
        completed = False
        try:
            out = self.controller.run_profiled(self.fn_ref.original_forward, args, kwargs, profile)
            completed = True
            return out
        finally:
            self.controller.end_forward(completed)

    def reset_state(self, module: torch.nn.Module) -> torch.nn.Module:
        return module


class _SiteHook(ModelHook):
    def __init__(self, controller: CacheController, index: int, compile_options: dict | None) -> None:
        super().__init__()
        self.controller = controller
        self.index = index
        self.compile_options = compile_options
        self._compiled = None

    def _forward(self):
        original = self.fn_ref.original_forward
        if self.compile_options is None or self.controller.profiling:
            return original
        if self._compiled is None:
            self._compiled = torch.compile(original, **self.compile_options)
        return self._compiled


class UnitHook(_SiteHook):
    """Unit-level site (``attn1``, ``attn2``, ``ff``, ...): its pre-gate output is cached."""

    def new_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        return self.controller.run_unit(self.index, self._forward(), args, kwargs)


class BlockHook(_SiteHook):
    """Block-level site: its residuals ``out - in`` are cached."""

    def __init__(
        self, controller: CacheController, index: int, compile_options: dict | None, streams: tuple[str, ...]
    ) -> None:
        super().__init__(controller, index, compile_options)
        self.streams = streams

    def new_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        return self.controller.run_block(self.index, self.streams, self._forward(), args, kwargs)


def has_fastsample_cache(model: torch.nn.Module) -> bool:
    """Whether ``model`` has a fastsample cache enabled."""
    return has_hook(model, STEP_HOOK)
