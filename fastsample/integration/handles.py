"""One base class for everything that changes a pipeline or a model and can be undone.

Every ``enable_*``/``set_*`` function and :func:`fastsample.optimize.optimize` returns a :class:`Handle` with
the same verbs (docs/design/architecture.md#handles):

- ``disable()``: undo everything, exactly (the same objects are put back); idempotent;
- ``describe()``: one line saying what is applied (or that it is off);
- ``active``: ``True`` until ``disable()``;
- ``with ... as handle:``: ``disable()`` on leaving the block.

Old verb names stay one release as aliases that emit a ``FutureWarning`` (:func:`deprecated_alias`).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any


class Handle:
    """Base of the handles; subclasses implement :meth:`_undo` and :meth:`describe`."""

    active: bool = True

    def _undo(self) -> None:
        raise NotImplementedError

    def disable(self) -> None:
        """Undo everything this handle applied, exactly; a second call does nothing."""
        if not self.active:
            return
        self._undo()
        self.active = False

    def describe(self) -> str:
        raise NotImplementedError

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.disable()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.describe()})"


def deprecated_alias(new: str, old: str, since: str = "0.1", removal: str = "0.2") -> Callable[..., Any]:
    """A method ``old`` that warns (``FutureWarning``) and calls the method ``new`` of the same object."""

    def alias(self: Any, *args: Any, **kwargs: Any) -> Any:
        warnings.warn(
            f"{type(self).__name__}.{old}() is deprecated since fastsample {since} and will be removed in "
            f"{removal}; use {type(self).__name__}.{new}().",
            FutureWarning,
            stacklevel=2,
        )
        return getattr(self, new)(*args, **kwargs)

    alias.__name__ = old
    alias.__doc__ = f"Deprecated alias of :meth:`{new}` (emits ``FutureWarning``)."
    return alias


__all__ = ["Handle", "deprecated_alias"]
