"""``optimize(pipe, scheduler=..., guidance=..., cache=..., attention=...)``: every capability in one call.

Composes a scheduler swap (:mod:`fastsample.solvers` or any diffusers scheduler), a guidance method
(:func:`fastsample.guidance.enable_guidance`) and a feature cache (:func:`fastsample.cache.enable_cache`) on
a supported pipeline (:func:`fastsample.integration.adapters.get_adapter`). Every argument is validated and
every object built *before* the pipeline is touched, so a bad argument leaves it unchanged; the returned
:class:`OptimizeHandle` logs and reports what is active and ``disable()`` restores the pipeline exactly (the
same scheduler object, the same attention processors, no hooks left).
"""

from __future__ import annotations

import functools
import logging
import sys
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fastsample.guidance.methods import METHODS as GUIDANCE_METHODS
from fastsample.integration.adapters import get_adapter, resolve_denoiser
from fastsample.integration.handles import Handle, deprecated_alias
from fastsample.solvers.presets import PRESETS, family_of
from fastsample.solvers.presets import SHORTCUTS as SCHEDULER_SHORTCUTS

logger = logging.getLogger(__name__)

AUTO = "auto"
# What "auto" picks where it applies: the bench's composed recipe (GHVB + Adaptive Guidance + FORA(2) +
# attention "auto" + exact DiT savings).
AUTO_CHOICES: dict[str, Any] = {
    "scheduler": "ghvb",
    "guidance": "ag",
    "cache": "fora",
    "attention": "auto",
    "dit_savings": True,
}
GUIDANCE_NAMES = tuple(GUIDANCE_METHODS)  # fastsample.guidance.methods.METHODS
# enable_cache's own keyword arguments; every other knob belongs to the cache policy.
_CACHE_CALL_KNOBS = ("compile", "profile_macs")


def _scheduler_factories(config: Any) -> dict[str, Callable[[], Any]]:
    """The string shortcuts for the family of ``config`` (:data:`fastsample.solvers.presets.PRESETS`), each
    built with ``from_config`` from ``config``."""
    family = family_of(config)
    return {
        p.shortcut: functools.partial(p.build, config) for p in PRESETS if p.shortcut and p.family == family
    }


def _build_scheduler(spec: Any, pipe: Any) -> Any:
    """``None`` → ``None``; an instance as is; a class or shortcut built from ``pipe.scheduler.config``."""
    if spec is None:
        return None
    if not isinstance(spec, (str, type)):
        if not (hasattr(spec, "set_timesteps") and hasattr(spec, "step")):
            raise TypeError(
                "scheduler must be None, a scheduler instance, a scheduler class or one of "
                f"{SCHEDULER_SHORTCUTS}, got {type(spec).__name__}."
            )
        return spec
    config = pipe.scheduler.config
    if isinstance(spec, type):
        if not hasattr(spec, "from_config"):
            raise TypeError(
                f"scheduler class {spec.__name__} has no from_config (not a diffusers scheduler)."
            )
        return spec.from_config(config)
    factories = _scheduler_factories(config)
    if spec.lower() not in factories:
        raise ValueError(
            f"unknown scheduler {spec!r}; choose one of {SCHEDULER_SHORTCUTS} or pass a scheduler."
        )
    return factories[spec.lower()]()


def _build_guidance(spec: Any) -> Any:
    """``None`` → ``None``; a :class:`~fastsample.guidance.GuidanceMethod` as is; a name → its default."""
    from fastsample.guidance.methods import GuidanceMethod

    if spec is None or isinstance(spec, GuidanceMethod):
        return spec
    if not isinstance(spec, str):
        raise TypeError(
            f"guidance must be None, a fastsample.guidance method or one of {GUIDANCE_NAMES}, "
            f"got {type(spec).__name__}."
        )
    cls = GUIDANCE_METHODS.get(spec.lower())
    if cls is None:
        raise ValueError(
            f"unknown guidance {spec!r}; choose one of {GUIDANCE_NAMES} or pass a method object."
        )
    return cls()


def _build_cache(spec: Any, pipe: Any) -> tuple[Any, dict[str, Any]] | None:
    """``None`` → ``None``; otherwise the validated policy and ``enable_cache``'s own keyword arguments."""
    from fastsample.cache.api import METHODS, make_policy
    from fastsample.cache.policies import CachePolicy

    if spec is None:
        return None
    if isinstance(spec, tuple):
        if len(spec) != 2 or not isinstance(spec[0], str) or not isinstance(spec[1], dict):
            raise TypeError("cache as a tuple must be (method_name, knobs_dict).")
        name, knobs = spec
    elif isinstance(spec, (str, CachePolicy)):
        name, knobs = spec, {}
    else:
        raise TypeError(
            f"cache must be None, one of {METHODS}, a (name, knobs) tuple or a CachePolicy, "
            f"got {type(spec).__name__}."
        )
    adapter = get_adapter(pipe)
    if adapter.denoiser_attr == "unet":
        raise ValueError(
            f"cache is not supported on {type(pipe).__name__}: its denoiser is a UNet and fastsample's "
            "feature cache works on diffusion transformers (DiT, PixArt, SD3, Flux, PixelDiT); "
            "pass cache=None."
        )
    call_knobs = {k: knobs[k] for k in _CACHE_CALL_KNOBS if k in knobs}
    policy_knobs = {k: v for k, v in knobs.items() if k not in _CACHE_CALL_KNOBS}
    return make_policy(name, **policy_knobs), call_knobs


def _recipe_arguments(pipe: Any, recipe: Any, *explicit: Any) -> dict[str, Any]:
    """optimize's arguments from a recipe (a path or a ``SamplingRecipe``), checked against ``pipe``."""
    import os

    from fastsample.recipe import SamplingRecipe, load_recipe

    if any(value != AUTO for value in explicit):
        raise ValueError(
            "pass either `recipe` or scheduler/guidance/cache/attention/dit_savings, not both: a recipe sets "
            "them all"
        )
    if isinstance(recipe, (str, os.PathLike)):
        source, recipe = recipe, load_recipe(recipe)
    elif isinstance(recipe, SamplingRecipe):
        source = "recipe"
    else:
        raise TypeError(f"recipe must be a path or a SamplingRecipe, got {type(recipe).__name__}")
    recipe.check_model(pipe, source)
    return {**recipe.optimize_arguments(pipe), "recipe": recipe}


def _check_attention(spec: Any) -> tuple[str, dict[str, Any]] | None:
    """``None`` → ``None``; a backend name or ``(backend, knobs)`` → validated ``(backend, knobs)``."""
    from fastsample.kernels.attention import BACKENDS

    if spec is None:
        return None
    if isinstance(spec, tuple):
        if len(spec) != 2 or not isinstance(spec[0], str) or not isinstance(spec[1], dict):
            raise TypeError(
                "attention as a tuple must be (backend, knobs_dict), e.g. ('sdpa', {'kernels': ['math']})."
            )
        backend, knobs = spec
    elif isinstance(spec, str):
        backend, knobs = spec, {}
    else:
        raise TypeError(
            f"attention must be None, one of {BACKENDS} or a (backend, knobs) tuple, "
            f"got {type(spec).__name__}."
        )
    if backend not in BACKENDS:
        raise ValueError(f"unknown attention backend {backend!r}; choose one of {BACKENDS}.")
    unknown = set(knobs) - {"kernels", "fused_prologue"}
    if unknown:
        raise ValueError(
            f"unknown attention knob(s) {sorted(unknown)}; the knobs are 'kernels' and 'fused_prologue'."
        )
    return backend, knobs


def _check_dit_savings(spec: Any, pipe: Any) -> dict[str, Any] | None:
    """``False``/``None`` → ``None``; ``True`` → the defaults; a dict → ``enable_dit_savings`` keywords."""
    if spec is None or spec is False:
        return None
    if spec is True:
        knobs: dict[str, Any] = {}
    elif isinstance(spec, dict):
        knobs = dict(spec)
    else:
        raise TypeError(
            f"dit_savings must be a bool or a dict of enable_dit_savings keywords, got {type(spec).__name__}."
        )
    from diffusers import DiTTransformer2DModel

    denoiser = resolve_denoiser(pipe, "optimize", require_adapter=True)
    if not isinstance(denoiser, DiTTransformer2DModel):
        raise ValueError(
            f"dit_savings needs a DiTTransformer2DModel denoiser (DiTPipeline, PixelDiTPipeline); "
            f"{type(pipe).__name__} has a {type(denoiser).__name__}: pass dit_savings=False."
        )
    return knobs


def _is_dit(pipe: Any) -> tuple[bool, str]:
    from diffusers import DiTTransformer2DModel

    denoiser = resolve_denoiser(pipe, "optimize", require_adapter=True)
    return isinstance(denoiser, DiTTransformer2DModel), type(denoiser).__name__


def resolve_auto(pipe: Any, **requested: Any) -> tuple[dict[str, Any], list[str], list[str]]:
    """Replace each ``"auto"`` in ``requested`` (``scheduler``, ``guidance``, ``cache``, ``attention``,
    ``dit_savings``) by what applies to ``pipe`` (:data:`AUTO_CHOICES`), or by "off" where it does not.

    Returns the resolved arguments, the ``"name=choice"`` strings chosen and the ``"name (reason)"`` strings
    skipped. The rules: a feature cache needs a diffusion transformer (not SD/SDXL's UNet); the exact DiT
    savings need a ``DiTTransformer2DModel`` (DiT, PixelDiT); the scheduler, guidance and attention choices
    apply to every supported pipeline.
    """
    adapter = get_adapter(pipe)
    resolved, chosen, skipped = dict(requested), [], []
    for name, value in requested.items():
        if not (isinstance(value, str) and value == AUTO):
            continue
        reason = None
        if name == "cache" and adapter.denoiser_attr == "unet":
            reason = "the denoiser is a UNet; the feature cache works on diffusion transformers"
        elif name == "dit_savings":
            is_dit, kind = _is_dit(pipe)
            if not is_dit:
                reason = f"{kind} is not a DiTTransformer2DModel"
        if reason is None:
            resolved[name] = AUTO_CHOICES[name]
            chosen.append(f"{name}={AUTO_CHOICES[name]}")
        else:
            resolved[name] = False if name == "dit_savings" else None
            skipped.append(f"{name} ({reason})")
    return resolved, chosen, skipped


@dataclass(repr=False, eq=False)
class OptimizeHandle(Handle):
    """What :func:`optimize` turned on; ``disable()`` restores the pipeline exactly (the
    :class:`~fastsample.integration.handles.Handle` verbs; ``undo()`` is a deprecated alias)."""

    pipe: Any
    original_scheduler: Any
    scheduler: Any = None
    guidance: Any = None  # fastsample.guidance.GuidanceHandle
    cache: Any = None  # fastsample.cache.CacheHandle
    attention: Any = None  # fastsample.kernels.AttentionHandle
    dit_savings: Any = None  # fastsample.kernels.DiTSavingsHandle
    lines: list[str] = field(default_factory=list)
    active: bool = True
    recipe: Any = None  # fastsample.recipe.SamplingRecipe when applied from a recipe
    #: keyword arguments the pipeline call needs for the recipe (``num_inference_steps``); empty otherwise
    call_kwargs: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> str:
        """One line per active capability (``"nothing active"`` when none is)."""
        if not self.active or not self.lines:
            return f"fastsample.optimize on {type(self.pipe).__name__}: nothing active"
        return "\n".join(self.lines)

    def describe(self) -> str:
        return self.summary()

    def _undo(self) -> None:
        """Take everything back in reverse order and put the original scheduler back."""
        for piece in (self.cache, self.dit_savings, self.attention, self.guidance):
            if piece is not None:
                piece.disable()
        self.pipe.scheduler = self.original_scheduler
        logger.info("fastsample.optimize undone on %s", type(self.pipe).__name__)

    undo = deprecated_alias("disable", "undo")


def optimize(
    pipe: Any,
    scheduler: Any = AUTO,
    guidance: Any = AUTO,
    cache: Any = AUTO,
    attention: Any = AUTO,
    dit_savings: Any = AUTO,
    *,
    recipe: Any = None,
) -> OptimizeHandle:
    """Compose fastsample's capabilities on ``pipe``; undo with ``handle.disable()`` or a ``with`` block.

    Every argument defaults to ``"auto"``: what applies to this pipeline is chosen (:data:`AUTO_CHOICES`:
    GHVB, Adaptive Guidance, FORA interval 2, attention ``"auto"``, exact DiT savings) and what does not is
    left out (the cache on UNet pipelines, the DiT savings on anything but a ``DiTTransformer2DModel``), with
    one INFO log line saying what was chosen and what was skipped and why (:func:`resolve_auto`). So
    ``optimize(pipe)`` works on every supported pipeline; an explicit request that cannot apply still raises.
    Pass ``None`` (``False`` for ``dit_savings``) to leave a component out.

    Args:
        pipe: a supported pipeline (:func:`fastsample.integration.adapters.supported_pipelines`).
        scheduler: ``"auto"``, ``None`` (keep), a scheduler instance, a scheduler class (``cls.from_config(
            pipe.scheduler.config)``) or a shortcut: ``"ghvb"`` (GHVB order 1.8, Karras grid), ``"hb"``
            (PLMS4 + Heavy Ball 0.8), ``"plms"`` (PLMS4), ``"dpm++2m-hb"`` (DPM-Solver++ 2M + Heavy Ball 0.8).
        guidance: ``"auto"``, ``None``, a :mod:`fastsample.guidance` method object or one of
            :data:`GUIDANCE_NAMES` (built with its defaults; the scale stays the pipeline's
            ``guidance_scale``).
        cache: ``"auto"``, ``None``, a method name (``"fora"``, ``"dynamic"``, ``"harmonica"``,
            ``"static"``, ``"none"``), ``(name, knobs_dict)`` or a ``CachePolicy``; refused for UNet
            pipelines (SD, SDXL).
        attention: ``None`` or a :func:`fastsample.kernels.set_attention` backend (``"auto"``, ``"sdpa"``,
            ``"xformers"``, ``"triton"``) or ``(backend, knobs)`` with ``knobs`` from ``{"kernels": [...]}``
            (an SDPA kernel subset) and ``{"fused_prologue": bool}`` (Flux's fused QK RMSNorm + RoPE).
        dit_savings: ``"auto"``, ``False``, ``True`` (or a dict of
            :func:`fastsample.kernels.enable_dit_savings` keywords) for the exact DiT savings: one
            timestep/label embedding per step, one batched adaLN matmul; DiT only
            (``{"fused_modulate": True, "fused_gated_residual": True}`` adds the Triton fusions).
        recipe: a recipe file written by ``fastsample tune`` (a path) or a
            :class:`fastsample.recipe.SamplingRecipe`: it sets all of the above, so leave them at ``"auto"``.
            It is refused for a pipeline whose denoiser weights differ from the ones it was tuned on. Its step
            count is in ``handle.call_kwargs``: ``pipe(..., **handle.call_kwargs)``.

    Applied in the order scheduler, guidance, attention, DiT savings, cache (a block-level cache wraps the
    blocks as the savings left them) and undone in reverse.

    Every argument is validated and built before the pipeline changes; if enabling a piece still fails,
    the pieces already applied are undone before the error propagates.
    """
    adapter = get_adapter(pipe)
    tuned = None
    if recipe is not None:
        tuned = _recipe_arguments(pipe, recipe, scheduler, guidance, cache, attention, dit_savings)
        scheduler, guidance, cache = tuned["scheduler"], tuned["guidance"], tuned["cache"]
        attention, dit_savings = tuned["attention"], tuned["dit_savings"]
    requested = {
        "scheduler": scheduler,
        "guidance": guidance,
        "cache": cache,
        "attention": attention,
        "dit_savings": dit_savings,
    }
    resolved, chosen, skipped = resolve_auto(pipe, **requested)
    scheduler, guidance, cache = resolved["scheduler"], resolved["guidance"], resolved["cache"]
    attention, dit_savings = resolved["attention"], resolved["dit_savings"]
    attention_plan = _check_attention(attention)
    savings_plan = _check_dit_savings(dit_savings, pipe)
    new_scheduler = _build_scheduler(scheduler, pipe)
    method = _build_guidance(guidance)
    cache_plan = _build_cache(cache, pipe)

    from fastsample.cache import enable_cache
    from fastsample.guidance import enable_guidance

    name = type(pipe).__name__
    if chosen or skipped:
        logger.info(
            "fastsample.optimize on %s, auto: chose %s; skipped %s",
            name,
            ", ".join(chosen) or "nothing",
            "; ".join(skipped) or "nothing",
        )
    handle = OptimizeHandle(pipe=pipe, original_scheduler=pipe.scheduler)
    if tuned is not None:
        handle.recipe, handle.call_kwargs = tuned["recipe"], tuned["recipe"].call_kwargs
        handle.lines.append(f"recipe: {handle.recipe.name} (call with {handle.call_kwargs})")
    try:
        if new_scheduler is not None:
            pipe.scheduler = new_scheduler
            handle.scheduler = new_scheduler
            handle.lines.append(
                f"scheduler: {type(new_scheduler).__name__} (was {type(handle.original_scheduler).__name__})"
            )
        if method is not None:
            handle.guidance = enable_guidance(pipe, method)
            handle.lines.append(f"guidance: {type(method).__name__} ({adapter.cfg_layout} CFG layout)")
        if attention_plan is not None:
            from fastsample.kernels import set_attention

            backend, knobs = attention_plan
            handle.attention = set_attention(pipe, backend, **knobs)
            handle.lines.append(f"attention: {handle.attention.describe()}")
        if savings_plan is not None:
            from fastsample.kernels import enable_dit_savings

            handle.dit_savings = enable_dit_savings(pipe, **savings_plan)
            handle.lines.append(f"dit savings: {handle.dit_savings.describe()}")
        # last: a block-level cache wraps the blocks as the savings left them
        if cache_plan is not None:
            policy, call_knobs = cache_plan
            handle.cache = enable_cache(pipe, policy, **call_knobs)
            described = policy.describe() if hasattr(policy, "describe") else type(policy).__name__
            handle.lines.append(f"cache: {type(policy).__name__} {described} on {adapter.denoiser_attr}")
    except BaseException:
        handle.disable()
        raise
    handle.lines = [f"fastsample.optimize on {name}: {line}" for line in handle.lines]
    for line in handle.lines:
        logger.info(line)
    if not handle.lines:
        logger.info("fastsample.optimize on %s: nothing requested, pipeline unchanged", name)
    return handle


__all__ = [
    "AUTO",
    "AUTO_CHOICES",
    "GUIDANCE_NAMES",
    "SCHEDULER_SHORTCUTS",
    "OptimizeHandle",
    "optimize",
    "resolve_auto",
]


class _CallableModule(types.ModuleType):
    """``fastsample.optimize`` names both this module and its function: importing the module makes it the
    package attribute, so calling the module runs :func:`optimize`."""

    def __call__(self, *args: Any, **kwargs: Any) -> OptimizeHandle:
        return optimize(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
