"""Per-call state resets for pipelines.

Anything that lives across denoising steps (momentum, the Adaptive-Guidance switch, cached features, step
counters) must be reset at the start of every pipeline call, never inferred from timestep values. Python
looks special methods up on the type, so an instance attribute ``pipe.__call__`` would not intercept
``pipe(...)``; instead the pipeline instance is given a thin subclass of its own class (same name, same
module) whose ``__call__`` runs the registered callbacks around the original call. When the last callback is
removed, the instance gets its original class back, so ``disable`` restores the pipeline exactly.

A callback registered with ``with_arguments=True`` receives the call's arguments bound to the pipeline's
``__call__`` signature with its defaults applied (``{"guidance_scale": 4.0, ...}``), so hooks read what the
user passed instead of the running frame's locals.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

_REGISTRY_ATTR = "_fastsample_call_callbacks"
_ORIGINAL_CLASS_ATTR = "_fastsample_original_class"


def _bound_arguments(signature: inspect.Signature, pipe: Any, args: tuple, kwargs: dict) -> dict[str, Any]:
    """The arguments of a call of ``__call__`` (``signature``) without ``self``, with defaults applied;
    ``**kwargs`` entries are flattened in."""
    bound = signature.bind(pipe, *args, **kwargs)
    bound.apply_defaults()
    out: dict[str, Any] = {}
    for name, value in list(bound.arguments.items())[1:]:
        if signature.parameters[name].kind is inspect.Parameter.VAR_KEYWORD:
            out.update(value)
        else:
            out[name] = value
    return out


def _scoped_subclass(cls: type) -> type:
    signature = inspect.signature(cls.__call__)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        callbacks = list(getattr(self, _REGISTRY_ATTR).values())
        arguments = None
        if any(with_arguments for _, _, with_arguments in callbacks):
            arguments = _bound_arguments(signature, self, args, kwargs)  # a bad call raises here, as it would
        started = []
        try:
            for start, end, with_arguments in callbacks:
                if with_arguments:
                    start(dict(arguments))
                else:
                    start()
                started.append(end)
            return cls.__call__(self, *args, **kwargs)
        finally:  # the callbacks that started are ended, also when a later one refuses the call
            for end in reversed(started):
                if end is not None:
                    end()

    namespace = {"__call__": __call__, "__module__": cls.__module__, "__doc__": cls.__doc__}
    return type(cls.__name__, (cls,), namespace)


def on_call(
    pipe: Any,
    key: str,
    start: Callable[..., None],
    end: Callable[[], None] | None = None,
    *,
    with_arguments: bool = False,
) -> None:
    """Run ``start()`` before and ``end()`` after every ``pipe(...)`` call, under the name ``key``.

    With ``with_arguments=True``, ``start`` is called as ``start(arguments)`` with the call's bound
    arguments (module docstring); each callback gets its own copy of the dict.

    Registering an existing ``key`` again replaces its callbacks. Callbacks run in registration order at the
    start and in reverse order at the end (``end`` runs even when the call raises, and when a later ``start``
    refuses the call).
    """
    if not callable(start) or (end is not None and not callable(end)):
        raise TypeError("on_call: `start` and `end` must be callables (or `end=None`).")
    registry = pipe.__dict__.get(_REGISTRY_ATTR)
    if registry is None:
        original = type(pipe)
        registry = {}
        pipe.__dict__[_REGISTRY_ATTR] = registry
        pipe.__dict__[_ORIGINAL_CLASS_ATTR] = original
        pipe.__class__ = _scoped_subclass(original)
    registry[key] = (start, end, with_arguments)


def remove_call_hook(pipe: Any, key: str) -> None:
    """Unregister ``key``; when nothing is left, give the pipeline its original class back."""
    registry = pipe.__dict__.get(_REGISTRY_ATTR)
    if registry is None or key not in registry:
        return
    del registry[key]
    if not registry:
        pipe.__class__ = pipe.__dict__.pop(_ORIGINAL_CLASS_ATTR)
        del pipe.__dict__[_REGISTRY_ATTR]


def has_call_hook(pipe: Any, key: str) -> bool:
    """Whether ``key`` is registered on ``pipe``."""
    return key in pipe.__dict__.get(_REGISTRY_ATTR, {})
