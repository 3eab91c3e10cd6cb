"""``fastsample tune``: find the cheapest recipe of a pipeline that keeps a paired-fidelity floor.

The search space (:class:`SearchSpace`) is solver × step grid × steps × guidance method (and its window) ×
feature cache × attention path × exact DiT savings; every point is a
:class:`~fastsample.recipe.SamplingRecipe`. Each candidate is judged against the pipeline's own *reference*:
its stored scheduler at ``reference_steps`` (100) with full CFG, from the same initial noise and the same
prompts or labels (per-image generators seeded ``seed + i``), by the median per-sample PSNR
(:func:`fastsample.eval.fidelity.psnr`) — the "same quality" test for acceleration.

Its *cost* does not depend on the clock: denoiser rows evaluated per image, each weighted by the fraction of
the transformer's cached units it actually computed (a CFG step is 2 rows, an Adaptive-Guidance step past the
switch 1; a FORA step that reuses every block ≈ 0). Wall-clock per image is measured beside it but never used
to rank, so a busy machine cannot change the choice.

The search is successive halving (Jamieson & Talwalkar 2016; Li et al., *Hyperband*, 2018): every candidate
runs on ``samples[0]`` images; the cheapest ``1/eta`` of those within ``margin_db`` of the floor (and the
Pareto front of cost against PSNR) go on to ``samples[1]`` images (the first images are reused, only the new
ones are generated), and so on; the last round confirms. The chosen recipe is the cheapest whose median PSNR
on the last round's images is at least the floor; :meth:`TuneResult.recipe` gives it with its provenance and
figures, for ``fs.optimize(pipe, recipe=...)``.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from fastsample.recipe import SamplingRecipe

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_SPACE",
    "DIFFUSERS_SPACE",
    "Evaluation",
    "SearchSpace",
    "TuneResult",
    "pareto_front",
    "tune",
]


_FIELDS = ("schedulers", "scheduler_options", "steps", "guidance", "caches", "attention", "dit_savings")


def _named_options(entry: Any, field_name: str) -> tuple[str, dict] | None:
    """``None``, ``name`` or ``(name, options)`` → ``None`` or ``(name, options)``."""
    if entry is None:
        return None
    if isinstance(entry, str):
        return entry, {}
    if (
        isinstance(entry, tuple)
        and len(entry) == 2
        and isinstance(entry[0], str)
        and isinstance(entry[1], dict)
    ):
        return entry[0], dict(entry[1])
    raise ValueError(
        f"SearchSpace.{field_name} entries must be None, a name or (name, options), got {entry!r}"
    )


@dataclass(frozen=True)
class SearchSpace:
    """The candidates: the Cartesian product of the fields (see :meth:`recipes`).

    ``schedulers`` are shortcuts of :mod:`fastsample.solvers.presets` (fastsample's presets and diffusers'
    baselines); ``scheduler_options`` are ``from_config`` overrides tried with each of them (the timestep
    grid: ``{}`` for the preset's own, ``{"grid": "spacing"}``, ``{"grid": "karras"}``; a scheduler that
    does not take an option's keys skips that entry); ``guidance`` entries are ``None`` (the pipeline's own
    CFG), names of :data:`fastsample.guidance.methods.METHODS` or ``(name, options)``, e.g.
    ``("window", {"end": 0.6})``; ``caches`` entries are ``None`` or ``(method, knobs)`` for
    :func:`fastsample.cache.enable_cache`.
    """

    schedulers: tuple[str, ...]
    steps: tuple[int, ...]
    scheduler_options: tuple[dict, ...] = ({},)
    guidance: tuple[Any, ...] = (None,)
    caches: tuple[tuple[str, dict] | None, ...] = (None,)
    attention: tuple[str | None, ...] = (None,)
    dit_savings: tuple[bool, ...] = (False,)

    def __post_init__(self) -> None:
        for name in _FIELDS:
            value = getattr(self, name)
            if not isinstance(value, tuple) or not value:
                raise ValueError(f"SearchSpace.{name} must be a non-empty tuple, got {value!r}")
        if not all(isinstance(options, dict) for options in self.scheduler_options):
            raise ValueError(
                f"SearchSpace.scheduler_options entries must be dicts, got {self.scheduler_options!r}"
            )
        for entry in self.guidance:
            _named_options(entry, "guidance")
        for entry in self.caches:
            if entry is not None and (isinstance(entry, str) or _named_options(entry, "caches") is None):
                raise ValueError(
                    f"SearchSpace.caches entries must be None or (method, knobs_dict), got {entry!r}"
                )

    @property
    def size(self) -> int:
        """Number of points (before dropping those that cannot apply to a pipeline or scheduler)."""
        return math.prod(len(getattr(self, name)) for name in _FIELDS)

    def recipes(self, pipe: Any = None) -> list[SamplingRecipe]:
        """Every point as a recipe (validated), without the scheduler options a scheduler does not take; with
        ``pipe``, also without the caches on a UNet, the DiT savings on anything but a
        ``DiTTransformer2DModel`` and the schedulers that have no preset for the pipeline's schedule family
        (DDIM and PNDM on a flow model)."""
        from fastsample.integration.adapters import get_adapter, resolve_denoiser
        from fastsample.solvers.presets import FAMILIES, family_of, find

        cache_applies = savings_apply = True
        families = FAMILIES
        if pipe is not None:
            cache_applies = get_adapter(pipe).denoiser_attr != "unet"
            savings_apply = type(resolve_denoiser(pipe)).__name__ == "DiTTransformer2DModel"
            families = (family_of(pipe.scheduler.config),)
        presets = {s: [_preset(find, s, f) for f in families] for s in self.schedulers}
        schedulers = tuple(s for s in self.schedulers if any(presets[s]))
        # (scheduler, options) pairs to try, decided once: a scheduler that does not take an option's keys,
        # or (with a pipeline) options that only rename the grid the preset already uses, are left out
        pairs = [
            (scheduler, options)
            for scheduler in schedulers
            for options in self.scheduler_options
            if all(_takes(p, options) for p in presets[scheduler] if p is not None)
            and not (
                pipe is not None
                and options
                and _same_grid(presets[scheduler][0], pipe.scheduler.config, options)
            )
        ]
        out = []
        for (scheduler, options), steps, guidance, cache, attention, savings in itertools.product(
            pairs, self.steps, self.guidance, self.caches, self.attention, self.dit_savings
        ):
            if (cache is not None and not cache_applies) or (savings and not savings_apply):
                continue
            guidance = _named_options(guidance, "guidance")
            out.append(
                SamplingRecipe(
                    scheduler=scheduler,
                    num_inference_steps=steps,
                    scheduler_options=dict(options),
                    guidance=None if guidance is None else guidance[0],
                    guidance_options={} if guidance is None else guidance[1],
                    cache=None if cache is None else cache[0],
                    cache_options={} if cache is None else dict(cache[1]),
                    attention=attention,
                    dit_savings=savings,
                )
            )
        return out


def _preset(find: Any, shortcut: str, family: str) -> Any:
    try:
        return find(shortcut, family, baselines=True)
    except ValueError:
        return None


def _same_grid(preset: Any, config: Any, options: dict) -> bool:
    """Whether ``options`` only renames the grid the preset already uses on ``config`` (same σ at 10 steps,
    configs equal but for ``grid``)."""
    plain, varied = preset.build(config), preset.build(config, **options)
    plain.set_timesteps(10)
    varied.set_timesteps(10)

    def rest(scheduler: Any) -> dict:
        return {k: v for k, v in dict(scheduler.config).items() if k not in ("grid", "_use_default_values")}

    same_config = rest(plain) == rest(varied)
    return same_config and torch.equal(torch.as_tensor(plain.sigmas), torch.as_tensor(varied.sigmas))


def _takes(preset: Any, options: dict) -> bool:
    """Whether the preset's scheduler class takes every key of ``options`` (its ``__init__`` signature)."""
    import inspect

    return set(options) <= set(inspect.signature(preset.scheduler_class().__init__).parameters)


#: the default search: fastsample's solvers (on their own grid, the schedule's spacing and Karras) and
#: diffusers' baselines, few steps, CFG / Adaptive Guidance / a guidance window, no cache or FORA(2)
DEFAULT_SPACE = SearchSpace(
    schedulers=("dpm++2m", "unipc", "ddim", "euler", "flow-euler", "ghvb", "hb", "dpm++2m-hb"),
    steps=(5, 6, 8, 10, 12, 15, 20),
    scheduler_options=({}, {"grid": "spacing"}, {"grid": "karras"}),
    guidance=(None, "ag", ("window", {"end": 0.6})),
    caches=(None, ("fora", {"interval": 2})),
)
#: the diffusers-only subspace (the best a diffusers user already has, without caches)
DIFFUSERS_SPACE = SearchSpace(
    schedulers=("dpm++2m", "dpm++2m-karras", "unipc", "deis", "ddim", "euler", "pndm", "flow-euler"),
    steps=(5, 6, 8, 10, 12, 15, 20),
)


@dataclass
class Evaluation:
    """A recipe measured on the first ``len(psnr)`` images: per-image PSNR to the reference (dB), the
    clock-free ``cost`` (denoiser rows × fraction of units computed, per image) and wall-clock per image."""

    recipe: SamplingRecipe
    psnr: np.ndarray
    cost: float
    seconds_per_image: float

    @property
    def samples(self) -> int:
        return int(len(self.psnr))

    @property
    def median_psnr(self) -> float:
        return float(np.median(self.psnr))

    def psnr_interval(self, n_boot: int = 1000, seed: int = 0) -> Any:
        """Median PSNR with its 95 % percentile-bootstrap interval
        (:func:`fastsample.eval.bootstrap.bootstrap_interval`)."""
        from fastsample.eval.bootstrap import bootstrap_interval

        finite = np.minimum(self.psnr, 100.0)  # identical images give +inf; cap for the bootstrap
        return bootstrap_interval(finite, np.median, n_boot=n_boot, seed=seed)


def pareto_front(evaluations: Sequence[Evaluation]) -> list[Evaluation]:
    """The evaluations no other one beats on both axes (lower cost and higher median PSNR), by cost."""
    front: list[Evaluation] = []
    for item in sorted(evaluations, key=lambda e: (e.cost, -e.median_psnr)):
        if not front or item.median_psnr > front[-1].median_psnr:
            front.append(item)
    return front


@dataclass
class TuneResult:
    """What :func:`tune` found: every round's evaluations, the final front and the chosen one."""

    floor_db: float
    rounds: list[list[Evaluation]]
    chosen: Evaluation | None
    reference: str
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def final(self) -> list[Evaluation]:
        return self.rounds[-1]

    @property
    def front(self) -> list[Evaluation]:
        """Pareto front of the confirmation round."""
        return pareto_front(self.final)

    def recipe(self) -> SamplingRecipe:
        """The chosen recipe with its provenance and figures; a ``ValueError`` when nothing met the floor."""
        if self.chosen is None:
            best = max(self.final, key=lambda e: e.median_psnr)
            raise ValueError(
                f"no candidate reached the floor of {self.floor_db:g} dB (best: {best.recipe.name} at "
                f"{best.median_psnr:.2f} dB); lower --floor or add more steps to the search space"
            )
        chosen = self.chosen
        interval = chosen.psnr_interval()
        figures = {
            "psnr_db": round(chosen.median_psnr, 3),
            "psnr_db_interval": [round(interval.low, 3), round(interval.high, 3)],
            "floor_db": self.floor_db,
            "samples": chosen.samples,
            "cost": round(chosen.cost, 4),
            "seconds_per_image": round(chosen.seconds_per_image, 5),
            "reference": self.reference,
        }
        return SamplingRecipe(**{**_fields(chosen.recipe), "provenance": self.provenance, "figures": figures})

    def table(self) -> str:
        """Markdown: the confirmation round, cheapest first, the front and the choice marked."""
        front = {id(e) for e in self.front}
        lines = [
            f"Reference: {self.reference}. Floor: median paired PSNR ≥ {self.floor_db:g} dB on "
            f"{self.final[0].samples if self.final else 0} images. Cost: denoiser rows × fraction of units "
            "computed, per image (clock-free).",
            "",
            "| recipe | cost | median PSNR (dB) [95 %] | s / image | |",
            "|---|---|---|---|---|",
        ]
        for item in sorted(self.final, key=lambda e: e.cost):
            mark = "chosen" if item is self.chosen else ("front" if id(item) in front else "")
            lines.append(
                f"| {item.recipe.name} | {item.cost:.2f} | {item.psnr_interval()} | "
                f"{item.seconds_per_image:.4f} | {mark} |"
            )
        searched = " → ".join(f"{len(r)} @ {r[0].samples} images" for r in self.rounds if r)
        lines += ["", f"Successive halving: {searched}."]
        return "\n".join(lines)

    def plot(self, path: Any) -> None:
        """Cost against median PSNR of the first round (grey), the confirmation round (blue), the front (line)
        and the floor; log cost axis."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4.5))
        first = self.rounds[0]
        ax.scatter([e.cost for e in first], [e.median_psnr for e in first], s=12, c="0.7", label="searched")
        ax.scatter(
            [e.cost for e in self.final],
            [e.median_psnr for e in self.final],
            s=22,
            c="tab:blue",
            label="confirmed",
        )
        front = self.front
        ax.plot([e.cost for e in front], [e.median_psnr for e in front], c="tab:blue", lw=1)
        if self.chosen is not None:
            ax.scatter(
                [self.chosen.cost], [self.chosen.median_psnr], s=80, facecolors="none", edgecolors="red"
            )
            ax.annotate(self.chosen.recipe.name, (self.chosen.cost, self.chosen.median_psnr), fontsize=8)
        ax.axhline(self.floor_db, ls="--", c="red", lw=0.8, label=f"floor {self.floor_db:g} dB")
        ax.set_xscale("log")
        ax.set_xlabel("cost (denoiser rows × units computed, per image)")
        ax.set_ylabel("median paired PSNR to the reference (dB)")
        ax.set_title("fastsample tune: cost against fidelity")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)


def _fields(recipe: SamplingRecipe) -> dict[str, Any]:
    return {name: getattr(recipe, name) for name in recipe.__dataclass_fields__}


class _Generator:
    """Images of the pipeline for image indices ``[start, stop)``: image ``i`` from its own generator
    (``seed + i``) and condition ``conditions[i % len]`` (``fastsample.eval.inputs.generate_image_batches``
    on the slice); returns float images in [0, 1] and the cost per image."""

    def __init__(self, pipe: Any, conditions: dict[str, list], seed: int, batch_size: int, call_kwargs: dict):
        self.pipe, self.conditions, self.seed = pipe, conditions, seed
        self.batch_size, self.call_kwargs = batch_size, call_kwargs

    def __call__(
        self, start: int, stop: int, cache_handle: Any = None, **kwargs: Any
    ) -> tuple[torch.Tensor, float]:
        from fastsample.eval.inputs import generate_image_batches
        from fastsample.integration.adapters import denoiser_entry
        from fastsample.integration.measure import NFECounter

        key, values = next(iter(self.conditions.items()))
        shifted = [values[i % len(values)] for i in range(start, stop)]  # image i of the slice is start + i
        batches = generate_image_batches(
            self.pipe,
            stop - start,
            **{"prompts" if key == "prompt" else "class_labels": shifted},
            batch_size=self.batch_size,
            seed=self.seed + start,
            quantize=False,
            progress=False,
            **self.call_kwargs,
            **kwargs,
        )
        counter = NFECounter(denoiser_entry(self.pipe))  # the rows really run (after any CFG slicing)
        images, rows = [], 0.0
        try:
            for batch in batches:  # each batch is one pipeline call
                images.append(batch.float() / 255.0 if batch.dtype == torch.uint8 else batch.float())
                rows += _computed_rows(cache_handle, counter.samples)
                counter.reset()
        finally:
            counter.remove()
        return torch.cat(images), rows / (stop - start)


def _computed_rows(cache_handle: Any, denoiser_rows: int) -> float:
    """Rows the denoiser ran in the last call, each weighted by its fraction of units computed."""
    if cache_handle is None:
        return float(denoiser_rows)
    stats = cache_handle.stats()
    spent = 0.0
    for ctx, computed in stats.computed.items():
        rows = stats.rows.get(ctx)
        fraction = computed.mean(axis=1) if computed.size else np.zeros(0)
        spent += float((fraction * (rows if rows is not None else 1)).sum())
    return spent


def tune(
    pipe: Any,
    *,
    prompts: Sequence[str] | None = None,
    class_labels: Sequence[int] | None = None,
    floor_db: float = 30.0,
    space: SearchSpace = DEFAULT_SPACE,
    samples: Sequence[int] = (4, 12, 32),
    eta: int = 3,
    margin_db: float = 1.0,
    reference_steps: int = 100,
    guidance_scale: float | None = None,
    call_kwargs: dict[str, Any] | None = None,
    seed: int = 0,
    batch_size: int = 8,
    progress: bool = True,
) -> TuneResult:
    """Successive-halving search of ``space`` on ``pipe`` for the cheapest recipe with median paired PSNR
    ≥ ``floor_db`` (module docstring). The pipeline is restored after every candidate.

    Args:
        pipe: a supported pipeline (its own scheduler, at ``reference_steps``, gives the reference).
        prompts: the prompts of a text-to-image pipeline, cycled over the images (or ``class_labels``).
        class_labels: the labels of a class-conditional pipeline, cycled over the images (exactly one of the
            two).
        floor_db: the quality floor, median PSNR to the reference (dB).
        space: the candidates (:data:`DEFAULT_SPACE`; :data:`DIFFUSERS_SPACE` for diffusers-only).
        samples: images per round, increasing (the last round confirms).
        eta: keep the cheapest ``1/eta`` of the candidates near the floor after each round.
        margin_db: how far below the floor a candidate may be and still go on before the last round.
        guidance_scale: passed to every call (``None``: the pipeline's default).
        call_kwargs: more keyword arguments of every pipeline call (e.g. ``negative_prompt``,
            ``true_cfg_scale``); not ``generator``, ``output_type``, ``num_inference_steps``, conditions.
        seed: image ``i`` uses a generator seeded ``seed + i``.
    """
    from tqdm.auto import tqdm

    from fastsample.eval.fidelity import psnr
    from fastsample.integration.measure import Stopwatch
    from fastsample.optimize import optimize

    if (prompts is None) == (class_labels is None):
        raise ValueError(
            "pass exactly one of `prompts` (text-to-image) or `class_labels` (class-conditional)"
        )
    conditions = {"prompt": list(prompts)} if prompts is not None else {"class_labels": list(class_labels)}
    if not next(iter(conditions.values())):
        raise ValueError("`prompts` / `class_labels` must not be empty")
    samples = tuple(samples)
    if (
        not samples
        or any(not isinstance(n, int) or n < 1 for n in samples)
        or list(samples) != sorted(set(samples))
    ):
        raise ValueError(f"`samples` must be strictly increasing positive ints, got {samples!r}")
    if not isinstance(eta, int) or eta < 2:
        raise ValueError(f"`eta` must be an int >= 2, got {eta!r}")
    if not math.isfinite(floor_db):
        raise ValueError(f"`floor_db` must be finite, got {floor_db!r}")
    if not isinstance(reference_steps, int) or reference_steps < 1:
        raise ValueError(f"`reference_steps` must be an int >= 1, got {reference_steps!r}")
    candidates = space.recipes(pipe)
    if not candidates:
        raise ValueError("the search space has no candidate that applies to this pipeline")
    extra = dict(call_kwargs or {})
    reserved = {"generator", "output_type", "num_inference_steps", "prompt", "class_labels", "latents"}
    if reserved & set(extra):
        raise ValueError(f"`call_kwargs` must not set {sorted(reserved & set(extra))}: tune sets them")
    if guidance_scale is not None:
        extra["guidance_scale"] = guidance_scale
    generate = _Generator(pipe, conditions, seed, batch_size, extra)

    reference_name = f"{type(pipe.scheduler).__name__} {reference_steps} steps, full CFG"
    reference = torch.zeros(0)
    images: dict[int, torch.Tensor] = {}  # candidate index -> images so far
    costs: dict[int, list[float]] = {}
    seconds: dict[int, float] = {}
    rounds: list[list[Evaluation]] = []
    alive = list(range(len(candidates)))
    bar = tqdm(total=len(candidates), desc="fastsample tune", unit="recipe", disable=not progress)
    try:
        for round_index, count in enumerate(samples):
            have = reference.shape[0]
            if count > have:
                bar.set_postfix_str(f"reference {have}→{count} images")
                extra, _ = generate(have, count, num_inference_steps=reference_steps)
                reference = torch.cat([reference, extra]) if have else extra
            evaluations = []
            if round_index:
                bar.reset(total=len(alive))
            for index in alive:
                recipe = candidates[index]
                bar.set_postfix_str(f"{recipe.name} ({count} images)")
                done = images[index].shape[0] if index in images else 0
                if count > done:
                    watch = Stopwatch().start()
                    with optimize(pipe, **recipe.optimize_arguments(pipe)) as handle:
                        new, cost = generate(done, count, handle.cache, **recipe.call_kwargs)
                    elapsed = watch.stop()
                    images[index] = torch.cat([images[index], new]) if done else new
                    costs.setdefault(index, []).append(cost * (count - done))
                    seconds[index] = seconds.get(index, 0.0) + elapsed
                values = psnr(images[index][:count], reference[:count], value_range=(0, 1)).numpy()
                evaluations.append(
                    Evaluation(
                        recipe, values, sum(costs[index]) / count, seconds[index] / images[index].shape[0]
                    )
                )
                bar.update(1)
            rounds.append(evaluations)
            if round_index == len(samples) - 1:
                break
            alive = _survivors(evaluations, alive, floor_db - margin_db, eta)
            logger.info(
                "tune round %d: %d candidates go on to %d images",
                round_index + 1,
                len(alive),
                samples[round_index + 1],
            )
    finally:
        bar.close()
    passing = [e for e in rounds[-1] if e.median_psnr >= floor_db]
    chosen = min(passing, key=lambda e: (e.cost, -e.median_psnr)) if passing else None
    provenance = SamplingRecipe.provenance_for(
        pipe,
        guidance_scale=guidance_scale if guidance_scale is not None else _default_guidance(pipe),
        reference=reference_name,
        conditions={k: list(v) for k, v in conditions.items()},
        seed=seed,
    )
    return TuneResult(
        floor_db=floor_db, rounds=rounds, chosen=chosen, reference=reference_name, provenance=provenance
    )


def _survivors(evaluations: list[Evaluation], alive: list[int], threshold: float, eta: int) -> list[int]:
    """The cheapest ``ceil(n / eta)`` evaluations at or above ``threshold`` plus the Pareto front."""
    position = {id(e): index for e, index in zip(evaluations, alive)}
    near = sorted((e for e in evaluations if e.median_psnr >= threshold), key=lambda e: e.cost)
    keep = near[: max(1, math.ceil(len(evaluations) / eta))] + pareto_front(evaluations)
    return sorted({position[id(e)] for e in keep})


def _default_guidance(pipe: Any) -> float | None:
    import inspect

    parameter = inspect.signature(type(pipe).__call__).parameters.get("guidance_scale")
    return None if parameter is None else parameter.default
