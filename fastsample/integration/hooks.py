"""diffusers ``ModelHook`` plumbing shared by guidance, caching and the kernels, written once.

- :class:`NoState` / :func:`cache_context_manager` / :func:`context_name`: a stateful hook that only wants to
  *see* the name a pipeline passes to ``denoiser.cache_context(name)`` (Flux's separate ``"cond"`` and
  ``"uncond"`` calls) holds a ``StateManager`` of a state that has nothing to reset.
- :class:`HookedModules`: registers hooks on modules and removes them exactly, so that a module's instance
  ``forward`` attribute and its ``_diffusers_hook`` registry are present afterwards only if they were before.
- :func:`invalidate_registry_cache`: diffusers caches each registry's list of child registries; it goes
  stale when hooks are added or removed below it (diffusers#14037), so every change of hooks ends with a call.

Only the public diffusers 0.42 hook API is used (``HookRegistry``, ``ModelHook``, ``StateManager.context``,
``HookRegistry.invalidate_child_registries_cache``); see docs/design/architecture.md#the-integration-layer.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers.hooks import HookRegistry, ModelHook
from diffusers.hooks.hooks import BaseState, StateManager

_REGISTRY_ATTR = "_diffusers_hook"


class NoState(BaseState):
    """A hook state with nothing in it (the hook is stateful only to receive the cache context)."""

    def reset(self, *args: Any, **kwargs: Any) -> None:
        pass


def cache_context_manager() -> StateManager:
    """A ``StateManager`` to keep as a hook attribute: diffusers sets the running ``cache_context`` on it."""
    return StateManager(NoState)


def context_name(manager: StateManager, default: str | None = None) -> str | None:
    """The name of the ``cache_context`` the denoiser is being called in, or ``default`` outside any."""
    try:
        return manager.context.name
    except ValueError:  # diffusers raises when no context is set
        return default


def has_hook(module: torch.nn.Module, name: str) -> bool:
    """Whether ``module`` carries a diffusers hook registered under ``name``."""
    registry = module.__dict__.get(_REGISTRY_ATTR)
    return registry is not None and registry.get_hook(name) is not None


def invalidate_registry_cache(model: torch.nn.Module) -> None:
    """Rebuild diffusers' cached child-registry lists under ``model`` on next use (diffusers#14037).

    Calls the public ``HookRegistry.invalidate_child_registries_cache`` on the top-most registries of the
    tree (each call covers its whole subtree)."""
    registry = model.__dict__.get(_REGISTRY_ATTR)
    if registry is not None:
        registry.invalidate_child_registries_cache()
        return
    for child in model.children():
        invalidate_registry_cache(child)


class HookedModules:
    """Hooks registered by one capability, removable exactly (instance ``forward`` and registry included)."""

    def __init__(self) -> None:
        self._entries: list[tuple[torch.nn.Module, str, bool, bool]] = []

    def add(self, module: torch.nn.Module, hook: ModelHook, name: str) -> None:
        """Register ``hook`` on ``module`` under ``name`` (remembering what the module had before)."""
        had_forward = "forward" in module.__dict__
        had_registry = _REGISTRY_ATTR in module.__dict__
        HookRegistry.check_if_exists_or_initialize(module).register_hook(hook, name)
        self._entries.append((module, name, had_forward, had_registry))

    def remove_all(self) -> None:
        """Remove every hook added here, newest first; idempotent."""
        for module, name, had_forward, had_registry in reversed(self._entries):
            registry = module.__dict__.get(_REGISTRY_ATTR)
            if registry is None:
                continue
            registry.remove_hook(name, recurse=False)
            if not registry.hooks:
                if not had_forward:
                    module.__dict__.pop("forward", None)
                if not had_registry:
                    del module.__dict__[_REGISTRY_ATTR]
        self._entries = []

    def __len__(self) -> int:
        return len(self._entries)


__all__ = [
    "HookedModules",
    "NoState",
    "cache_context_manager",
    "context_name",
    "has_hook",
    "invalidate_registry_cache",
]
