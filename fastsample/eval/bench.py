"""``fastsample bench``: the speed/quality frontier of diffusers, fastsample and cache-dit recipes on the
embedded class-conditional models (:mod:`fastsample.eval.frontier` does the work).

Every recipe samples the same balanced class labels from the same initial noise as the *reference* (VP:
DPM-Solver++ 2M, 100 steps, full CFG; flow: FlowMatch Euler, 100 steps), batches of all recipes interleaved.
The report gives, per quality level (paired PSNR ≥ 30 dB, ≥ 25 dB, FD within the reference's interval), the
fastest recipe of each family and fastsample's speed-up over diffusers' (and cache-dit's) fastest with its
p10–p90 over rounds; a winner is named only when the band excludes 1.

Recipe sets (:func:`recipe_set`): ``"quick"`` (a smoke run for tests and CI), ``"default"`` (the main job:
under 10 minutes on an idle 2-core CPU at the default sample count) and ``"full"`` (the complete grid:
diffusers' DPM-Solver++ 2M with and without Karras sigmas, UniPC, DDIM, Euler and DEIS at 5–50 steps, alone
and with each of diffusers' caches that apply; fastsample's recipes the same way).

The folder it writes: ``report.md``, ``results.json`` and per model ``<model>_pareto.png`` (paired PSNR
against latency, log time axis) and ``<model>_grid.png`` (one column per class: a row of real images, the
reference, and the fastest recipe of each family at each level).
"""

from __future__ import annotations

import json
import logging
import os
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fastsample.eval.frontier import (
    FAMILIES,
    FrontierEntry,
    MachineLoad,
    Recipe,
    RecipeRunner,
    cache_dit_available,
    frontier,
    mean_saturation,
    reference_recipe,
    score,
)

logger = logging.getLogger(__name__)

__all__ = [
    "MODELS",
    "SIZES",
    "BenchSettings",
    "build_scheduler",
    "mean_saturation",
    "recipe_set",
    "run_bench",
]

MODELS = ("vp", "flow")
SIZES = ("quick", "default", "full")
REFERENCE_STEPS = 100
QUICK_REFERENCE_STEPS = 8


# ---------------------------------------------------------------------------------------------------------
# Recipe sets
# ---------------------------------------------------------------------------------------------------------
def _diffusers(scheduler: str, steps: int, cache: str | None = None, **options: Any) -> Recipe:
    suffix = "" if cache is None else "-" + cache.removeprefix("diffusers-") + _knob(options)
    return Recipe(
        f"{scheduler}-{steps}{suffix}",
        "diffusers",
        scheduler,
        steps,
        cache=cache,
        cache_options=_pairs(options),
    )


def _fastsample(
    scheduler: str,
    steps: int,
    guidance: str = "cfg",
    cache: str | None = None,
    kernels: bool = False,
    **options,
) -> Recipe:
    name = f"fs-{scheduler}-{steps}" + ("" if guidance == "cfg" else f"-{guidance}")
    name += ("" if cache is None else f"-{cache}{_knob(options)}") + ("-kernels" if kernels else "")
    return Recipe(name, "fastsample", scheduler, steps, guidance, cache, _pairs(options), kernels)


def _cache_dit(scheduler: str, steps: int, threshold: float, warmup: int = 4) -> Recipe:
    """cache-dit's DBCache F1B0 (block 0 always computed, no tail blocks) with ``threshold`` on the residual
    difference and ``warmup`` uncached steps (its default 8 would leave few steps to cache at 10–20)."""
    options = {"residual_diff_threshold": threshold, "max_warmup_steps": warmup}
    return Recipe(
        f"{scheduler}-{steps}-dbcache{threshold:g}",
        "cache-dit",
        scheduler,
        steps,
        cache="cache-dit-dbcache",
        cache_options=_pairs(options),
    )


def _pairs(options: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted(options.items()))


def _knob(options: dict[str, Any]) -> str:
    for key in ("threshold", "interval", "cache_interval", "residual_diff_threshold"):
        if key in options:
            return f"{options[key]:g}"
    return ""


_FBC = {"threshold": 0.1}
_TAYLOR = {"cache_interval": 2, "disable_cache_before_step": 1, "max_order": 1}
_MAG = {"threshold": 0.06}
_PAB = {"spatial_attention_block_skip_range": 2, "spatial_attention_timestep_skip_range": (100, 800)}


def _vp(size: str) -> list[Recipe]:
    if size == "quick":
        return [
            _diffusers("dpm++2m", 4),
            _diffusers("ddim", 2),
            _diffusers("dpm++2m", 4, "diffusers-fbc", **_FBC),
            _fastsample("ghvb", 2, "ag"),
            _fastsample("ghvb", 4, cache="fora", interval=2),
        ]
    if size == "default":
        recipes = [_diffusers("dpm++2m", s) for s in (8, 10, 12, 15, 20)]
        recipes += [_diffusers("dpm++2m-karras", s) for s in (10, 15)]
        recipes += [_diffusers("unipc", s) for s in (8, 10, 12, 15)]
        recipes += [_diffusers("dpm++2m", s, "diffusers-fbc", **_FBC) for s in (15, 20)]
        recipes += [_diffusers("dpm++2m", s, "diffusers-taylorseer", **_TAYLOR) for s in (15, 20)]
        recipes += [_diffusers("unipc", 15, "diffusers-taylorseer", **_TAYLOR)]
        recipes += [_diffusers("dpm++2m", 20, "diffusers-magcache", **_MAG)]
        recipes += [_fastsample("ghvb", s) for s in (8, 10, 12, 15, 20)]
        recipes += [_fastsample("ghvb", s, "ag") for s in (10, 12, 15, 20)]
        recipes += [_fastsample("ghvb", s, "ag", "fora", interval=2) for s in (15, 20)]
        recipes += [_fastsample("ghvb", s, "ag", "taylorseer", interval=2) for s in (15, 20)]
        recipes += [_fastsample("ghvb", 20, "ag", "taylorseer", kernels=True, interval=2)]
        # fastsample's exact kernels and cache on diffusers' own solvers (the same images, less work)
        recipes += [_fastsample(sch, s, kernels=True) for sch in ("dpm++2m", "unipc") for s in (10, 15)]
        recipes += [_fastsample("dpm++2m", 20, cache="taylorseer", kernels=True, interval=2)]
        recipes += [_cache_dit("dpm++2m", s, t) for s in (15, 20) for t in (0.1, 0.2)]
        return recipes
    steps = (5, 6, 8, 10, 12, 15, 20, 25, 30, 40, 50)
    diffusers_caches = (
        (None, {}),
        ("diffusers-fbc", {"threshold": 0.1}),
        ("diffusers-fbc", {"threshold": 0.2}),
        ("diffusers-taylorseer", _TAYLOR),
        ("diffusers-magcache", {"threshold": 0.06}),
        ("diffusers-magcache", {"threshold": 0.12}),
        ("diffusers-pab", _PAB),
    )
    recipes = [
        _diffusers(scheduler, s, cache, **options)
        for scheduler in ("dpm++2m", "dpm++2m-karras", "unipc", "ddim", "euler", "deis")
        for s in steps
        for cache, options in diffusers_caches
    ]
    fastsample_caches = (
        (None, {}),
        ("fora", {"interval": 2}),
        ("taylorseer", {"interval": 2}),
        ("dynamic", {"threshold": 0.1}),
    )
    recipes += [
        _fastsample(scheduler, s, guidance, cache, **options)
        for scheduler in ("ghvb", "hb", "dpm++2m-hb")
        for s in steps
        for guidance in ("cfg", "ag")
        for cache, options in fastsample_caches
        if not (scheduler != "ghvb" and guidance == "cfg" and cache is None and s > 20)
    ]
    recipes += [_fastsample("ghvb", s, "ag", "taylorseer", kernels=True, interval=2) for s in steps]
    recipes += [
        _fastsample(scheduler, s, cache=cache, kernels=True, **options)
        for scheduler in ("dpm++2m", "unipc")
        for s in steps
        for cache, options in fastsample_caches
    ]
    recipes += [_cache_dit("dpm++2m", s, t) for s in steps for t in (0.08, 0.12, 0.2)]
    return recipes


def _flow(size: str) -> list[Recipe]:
    if size == "quick":
        return [
            _diffusers("flow-euler", 4),
            _diffusers("unipc", 3),
            _fastsample("ghvb", 2, "ag"),
        ]
    if size == "default":
        recipes = [_diffusers("flow-euler", s) for s in (8, 10, 12, 15, 20)]
        recipes += [_diffusers("dpm++2m", s) for s in (8, 10, 12, 15)]
        recipes += [_diffusers("unipc", s) for s in (8, 10, 12)]
        recipes += [_diffusers("flow-euler", s, "diffusers-fbc", **_FBC) for s in (15, 20)]
        recipes += [_diffusers("dpm++2m", s, "diffusers-taylorseer", **_TAYLOR) for s in (12, 15)]
        recipes += [_fastsample("ghvb", s) for s in (6, 8, 10, 12, 15)]
        recipes += [_fastsample("ghvb", s, "ag") for s in (8, 10, 12, 15)]
        recipes += [_fastsample("ghvb", s, "ag", "taylorseer", interval=2) for s in (12, 15)]
        # fastsample's exact kernels and cache on diffusers' own solvers (the same images, less work)
        recipes += [
            _fastsample(sch, s, kernels=True) for sch in ("flow-euler", "dpm++2m") for s in (8, 10, 15)
        ]
        recipes += [_fastsample("dpm++2m", 15, cache="taylorseer", kernels=True, interval=2)]
        recipes += [_cache_dit(sch, s, 0.1) for sch in ("flow-euler", "dpm++2m") for s in (12, 15)]
        return recipes
    steps = (5, 6, 8, 10, 12, 15, 20, 25, 30, 40, 50)
    caches = ((None, {}), ("diffusers-fbc", {"threshold": 0.1}), ("diffusers-taylorseer", _TAYLOR))
    recipes = [
        _diffusers(scheduler, s, cache, **options)
        for scheduler in ("flow-euler", "flow-heun", "dpm++2m", "unipc")
        for s in steps
        for cache, options in caches
    ]
    recipes += [
        _fastsample(scheduler, s, guidance, cache, **options)
        for scheduler in ("ghvb", "hb")
        for s in steps
        for guidance in ("cfg", "ag")
        for cache, options in ((None, {}), ("taylorseer", {"interval": 2}))
    ]
    recipes += [
        _fastsample(scheduler, s, cache=cache, kernels=True, **options)
        for scheduler in ("flow-euler", "dpm++2m", "unipc")
        for s in steps
        for cache, options in ((None, {}), ("taylorseer", {"interval": 2}))
    ]
    recipes += [_cache_dit("flow-euler", s, t) for s in steps for t in (0.08, 0.12)]
    return recipes


def recipe_set(model: str, size: str = "default") -> tuple[Recipe, ...]:
    """The recipes of ``size`` (``"quick"``, ``"default"``, ``"full"``) for a ``model`` family (``"vp"`` or
    ``"flow"``: flow models get diffusers' flow-capable schedulers only); the reference is not included."""
    if model not in MODELS:
        raise ValueError(f"model must be one of {MODELS}, got {model!r}")
    if size not in SIZES:
        raise ValueError(f"size must be one of {SIZES}, got {size!r}")
    recipes = _vp(size) if model == "vp" else _flow(size)
    return tuple(dict((r.name, r) for r in recipes).values())


# ---------------------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------------------
@dataclass
class BenchSettings:
    """What one ``fastsample bench`` run does (see ``fastsample bench --help``).

    ``recipes``: per model, the recipes to run besides the reference (default: :func:`recipe_set` of
    ``size``); ``pipeline``: ``None`` for the embedded models, or a saved PixelDiTPipeline folder (its
    scheduler family decides the model)."""

    out: Path
    models: tuple[str, ...] = ("vp",)
    size: str = "default"
    samples: int = 100
    batch_size: int = 20
    reference_samples: int = 2000
    reference_steps: int = REFERENCE_STEPS
    guidance_scale: float = 4.0
    seed: int = 0
    device: str = "cpu"
    dtype: str = "float32"
    pipeline: Path | None = None
    names: tuple[str, ...] | None = None
    n_boot: int = 1000
    fd_boot: int = 200
    recipes: dict[str, tuple[Recipe, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for model in self.models:
            if model not in MODELS:
                raise ValueError(f"models must be a subset of {MODELS}, got {self.models!r}")
        if self.samples < 2 or self.batch_size < 1:
            raise ValueError(
                f"samples must be >= 2 and batch_size >= 1, got {self.samples}, {self.batch_size}"
            )
        for model in self.models:
            if model not in self.recipes:
                chosen = recipe_set(model, self.size)
                if self.names is not None:
                    chosen = tuple(r for r in chosen if r.name in self.names)
                self.recipes[model] = chosen

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["out"], out["pipeline"] = str(self.out), None if self.pipeline is None else str(self.pipeline)
        out["recipes"] = {model: [r.name for r in recipes] for model, recipes in self.recipes.items()}
        return out


def _load(settings: BenchSettings, model: str) -> tuple[Any, str]:
    from fastsample.cli.loading import EMBEDDED
    from fastsample.cli.loading import load_pipeline as load

    if settings.pipeline is not None:
        loaded = load(str(settings.pipeline), device=settings.device, dtype=settings.dtype)
        return loaded.pipe, loaded.description
    if model == "vp":
        loaded = load(EMBEDDED, device=settings.device, dtype=settings.dtype)
        return loaded.pipe, loaded.description
    from fastsample.zoo.default import load_default_pipeline

    pipe = load_default_pipeline(model="flow", device=settings.device, dtype=getattr(torch, settings.dtype))
    return pipe, "embedded flow-matching DiT (fastsample/zoo/weights/flow)"


class _Once(logging.Filter):
    """Lets each distinct message through once (a recipe re-applied per batch repeats its warnings)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message in self.seen:
            return False
        self.seen.add(message)
        return True


def probe(runner: RecipeRunner, recipe: Recipe, labels: torch.Tensor, noise: torch.Tensor) -> str | None:
    """``None`` when ``recipe`` runs a 2-step call on the pipeline, else the reason it cannot (the exception
    type and first line), so the report records it instead of dropping the recipe silently."""
    trial = Recipe(
        recipe.name,
        recipe.family,
        recipe.scheduler,
        2,
        recipe.guidance,
        recipe.cache,
        recipe.cache_options,
        recipe.kernels,
    )
    if recipe.cache == "diffusers-magcache":
        return None  # calibrated at its own step count when it runs
    try:
        runner.call(trial, labels[:2], noise[:2])
    except Exception as error:  # recorded in the report, never hidden
        return f"{type(error).__name__}: {str(error).splitlines()[0][:300] if str(error) else ''}"
    return None


def run_model(settings: BenchSettings, model: str, progress: bool = True) -> dict[str, Any]:
    """Sample, score and rank the recipes of one model; writes ``<model>_pareto.png`` and
    ``<model>_grid.png`` into ``settings.out`` and returns the model's section of the results."""
    from tqdm.auto import tqdm

    from fastsample.eval.stats import Statistics
    from fastsample.solvers.presets import family_of
    from fastsample.zoo.data import generate_batch
    from fastsample.zoo.default import load_feature_net, load_shape_net

    pipe, weights = _load(settings, model)
    pipe.set_progress_bar_config(disable=True)
    kind = family_of(pipe.scheduler.config)
    model_recipes = settings.recipes.get(model, ())
    if kind != model:  # a --pipeline folder decides its own family: its recipe set, the same names kept
        logger.info("the pipeline's scheduler is a %s schedule: using the %s recipes", kind, kind)
        model_recipes = recipe_set(kind, settings.size)
        if settings.names is not None:
            model_recipes = tuple(r for r in model_recipes if r.name in settings.names)
    steps = settings.reference_steps
    reference = reference_recipe(kind, steps)
    runner = RecipeRunner(pipe, settings.guidance_scale, settings.device, settings.seed)

    size = pipe.transformer.config.sample_size
    channels = pipe.transformer.config.in_channels
    num_classes = getattr(pipe, "num_classes", 10)
    labels = torch.arange(settings.samples) % num_classes
    noise = torch.randn(
        settings.samples, channels, size, size, generator=torch.Generator().manual_seed(settings.seed)
    )

    skipped: dict[str, str] = {}
    if not cache_dit_available():
        peers = [r.name for r in model_recipes if r.family == "cache-dit"]
        if peers:
            skipped["cache-dit (all)"] = (
                "not installed (optional extra `peers`: pip install 'fastsample[peers]')"
            )
        model_recipes = tuple(r for r in model_recipes if r.family != "cache-dit")
    runnable = []
    for recipe in model_recipes:
        reason = probe(runner, recipe, labels, noise)
        if reason is None:
            runnable.append(recipe)
        else:
            skipped[recipe.name] = reason
    recipes = [reference, *runnable]

    load = MachineLoad(os.cpu_count() or 1, torch.get_num_threads()).start()
    batches = -(-settings.samples // settings.batch_size)
    with tqdm(
        total=len(recipes) * (batches + 1), desc=f"bench {model}", unit="call", disable=not progress
    ) as bar:

        def step(text: str) -> None:
            bar.set_postfix_str(text, refresh=False)
            bar.update()

        collected = runner.sample_all(recipes, labels, noise, settings.batch_size, progress=step)
    load.stop()

    with torch.no_grad():
        feature_net, shape_net = load_feature_net(), load_shape_net()
        real, _ = generate_batch(settings.reference_samples, seed=settings.seed + 1)
        real_features = torch.cat([feature_net.features(chunk) for chunk in real.split(500)]).double().numpy()
        real_stats = Statistics(real_features.mean(axis=0), np.cov(real_features, rowvar=False), len(real))
        same_labels, _ = generate_batch(settings.samples, seed=settings.seed + 2, labels=labels)
    results = score(
        collected,
        reference.name,
        labels,
        real_stats,
        (same_labels + 1) / 2,
        feature_net,
        shape_net,
        n_boot=settings.n_boot,
        fd_boot=settings.fd_boot,
        seed=settings.seed,
    )
    entries = frontier(results, reference=reference.name)
    from fastsample.eval.frontier import plot_pareto

    plot_pareto(
        results,
        settings.out / f"{model}_pareto.png",
        title=f"fastsample bench, {model.upper()} model: paired PSNR vs latency",
        batch_size=settings.batch_size,
    )
    save_class_grid(
        settings.out / f"{model}_grid.png",
        (same_labels + 1) / 2,
        labels,
        [(reference.name, collected[reference.name].all_images)]
        + [(r.name, collected[r.name].all_images) for r in _frontier_recipes(entries)],
    )
    return {
        "model": model,
        "weights": weights,
        "scheduler_family": kind,
        "reference": reference.to_dict(),
        "results": results,
        "frontier": entries,
        "skipped": skipped,
        "load": load,
        "mag_ratios": {f"{k[0]}-{k[1]}": v for k, v in runner.mag_ratios.items()},
        "fd_floor": next(r.fd.floor for r in results if r.name == reference.name),
    }


def _frontier_recipes(entries: list[FrontierEntry]) -> list[Recipe]:
    seen: dict[str, Recipe] = {}
    for entry in entries:
        for result in entry.fastest.values():
            if result is not None:
                seen.setdefault(result.name, result.recipe)
    return list(seen.values())


def save_class_grid(
    path: Path, real: torch.Tensor, labels: torch.Tensor, rows: list[tuple[str, torch.Tensor]], scale: int = 2
) -> None:
    """A labelled grid: one column per class (class names on top), a first row of real images of each class,
    then one row per ``(name, images)`` (the first sample of each class, name on the left)."""
    from PIL import Image, ImageDraw

    from fastsample.zoo.data import CLASS_NAMES

    classes = sorted(set(labels.tolist()))
    first = [int((labels == c).nonzero()[0]) for c in classes]
    table = [("real", real), *rows]
    size = real.shape[-1] * scale
    pad, left, top = 4, 150, 28
    width = left + len(classes) * (size + pad)
    height = top + len(table) * (size + pad)
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    for j, c in enumerate(classes):
        name = CLASS_NAMES[c] if c < len(CLASS_NAMES) else str(c)
        for k, word in enumerate(name.split(" ")[:2]):
            draw.text((left + j * (size + pad), 2 + 12 * k), word, fill="black")
    for i, (name, images) in enumerate(table):
        y = top + i * (size + pad)
        draw.text((4, y + size // 2 - 6), name[:24], fill="black")
        for j, index in enumerate(first):
            pixels = (images[index].clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
            tile = Image.fromarray(pixels).resize((size, size), Image.NEAREST)
            canvas.paste(tile, (left + j * (size + pad), y))
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)


# ---------------------------------------------------------------------------------------------------------
# Helpers the benchmark scripts share (benchmarks/*.py)
# ---------------------------------------------------------------------------------------------------------
def build_scheduler(name: str, config: Any) -> Any:
    """The scheduler ``name`` (a shortcut of :mod:`fastsample.solvers.presets`, diffusers baselines included)
    built with ``from_config`` from the pipeline's own (training) schedule."""
    from fastsample.solvers.presets import build

    return build(name, config, baselines=True)


def load_pipeline(settings: BenchSettings) -> tuple[Any, str]:
    """The pipeline of ``settings`` (the embedded VP model, or ``settings.pipeline``) and a description of
    its weights."""
    return _load(settings, "vp")


def _balanced_labels(samples: int, num_classes: int) -> torch.Tensor:
    return torch.arange(samples) % num_classes


def _statistics(extractor: Any, images: torch.Tensor, batch_size: int = 500) -> Any:
    """Feature statistics of ``images`` through ``extractor`` (streamed in chunks)."""
    from fastsample.eval.stats import FeatureStatistics

    accumulator = FeatureStatistics(extractor.feature_dim)
    for chunk in images.split(batch_size):
        accumulator.update(extractor(chunk).cpu())
    return accumulator.result()


def _timed_call(pipe: Any, device: torch.device, **kwargs: Any) -> tuple[torch.Tensor, float]:
    """``pipe(**kwargs)`` timed by the one clock (:class:`fastsample.integration.measure.Stopwatch`)."""
    from fastsample.integration.measure import Stopwatch

    with Stopwatch(device) as watch:
        images = pipe(**kwargs).images
    return images, watch.seconds


def _versions() -> str:
    import diffusers

    from fastsample import __version__

    peer = ""
    if cache_dit_available():
        import cache_dit

        peer = f", cache-dit {getattr(cache_dit, '__version__', '?')}"
    return (
        f"python {platform.python_version()}, torch {torch.__version__}, diffusers {diffusers.__version__}, "
        f"fastsample {__version__}{peer}"
    )


def run_bench(settings: BenchSettings, command: str = "", progress: bool = True) -> dict[str, Any]:
    """Run every model of ``settings``, write ``report.md``, ``results.json`` and the figures, and return
    ``{"headline": ..., "wall_time_s": ..., "models": {...}}``."""
    import importlib.util

    from fastsample.eval.frontier import frontier_markdown, headline, results_markdown
    from fastsample.integration.measure import Stopwatch

    if importlib.util.find_spec("matplotlib") is None:  # fail before sampling, not after
        raise ImportError(
            "fastsample bench writes a plot with matplotlib: install the `bench` extra "
            "(pip install 'fastsample[bench]')."
        )
    wall = Stopwatch().start()
    settings.out.mkdir(parents=True, exist_ok=True)
    once = _Once()
    noisy = logging.getLogger("fastsample")
    noisy.addFilter(once)
    for handler in logging.getLogger().handlers:
        handler.addFilter(once)
    try:
        sections = {model: run_model(settings, model, progress) for model in settings.models}
    finally:
        noisy.removeFilter(once)
        for handler in logging.getLogger().handlers:
            handler.removeFilter(once)
    lines = ["# fastsample bench", ""]
    headlines = []
    for model, section in sections.items():
        sentence = headline(section["frontier"])
        headlines.append(f"{model.upper()}: {sentence}")
        load: MachineLoad = section["load"]
        floor = section["fd_floor"]
        lines += [
            f"## {model.upper()} model",
            "",
            f"**Headline.** {sentence}",
            "",
        ]
        if load.busy:
            lines += [
                f"**WARNING: the machine was busy** ({load.describe()}); latencies are inflated and "
                "ratios noisier than on an idle machine.",
                "",
            ]
        lines += [
            f"- command: `{command or 'fastsample bench'}`",
            f"- model: {section['weights']}",
            f"- machine: {platform.platform()}, {os.cpu_count()} CPUs, device {settings.device}, "
            f"{torch.get_num_threads()} torch thread(s); {load.describe()}",
            f"- versions: {_versions()}",
            f"- samples: {settings.samples} per recipe ({settings.samples // 10 or 1} per class, balanced), "
            f"batches of {settings.batch_size}, one untimed warm-up call per recipe, rounds interleaved "
            f"(round-robin); guidance scale {settings.guidance_scale}; seed {settings.seed}",
            f"- reference: {section['reference']['description']} (same noise and labels)",
            f"- FD: in-domain feature net, {settings.reference_samples} real images as reference; "
            f"real-vs-real floor at the same {settings.samples} samples with the same labels: {floor}; "
            f"intervals: 95 % stratified bootstrap ({settings.n_boot} resamples; FD {settings.fd_boot}, "
            "bias-corrected)",
            "",
            "### Frontier: the fastest recipe of each family at each quality level",
            "",
            frontier_markdown(section["frontier"]),
            "",
            f"![paired PSNR vs latency]({model}_pareto.png)",
            "",
            f"![samples by class]({model}_grid.png)",
            "",
            "### Every recipe",
            "",
            results_markdown(section["results"]),
            "",
        ]
        if section["skipped"]:
            lines += ["Recipes that could not run on this pipeline:", ""]
            lines += [f"- `{name}`: {reason}" for name, reason in section["skipped"].items()]
            lines.append("")
    elapsed = wall.elapsed()
    lines += [
        "Columns: `latency_s` median seconds of one `pipe(...)` call on a batch, [p10, p90] over rounds; "
        "`nfe` denoiser samples per image (a CFG step counts 2); `units` fraction of the attention/MLP units "
        "that ran; `cost` = nfe × units (clock-free); `psnr`/`ssim`/`feat` paired medians against the "
        "reference [95 % interval]; `fd` in-domain Fréchet distance [interval]; `shape`/`hue` accuracies; "
        "`sat` mean HSV saturation. Speed-ups are t_other / t_fastsample per round: median [p10, p90]; "
        "a winner is named only when the band excludes 1.",
        "",
        f"Wall time of the whole run: {elapsed:.0f} s.",
        "",
    ]
    (settings.out / "report.md").write_text("\n".join(lines))
    results = {
        "headline": " ".join(headlines),
        "wall_time_s": elapsed,
        "settings": settings.to_dict(),
        "command": command,
        "models": {model: _section_json(section) for model, section in sections.items()},
    }
    (settings.out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    logger.info("bench finished in %.1f s; report in %s", elapsed, settings.out)
    return results


def _section_json(section: dict[str, Any]) -> dict[str, Any]:
    load: MachineLoad = section["load"]
    return {
        "weights": section["weights"],
        "reference": section["reference"],
        "rows": [r.to_row() | {"seconds": r.seconds} for r in section["results"]],
        "frontier": [
            {
                "level": entry.level,
                "fastest": {f: (None if r is None else r.name) for f, r in entry.fastest.items()},
                "speedup": entry.speedup,
                "verdict": {f: entry.verdict(f) for f in FAMILIES if f != "fastsample"},
            }
            for entry in section["frontier"]
        ],
        "skipped": section["skipped"],
        "load": {
            "before": load.load_before,
            "after": load.load_after,
            "cpu_share": load.cpu_share,
            "busy": load.busy,
        },
        "mag_ratios": section["mag_ratios"],
        "fd_floor": str(section["fd_floor"]),
    }
