"""Recipes, their paired evaluation against the model's own reference, and the speed/quality frontier.

A *recipe* (:class:`Recipe`) is everything a user picks to sample faster: a scheduler (a name of
:mod:`fastsample.solvers.presets`: a diffusers scheduler or a fastsample preset), a step count, a guidance
method (the pipeline's own classifier-free guidance, or one of :data:`fastsample.guidance.methods.METHODS`),
a feature cache (fastsample's :func:`~fastsample.cache.enable_cache` policies, diffusers' own caches applied
to the transformer through ``diffusers.hooks``, or cache-dit's DBCache) and, optionally, fastsample's exact
kernels. Each recipe belongs to a *family*: ``"diffusers"`` (only what diffusers ships), ``"fastsample"``
(at least one fastsample component) or ``"cache-dit"`` (a peer library: diffusers plus cache-dit's cache).

:class:`RecipeRunner` samples every recipe on the same labels and initial noise, interleaving the batches
of all recipes (round-robin; each round starts at another recipe), and :func:`score` compares them with the
*reference* (DPM-Solver++ 2M, 100 steps, full CFG for VP models; FlowMatch Euler, 100 steps for flow):

* paired fidelity (:func:`fastsample.eval.fidelity.paired_fidelity`): per-sample PSNR, SSIM and in-domain
  feature distance to the reference sample from the same noise and label; medians with stratified bootstrap
  intervals;
* in-domain Fréchet distance with its bootstrap interval and the real-vs-real floor at the same sample count,
  the real images drawn with the *same* labels as the generated ones
  (:func:`fastsample.eval.bootstrap.frechet_distance_interval`; a floor with random labels is ~10x too
  high in this feature space because class proportions move the mean);
* shape accuracy (colour-blind shape net) beside hue accuracy (:mod:`fastsample.eval.shape`), and the mean
  HSV saturation;
* timing: the median latency of one ``pipe(...)`` call on a batch with its p10–p90 over rounds, and the
  clock-free cost ``nfe × units``: denoiser samples evaluated per image (a CFG step counts 2) times the
  fraction of the transformer's attention and MLP units that really ran (forward pre-hooks on each block's
  ``attn1.to_q`` and first MLP layer: a unit served from a cache never calls them), i.e. the samples' worth
  of unit work per image.

:func:`frontier` then answers, for each quality level (:data:`DEFAULT_LEVELS`: paired PSNR ≥ 30 dB, ≥ 25 dB,
FD within the reference's interval), which recipe of each family is fastest, and how much faster
fastsample's is than each other family's: the ratio t_other / t_fastsample is taken *per round* (both
timed in the same round), and its median and p10–p90 are reported. A family is named faster only when the
whole p10–p90 band lies on one side of 1 (:func:`separated`); otherwise the verdict is "not separated".
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fastsample.eval.bootstrap import FrechetInterval, Interval
from fastsample.guidance.methods import METHODS as GUIDANCE_METHODS
from fastsample.integration.adapters import denoiser_entry
from fastsample.integration.measure import NFECounter, Stopwatch
from fastsample.solvers.presets import BASELINE_SHORTCUTS, SHORTCUTS
from fastsample.solvers.presets import build as build_preset

logger = logging.getLogger(__name__)

__all__ = [
    "CACHES",
    "DEFAULT_LEVELS",
    "FAMILIES",
    "FrontierEntry",
    "MachineLoad",
    "QualityLevel",
    "Recipe",
    "RecipeResult",
    "RecipeRunner",
    "Samples",
    "UnitCounter",
    "frontier",
    "frontier_markdown",
    "headline",
    "mean_saturation",
    "plot_pareto",
    "ratio_summary",
    "reference_recipe",
    "results_markdown",
    "score",
    "separated",
]

FAMILIES = ("diffusers", "fastsample", "cache-dit")
SCHEDULERS = BASELINE_SHORTCUTS + SHORTCUTS
DIFFUSERS_SCHEDULERS = BASELINE_SHORTCUTS
GUIDANCE = tuple(GUIDANCE_METHODS)
# fastsample's cache policies (fastsample.cache.api.POLICIES names used here), diffusers' own caches
# (diffusers.hooks, applied to the transformer) and cache-dit's DBCache.
FASTSAMPLE_CACHES = ("fora", "taylorseer", "dynamic")
DIFFUSERS_CACHES = ("diffusers-fbc", "diffusers-taylorseer", "diffusers-magcache", "diffusers-pab")
PEER_CACHES = ("cache-dit-dbcache",)
CACHES = (None, *FASTSAMPLE_CACHES, *DIFFUSERS_CACHES, *PEER_CACHES)


# ---------------------------------------------------------------------------------------------------------
# Recipes
# ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Recipe:
    """One sampling recipe.

    Attributes:
        name: unique label in reports.
        family: ``"diffusers"``, ``"fastsample"`` or ``"cache-dit"`` (:data:`FAMILIES`).
        scheduler: a shortcut of :mod:`fastsample.solvers.presets` (diffusers baselines such as
            ``"dpm++2m"``, ``"dpm++2m-karras"``, ``"unipc"``, ``"ddim"``, ``"euler"``, ``"deis"``,
            ``"flow-euler"``; fastsample presets such as ``"ghvb"``), built from the pipeline's own config.
        steps: ``num_inference_steps``.
        guidance: ``"cfg"`` (the pipeline's own classifier-free guidance) or a fastsample method name.
        cache: ``None`` or one of :data:`CACHES`.
        cache_options: the cache's knobs as ``((name, value), ...)`` (hashable; e.g. ``(("interval", 2),)``).
        kernels: fastsample's attention path ``"auto"`` and exact DiT savings.
        description: free text for the report.
    """

    name: str
    family: str
    scheduler: str
    steps: int
    guidance: str = "cfg"
    cache: str | None = None
    cache_options: tuple[tuple[str, Any], ...] = ()
    kernels: bool = False
    description: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"name must be a non-empty string, got {self.name!r}")
        if self.family not in FAMILIES:
            raise ValueError(f"family must be one of {FAMILIES}, got {self.family!r}")
        if self.scheduler not in SCHEDULERS:
            raise ValueError(f"scheduler must be one of {SCHEDULERS}, got {self.scheduler!r}")
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"steps must be an int >= 1, got {self.steps!r}")
        if self.guidance not in GUIDANCE:
            raise ValueError(f"guidance must be one of {GUIDANCE}, got {self.guidance!r}")
        if self.cache not in CACHES:
            raise ValueError(f"cache must be one of {CACHES}, got {self.cache!r}")
        if not isinstance(self.cache_options, tuple) or any(
            not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str))
            for item in self.cache_options
        ):
            raise ValueError(
                f"cache_options must be a tuple of (name, value) pairs, got {self.cache_options!r}"
            )
        uses_fastsample = (
            self.scheduler not in DIFFUSERS_SCHEDULERS
            or self.guidance != "cfg"
            or self.cache in FASTSAMPLE_CACHES
            or self.kernels
        )
        if self.family != "fastsample" and uses_fastsample:
            raise ValueError(
                f"recipe {self.name!r}: family {self.family!r} cannot use fastsample components (a "
                "fastsample scheduler, guidance method, cache or kernels); use family 'fastsample'"
            )
        if self.family == "diffusers" and self.cache in PEER_CACHES:
            raise ValueError(f"recipe {self.name!r}: a cache-dit cache makes the family 'cache-dit'")
        if self.family == "cache-dit" and self.cache not in PEER_CACHES:
            raise ValueError(f"recipe {self.name!r}: family 'cache-dit' needs a cache from {PEER_CACHES}")

    @property
    def options(self) -> dict[str, Any]:
        """``cache_options`` as a dict."""
        return dict(self.cache_options)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able description (``cache_options`` as a dict)."""
        return {
            "name": self.name,
            "family": self.family,
            "scheduler": self.scheduler,
            "steps": self.steps,
            "guidance": self.guidance,
            "cache": self.cache,
            "cache_options": self.options,
            "kernels": self.kernels,
            "description": self.description,
        }


def reference_recipe(model_family: str, steps: int = 100) -> Recipe:
    """The model's own converged sampler: DPM-Solver++ 2M (VP) or FlowMatch Euler (flow) at ``steps`` steps
    with the pipeline's full classifier-free guidance."""
    if model_family not in ("vp", "flow"):
        raise ValueError(f"model_family must be 'vp' or 'flow', got {model_family!r}")
    scheduler = "dpm++2m" if model_family == "vp" else "flow-euler"
    return Recipe(
        "reference", "diffusers", scheduler, steps, description=f"{scheduler}, {steps} steps, full CFG"
    )


def cache_dit_available() -> bool:
    """Whether the optional peer ``cache_dit`` (extra ``peers``) can be imported."""
    return importlib.util.find_spec("cache_dit") is not None


# ---------------------------------------------------------------------------------------------------------
# Counting the work that really ran
# ---------------------------------------------------------------------------------------------------------
class UnitCounter:
    """Samples evaluated by the denoiser and by each transformer unit (attention, MLP), by forward pre-hooks.

    ``NFECounter`` on the denoiser's input layer (:func:`~fastsample.integration.adapters.denoiser_entry`)
    counts the samples it really ran, after any CFG slicing inside its forward (guidance windows); one more
    on each block's ``attn1.to_q`` and on the first layer of its MLP (``ff.net[0]``) counts the samples a
    unit really computed: caches (fastsample's, diffusers', cache-dit's) return stored outputs without
    calling them, and Adaptive Guidance's re-packed batches carry fewer rows. ``unit_samples`` = unit
    samples / number of units; ``None`` when the denoiser has no ``transformer_blocks`` of that layout.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        modules: list[torch.nn.Module] = []
        for block in getattr(model, "transformer_blocks", ()):
            attn = getattr(getattr(block, "attn1", None), "to_q", None)
            ff = getattr(getattr(block, "ff", None), "net", None)
            if attn is None or ff is None:
                modules = []
                break
            modules += [attn, ff[0]]
        self.denoiser = NFECounter(denoiser_entry(model))
        self.units = [NFECounter(module) for module in modules]

    @property
    def calls(self) -> int:
        """Denoiser forward calls."""
        return self.denoiser.count

    @property
    def samples(self) -> int:
        """Denoiser samples (leading batch dimension summed over calls)."""
        return self.denoiser.samples

    @property
    def unit_samples(self) -> float | None:
        """Samples each unit computed, averaged over the units (``None`` without units): the denoiser
        samples' worth of unit work that really ran."""
        if not self.units:
            return None
        return sum(c.samples for c in self.units) / len(self.units)

    def remove(self) -> None:
        for counter in (self.denoiser, *self.units):
            counter.remove()


def mean_saturation(images: torch.Tensor) -> float:
    """Mean HSV saturation (max − min)/max over pixels of ``[N, 3, H, W]`` images in [0, 1] (0 if max=0)."""
    high = images.amax(dim=1)
    low = images.amin(dim=1)
    saturation = torch.where(high > 0, (high - low) / high.clamp_min(1e-12), torch.zeros_like(high))
    return float(saturation.double().mean())


# ---------------------------------------------------------------------------------------------------------
# Machine load
# ---------------------------------------------------------------------------------------------------------
@dataclass
class MachineLoad:
    """Load average before/after a run and the CPU share this process got: process CPU seconds /
    (wall seconds × torch threads). ``busy`` when the 1-minute load exceeds the cores or the share is below
    ``min_share``: other work competed for the cores and absolute latencies (and, less so, ratios) suffer."""

    cores: int
    threads: int
    load_before: tuple[float, float, float] | None = None
    load_after: tuple[float, float, float] | None = None
    cpu_share: float | None = None
    min_share: float = 0.8
    _wall: float = field(default=0.0, repr=False)
    _cpu: float = field(default=0.0, repr=False)

    @staticmethod
    def _load() -> tuple[float, float, float] | None:
        try:
            return tuple(round(v, 2) for v in os.getloadavg())  # type: ignore[return-value]
        except (AttributeError, OSError):
            return None

    def start(self) -> MachineLoad:
        self.load_before = self._load()
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        return self

    def stop(self) -> MachineLoad:
        wall = time.perf_counter() - self._wall
        cpu = time.process_time() - self._cpu
        self.load_after = self._load()
        self.cpu_share = cpu / (wall * max(self.threads, 1)) if wall > 0 else None
        return self

    @property
    def busy(self) -> bool:
        loads = [load[0] for load in (self.load_before, self.load_after) if load is not None]
        too_loaded = any(load > self.cores for load in loads)
        starved = self.cpu_share is not None and self.cpu_share < self.min_share
        return too_loaded or starved

    def describe(self) -> str:
        share = "n/a" if self.cpu_share is None else f"{self.cpu_share:.2f}"
        return (
            f"load average (1, 5, 15 min) before {self.load_before}, after {self.load_after}; {self.cores} "
            f"cores; CPU share of this process {share} of {self.threads} thread(s)"
        )


# ---------------------------------------------------------------------------------------------------------
# Applying a recipe
# ---------------------------------------------------------------------------------------------------------
class _TimestepProbe:
    """Keeps the timestep of the denoiser's latest call (PAB needs ``current_timestep_callback``)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.value = 1000.0
        self._handle = model.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        timestep = kwargs.get("timestep", args[1] if len(args) > 1 else None)
        if isinstance(timestep, torch.Tensor):
            self.value = float(timestep.reshape(-1)[0])
        elif timestep is not None:
            self.value = float(timestep)

    def __call__(self) -> float:
        return self.value

    def remove(self) -> None:
        self._handle.remove()


# diffusers' cache hook names, removed on exit (DiT is not a CacheMixin: no disable_cache()).
def _diffusers_hook_names(cache: str) -> tuple[str, ...]:
    if cache == "diffusers-fbc":
        from diffusers.hooks.first_block_cache import _FBC_BLOCK_HOOK, _FBC_LEADER_BLOCK_HOOK

        return (_FBC_LEADER_BLOCK_HOOK, _FBC_BLOCK_HOOK)
    if cache == "diffusers-magcache":
        from diffusers.hooks.mag_cache import _MAG_CACHE_BLOCK_HOOK, _MAG_CACHE_LEADER_BLOCK_HOOK

        return (_MAG_CACHE_LEADER_BLOCK_HOOK, _MAG_CACHE_BLOCK_HOOK)
    if cache == "diffusers-pab":
        from diffusers.hooks.pyramid_attention_broadcast import _PYRAMID_ATTENTION_BROADCAST_HOOK

        return (_PYRAMID_ATTENTION_BROADCAST_HOOK,)
    from diffusers.hooks.taylorseer_cache import _TAYLORSEER_CACHE_HOOK

    return (_TAYLORSEER_CACHE_HOOK,)


# TaylorSeer's default identifiers match no module of DiTTransformer2DModel (they name attention classes of
# video/Flux models), so the recipe names DiT's units: each block's self-attention and MLP.
DIT_TAYLORSEER_UNITS = r"transformer_blocks\.\d+\.(attn1|ff)"


class RecipeRunner:
    """Applies recipes to one pipeline and samples with them (see the module docstring).

    Args:
        pipe: a class-conditional pipeline (``PixelDiTPipeline``/``DiTPipeline`` layout: ``class_labels``,
            ``guidance_scale``, ``latents``, ``output_type="pt"``).
        guidance_scale: CFG scale of every recipe (> 1).
        device: where the pipeline runs (CUDA is synchronised around each timed call).
        seed: seed of the ``generator`` passed to every call (the noise itself is given as ``latents``).

    The pipeline is restored exactly after every :meth:`applied` block (same scheduler object, no hook
    left); MagCache's per-step magnitude ratios are calibrated once per (scheduler, steps) by its own
    ``calibrate=True`` mode on noise that is not the benchmark's (:meth:`calibrate_mag_cache`).
    """

    def __init__(self, pipe: Any, guidance_scale: float, device: str | torch.device = "cpu", seed: int = 0):
        if not (
            isinstance(guidance_scale, (int, float)) and math.isfinite(guidance_scale) and guidance_scale > 1
        ):
            raise ValueError(f"guidance_scale must be a finite number > 1, got {guidance_scale!r}")
        self.pipe = pipe
        self.base_config = pipe.scheduler.config
        self.guidance_scale = float(guidance_scale)
        self.device = torch.device(device)
        self.seed = seed
        self.mag_ratios: dict[tuple[str, int], list[float]] = {}

    # ------------------------------------------------------------------ applying
    @contextlib.contextmanager
    def applied(self, recipe: Recipe) -> Iterator[Any]:
        """Apply ``recipe`` for the block; yields the :class:`fastsample.optimize.OptimizeHandle` (its
        ``cache`` handle is ``None`` for diffusers' and cache-dit's caches)."""
        from fastsample.optimize import optimize

        if recipe.cache == "diffusers-magcache":
            self.calibrate_mag_cache(
                recipe
            )  # before the recipe is applied: the calibration run applies its own
        cache = None
        if recipe.cache in FASTSAMPLE_CACHES:
            cache = (recipe.cache, {"profile_macs": False, **recipe.options})
        with optimize(
            self.pipe,
            scheduler=build_preset(recipe.scheduler, self.base_config, baselines=True),
            guidance=None if recipe.guidance == "cfg" else recipe.guidance,
            cache=cache,
            attention="auto" if recipe.kernels else None,
            dit_savings=recipe.kernels,
        ) as handle:
            if recipe.cache in DIFFUSERS_CACHES:
                with self._diffusers_cache(recipe):
                    yield handle
            elif recipe.cache in PEER_CACHES:
                with self._cache_dit(recipe):
                    yield handle
            else:
                yield handle

    def _diffusers_config(self, recipe: Recipe, probe: _TimestepProbe | None) -> tuple[Callable, Any]:
        import diffusers.hooks as hooks

        options = recipe.options
        if recipe.cache == "diffusers-fbc":
            return hooks.apply_first_block_cache, hooks.FirstBlockCacheConfig(**options)
        if recipe.cache == "diffusers-taylorseer":
            options.setdefault("cache_identifiers", [DIT_TAYLORSEER_UNITS])
            options.setdefault("taylor_factors_dtype", torch.float32)
            return hooks.apply_taylorseer_cache, hooks.TaylorSeerCacheConfig(**options)
        if recipe.cache == "diffusers-magcache":
            ratios = self.mag_ratios[(recipe.scheduler, recipe.steps)]
            config = hooks.MagCacheConfig(num_inference_steps=recipe.steps, mag_ratios=ratios, **options)
            return hooks.apply_mag_cache, config
        options.setdefault("spatial_attention_block_skip_range", 2)
        config = hooks.PyramidAttentionBroadcastConfig(current_timestep_callback=probe, **options)
        return hooks.apply_pyramid_attention_broadcast, config

    @contextlib.contextmanager
    def _diffusers_cache(self, recipe: Recipe) -> Iterator[None]:
        """diffusers' cache on the transformer, with the cache context that ``CacheMixin.cache_context``
        would open (DiT is not a CacheMixin and its pipeline opens none); removed on exit."""
        from diffusers.hooks import HookRegistry
        from diffusers.hooks.hooks import CacheContext, _set_cache_context

        model = self.pipe.transformer
        probe = _TimestepProbe(model) if recipe.cache == "diffusers-pab" else None
        registry = HookRegistry.check_if_exists_or_initialize(model)
        try:
            apply, config = self._diffusers_config(recipe, probe)
            apply(model, config)
            registry.invalidate_child_registries_cache()
            registry.reset_stateful_hooks(recurse=True)
            _set_cache_context(model, CacheContext("inference"))
            yield
        finally:
            _set_cache_context(model, None)
            for name in _diffusers_hook_names(recipe.cache):
                registry.remove_hook(name, recurse=True)
            registry.invalidate_child_registries_cache()
            if probe is not None:
                probe.remove()

    @contextlib.contextmanager
    def _cache_dit(self, recipe: Recipe) -> Iterator[None]:
        """cache-dit's DBCache on the transformer through an explicit ``BlockAdapter`` (its automatic
        matching does not know PixelDiT); DiT blocks return the hidden states only (``ForwardPattern``
        3).

        During the forward cache-dit replaces ``transformer_blocks`` by a one-element list holding its
        cached-blocks wrapper, and ``DiTTransformer2DModel.forward`` reads ``transformer_blocks[0].norm1.emb``
        after the block loop (the final layer's conditioning): a forward pre-hook, registered for the block
        only, lends block 0's ``norm1`` to the wrapper when it first runs (the wrapper is discarded by
        ``disable_cache``). cache-dit's log lines below ERROR are kept out of the progress bar unless logging
        is at INFO (``-v``)."""
        if not cache_dit_available():
            raise ImportError("recipe needs cache-dit: pip install 'fastsample[peers]'")
        import cache_dit
        from torch.nn.modules.module import register_module_forward_pre_hook

        transformer = self.pipe.transformer
        first_norm = getattr(transformer.transformer_blocks[0], "norm1", None)

        def lend_norm(module: torch.nn.Module, args: tuple) -> None:
            wrapper = type(module).__name__.startswith("CachedBlocks")
            if first_norm is not None and wrapper and "norm1" not in module._modules:
                module.norm1 = first_norm

        quiet = {
            name: logging.getLogger(name)
            for name in [*logging.root.manager.loggerDict, "CACHE_DIT"]
            if name.upper().startswith("CACHE_DIT")
        }
        levels = {name: logger.level for name, logger in quiet.items()}
        if not logging.getLogger().isEnabledFor(logging.INFO):
            for logger_ in quiet.values():
                logger_.setLevel(logging.ERROR)  # its per-call INFO and warnings would fill the bar
        options = {"Fn_compute_blocks": 1, "Bn_compute_blocks": 0, **recipe.options}
        adapter = cache_dit.BlockAdapter(
            pipe=self.pipe,
            transformer=transformer,
            blocks=transformer.transformer_blocks,
            forward_pattern=cache_dit.ForwardPattern.Pattern_3,
            check_forward_pattern=False,
        )
        hook = register_module_forward_pre_hook(lend_norm)
        try:
            cache_dit.enable_cache(adapter, cache_config=cache_dit.DBCacheConfig(**options))
            try:
                yield
            finally:
                cache_dit.disable_cache(self.pipe)
        finally:
            hook.remove()
            for name, logger_ in quiet.items():
                logger_.setLevel(levels[name])

    def calibrate_mag_cache(self, recipe: Recipe) -> list[float]:
        """MagCache's per-step magnitude ratios for ``recipe``'s scheduler and steps, from diffusers' own
        ``MagCacheConfig(calibrate=True)`` run (which prints them) on one batch of each class from a fixed
        seed that the benchmark's noise does not use; cached per (scheduler, steps)."""
        import ast
        import io

        key = (recipe.scheduler, recipe.steps)
        if key in self.mag_ratios:
            return self.mag_ratios[key]
        import diffusers.hooks as hooks
        from diffusers.hooks import HookRegistry
        from diffusers.hooks.hooks import CacheContext, _set_cache_context

        model = self.pipe.transformer
        calibration = Recipe("magcache-calibration", "diffusers", recipe.scheduler, recipe.steps)
        printed = io.StringIO()
        with self.applied(calibration):
            hooks.apply_mag_cache(
                model, hooks.MagCacheConfig(calibrate=True, num_inference_steps=recipe.steps)
            )
            registry = HookRegistry.check_if_exists_or_initialize(model)
            registry.invalidate_child_registries_cache()
            _set_cache_context(model, CacheContext("inference"))
            try:
                with contextlib.redirect_stdout(printed):
                    self.pipe(
                        class_labels=list(range(getattr(self.pipe, "num_classes", 10))),
                        guidance_scale=self.guidance_scale,
                        num_inference_steps=recipe.steps,
                        generator=torch.Generator(self.device).manual_seed(12345),
                        output_type="pt",
                    )
            finally:
                _set_cache_context(model, None)
                for name in _diffusers_hook_names("diffusers-magcache"):
                    registry.remove_hook(name, recurse=True)
                registry.invalidate_child_registries_cache()
        lines = [line for line in printed.getvalue().splitlines() if line.strip().startswith("[")]
        if not lines:
            raise RuntimeError(f"MagCache calibration printed no ratios: {printed.getvalue()[:300]!r}")
        ratios = [float(r) for r in ast.literal_eval(lines[-1].strip())]
        self.mag_ratios[key] = ratios
        return ratios

    # ------------------------------------------------------------------ sampling
    def call(self, recipe: Recipe, labels: torch.Tensor, noise: torch.Tensor) -> dict[str, Any]:
        """One timed ``pipe(...)`` call of ``recipe`` on a batch: ``images`` (float32 CPU, [0, 1]),
        ``seconds``, ``calls`` (denoiser forwards), ``samples`` (denoiser samples evaluated) and
        ``unit_samples`` (:class:`UnitCounter`)."""
        with self.applied(recipe) as handle:
            counter = UnitCounter(self.pipe.transformer)
            try:
                with Stopwatch(self.device) as watch:
                    images = self.pipe(
                        class_labels=labels,
                        guidance_scale=self.guidance_scale,
                        num_inference_steps=recipe.steps,
                        latents=noise.clone(),
                        generator=torch.Generator(self.device).manual_seed(self.seed),
                        output_type="pt",
                    ).images
            finally:
                counter.remove()
            guidance = handle.guidance
            samples = guidance.last_stats["model_samples"] if guidance is not None else counter.samples
        return {
            "images": images.float().cpu(),
            "seconds": watch.seconds,
            "calls": counter.calls,
            "samples": samples,
            "unit_samples": counter.unit_samples,
        }

    def sample_all(
        self,
        recipes: Sequence[Recipe],
        labels: torch.Tensor,
        noise: torch.Tensor,
        batch_size: int,
        progress: Callable[[str], None] | None = None,
    ) -> dict[str, Samples]:
        """Every recipe on every batch of (``labels``, ``noise``): one untimed warm-up call per recipe, then
        rounds (one per batch) that call every recipe once, each round starting one recipe later than the
        previous (round-robin). A smaller last batch is sampled but not timed. ``progress(text)`` is called
        before each call."""
        if len({r.name for r in recipes}) != len(recipes):
            raise ValueError("recipe names must be unique")
        if labels.shape[0] != noise.shape[0] or labels.shape[0] < 1:
            raise ValueError(f"labels {tuple(labels.shape)} and noise {tuple(noise.shape)} must pair up")
        batches = list(zip(labels.split(batch_size), noise.split(batch_size)))
        out = {r.name: Samples(r) for r in recipes}
        for recipe in recipes:
            if progress is not None:
                progress(f"warm-up {recipe.name}")
            self.call(recipe, *batches[0])
        for index, (batch_labels, batch_noise) in enumerate(batches):
            timed = batch_labels.shape[0] == batches[0][0].shape[0]
            start = index % len(recipes)
            for recipe in [*recipes[start:], *recipes[:start]]:
                if progress is not None:
                    progress(f"batch {index + 1}/{len(batches)} {recipe.name}")
                out[recipe.name].add(self.call(recipe, batch_labels, batch_noise), timed)
        return out


@dataclass
class Samples:
    """What :meth:`RecipeRunner.sample_all` collected for one recipe."""

    recipe: Recipe
    images: list[torch.Tensor] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)  # one per timed round
    calls: int = 0
    samples: int = 0
    unit_samples: float | None = None
    batches: int = 0

    def add(self, result: dict[str, Any], timed: bool) -> None:
        self.images.append(result["images"])
        if timed:
            self.seconds.append(result["seconds"])
        self.calls += result["calls"]
        self.samples += result["samples"]
        self.batches += 1
        if result["unit_samples"] is not None:
            self.unit_samples = (self.unit_samples or 0.0) + result["unit_samples"]

    @property
    def all_images(self) -> torch.Tensor:
        return torch.cat(self.images)

    @property
    def unit_fraction(self) -> float | None:
        """Fraction of the evaluated samples' unit work that really ran (``None`` without unit counts)."""
        if self.unit_samples is None or self.samples == 0:
            return None
        return float(self.unit_samples / self.samples)


# ---------------------------------------------------------------------------------------------------------
# Scoring
# ---------------------------------------------------------------------------------------------------------
@dataclass
class RecipeResult:
    """One recipe's figures (see the module docstring). ``seconds``: per-round latencies (aligned across
    the recipes of one run); ``psnr``/``ssim``/``feature_distance``: medians with bootstrap intervals against
    the reference (``None`` for the reference itself); ``fd``: FD with interval and floor."""

    recipe: Recipe
    seconds: list[float]
    nfe: float
    unit_fraction: float | None
    psnr: Interval | None = None
    ssim: Interval | None = None
    feature_distance: Interval | None = None
    fd: FrechetInterval | None = None
    shape_accuracy: float | None = None
    hue_accuracy: float | None = None
    saturation: float | None = None
    calls_per_batch: float = 0.0

    @property
    def name(self) -> str:
        return self.recipe.name

    @property
    def family(self) -> str:
        return self.recipe.family

    @property
    def latency(self) -> float:
        """Median seconds per batch call."""
        return float(np.median(self.seconds)) if self.seconds else math.nan

    @property
    def latency_band(self) -> tuple[float, float]:
        """p10 and p90 of the per-round latencies."""
        if not self.seconds:
            return (math.nan, math.nan)
        low, high = np.percentile(self.seconds, [10, 90])
        return float(low), float(high)

    @property
    def cost(self) -> float:
        """Clock-free cost: denoiser samples per image × fraction of units computed."""
        return self.nfe * (1.0 if self.unit_fraction is None else self.unit_fraction)

    def to_row(self) -> dict[str, Any]:
        """A flat dict for tables and JSON."""
        low, high = self.latency_band
        row: dict[str, Any] = {
            "recipe": self.name,
            "family": self.family,
            "scheduler": self.recipe.scheduler,
            "steps": self.recipe.steps,
            "guidance": self.recipe.guidance,
            "cache": self.recipe.cache or "-",
            "latency_s": self.latency,
            "latency_p10": low,
            "latency_p90": high,
            "nfe": self.nfe,
            "units": self.unit_fraction,
            "cost": self.cost,
        }
        for key in ("psnr", "ssim", "feature_distance"):
            value = getattr(self, key)
            row[key] = None if value is None else value.estimate
            row[f"{key}_ci"] = None if value is None else [value.low, value.high]
        if self.fd is not None:
            row["fd"] = self.fd.fd.estimate
            row["fd_ci"] = [self.fd.fd.low, self.fd.fd.high]
        row.update(
            shape_accuracy=self.shape_accuracy, hue_accuracy=self.hue_accuracy, saturation=self.saturation
        )
        return row


def score(
    collected: dict[str, Samples],
    reference: str,
    labels: torch.Tensor,
    real_reference: Any,
    real_same_labels: torch.Tensor,
    feature_net: Any = None,
    shape_net: Any = None,
    n_boot: int = 1000,
    fd_boot: int = 200,
    seed: int = 0,
) -> list[RecipeResult]:
    """Quality and cost of every recipe in ``collected`` (:meth:`RecipeRunner.sample_all`).

    Args:
        collected: samples by recipe name; must include ``reference``.
        reference: the name of the reference recipe (paired fidelity is measured against its images).
        labels: the class labels of the samples, ``[N]`` (bootstrap strata).
        real_reference: the FD reference, :class:`~fastsample.eval.stats.Statistics` or features ``[M, D]``
            of many real images.
        real_same_labels: ``N`` *other* real images in [0, 1] drawn with exactly ``labels``: the floor.
        feature_net, shape_net: the in-domain nets (default: the shipped ones).
        n_boot, fd_boot: bootstrap resamples of the medians and of FD; ``seed`` their generator seed.
    """
    from fastsample.eval.bootstrap import frechet_distance_interval
    from fastsample.eval.fidelity import paired_fidelity
    from fastsample.eval.shape import hue_accuracy, shape_accuracy
    from fastsample.zoo.default import load_feature_net, load_shape_net

    if reference not in collected:
        raise ValueError(f"reference {reference!r} is not among the sampled recipes {sorted(collected)}")
    feature_net = feature_net if feature_net is not None else load_feature_net()
    shape_net = shape_net if shape_net is not None else load_shape_net()
    target = collected[reference].all_images
    if target.shape[0] != labels.shape[0] or real_same_labels.shape[0] != labels.shape[0]:
        raise ValueError("labels, the reference samples and real_same_labels must have the same count")

    def features(images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return torch.cat([feature_net.features(chunk * 2 - 1) for chunk in images.split(256)])

    real_features = features(real_same_labels)
    results = []
    for name, samples in collected.items():
        images = samples.all_images
        n = images.shape[0]
        result = RecipeResult(
            recipe=samples.recipe,
            seconds=list(samples.seconds),
            nfe=samples.samples / n,
            unit_fraction=samples.unit_fraction,
            calls_per_batch=samples.calls / max(samples.batches, 1),
        )
        if name != reference:
            report = paired_fidelity(
                images,
                target,
                value_range=(0, 1),
                feature_net=feature_net,
                n_boot=n_boot,
                seed=seed,
                strata=labels,
            )
            result.psnr, result.ssim = report["psnr"], report["ssim"]
            result.feature_distance = report["feature_distance"]
        result.fd = frechet_distance_interval(
            features(images), real_reference, real_features, n_boot=fd_boot, seed=seed, strata=labels
        )
        result.shape_accuracy = shape_accuracy(images, labels, shape_net)
        result.hue_accuracy = hue_accuracy(images, labels)
        result.saturation = mean_saturation(images)
        results.append(result)
    return results


# ---------------------------------------------------------------------------------------------------------
# The frontier
# ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class QualityLevel:
    """A quality bar: ``accepts(result, reference)`` says whether a recipe reaches it."""

    name: str
    accepts: Callable[[RecipeResult, RecipeResult | None], bool]


def _psnr_at_least(db: float) -> Callable[[RecipeResult, RecipeResult | None], bool]:
    def accepts(result: RecipeResult, reference: RecipeResult | None) -> bool:
        return result.psnr is not None and result.psnr.estimate >= db

    return accepts


def _fd_within_reference(result: RecipeResult, reference: RecipeResult | None) -> bool:
    """FD estimate at or below the upper end of the reference's FD interval (the reference itself is
    excluded: it is not an accelerated recipe)."""
    if reference is None or reference.fd is None or result.fd is None or result is reference:
        return False
    return result.fd.fd.estimate <= reference.fd.fd.high


DEFAULT_LEVELS: tuple[QualityLevel, ...] = (
    QualityLevel("paired PSNR ≥ 30 dB", _psnr_at_least(30.0)),
    QualityLevel("paired PSNR ≥ 25 dB", _psnr_at_least(25.0)),
    QualityLevel("FD within the reference's interval", _fd_within_reference),
)


def ratio_summary(numerator: Sequence[float], denominator: Sequence[float]) -> tuple[float, float, float]:
    """Median, p10 and p90 of the per-round ratios ``numerator[r] / denominator[r]`` (the two recipes were
    timed in the same round r)."""
    if len(numerator) != len(denominator) or not numerator:
        raise ValueError(
            f"per-round times must pair up (same non-zero count), got {len(numerator)} and {len(denominator)}"
        )
    ratios = np.asarray(numerator, dtype=float) / np.asarray(denominator, dtype=float)
    median, low, high = np.percentile(ratios, [50, 10, 90])
    return float(median), float(low), float(high)


def separated(low: float, high: float, at: float = 1.0) -> bool:
    """Whether the band [low, high] lies entirely on one side of ``at`` (a winner may be named)."""
    return low > at or high < at


@dataclass
class FrontierEntry:
    """One quality level: the fastest recipe of each family (``None`` when none reaches it), and fastsample's
    speed-up over each other family's fastest (t_other / t_fastsample per round: median, p10, p90)."""

    level: str
    fastest: dict[str, RecipeResult | None]
    speedup: dict[str, tuple[float, float, float] | None]

    def verdict(self, other: str) -> str:
        """ "fastsample faster", "<other> faster", "not separated" or why there is no comparison."""
        if self.fastest.get("fastsample") is None or self.fastest.get(other) is None:
            missing = [f for f in ("fastsample", other) if self.fastest.get(f) is None]
            return f"no {' / '.join(missing)} recipe reaches this level"
        median, low, high = self.speedup[other]  # type: ignore[misc]
        if not separated(low, high):
            return "not separated"
        return "fastsample faster" if low > 1 else f"{other} faster"


def frontier(
    results: Sequence[RecipeResult],
    levels: Sequence[QualityLevel] = DEFAULT_LEVELS,
    reference: str | None = "reference",
) -> list[FrontierEntry]:
    """For each level, the fastest recipe of each family that reaches it, and fastsample's speed-up over the
    other families' fastest with its p10–p90 (:func:`ratio_summary`). The reference recipe never competes.

    "Fastest" is the smallest median of the per-round ratio t_recipe / t_reference when the reference was
    timed in the same rounds (load that hits a whole round cancels), else the smallest median latency."""
    by_name = {r.name: r for r in results}
    ref = by_name.get(reference) if reference is not None else None

    def speed_key(result: RecipeResult) -> float:
        if ref is not None and ref.seconds and len(ref.seconds) == len(result.seconds):
            return ratio_summary(result.seconds, ref.seconds)[0]
        return result.latency

    entries = []
    for level in levels:
        fastest: dict[str, RecipeResult | None] = {}
        for family in FAMILIES:
            candidates = [
                r
                for r in results
                if r.family == family and r is not ref and r.seconds and level.accepts(r, ref)
            ]
            fastest[family] = min(candidates, key=speed_key) if candidates else None
        ours = fastest["fastsample"]
        speedup: dict[str, tuple[float, float, float] | None] = {}
        for family in FAMILIES[:1] + FAMILIES[2:]:
            other = fastest[family]
            speedup[family] = (
                None if ours is None or other is None else ratio_summary(other.seconds, ours.seconds)
            )
        entries.append(FrontierEntry(level.name, fastest, speedup))
    return entries


# ---------------------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------------------
def _band(values: tuple[float, float, float] | None) -> str:
    return "-" if values is None else f"{values[0]:.2f}x [{values[1]:.2f}, {values[2]:.2f}]"


def _who(result: RecipeResult | None) -> str:
    if result is None:
        return "none reaches it"
    psnr = "" if result.psnr is None else f", {result.psnr.estimate:.1f} dB"
    return f"`{result.name}` ({result.latency:.3g} s{psnr}, cost {result.cost:.3g})"


def frontier_markdown(entries: Sequence[FrontierEntry]) -> str:
    """The frontier as a markdown table: per level, the fastest recipe of each family and fastsample's
    speed-up over diffusers and cache-dit (median [p10, p90] of per-round ratios) with the verdict."""
    lines = [
        "| quality level | diffusers fastest | fastsample fastest | cache-dit fastest | fastsample vs "
        "diffusers | fastsample vs cache-dit |",
        "|---|---|---|---|---|---|",
    ]
    for entry in entries:
        versus = [
            f"{_band(entry.speedup.get(other))} ({entry.verdict(other)})"
            for other in ("diffusers", "cache-dit")
        ]
        cells = [entry.level, *(_who(entry.fastest.get(f)) for f in ("diffusers", "fastsample", "cache-dit"))]
        lines.append("| " + " | ".join([*cells, *versus]) + " |")
    return "\n".join(lines)


def headline(entries: Sequence[FrontierEntry], other: str = "diffusers") -> str:
    """One sentence per level: fastsample's fastest against ``other``'s fastest, median [p10–p90], and the
    verdict (never a winner the band does not separate)."""
    parts = []
    for entry in entries:
        ours, theirs = entry.fastest.get("fastsample"), entry.fastest.get(other)
        if ours is None or theirs is None:
            parts.append(f"at {entry.level}: {entry.verdict(other)}.")
            continue
        median, low, high = entry.speedup[other]  # type: ignore[misc]
        parts.append(
            f"at {entry.level}: fastsample `{ours.name}` vs {other} `{theirs.name}`: speed-up {median:.2f}x "
            f"(p10–p90 {low:.2f}–{high:.2f}; {entry.verdict(other)})."
        )
    text = " ".join(parts)
    return text[:1].upper() + text[1:] if parts else "No quality level was evaluated."


def _interval(value: Interval | None, digits: int = 3) -> str:
    if value is None:
        return "-"
    return f"{value.estimate:.{digits}g} [{value.low:.{digits}g}, {value.high:.{digits}g}]"


def results_markdown(results: Sequence[RecipeResult], reference: str = "reference") -> str:
    """Every recipe as a markdown table, sorted by family then median latency; ``vs ref``: the speed-up over
    the ``reference`` recipe, t_reference / t_recipe per round, median [p10, p90]."""
    header = (
        "| recipe | family | latency_s [p10, p90] | vs ref | nfe | units | cost | psnr | ssim | feat | fd "
        "| shape | hue | sat |"
    )
    lines = [header, "|" + "---|" * 14]
    order = {family: i for i, family in enumerate(FAMILIES)}
    ref = next((r for r in results if r.name == reference), None)
    for r in sorted(results, key=lambda r: (r.name != reference, order[r.family], r.latency)):
        low, high = r.latency_band
        units = "-" if r.unit_fraction is None else f"{r.unit_fraction:.2f}"
        versus = "-"
        if ref is not None and r is not ref and ref.seconds and len(ref.seconds) == len(r.seconds):
            versus = _band(ratio_summary(ref.seconds, r.seconds))
        cells = [
            f"`{r.name}`",
            r.family,
            f"{r.latency:.3g} [{low:.3g}, {high:.3g}]",
            versus,
            f"{r.nfe:.3g}",
            units,
            f"{r.cost:.3g}",
            _interval(r.psnr),
            _interval(r.ssim),
            _interval(r.feature_distance, 2),
            "-" if r.fd is None else _interval(r.fd.fd),
            "-" if r.shape_accuracy is None else f"{r.shape_accuracy:.2f}",
            "-" if r.hue_accuracy is None else f"{r.hue_accuracy:.2f}",
            "-" if r.saturation is None else f"{r.saturation:.3f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


_COLOURS = {"diffusers": "tab:blue", "fastsample": "tab:red", "cache-dit": "tab:green"}


def plot_pareto(
    results: Sequence[RecipeResult], path: str | os.PathLike, title: str, batch_size: int | None = None
) -> None:
    """Paired PSNR (dB, y) against median latency (s, log x) of every recipe with a PSNR, one colour per
    family, each family's Pareto front as a step line, every point labelled, the 25 and 30 dB levels
    dashed."""
    from fastsample.eval.report import _require_matplotlib, pareto_front

    plt = _require_matplotlib()
    figure, axes = plt.subplots(figsize=(10, 6.5))
    for family in FAMILIES:
        points = [r for r in results if r.family == family and r.psnr is not None and r.seconds]
        if not points:
            continue
        x = [r.latency for r in points]
        y = [min(r.psnr.estimate, 60.0) for r in points]  # type: ignore[union-attr]
        axes.scatter(x, y, color=_COLOURS[family], label=family, zorder=3, s=22)
        front = pareto_front(x, y, lower_is_better=False)
        axes.plot(
            [x[i] for i in front],
            [y[i] for i in front],
            color=_COLOURS[family],
            alpha=0.6,
            drawstyle="steps-post",
            zorder=2,
        )
        for r, xi, yi in zip(points, x, y):
            axes.annotate(
                r.name,
                (xi, yi),
                textcoords="offset points",
                xytext=(3, 3),
                fontsize=6.5,
                color=_COLOURS[family],
            )
    for level in (25.0, 30.0):
        axes.axhline(level, color="grey", linestyle="--", linewidth=0.8, zorder=1)
    axes.set_xscale("log")
    per = f" of {batch_size} images" if batch_size else ""
    axes.set_xlabel(f"median latency per pipeline call{per} (s, log scale)")
    axes.set_ylabel("paired PSNR against the reference (dB, higher is better)")
    axes.set_title(title)
    axes.grid(alpha=0.3, which="both")
    axes.legend(loc="lower right")
    figure.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
