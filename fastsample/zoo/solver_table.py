"""The solver table: every scheduler against the exact Gaussian-mixture oracle
(docs/design/solvers.md#the-oracle-solver-table).

For each scheduler (diffusers' multistep schedulers on the Stable Diffusion 1.5 schedule, the same on SD3's
flow-matching schedule, plus fastsample's own schedulers), at each NFE and guidance scale w, it reports the
median per-sample error against the exact probability-flow ODE solution, the blow-up rate (error > 0.5),
the magnitude ratio and the mode-flip rate (see :mod:`fastsample.zoo.oracle`).

Rows come from :class:`SolverEntry` objects. Other modules contribute rows by defining
``benchmark_entries() -> list[SolverEntry]``; :func:`default_entries` appends those of
``fastsample.solvers`` when it defines that function. ``make`` receives the base scheduler config of the
entry's family (:data:`SD15_SCHEDULER_CONFIG` for "vp", :data:`SD3_SCHEDULER_CONFIG` for "flow") and must
return a fresh scheduler, for example ``lambda config: MyScheduler.from_config(config, order=2.5)``.

w = 0 is the unconditional model ("unguided" in docs/design/solvers.md#reading-the-table), w = 1 the
conditional one (a single Gaussian per class in the default mixture, so every solver finds it easy), w > 1
classifier-free guidance.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import functools
import logging
import math
import os
import platform
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from fastsample.integration.measure import Stopwatch
from fastsample.solvers.presets import SolverEntry
from fastsample.zoo.gmm import GaussianMixture
from fastsample.zoo.oracle import OracleMetrics, OracleProblem, ReferenceCache, evaluate

logger = logging.getLogger(__name__)

# Stable Diffusion 1.5's scheduler_config.json (PNDM with skip_prk_steps); every VP row starts from it.
SD15_SCHEDULER_CONFIG: dict = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "trained_betas": None,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "clip_sample": False,
}
# Stable Diffusion 3's scheduler_config.json (FlowMatchEulerDiscreteScheduler, shift 3).
SD3_SCHEDULER_CONFIG: dict = {"num_train_timesteps": 1000, "shift": 3.0}
BASE_CONFIGS = {"vp": SD15_SCHEDULER_CONFIG, "flow": SD3_SCHEDULER_CONFIG}

NFE_VALUES = (5, 8, 10, 20)
GUIDANCE_SCALES = (0.0, 1.0, 7.5, 15.0)
QUICK_NFE_VALUES = (5, 10)
QUICK_GUIDANCE_SCALES = (0.0, 7.5)
QUICK_SAMPLES = 200
QUICK_ROWS = ("Euler", "PNDM/PLMS", "DPM++2M Karras", "DDIM", "FlowMatch Euler")
DEFAULT_MIXTURE_SEED = 0
# Cells whose spread over random mixtures --sensitivity reports (the headline figures of
# docs/design/solvers.md#reading-the-table).
HEADLINE_CELLS = (
    ("PNDM/PLMS", 10, 7.5),
    ("PNDM/PLMS", 8, 15.0),
    ("PNDM/PLMS", 5, 0.0),
    ("DPM++2M Karras", 10, 0.0),
    ("DPM++2M Karras", 5, 7.5),
    ("Euler", 10, 0.0),
)

# The first recorded run (docs/design/solvers.md#reading-the-table; SD1.5 scaled_linear, d=8, K=5, std 0.15):
# (name, nfe, w) -> (median, blow-up rate).
# "unguided" there is the unconditional model, w = 0 here. Used only for the comparison table.
# fmt: off
_NOTES_COLUMNS = [(5, 0.0), (10, 0.0), (20, 0.0), (5, 7.5), (10, 7.5), (20, 7.5), (8, 15.0), (10, 15.0)]
_N = None  # the notes print a blow-up rate only where there is a notable one
_NOTES_ROWS = {
    "Euler": [(.101, _N), (.066, _N), (.047, _N), (.098, _N), (.082, _N), (.061, _N), (.105, _N), (.098, _N)],
    "PNDM/PLMS": [(.142, _N), (.047, _N), (.016, _N), (5.77, .99), (.509, .51), (.022, _N), (48.7, 1.0),
                  (27.2, .998)],
    "DPM++2M": [(.106, _N), (.086, _N), (.064, _N), (.156, _N), (.123, _N), (.091, _N), (.173, _N),
                (.159, _N)],
    "DPM++2M Karras": [(.118, _N), (.020, _N), (.0027, _N), (6.71, .93), (.065, _N), (.012, _N), (.182, _N),
                       (.094, _N)],
    "UniPC-2 bh2": [(.106, _N), (.087, _N), (.064, _N), (.148, .02), (.121, _N), (.090, _N), (.167, _N),
                    (.154, _N)],
    "DEIS-2": [(.083, _N), (.063, _N), (.017, _N), (.114, _N), (.089, _N), (.024, _N), (.125, _N),
               (.114, _N)],
}
# fmt: on
NOTES_5_2: dict[tuple[str, int, float], tuple[float, float | None]] = {
    (name, nfe, w): value
    for name, values in _NOTES_ROWS.items()
    for (nfe, w), value in zip(_NOTES_COLUMNS, values)
}


def _from_config(class_name: str, config: dict, **overrides):
    import diffusers

    if "flow_shift" in overrides:  # DPM/UniPC spell FlowMatch's `shift` as `flow_shift`
        config = {k: v for k, v in config.items() if k != "shift"}
    return getattr(diffusers, class_name).from_config(config, **overrides)


def _diffusers(name: str, family: str, class_name: str, **overrides) -> SolverEntry:
    return SolverEntry(name, family, functools.partial(_from_config, class_name, **overrides), "diffusers")


_FLOW = {"use_flow_sigmas": True, "prediction_type": "flow_prediction", "flow_shift": 3.0}
DIFFUSERS_ENTRIES: tuple[SolverEntry, ...] = (
    _diffusers("Euler", "vp", "EulerDiscreteScheduler"),
    _diffusers("PNDM/PLMS", "vp", "PNDMScheduler", skip_prk_steps=True),
    _diffusers("DPM++2M", "vp", "DPMSolverMultistepScheduler"),
    _diffusers("DPM++2M Karras", "vp", "DPMSolverMultistepScheduler", use_karras_sigmas=True),
    _diffusers("UniPC-2 bh2", "vp", "UniPCMultistepScheduler"),
    _diffusers("DEIS-2", "vp", "DEISMultistepScheduler"),
    _diffusers("DDIM", "vp", "DDIMScheduler"),
    _diffusers("FlowMatch Euler", "flow", "FlowMatchEulerDiscreteScheduler"),
    _diffusers("DPM++2M flow", "flow", "DPMSolverMultistepScheduler", **_FLOW),
    _diffusers("UniPC-2 bh2 flow", "flow", "UniPCMultistepScheduler", **_FLOW),
)


def default_entries() -> list[SolverEntry]:
    """diffusers' rows, then ``fastsample.solvers.benchmark_entries()`` if that function exists."""
    entries = list(DIFFUSERS_ENTRIES)
    import fastsample.solvers as solvers

    extra = getattr(solvers, "benchmark_entries", None)
    if extra is not None:
        for entry in extra():
            if not isinstance(entry, SolverEntry):
                raise TypeError(
                    f"fastsample.solvers.benchmark_entries() must return SolverEntry, got {entry!r}"
                )
            entries.append(dataclasses.replace(entry, source=entry.source or "fastsample"))
    return entries


# ---------------------------------------------------------------------------------------------- running
@dataclass
class Cell:
    """One (solver, NFE, w) measurement; ``metrics`` is None and ``note`` says why when it could not run."""

    entry: SolverEntry
    nfe: int
    guidance_scale: float
    metrics: OracleMetrics | None = None
    note: str = ""


@dataclass
class SolverTable:
    """All cells of one run, with what is needed to describe it."""

    cells: list[Cell]
    entries: list[SolverEntry]
    nfe_values: tuple[int, ...]
    guidance_scales: tuple[float, ...]
    problem: OracleProblem
    seed: int
    mixture_seed: int | None
    labels: str
    num_references: int = 0
    elapsed_s: float = 0.0
    extra: dict = field(default_factory=dict)

    def cell(self, name: str, nfe: int, guidance_scale: float) -> Cell:
        for c in self.cells:
            if c.entry.name == name and c.nfe == nfe and c.guidance_scale == guidance_scale:
                return c
        raise KeyError((name, nfe, guidance_scale))


def run_solver_table(
    entries: Sequence[SolverEntry] | None = None,
    *,
    nfe_values: Sequence[int] = NFE_VALUES,
    guidance_scales: Sequence[float] = GUIDANCE_SCALES,
    num_samples: int = 1000,
    seed: int = 0,
    mixture: GaussianMixture | None = None,
    mixture_seed: int = DEFAULT_MIXTURE_SEED,
    labels: str = "uniform",
    progress: bool = True,
) -> SolverTable:
    """Measure every entry at every (NFE, w). References are cached per (family, start, end, scale, w).

    ``mixture`` defaults to ``GaussianMixture.random(seed=mixture_seed)`` (d=8, K=5, std 0.15); the
    noise and labels (``labels``: "uniform" over classes or drawn from the "prior" p(y)) come from ``seed``.
    """

    from tqdm.auto import tqdm

    entries = default_entries() if entries is None else list(entries)
    if not entries:
        raise ValueError("`entries` is empty")
    if not nfe_values or any(int(n) < 1 for n in nfe_values):
        raise ValueError(f"`nfe_values` must be positive integers, got {nfe_values}")
    if not guidance_scales or any(not math.isfinite(w) for w in guidance_scales):
        raise ValueError(f"`guidance_scales` must be finite numbers, got {guidance_scales}")
    if mixture is None:
        mixture = GaussianMixture.random(seed=mixture_seed)
    else:
        mixture_seed = None
    problem = OracleProblem.create(mixture, num_samples, seed, labels=labels)
    cache = ReferenceCache(problem)
    jobs = [(e, int(n), float(w)) for e in entries for w in guidance_scales for n in nfe_values]
    cells = []
    watch = Stopwatch().start()
    for entry, nfe, w in tqdm(jobs, desc="solver table", unit="cell", disable=not progress):
        scheduler = entry.make(dict(BASE_CONFIGS[entry.family]))
        try:
            metrics = evaluate(
                scheduler, problem, family=entry.family, nfe=nfe, guidance_scale=w, cache=cache
            )
        except ValueError as err:  # e.g. no step count gives exactly this NFE
            logger.warning("%s at NFE %d, w=%g: %s", entry.name, nfe, w, err)
            cells.append(Cell(entry, nfe, w, None, str(err)))
            continue
        cells.append(Cell(entry, nfe, w, metrics))
    return SolverTable(
        cells,
        entries,
        tuple(int(n) for n in nfe_values),
        tuple(float(w) for w in guidance_scales),
        problem,
        seed,
        mixture_seed,
        labels,
        num_references=len(cache.solutions),
        elapsed_s=watch.elapsed(),
    )


def run_mixture_sensitivity(
    mixture_seeds: Sequence[int],
    cells: Sequence[tuple[str, int, float]] = HEADLINE_CELLS,
    *,
    num_samples: int = 1000,
    seed: int = 0,
    labels: str = "uniform",
    progress: bool = True,
) -> dict[tuple[str, int, float], list[OracleMetrics]]:
    """The headline cells on several random mixtures (same d, K, std): how much the mixture draw matters."""
    from tqdm.auto import tqdm

    by_name = {e.name: e for e in DIFFUSERS_ENTRIES}
    unknown = [name for name, _, _ in cells if name not in by_name]
    if unknown or not mixture_seeds:
        raise ValueError(f"need mixture seeds and diffusers row names; unknown rows: {unknown}")
    results: dict[tuple[str, int, float], list[OracleMetrics]] = {cell: [] for cell in cells}
    jobs = [(m, cell) for m in mixture_seeds for cell in cells]
    problems: dict[int, tuple[OracleProblem, ReferenceCache]] = {}
    for mixture_seed, (name, nfe, w) in tqdm(jobs, desc="mixture sensitivity", disable=not progress):
        if mixture_seed not in problems:
            problem = OracleProblem.create(
                GaussianMixture.random(seed=mixture_seed), num_samples, seed, labels
            )
            problems[mixture_seed] = (problem, ReferenceCache(problem))
        problem, cache = problems[mixture_seed]
        entry = by_name[name]
        scheduler = entry.make(dict(BASE_CONFIGS[entry.family]))
        metrics = evaluate(scheduler, problem, family=entry.family, nfe=nfe, guidance_scale=w, cache=cache)
        results[(name, nfe, float(w))].append(metrics)
    return results


# ---------------------------------------------------------------------------------------------- formatting
def _fmt(x: float) -> str:
    if not math.isfinite(x):
        return "inf"
    return f"{x:.3g}" if abs(x) >= 1e-3 else f"{x:.2e}"


def _pct(r: float) -> str:
    return f"{100 * r:.1f}%"


def _w(w: float) -> str:
    return f"{w:g}"


def _notes_cell(median: float, rate: float | None) -> str:
    return _fmt(median) if rate is None else f"{_fmt(median)} ({_pct(rate)})"


def _error_cell(cell: Cell) -> str:
    if cell.metrics is None:
        return "n/a"
    text = f"{_fmt(cell.metrics.median_error)} ({_pct(cell.metrics.blowup_rate)})"
    return f"**{text}**" if cell.metrics.blowup_rate >= 0.05 else text


def _stats_cell(cell: Cell) -> str:
    if cell.metrics is None:
        return "n/a"
    return f"{_fmt(cell.metrics.magnitude_ratio)} / {_pct(cell.metrics.mode_flip_rate)}"


def _grid(table: SolverTable, family: str, render: Callable[[Cell], str]) -> list[str]:
    rows = [e for e in table.entries if e.family == family]
    if not rows:
        return []
    cols = [(w, n) for w in table.guidance_scales for n in table.nfe_values]
    lines = [
        "| solver | source | " + " | ".join(f"w={_w(w)} NFE {n}" for w, n in cols) + " |",
        "|---|---|" + "---|" * len(cols),
    ]
    for e in rows:
        cells = [render(table.cell(e.name, n, w)) for w, n in cols]
        lines.append(f"| {e.name} | {e.source} | " + " | ".join(cells) + " |")
    return lines


def _comparison(table: SolverTable) -> list[str]:
    lines = []
    for (name, nfe, w), (median, rate) in NOTES_5_2.items():
        try:
            cell = table.cell(name, nfe, float(w))
        except KeyError:
            continue
        ours = _error_cell(cell).strip("*")
        lines.append(f"| {name} | {nfe} | {_w(w)} | {_notes_cell(median, rate)} | {ours} |")
    if not lines:
        return []
    return [
        "| solver | NFE | w | docs/design/solvers.md#reading-the-table | this run |",
        "|---|---|---|---|---|",
        *lines,
    ]


def environment_lines() -> list[str]:
    """Versions and machine, one markdown bullet each."""
    import diffusers
    import numpy
    import scipy
    import torch

    import fastsample

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    return [
        f"- versions: fastsample {fastsample.__version__}, diffusers {diffusers.__version__}, torch "
        f"{torch.__version__}, numpy {numpy.__version__}, scipy {scipy.__version__}, Python "
        f"{platform.python_version()}",
        f"- machine: {platform.platform()}, {cpu}, {os.cpu_count()} logical CPUs (shared), no GPU used",
    ]


def format_markdown(table: SolverTable, command: str | None = None) -> str:
    """The report: header (command, versions, machine, problem), error and magnitude / mode-flip tables."""
    mix = table.problem.mixture
    stds = sorted({round(float(s), 6) for s in mix.stds.reshape(-1)})
    mixture_desc = (
        f"d={mix.dim}, K={mix.num_components} (one class per component), std {stds}, means N(0, I), "
        f"Dirichlet(1) weights {[round(float(w), 3) for w in mix.weights]}"
        + (f", mixture seed {table.mixture_seed}" if table.mixture_seed is not None else " (custom mixture)")
    )
    out = [
        "# Solver table: schedulers against the exact Gaussian-mixture oracle",
        "",
        f"- command: `{command or 'python benchmarks/solver_table.py'}`",
        f"- date: {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}, "
        f"wall time {table.elapsed_s:.0f} s, {table.num_references} distinct reference solves",
        *environment_lines(),
        f"- problem: {mixture_desc}; {table.problem.num_samples} samples, noise/label seed {table.seed}, "
        + ("labels uniform over classes" if table.labels == "uniform" else "labels drawn from p(y)"),
        "- VP rows: Stable Diffusion 1.5 schedule (scaled_linear 0.00085-0.012, steps_offset=1, "
        "set_alpha_to_one=False) with each class's own defaults; flow rows: SD3 (shift 3; DPM/UniPC with "
        "use_flow_sigmas, flow_prediction, flow_shift=3)",
        "- reference: probability-flow ODE (VP: dx̄/dσ̄ = ε̂_w, flow: dx/ds = v̂_w) with scipy DOP853, "
        "rtol = atol = 1e-10, from each scheduler's own start to its own end, same guided denoiser",
        "- NFE = model calls (one batched cond+uncond call = 1); num_inference_steps is chosen so that the "
        "call count equals the NFE (PNDM/PLMS: N+1 calls for N steps, so N = NFE-1)",
        '- w = 0: unconditional ("unguided" in docs/design/solvers.md#reading-the-table); '
        "w = 1: conditional (one Gaussian per class);"
        " w > 1: classifier-free guidance u + w(c - u)",
        "",
    ]
    for family, title in (
        ("vp", "VP: Stable Diffusion 1.5 schedule"),
        ("flow", "Flow matching: SD3 schedule"),
    ):
        grid = _grid(table, family, _error_cell)
        if not grid:
            continue
        out += [
            f"## {title}: median error (blow-up rate)",
            "",
            "Per-sample error e_i = ‖x̄_i − x̄_ref,i‖/√d (x for flow); blow-up = e_i > 0.5; bold: ≥ 5% "
            "blow-ups.",
            "",
            *grid,
            "",
            f"## {title}: magnitude ratio / mode-flip rate",
            "",
            "max|x̄| / max|x̄_ref| over all samples; mode flip = the nearest component mean differs from the "
            "reference's.",
            "",
            *_grid(table, family, _stats_cell),
            "",
        ]
    comparison = _comparison(table)
    if comparison:
        out += [
            "## Comparison with docs/design/solvers.md#reading-the-table",
            "",
            'The notes\' "unguided" columns are the unconditional model (w = 0 here); at w = 1 each class '
            "is one Gaussian, whose exact path x̄ = μ + c·√(s² + σ̄²) every solver follows closely. Labels "
            "uniform over classes reproduce the notes' guided medians (`--labels prior` gives ~10% lower "
            "ones). Cells at the edge of stability (PLMS at NFE 10, w = 7.5) depend on the mixture draw far "
            "more than on sampling noise: see the sensitivity table when present.",
            "",
            *comparison,
            "",
        ]
    sensitivity = table.extra.get("sensitivity")
    if sensitivity:
        seeds = table.extra["sensitivity_seeds"]
        out += [
            "## Sensitivity to the mixture draw",
            "",
            "The same cells on other random mixtures (same d, K, std; means and weights redrawn with "
            "`GaussianMixture.random(seed=...)`); median error (blow-up rate).",
            "",
            "| solver | NFE | w | "
            + " | ".join(f"mixture seed {m}" for m in seeds)
            + " | docs/design/solvers.md#reading-the-table |",
            "|---|---|---|" + "---|" * (len(seeds) + 1),
        ]
        for (name, nfe, w), metrics in sensitivity.items():
            ours = [f"{_fmt(m.median_error)} ({_pct(m.blowup_rate)})" for m in metrics]
            notes_value = NOTES_5_2.get((name, nfe, w))
            ref = _notes_cell(*notes_value) if notes_value else "-"
            out.append(f"| {name} | {nfe} | {_w(w)} | " + " | ".join(ours) + f" | {ref} |")
        out.append("")
    notes = [c for c in table.cells if c.metrics is None]
    if notes:
        out += ["## Cells that could not run", ""]
        out += [f"- {c.entry.name}, NFE {c.nfe}, w={_w(c.guidance_scale)}: {c.note}" for c in notes]
        out.append("")
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------- CLI
def run_from_args(args: argparse.Namespace, command: str | None = None) -> str:
    """Run the table for parsed flags, write ``--out`` if given, and return the markdown."""
    samples = args.samples if args.samples is not None else (QUICK_SAMPLES if args.quick else 1000)
    if samples < 1:
        raise ValueError(f"--samples must be >= 1, got {samples}")
    seeds = []
    if args.sensitivity:
        try:
            seeds = [int(v) for v in args.sensitivity.split(",") if v.strip()]
        except ValueError as err:
            raise ValueError(
                f"--sensitivity must be comma-separated integers, got {args.sensitivity!r}"
            ) from err
    entries = default_entries()
    kwargs = {}
    if args.quick:
        entries = [e for e in entries if e.name in QUICK_ROWS or e.source != "diffusers"]
        kwargs = {"nfe_values": QUICK_NFE_VALUES, "guidance_scales": QUICK_GUIDANCE_SCALES}
    table = run_solver_table(
        entries,
        num_samples=samples,
        seed=args.seed,
        mixture_seed=args.mixture_seed,
        labels=args.labels,
        progress=not args.quiet,
        **kwargs,
    )
    if seeds:
        table.extra["sensitivity_seeds"] = seeds
        table.extra["sensitivity"] = run_mixture_sensitivity(
            seeds, num_samples=samples, seed=args.seed, labels=args.labels, progress=not args.quiet
        )
    text = format_markdown(table, command)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            f.write(text)
        logger.info("wrote %s", args.out)
    return text
