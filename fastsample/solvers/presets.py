"""The one table of named solver configurations: fastsample's recommended ones and the diffusers baselines.

Each :class:`Preset` says which scheduler class to build with ``from_config`` from a pipeline's (or the
solver table's base) scheduler config, with which overrides, for which noise-schedule family ("vp":
indexed by ᾱ / σ̄; "flow": rectified flow, docs/design/solvers.md#families). Everything that names a solver
configuration reads it from here:

- :func:`fastsample.optimize.optimize` and the benchmark recipes (``fastsample.eval.bench``) build a
  ``shortcut`` (``"ghvb"``, ``"hb"``, ``"plms"``, ``"dpm++2m-hb"``; the bench also its baselines
  ``"dpm++2m"``, ``"dpm++2m-karras"``, ``"ddim"``, ``"pndm"``, ``"euler"``, ``"unipc"``, ``"deis"``; for flow
  configs ``"flow-euler"``, ``"flow-heun"`` and the flow modes of DPM-Solver++ and UniPC) for the family of
  the pipeline's schedule
  (:func:`build`);
- the solver table (``fastsample.zoo.solver_table``) gets the rows marked ``in_table`` through
  :func:`benchmark_entries`.

VP rows end at σ̄ = 0 (``final_sigmas_type="zero"``) on DPM-Solver's grid, i.e. the same noise range as the
DPM-Solver/Euler/UniPC baselines built from the same config (SD1.5's ``set_alpha_to_one=False`` would
otherwise stop them at ᾱ[0]); "Karras" rows use the Karras σ̄ grid as "DPM++2M Karras" does. Flow rows keep
FlowMatch's ``shift`` (diffusers' DPM flow mode spells it ``flow_shift``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

FAMILIES = ("vp", "flow")
_SHIFT = object()  # an override read from the base config: FlowMatch's `shift`


@dataclass(frozen=True)
class SolverEntry:
    """One row of the solver table.

    Attributes:
        name: row label.
        family: "vp" (indexed by ᾱ / σ̄; base config SD1.5) or "flow" (rectified flow; base config SD3).
        make: base config dict -> a fresh diffusers-compatible scheduler (``SchedulerMixin``).
        source: who implements it ("diffusers", "fastsample", ...), shown in the table; rows from
            ``fastsample.solvers.benchmark_entries()`` that leave it empty are labelled "fastsample".
    """

    name: str
    family: str
    make: Callable[[dict], object]
    source: str = ""

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("`name` must be a non-empty string")
        if self.family not in FAMILIES:
            raise ValueError(f"`family` must be one of {FAMILIES}, got {self.family!r}")
        if not callable(self.make):
            raise TypeError("`make` must be a callable taking the base config dict")


@dataclass(frozen=True)
class Preset:
    """A named scheduler configuration (see the module docstring).

    Attributes:
        name: the solver table's row label.
        family: "vp", "flow", or ``None`` for a baseline built for either.
        scheduler: class name of a fastsample scheduler or, failing that, of a diffusers one.
        options: ``from_config`` overrides.
        shortcut: the short name optimize and the benchmark accept, if any.
        in_table: whether :func:`benchmark_entries` lists it.
    """

    name: str
    family: str | None
    scheduler: str
    options: Mapping[str, Any] = field(default_factory=dict)
    shortcut: str | None = None
    in_table: bool = True

    def scheduler_class(self) -> type:
        """The scheduler class (fastsample's of that name, else diffusers')."""
        import diffusers

        from fastsample.solvers.dpm_momentum import MomentumDPMSolverMultistepScheduler
        from fastsample.solvers.momentum import GHVBScheduler, HeavyBallScheduler

        ours = (GHVBScheduler, HeavyBallScheduler, MomentumDPMSolverMultistepScheduler)
        return {c.__name__: c for c in ours}.get(self.scheduler) or getattr(diffusers, self.scheduler)

    def build(self, config: Any, **overrides: Any) -> Any:
        """A fresh scheduler: ``scheduler.from_config(config, **options, **overrides)``."""
        options = {
            k: float(dict(config).get("shift", 1.0)) if v is _SHIFT else v for k, v in self.options.items()
        }
        return self.scheduler_class().from_config(config, **{**options, **overrides})


_ZERO = {"final_sigmas_type": "zero"}
# The pinned rows keep the equal-step coefficient tables on the grid their name says, as measured before the
# defaults changed (q = 1.8, Karras grid, variable-step weights for VP); VP rows end at σ̄ = 0.
_TABLE = {"variable_step": False, "grid": "spacing", **_ZERO}
_KARRAS_TABLE = {"variable_step": False, "use_karras_sigmas": True, **_ZERO}
_FLOW_TABLE = {"variable_step": False, "grid": "spacing"}
_KARRAS = {"use_karras_sigmas": True}
_HB = {"plms_order": 4, "momentum": 0.8}
_DPM_FLOW = {"use_flow_sigmas": True, "prediction_type": "flow_prediction", "flow_shift": _SHIFT}

PRESETS: tuple[Preset, ...] = (
    # fastsample's recommended configurations, VP; "GHVB default" is GHVBScheduler.from_config(config)
    Preset("GHVB default", "vp", "GHVBScheduler", {}, "ghvb"),
    Preset("PLMS4 (fastsample)", "vp", "GHVBScheduler", {"ghvb_order": 4, **_TABLE}, "plms"),
    Preset("GHVB 1.5", "vp", "GHVBScheduler", {"ghvb_order": 1.5, **_TABLE}),
    Preset("GHVB 2.5", "vp", "GHVBScheduler", {"ghvb_order": 2.5, **_TABLE}),
    Preset("GHVB 3.8", "vp", "GHVBScheduler", {"ghvb_order": 3.8, **_TABLE}),
    Preset("PLMS4 + HB 0.8", "vp", "HeavyBallScheduler", {**_HB, **_TABLE}, "hb"),
    Preset("DPM++2M + HB 0.8", "vp", "MomentumDPMSolverMultistepScheduler", {"momentum": 0.8}, "dpm++2m-hb"),
    Preset("GHVB 1.8 Karras", "vp", "GHVBScheduler", {"ghvb_order": 1.8, **_KARRAS_TABLE}),
    Preset("GHVB 2 Karras", "vp", "GHVBScheduler", {"ghvb_order": 2, **_KARRAS_TABLE}),
    Preset(
        "DPM++2M + HB 0.8 Karras", "vp", "MomentumDPMSolverMultistepScheduler", {"momentum": 0.8, **_KARRAS}
    ),
    # fastsample's recommended configurations, flow matching
    Preset("GHVB default (flow)", "flow", "GHVBScheduler", {}, "ghvb"),
    Preset("GHVB 1.5 (flow)", "flow", "GHVBScheduler", {"ghvb_order": 1.5, **_FLOW_TABLE}),
    Preset("GHVB 2.5 (flow)", "flow", "GHVBScheduler", {"ghvb_order": 2.5, **_FLOW_TABLE}),
    Preset("GHVB 3.8 (flow)", "flow", "GHVBScheduler", {"ghvb_order": 3.8, **_FLOW_TABLE}),
    Preset("PLMS4 + HB 0.8 (flow)", "flow", "HeavyBallScheduler", {**_HB, **_FLOW_TABLE}, "hb"),
    Preset(
        "DPM++2M + HB 0.8 (flow)",
        "flow",
        "MomentumDPMSolverMultistepScheduler",
        {"momentum": 0.8, **_DPM_FLOW},
        "dpm++2m-hb",
    ),
    Preset("PLMS4 (flow)", "flow", "GHVBScheduler", {"ghvb_order": 4, **_FLOW_TABLE}, "plms", in_table=False),
)
_FLOW_SIGMAS = {"use_flow_sigmas": True, "prediction_type": "flow_prediction", "flow_shift": _SHIFT}
BASELINES: tuple[Preset, ...] = (
    # diffusers' flow-capable schedulers, built from a FlowMatch config (listed first: a flow config must not
    # fall through to the VP-only rows below, which take no flow sigmas)
    Preset("FlowMatch Euler", "flow", "FlowMatchEulerDiscreteScheduler", {}, "flow-euler", in_table=False),
    Preset("FlowMatch Heun", "flow", "FlowMatchHeunDiscreteScheduler", {}, "flow-heun", in_table=False),
    Preset(
        "DPM++2M (flow)",
        "flow",
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "dpmsolver++", "solver_order": 2, **_FLOW_SIGMAS},
        "dpm++2m",
        in_table=False,
    ),
    Preset("UniPC (flow)", "flow", "UniPCMultistepScheduler", dict(_FLOW_SIGMAS), "unipc", in_table=False),
    Preset(
        "DPM++2M",
        "vp",
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "dpmsolver++", "solver_order": 2},
        "dpm++2m",
        in_table=False,
    ),
    Preset("DDIM", "vp", "DDIMScheduler", {}, "ddim", in_table=False),
    Preset("PNDM", "vp", "PNDMScheduler", {"skip_prk_steps": True}, "pndm", in_table=False),
    Preset("Euler", "vp", "EulerDiscreteScheduler", {}, "euler", in_table=False),
    Preset(
        "DPM++2M Karras",
        "vp",
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True},
        "dpm++2m-karras",
        in_table=False,
    ),
    Preset("UniPC", "vp", "UniPCMultistepScheduler", {}, "unipc", in_table=False),
    Preset("DEIS", "vp", "DEISMultistepScheduler", {}, "deis", in_table=False),
)

SHORTCUTS: tuple[str, ...] = tuple(dict.fromkeys(p.shortcut for p in PRESETS if p.shortcut))
BASELINE_SHORTCUTS: tuple[str, ...] = tuple(dict.fromkeys(p.shortcut for p in BASELINES if p.shortcut))


def family_of(config: Any) -> str:
    """``"flow"`` for a flow-matching scheduler config, else ``"vp"``."""
    from fastsample.solvers.core import is_flow_config

    return "flow" if is_flow_config(config) else "vp"


def find(shortcut: str, family: str, *, baselines: bool = False) -> Preset:
    """The preset named ``shortcut`` (case-insensitive) for ``family``; a ``ValueError`` listing the names
    otherwise (the baselines too when ``baselines``)."""
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    key = shortcut.lower() if isinstance(shortcut, str) else shortcut
    for preset in PRESETS + (BASELINES if baselines else ()):
        if preset.shortcut == key and preset.family in (family, None):
            return preset
    names = SHORTCUTS + (BASELINE_SHORTCUTS if baselines else ())
    raise ValueError(f"unknown scheduler {shortcut!r}; choose one of {names} or pass a scheduler.")


def build(shortcut: str, config: Any, *, baselines: bool = False, **overrides: Any) -> Any:
    """The scheduler ``shortcut`` for the family of ``config``, built from ``config`` (``overrides`` replace
    the preset's options, e.g. ``grid="spacing"``)."""
    return find(shortcut, family_of(config), baselines=baselines).build(config, **overrides)


def benchmark_entries() -> list[SolverEntry]:
    """The solver table rows of fastsample's recommended configurations (VP, then flow)."""
    return [SolverEntry(p.name, p.family, p.build) for p in PRESETS if p.in_table]


__all__ = [
    "BASELINES",
    "BASELINE_SHORTCUTS",
    "FAMILIES",
    "PRESETS",
    "SHORTCUTS",
    "Preset",
    "SolverEntry",
    "benchmark_entries",
    "build",
    "family_of",
    "find",
]
