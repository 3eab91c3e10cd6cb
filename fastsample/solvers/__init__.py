"""Drop-in diffusers schedulers: the PNDM family, Heavy-Ball momentum and GHVB (VP and flow matching).

Per-model tuning lives in submodules (imported on demand): :mod:`fastsample.solvers.grid_fit` (``fit_grid``:
an optimized step grid as a JSON ``GridArtifact``; ``fastsample fit-grid`` through
:mod:`fastsample.solvers.commands`) and :mod:`fastsample.solvers.learned` (``fit_coefficients``: learned
per-step multistep weights as a JSON ``LearnedCoefficients``, applied with
``scheduler.set_learned_coefficients``).
"""

from __future__ import annotations

from fastsample.solvers.core import MultistepCore, is_flow_config
from fastsample.solvers.dpm_momentum import MomentumDPMSolverMultistepScheduler
from fastsample.solvers.momentum import GHVBScheduler, HeavyBallScheduler
from fastsample.solvers.pndm import PNDMFamilyScheduler

__all__ = [
    "GHVBScheduler",
    "HeavyBallScheduler",
    "MomentumDPMSolverMultistepScheduler",
    "MultistepCore",
    "PNDMFamilyScheduler",
    "benchmark_entries",
    "is_flow_config",
]

#: every fastsample scheduler class (their keys form the "family" that ``from_config`` accepts)
SCHEDULER_CLASSES = (
    "GHVBScheduler",
    "HeavyBallScheduler",
    "MomentumDPMSolverMultistepScheduler",
    "PNDMFamilyScheduler",
)


def benchmark_entries() -> list:
    """Our configurations as ``fastsample.zoo.solver_table.SolverEntry`` rows (VP and flow).

    Each ``make(config)`` builds the scheduler from the base scheduler config with ``from_config``. The
    "default" rows are ``GHVBScheduler.from_config(config)`` with no arguments, what a user gets: q = 1.8 on
    the Karras grid ending at σ̄ = 0, variable-step weights for VP. The other rows pin the equal-step
    coefficient tables (``variable_step=False``) on the grid their name says, as measured before the
    defaults changed; VP rows end at σ̄ = 0 (``final_sigmas_type="zero"``) like the DPM-Solver/Euler/UniPC
    rows built from the same config.
    """
    from fastsample.zoo.solver_table import SolverEntry

    def factory(cls, **overrides):
        return lambda config: cls.from_config(config, **overrides)

    def table(cls, karras=False, **overrides):  # the equal-step tables on the linspace or Karras grid
        grid = {"use_karras_sigmas": True} if karras else {"grid": "spacing"}
        return factory(cls, final_sigmas_type="zero", variable_step=False, **grid, **overrides)

    def flow_table(cls, **overrides):
        return factory(cls, grid="spacing", variable_step=False, **overrides)

    def _dpm_flow(config):  # diffusers' DPM flow mode spells FlowMatch's `shift` as `flow_shift`
        return MomentumDPMSolverMultistepScheduler.from_config(
            config,
            momentum=0.8,
            use_flow_sigmas=True,
            prediction_type="flow_prediction",
            flow_shift=float(dict(config).get("shift", 1.0)),
        )

    vp = [
        ("GHVB default", factory(GHVBScheduler)),
        ("PLMS4 (fastsample)", table(GHVBScheduler, ghvb_order=4)),
        ("GHVB 1.5", table(GHVBScheduler, ghvb_order=1.5)),
        ("GHVB 2.5", table(GHVBScheduler, ghvb_order=2.5)),
        ("GHVB 3.8", table(GHVBScheduler, ghvb_order=3.8)),
        ("PLMS4 + HB 0.8", table(HeavyBallScheduler, plms_order=4, momentum=0.8)),
        ("DPM++2M + HB 0.8", factory(MomentumDPMSolverMultistepScheduler, momentum=0.8)),
        ("GHVB 1.8 Karras", table(GHVBScheduler, karras=True, ghvb_order=1.8)),
        ("GHVB 2 Karras", table(GHVBScheduler, karras=True, ghvb_order=2)),
        (
            "DPM++2M + HB 0.8 Karras",
            factory(MomentumDPMSolverMultistepScheduler, momentum=0.8, use_karras_sigmas=True),
        ),
    ]
    flow = [
        ("GHVB default (flow)", factory(GHVBScheduler)),
        ("GHVB 1.5 (flow)", flow_table(GHVBScheduler, ghvb_order=1.5)),
        ("GHVB 2.5 (flow)", flow_table(GHVBScheduler, ghvb_order=2.5)),
        ("GHVB 3.8 (flow)", flow_table(GHVBScheduler, ghvb_order=3.8)),
        ("PLMS4 + HB 0.8 (flow)", flow_table(HeavyBallScheduler, plms_order=4, momentum=0.8)),
        ("DPM++2M + HB 0.8 (flow)", _dpm_flow),
    ]
    return [SolverEntry(name, "vp", make) for name, make in vp] + [
        SolverEntry(name, "flow", make) for name, make in flow
    ]
