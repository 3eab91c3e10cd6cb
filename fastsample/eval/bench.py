"""``fastsample bench``: diffusers' samplers against fastsample's recipes on one class-conditional pipeline.

Every configuration (a *recipe*: scheduler, steps, guidance method, cache) samples the same balanced class
labels from the same initial noise. Batches are run interleaved (batch 0 of every recipe, then batch 1 …), so
that load drift on a shared machine hits every recipe alike. Per recipe the report gives

* ``latency_s``: median wall-clock seconds of one full ``pipe(...)`` call on a batch (one untimed warm-up
  call first; CUDA is synchronised around each call), and ``latency_ratio`` = latency / baseline latency
  (the baseline is diffusers' DPM-Solver++ 2M, 50 steps, full CFG, measured in the same run);
* ``nfe``: denoiser *samples evaluated* per generated image (a batched CFG step counts 2, a step where
  Adaptive Guidance runs the conditional half only counts 1), and ``denoiser_calls`` per pipeline call;
* ``fd``: in-domain Fréchet distance ‖μ₁−μ₂‖² + Tr(Σ₁+Σ₂−2(Σ₁Σ₂)^½) between feature-net features of the
  generated images and of real procedural images (:mod:`fastsample.zoo.data`);
* ``class_accuracy``: feature-net classification of the generated images against the requested labels;
* ``saturation``: mean HSV saturation (max − min)/max of the generated pixels (the real data's is given for
  reference): strong guidance over-saturates.

The folder it writes: ``report.md``, ``results.json``, ``report_pareto.png`` (FD against latency with the
Pareto front) and ``grids/<recipe>.png`` (one row per class).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import platform
import statistics
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from fastsample.guidance.methods import METHODS as GUIDANCE_METHODS
from fastsample.integration.measure import NFECounter, Stopwatch
from fastsample.solvers.presets import BASELINE_SHORTCUTS, SHORTCUTS
from fastsample.solvers.presets import build as build_preset

logger = logging.getLogger(__name__)

__all__ = [
    "BASELINE",
    "DEFAULT_RECIPES",
    "QUICK_RECIPES",
    "RECIPES",
    "BenchSettings",
    "Recipe",
    "run_bench",
]

# the name tables of fastsample.solvers.presets and fastsample.guidance.methods.METHODS
SCHEDULERS = BASELINE_SHORTCUTS + SHORTCUTS
GUIDANCE = tuple(GUIDANCE_METHODS)
CACHES = (None, "fora")


@dataclass(frozen=True)
class Recipe:
    """One row of the benchmark: ``scheduler`` (a key of :data:`SCHEDULERS`) for ``steps`` steps, guidance
    ``"cfg"`` (the pipeline's own classifier-free guidance), ``"ag"`` (Adaptive Guidance) or ``"apg"``, an
    optional feature cache (``"fora"``, interval 2) and, with ``kernels``, fastsample's attention path
    (``set_attention(pipe, "auto")``) and exact DiT savings (``enable_dit_savings``)."""

    name: str
    scheduler: str
    steps: int
    guidance: str = "cfg"
    cache: str | None = None
    description: str = ""
    kernels: bool = False

    def __post_init__(self) -> None:
        if self.scheduler not in SCHEDULERS:
            raise ValueError(f"scheduler must be one of {SCHEDULERS}, got {self.scheduler!r}")
        if self.guidance not in GUIDANCE:
            raise ValueError(f"guidance must be one of {GUIDANCE}, got {self.guidance!r}")
        if self.cache not in CACHES:
            raise ValueError(f"cache must be one of {CACHES}, got {self.cache!r}")
        if not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"steps must be an int >= 1, got {self.steps!r}")


BASELINE = "baseline"
_FEW = 10  # steps of the few-NFE rows
DEFAULT_RECIPES: tuple[Recipe, ...] = (
    Recipe(BASELINE, "dpm++2m", 50, description="diffusers DPM-Solver++ 2M, 50 steps, full CFG"),
    Recipe("dpm++2m-10", "dpm++2m", _FEW, description="diffusers DPM-Solver++ 2M"),
    Recipe("ddim-10", "ddim", _FEW, description="diffusers DDIM"),
    Recipe("plms-10", "pndm", _FEW, description="diffusers PNDM (PLMS, skip_prk_steps)"),
    Recipe("euler-10", "euler", _FEW, description="diffusers Euler"),
    Recipe("ghvb-10", "ghvb", _FEW, description="fastsample GHVB (default: q 1.8, Karras grid)"),
    Recipe("hb-10", "hb", _FEW, description="fastsample PLMS4 + heavy ball 0.8"),
    Recipe("ghvb-10-ag", "ghvb", _FEW, "ag", description="GHVB + Adaptive Guidance"),
    Recipe("ghvb-10-apg", "ghvb", _FEW, "apg", description="GHVB + APG"),
    Recipe("ghvb-10-fora", "ghvb", _FEW, cache="fora", description="GHVB + FORA cache (interval 2)"),
    Recipe("composed", "ghvb", _FEW, "ag", "fora", description="GHVB + Adaptive Guidance + FORA"),
    Recipe(
        "composed-kernels",
        "ghvb",
        _FEW,
        "ag",
        "fora",
        description="GHVB + Adaptive Guidance + FORA + attention 'auto' + exact DiT savings",
        kernels=True,
    ),
)
QUICK_RECIPES: tuple[Recipe, ...] = (
    Recipe("quick-baseline", "dpm++2m", 4, description="diffusers DPM-Solver++ 2M, 4 steps, full CFG"),
    Recipe("quick-ddim", "ddim", 2, description="diffusers DDIM"),
    Recipe("quick-ghvb-ag", "ghvb", 2, "ag", description="GHVB + Adaptive Guidance"),
)
RECIPES: dict[str, Recipe] = {recipe.name: recipe for recipe in DEFAULT_RECIPES + QUICK_RECIPES}


# ---------------------------------------------------------------------------------------------------------
# Applying a recipe to a pipeline
# ---------------------------------------------------------------------------------------------------------
def build_scheduler(name: str, config: Any) -> Any:
    """The scheduler ``name`` (:mod:`fastsample.solvers.presets`: a diffusers baseline or a recommended
    configuration for the family of ``config``) built with ``from_config`` from the pipeline's own (training)
    schedule."""
    if name not in SCHEDULERS:
        raise ValueError(f"scheduler must be one of {SCHEDULERS}, got {name!r}")
    return build_preset(name, config, baselines=True)


@contextlib.contextmanager
def applied(recipe: Recipe, pipe: Any, base_config: Any) -> Iterator[Any]:
    """Swap in the recipe's scheduler, guidance hook and cache for the block (through
    :func:`fastsample.optimize.optimize`); the pipeline is restored exactly afterwards.

    Yields ``(guidance handle, cache handle)`` (each ``None`` when unused); the guidance handle's
    ``last_stats`` count the model samples.
    """
    from fastsample.optimize import optimize

    with optimize(
        pipe,
        scheduler=build_scheduler(recipe.scheduler, base_config),
        guidance=None if recipe.guidance == "cfg" else recipe.guidance,
        cache=None if recipe.cache is None else (recipe.cache, {"interval": 2, "profile_macs": False}),
        attention="auto" if recipe.kernels else None,
        dit_savings=recipe.kernels,
    ) as handle:
        yield handle.guidance, handle.cache


def _timed_call(pipe: Any, device: torch.device, **kwargs: Any) -> tuple[torch.Tensor, float]:
    """``pipe(**kwargs)`` timed by the one clock (:class:`fastsample.integration.measure.Stopwatch`)."""
    with Stopwatch(device) as watch:
        images = pipe(**kwargs).images
    return images, watch.seconds


# ---------------------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------------------
def mean_saturation(images: torch.Tensor) -> float:
    """Mean HSV saturation (max − min)/max over pixels of ``[N, 3, H, W]`` images in [0, 1] (0 if max=0)."""
    high = images.amax(dim=1)
    low = images.amin(dim=1)
    saturation = torch.where(high > 0, (high - low) / high.clamp_min(1e-12), torch.zeros_like(high))
    return float(saturation.double().mean())


def _statistics(extractor: Any, images: torch.Tensor, batch_size: int = 500) -> Any:
    from fastsample.eval.stats import FeatureStatistics

    accumulator = FeatureStatistics(extractor.feature_dim)
    for chunk in images.split(batch_size):
        accumulator.update(extractor(chunk).cpu())
    return accumulator.result()


def image_grid_by_class(images: torch.Tensor, labels: torch.Tensor, max_columns: int = 8) -> torch.Tensor:
    """Reorder images so that a grid with :func:`grid_columns` columns has one row per class."""
    classes = sorted(set(labels.tolist()))
    columns = grid_columns(labels, max_columns)
    rows = [images[labels == c][:columns] for c in classes]
    return torch.cat(rows)


def grid_columns(labels: torch.Tensor, max_columns: int = 8) -> int:
    counts = torch.bincount(labels)
    return int(min(max_columns, int(counts[counts > 0].min())))


# ---------------------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------------------
@dataclass
class BenchSettings:
    """What one ``fastsample bench`` run does (see ``fastsample bench --help``)."""

    out: Path
    recipes: tuple[Recipe, ...]
    samples: int
    batch_size: int
    reference_samples: int
    guidance_scale: float
    seed: int
    device: str
    dtype: str
    pipeline: Path | None
    fd_tolerance: float

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["out"], out["pipeline"] = str(self.out), None if self.pipeline is None else str(self.pipeline)
        out["recipes"] = [recipe.name for recipe in self.recipes]
        return out


def load_pipeline(settings: BenchSettings) -> tuple[Any, str]:
    """The pipeline to benchmark (``settings.pipeline``: ``None`` for the embedded default, or a saved
    ``PixelDiTPipeline`` folder) and a description of the weights it runs (file hashes and dates), through
    :func:`fastsample.cli.loading.load_pipeline`."""
    from fastsample.cli.loading import EMBEDDED
    from fastsample.cli.loading import load_pipeline as load

    spec = EMBEDDED if settings.pipeline is None else str(settings.pipeline)
    loaded = load(spec, device=settings.device, dtype=settings.dtype)
    return loaded.pipe, loaded.description


def _balanced_labels(samples: int, num_classes: int) -> torch.Tensor:
    return torch.arange(samples) % num_classes


def run_bench(settings: BenchSettings, command: str = "", progress: bool = True) -> dict[str, Any]:
    """Run every recipe of ``settings``, write the report folder and return the results dict (``progress``:
    show a progress bar)."""
    from tqdm.auto import tqdm

    from fastsample.eval.extractors import InDomainExtractor
    from fastsample.eval.frechet import frechet_distance
    from fastsample.zoo.data import generate_batch
    from fastsample.zoo.default import classify, load_feature_net

    if importlib.util.find_spec("matplotlib") is None:  # fail before sampling, not after
        raise ImportError(
            "fastsample bench writes a plot with matplotlib: install the `bench` extra "
            "(pip install 'fastsample[bench]')."
        )
    wall = Stopwatch().start()  # the whole run
    baseline = settings.recipes[0].name  # ratios are taken against the first recipe
    device = torch.device(settings.device)
    pipe, weights = load_pipeline(settings)
    base_config = pipe.scheduler.config
    size = pipe.transformer.config.sample_size
    channels = pipe.transformer.config.in_channels
    labels = _balanced_labels(settings.samples, pipe.num_classes)
    noise = torch.randn(
        settings.samples, channels, size, size, generator=torch.Generator().manual_seed(settings.seed)
    )
    batches = list(zip(labels.split(settings.batch_size), noise.split(settings.batch_size)))

    feature_net = load_feature_net(device=device)
    extractor = InDomainExtractor(feature_net, device=device)
    logger.info("reference statistics of %d real procedural images", settings.reference_samples)
    real, _ = generate_batch(settings.reference_samples, seed=settings.seed + 1)
    real = (real + 1) / 2
    reference = _statistics(extractor, real)
    real_check, _ = generate_batch(settings.samples, seed=settings.seed + 2)
    real_check = (real_check + 1) / 2
    check = _statistics(extractor, real_check)
    fd_floor = frechet_distance(check.mu, check.sigma, reference.mu, reference.sigma)

    images: dict[str, list[torch.Tensor]] = {r.name: [] for r in settings.recipes}
    times: dict[str, list[float]] = {r.name: [] for r in settings.recipes}
    calls: dict[str, int] = dict.fromkeys(images, 0)
    samples_evaluated: dict[str, int] = dict.fromkeys(images, 0)
    cache_hits: dict[str, list[float]] = {r.name: [] for r in settings.recipes}

    def sample(recipe: Recipe, batch_labels: torch.Tensor, batch_noise: torch.Tensor) -> tuple[Any, ...]:
        with applied(recipe, pipe, base_config) as (guidance, cache):
            counter = NFECounter(pipe.transformer)
            try:
                out, seconds = _timed_call(
                    pipe,
                    device,
                    class_labels=batch_labels,
                    guidance_scale=settings.guidance_scale,
                    num_inference_steps=recipe.steps,
                    latents=batch_noise,
                    generator=torch.Generator(device).manual_seed(settings.seed),
                    output_type="pt",
                )
            finally:
                counter.remove()
            evaluated = guidance.last_stats["model_samples"] if guidance is not None else counter.samples
            hit = cache.stats().hit_ratio if cache is not None else None
        return out.float().cpu(), seconds, counter.count, evaluated, hit

    total = len(settings.recipes) * (len(batches) + 1)
    with tqdm(total=total, desc="bench", unit="batch", disable=not progress) as bar:
        for recipe in settings.recipes:  # untimed warm-up at the exact shape of the timed batches
            bar.set_postfix_str(f"warm-up {recipe.name}")
            sample(recipe, *batches[0])
            bar.update()
        for index, (batch_labels, batch_noise) in enumerate(batches):
            for recipe in settings.recipes:
                bar.set_postfix_str(f"batch {index} {recipe.name}")
                out, seconds, n_calls, evaluated, hit = sample(recipe, batch_labels, batch_noise)
                images[recipe.name].append(out)
                if len(batch_labels) == len(batches[0][0]):  # a smaller last batch is not timed
                    times[recipe.name].append(seconds)
                calls[recipe.name] += n_calls
                samples_evaluated[recipe.name] += evaluated
                if hit is not None:
                    cache_hits[recipe.name].append(hit)
                bar.update()

    baseline_latency = statistics.median(times[baseline])
    rows = []
    grids = settings.out / "grids"
    from fastsample.eval.report import save_image_grid

    for recipe in settings.recipes:
        generated = torch.cat(images[recipe.name])
        stats = _statistics(extractor, generated)
        latency = statistics.median(times[recipe.name])
        accuracy = float((classify(generated, feature_net) == labels).double().mean())
        row = {
            "config": recipe.name,
            "scheduler": recipe.scheduler,
            "steps": recipe.steps,
            "guidance": recipe.guidance,
            "cache": recipe.cache or "-",
            "kernels": "auto+dit" if recipe.kernels else "-",
            "latency_s": latency,
            "latency_ratio": latency / baseline_latency,
            "speedup": baseline_latency / latency,
            "nfe": samples_evaluated[recipe.name] / settings.samples,
            "denoiser_calls": calls[recipe.name] / len(batches),
            "fd": frechet_distance(stats.mu, stats.sigma, reference.mu, reference.sigma),
            "class_accuracy": accuracy,
            "saturation": mean_saturation(generated),
            "cache_hit_ratio": statistics.fmean(cache_hits[recipe.name]) if cache_hits[recipe.name] else "-",
        }
        rows.append(row)
        save_image_grid(
            image_grid_by_class(generated, labels),
            grids / f"{recipe.name}.png",
            num_columns=grid_columns(labels),
        )

    verdict = best_recipe(rows, baseline, settings.fd_tolerance)
    setup = {
        "command": command or "fastsample bench",
        "model": weights,
        "machine": f"{platform.platform()}, {os.cpu_count()} CPUs, device {device}",
        "versions": _versions(),
        "threads": torch.get_num_threads(),
        "samples per config": settings.samples,
        "batch size": settings.batch_size,
        "guidance scale": settings.guidance_scale,
        "seed": settings.seed,
        "timed batches per config": len(times[baseline]),
        "real data saturation": round(mean_saturation(real), 4),
        "FD floor (real vs real, same sample count)": round(fd_floor, 4),
        "reference": f"{settings.reference_samples} real procedural images (fastsample.zoo.data)",
    }
    results = _write(settings, rows, setup, verdict)
    results["batch_latencies_s"] = times
    results["wall_time_s"] = wall.elapsed()
    (settings.out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    report = settings.out / "report.md"
    report.write_text(report.read_text() + f"\nWall time of the whole run: {results['wall_time_s']:.0f} s.\n")
    logger.info("bench finished in %.1f s; report in %s", results["wall_time_s"], settings.out)
    return results


def _versions() -> str:
    import diffusers

    from fastsample import __version__

    return (
        f"python {platform.python_version()}, torch {torch.__version__}, diffusers {diffusers.__version__}, "
        f"fastsample {__version__}"
    )


def best_recipe(rows: list[dict[str, Any]], baseline: str, tolerance: float) -> str:
    """Sentences naming the fastest recipe whose FD is within ``tolerance`` (relative) of the baseline's,
    and the fastest recipe overall with its FD."""
    base = next(row for row in rows if row["config"] == baseline)
    others = [row for row in rows if row["config"] != baseline]
    if not others:
        return "Only the baseline was run."
    limit = base["fd"] * (1.0 + tolerance)
    matching = [row for row in others if row["fd"] <= limit]
    margin = f"({base['fd']:.4g}, tolerance +{100 * tolerance:.0f} %)"
    if matching:
        best = min(matching, key=lambda row: row["latency_s"])
        verdict = (
            f"Fastest recipe matching the baseline's FD {margin}: **{best['config']}** (FD {best['fd']:.4g}) "
            f"at {best['speedup']:.2f}x lower latency ({best['latency_s']:.3g} s vs "
            f"{base['latency_s']:.3g} s per batch)."
        )
    else:
        closest = min(others, key=lambda row: row["fd"])
        verdict = (
            f"No recipe matched the baseline's FD {margin}. Closest: **{closest['config']}** "
            f"(FD {closest['fd']:.4g}) at {closest['speedup']:.2f}x lower latency."
        )
    fastest = min(others, key=lambda row: row["latency_s"])
    return (
        f"{verdict} Fastest recipe overall: **{fastest['config']}**, {fastest['speedup']:.2f}x lower "
        f"latency at FD {fastest['fd']:.4g}."
    )


def _write(
    settings: BenchSettings, rows: list[dict[str, Any]], setup: dict[str, Any], verdict: str
) -> dict[str, Any]:
    from fastsample.eval.report import write_report

    paths = write_report(
        settings.out,
        rows,
        title="fastsample bench",
        quality_key="fd",
        latency_key="latency_s",
        label_key="config",
        setup=setup,
        name="report",
    )
    report = paths["markdown"]
    notes = [
        "",
        "## Verdict",
        "",
        verdict,
        "",
        "Columns: `latency_s` median seconds of one `pipe(...)` call on a batch (warm-up first, batches",
        "of all configs interleaved); `latency_ratio` = latency / baseline latency; `nfe` denoiser samples",
        "evaluated per image (a CFG step counts 2); `denoiser_calls` per pipeline call; `fd` in-domain",
        "Fréchet distance to the real reference (lower is better; compare with the FD floor above);",
        "`class_accuracy` feature-net classification vs requested labels; `saturation` mean HSV",
        "saturation. Image grids: `grids/` (one row per class).",
        "",
    ]
    report.write_text(report.read_text() + "\n".join(notes))
    json_path = paths["json"]
    results = json.loads(json_path.read_text())
    json_path.unlink()
    results.update(verdict=verdict, settings=settings.to_dict(), plot=paths["plot"].name)
    return results
