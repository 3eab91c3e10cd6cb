"""Refuse misspelled keyword arguments to the fastsample schedulers, naming the closest valid one.

diffusers' ``ConfigMixin.from_config(config, **kwargs)`` routes every key it does not know, from the config
*and* from ``kwargs``, to ``unused_kwargs`` and drops it silently, so ``ghvb_ordr=1.8`` or ``beta=0.5`` (for
``momentum``) would run the defaults without a word. The fastsample schedulers keep diffusers' behaviour for
the *config* (``from_config(pipe.scheduler.config)`` carries a DDIM/PNDM/FlowMatch config's own keys such as
``skip_prk_steps``, ``set_alpha_to_one`` or ``shift``, which stay accepted and ignored) and for explicit
keyword arguments that some scheduler of the family understands (the keys of the class's diffusers
``_compatibles`` and of every fastsample scheduler: ignored with a warning), but an explicit keyword argument
that no scheduler of the family knows raises a ``TypeError`` naming the closest valid key (``difflib``).
"""

from __future__ import annotations

import difflib
import inspect
import logging

logger = logging.getLogger(__name__)

_NOT_KEYS = {"self", "args", "kwargs"}


def init_keys(cls: type) -> set[str]:
    """The keyword arguments of ``cls.__init__`` as ``ConfigMixin`` sees them (its ``__signature__``)."""
    return {k for k in inspect.signature(cls.__init__).parameters if k not in _NOT_KEYS}


def family_keys(cls: type) -> set[str]:
    """Keys some scheduler of ``cls``'s family takes: its compatibles' and every fastsample scheduler's."""
    keys: set[str] = set()
    compatibles = cls._get_compatibles() if getattr(cls, "has_compatibles", False) else []
    for other in compatibles:
        try:
            keys |= init_keys(other)
        except (TypeError, ValueError):  # dummy objects of missing optional backends
            continue
    for scheduler in _strict_schedulers():
        keys |= init_keys(scheduler)
    return keys


def _strict_schedulers() -> list[type]:
    """Every scheduler class built on :class:`StrictKwargsMixin` (the fastsample schedulers)."""
    found, pending = [], list(StrictKwargsMixin.__subclasses__())
    while pending:
        cls = pending.pop()
        found.append(cls)
        pending.extend(cls.__subclasses__())
    return found


# names users reach for that mean another key (checked before the spelling match)
_SYNONYMS = {
    "beta": ("momentum", "ghvb_order"),
    "momentum_beta": ("momentum", "ghvb_order"),
    "order": ("ghvb_order", "plms_order", "solver_order"),
    "q": ("ghvb_order",),
    "karras": ("use_karras_sigmas",),
}


def closest_key(cls: type, key: str) -> str | None:
    """The valid keyword argument of ``cls`` closest to ``key``: a known synonym, else ``difflib``'s match."""
    valid = init_keys(cls)
    for alias in _SYNONYMS.get(key, ()):
        if alias in valid:
            return alias
    close = difflib.get_close_matches(key, sorted(valid), n=1, cutoff=0.5)
    return close[0] if close else None


def _unknown_error(cls: type, key: str) -> TypeError:
    valid = sorted(init_keys(cls))
    close = closest_key(cls, key)
    hint = f"; did you mean `{close}`?" if close else ""
    return TypeError(
        f"{cls.__name__} got an unexpected keyword argument `{key}`{hint} Valid keyword arguments: "
        + ", ".join(valid)
    )


def check_init_kwargs(cls: type, kwargs: dict) -> None:
    """Raise for a keyword argument that ``cls.__init__`` does not take (called from ``__new__``)."""
    valid = init_keys(cls)
    for key in kwargs:
        if key not in valid:
            raise _unknown_error(cls, key)


def check_from_config_kwargs(cls: type, kwargs: dict) -> None:
    """Raise for an explicit ``from_config`` keyword argument that no scheduler of ``cls``'s family takes.

    Keys of the family that ``cls`` does not take are passed on (diffusers returns them in
    ``unused_kwargs``) with a warning, since the user named them on purpose.
    """
    own = init_keys(cls)
    unknown = [k for k in kwargs if k not in own and k not in _PASS_THROUGH]
    if not unknown:
        return
    family = family_keys(cls)
    for key in unknown:
        if key not in family:
            raise _unknown_error(cls, key)
        logger.warning("%s does not use `%s` (a key of another scheduler); ignored", cls.__name__, key)


class StrictKwargsMixin:
    """Mixin for ``ConfigMixin`` schedulers: an unknown keyword argument to ``__init__``/``from_config``
    raises a ``TypeError`` naming the closest valid one."""

    def __new__(cls, *args, **kwargs):
        check_init_kwargs(cls, kwargs)
        return super().__new__(cls)

    @classmethod
    def from_config(cls, config=None, return_unused_kwargs=False, **kwargs):
        """diffusers' ``from_config``; an explicit keyword argument that no scheduler of the family takes
        raises a ``TypeError`` naming the closest valid one (the config's own keys are ignored as usual)."""
        check_from_config_kwargs(cls, kwargs)
        return super().from_config(config, return_unused_kwargs=return_unused_kwargs, **kwargs)


# ``from_config``'s own keyword arguments that diffusers consumes (not config keys)
_PASS_THROUGH = {"pretrained_model_name_or_path", "dtype"}
