"""``enable_cache(pipe_or_model, method, **knobs)``: the one-line entry point, and the handle it returns.

With a pipeline, the denoiser and its CFG layout come from the project's adapter table
(:func:`fastsample.integration.adapters.get_adapter`) and the cache state is reset at the start of every
``pipe(...)`` call (:func:`fastsample.integration.call_scope.on_call`); the denoiser is cached only inside
that pipeline's calls (another pipeline sharing it, or a direct call, runs it uncached). With a bare
transformer nothing knows where a sampling run starts: call ``handle.new_run()`` before each run.
"""

from __future__ import annotations

import inspect
import logging
import os
from typing import Any

import torch

from fastsample.cache.controller import CacheController
from fastsample.cache.hooks import SITE_HOOK, STEP_HOOK, BlockHook, StepHook, UnitHook, has_fastsample_cache
from fastsample.cache.policies import FORA, CachePolicy, DynamicThreshold, NoCache, StaticSchedule, TaylorSeer
from fastsample.cache.router import HarmoniCaPolicy
from fastsample.cache.stats import CacheStats
from fastsample.cache.units import find_sites
from fastsample.integration.adapters import get_adapter, resolve_denoiser
from fastsample.integration.call_scope import on_call, remove_call_hook
from fastsample.integration.handles import Handle, deprecated_alias
from fastsample.integration.hooks import HookedModules, invalidate_registry_cache

logger = logging.getLogger(__name__)

CALL_KEY = "fastsample.cache"


# The one name table of cache policies.
POLICIES: dict[str, type[CachePolicy]] = {
    "none": NoCache,
    "fora": FORA,
    "dynamic": DynamicThreshold,
    "harmonica": HarmoniCaPolicy,
    "static": StaticSchedule,
    "taylorseer": TaylorSeer,
}
METHODS = tuple(POLICIES)


def make_policy(method: str | CachePolicy, **knobs: Any) -> CachePolicy:
    """A policy from its name and knobs (or the policy object itself, which then takes no knobs)."""
    if isinstance(method, CachePolicy):
        if knobs:
            raise TypeError(
                f"knobs {sorted(knobs)} given together with a policy object; configure the object."
            )
        return method
    if not isinstance(method, str):
        raise TypeError(f"method must be one of {METHODS} or a CachePolicy, got {type(method).__name__}.")
    cls = POLICIES.get(method.lower())
    if cls is None:
        raise ValueError(f"unknown cache method {method!r}; choose one of {METHODS} or pass a CachePolicy.")
    parameters = {name: p for name, p in inspect.signature(cls.__init__).parameters.items() if name != "self"}
    allowed = list(parameters)
    unknown = sorted(set(knobs) - set(allowed))
    if unknown:
        raise TypeError(
            f"cache method {method!r} got unknown knob(s) {unknown}; it accepts {allowed} "
            "(plus `compile` and `profile_macs` for every method)."
        )
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    missing = [n for n, p in parameters.items() if p.kind in named and p.default is p.empty]
    missing = [n for n in missing if n not in knobs]
    if missing:
        hint = " (a RouterArtifact: train one with `fastsample train-router`)" if "router" in missing else ""
        raise TypeError(
            f"cache method {method!r} needs {', '.join(missing)}{hint}: "
            f"enable_cache(pipe, {method!r}, {missing[0]}=...)."
        )
    return cls(**knobs)


def _resolve(target: Any) -> tuple[Any, torch.nn.Module]:
    if isinstance(target, torch.nn.Module):
        return None, target
    if hasattr(target, "components") and callable(target):
        adapter = get_adapter(target)
        if adapter.cfg_layout == "separate_calls" and not adapter.opens_cache_context:
            raise ValueError(
                f"{type(target).__name__} runs cond and uncond as separate calls without opening a "
                "cache_context, so their caches cannot be kept apart; it is not supported."
            )
        return target, resolve_denoiser(target, "enable_cache", require_adapter=True)
    raise TypeError(f"enable_cache expects a diffusers pipeline or transformer, got {type(target).__name__}.")


class CacheHandle(Handle):
    """From ``enable_cache``: ``stats()``, ``summary()``, ``new_run()``, and the :class:`Handle` verbs
    ``disable()``, ``describe()``, ``active`` and ``with``."""

    def __init__(
        self, controller: CacheController, hooked: HookedModules, model: torch.nn.Module, pipe: Any
    ) -> None:
        self._controller = controller
        self._hooked = hooked
        self.model = model
        self.pipe = pipe
        self.policy = controller.policy
        self.active = True

    def stats(self) -> CacheStats:
        """Record of the current (or last) sampling run; warns when nothing was reused (bare models)."""
        if self.pipe is None:
            self._warn_if_nothing_reused()
        return self._controller.stats()

    def summary(self) -> str:
        """One-line description of the last run (method, hit ratio, computed MACs, theoretical speed-up)."""
        return self._controller.stats().summary()

    def describe(self) -> str:
        state = "enabled" if self.active else "disabled"
        return f"{self.policy.describe()} on {type(self.model).__name__}, {state}"

    def new_run(self) -> None:
        """Start a new sampling run: forget steps and cached features. Pipelines do this on every call."""
        self._controller.reset()

    reset = deprecated_alias("new_run", "reset")

    @property
    def enabled(self) -> bool:
        """Former name of :attr:`active`."""
        return self.active

    def _undo(self) -> None:
        """Remove every hook; the model's modules, ``forward`` attributes and outputs are as before."""
        self._hooked.remove_all()
        invalidate_registry_cache(self.model)
        if self.pipe is not None:
            remove_call_hook(self.pipe, CALL_KEY)

    def _end_call(self) -> None:
        self._controller.end_call()
        self._warn_if_nothing_reused()

    def _warn_if_nothing_reused(self) -> None:
        if not isinstance(self.policy, NoCache) and self._controller.nothing_reused():
            logger.warning(
                "fastsample cache %s reused nothing in this run (every site was computed at every step): "
                "too few steps for the schedule, or a threshold too strict.",
                self.policy.describe(),
            )


def check_no_cache(model: torch.nn.Module) -> None:
    """A ``ValueError`` when ``model`` already has a fastsample or a diffusers cache."""
    if has_fastsample_cache(model):
        raise ValueError(
            "this model already has a fastsample cache enabled (possibly through another pipeline that "
            "shares it, e.g. from_pipe); disable() that handle first, or give this pipeline its own copy of "
            "the model."
        )
    if getattr(model, "is_cache_enabled", False):
        raise ValueError(
            "this model has a diffusers cache enabled (model.enable_cache); call disable_cache() first."
        )


def enable_cache(
    pipe_or_model: Any,
    method: str | CachePolicy = "fora",
    *,
    compile: bool | dict = False,
    profile_macs: bool = True,
    calibration: str | os.PathLike | None = None,
    **knobs: Any,
) -> CacheHandle:
    """Cache a diffusion transformer's features across denoising steps.

    Args:
        pipe_or_model: a supported diffusers pipeline (DiT, PixArt, SD3, Flux, fastsample's PixelDiT) or a
            bare             ``DiTTransformer2DModel``/``PixArtTransformer2DModel``/``SD3Transformer2DModel``/
            ``FluxTransformer2DModel``. With a bare model call ``handle.new_run()`` before every sampling run.
        method: ``"fora"`` (knobs ``interval``, ``level``, ``order``), ``"taylorseer"`` (the same, forecasting
            by default), ``"dynamic"`` (``threshold``, ``warmup_steps``, ``max_consecutive``, ``order``),
            ``"harmonica"`` (``router``, ``threshold``), ``"static"`` (``mask``, ``level``, ``order``),
            ``"none"``, or a :class:`~fastsample.cache.policies.CachePolicy` object. ``order`` 1 or 2
            forecasts skipped features instead of reusing them (:mod:`fastsample.cache.forecast`).
        compile: compile each site's original forward with ``torch.compile`` (``True`` or a dict of
            ``torch.compile`` keyword arguments): regional compilation with the decisions outside the graphs.
        profile_macs: count MACs on the first full forward of each input shape (``computed_mac_fraction``).
        calibration: with ``method="dynamic"``, a JSON file written by
            :func:`fastsample.cache.calibration.calibrate_cache` for this model: its error model, threshold
            and warm-up replace the hand-set ``threshold`` (explicit knobs still override). A file
            calibrated on another model is refused with an :class:`~fastsample.errors.ArtifactError`
            naming it.

    Returns:
        a :class:`CacheHandle`.
    """
    if isinstance(compile, bool):
        compile_options = {} if compile else None
    elif isinstance(compile, dict):
        compile_options = dict(compile)
    else:
        raise TypeError(
            f"compile must be a bool or a dict of torch.compile options, got {type(compile).__name__}."
        )
    if not isinstance(profile_macs, bool):
        raise TypeError(f"profile_macs must be a bool, got {type(profile_macs).__name__}.")
    pipe, model = _resolve(pipe_or_model)
    check_no_cache(model)
    if calibration is not None:
        if method != "dynamic":
            raise ValueError(f"calibration= applies to method='dynamic', got method={method!r}.")
        from fastsample.cache.calibration import load_calibration

        calibrated = load_calibration(calibration)
        calibrated.check_model(model, calibration)
        knobs = {
            "threshold": calibrated.max_change,
            "warmup_steps": calibrated.warmup_steps,
            "max_consecutive": calibrated.max_consecutive,
            "rescale": calibrated.coefficients,
            **knobs,
        }
    policy = make_policy(method, **knobs)
    sites = find_sites(model, policy.level)
    policy.bind(model, sites)
    controller = CacheController(model, sites, policy, pipe=pipe, profile_macs=profile_macs)
    handle = attach_controller(controller, compile_options)
    logger.info(
        "fastsample cache enabled: %s on %d %s-level sites of %s",
        policy.describe(),
        len(sites),
        policy.level,
        type(model).__name__,
    )
    return handle


def attach_controller(controller: CacheController, compile_options: dict | None = None) -> CacheHandle:
    """Hook ``controller.model``'s sites and forward to ``controller`` (and, with ``controller.pipe``, reset
    it at the start of every pipeline call); the returned handle undoes it. :func:`enable_cache` builds the
    inference controller; router training attaches its own
    (:class:`fastsample.cache.router_training.RouterTrainingController`)."""
    model, policy, pipe = controller.model, controller.policy, controller.pipe
    hooked = HookedModules()
    try:
        for i, site in enumerate(controller.sites):
            if policy.level == "unit":
                hook = UnitHook(controller, i, compile_options)
            else:
                hook = BlockHook(controller, i, compile_options, site.streams)
            hooked.add(site.module, hook, SITE_HOOK)
        hooked.add(model, StepHook(controller), STEP_HOOK)
    except BaseException:
        hooked.remove_all()
        raise
    invalidate_registry_cache(model)
    handle = CacheHandle(controller, hooked, model, pipe)
    if pipe is not None:
        on_call(pipe, CALL_KEY, controller.begin_call, handle._end_call, with_arguments=True)
    return handle
