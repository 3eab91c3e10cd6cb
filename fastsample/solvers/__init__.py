"""Drop-in diffusers schedulers: the PNDM family, Heavy-Ball momentum and GHVB (VP and flow matching)."""

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
    """Our recommended configurations as ``fastsample.zoo.solver_table.SolverEntry`` rows (VP and flow).

    Each ``make(config)`` builds the scheduler from the base scheduler config with ``from_config``. VP rows
    end at σ̄ = 0 (``final_sigmas_type="zero"``) on DPM-Solver's linspace grid, i.e. the same noise range as
    the DPM-Solver/Euler/UniPC rows built from the same config (SD1.5's ``set_alpha_to_one=False`` would
    otherwise stop them at ᾱ[0]); "Karras" rows use the Karras σ̄ grid as "DPM++2M Karras" does.
    """
    from fastsample.zoo.solver_table import SolverEntry

    def factory(cls, **overrides):
        return lambda config: cls.from_config(config, **overrides)

    def vp_factory(cls, **overrides):
        return factory(cls, final_sigmas_type="zero", **overrides)

    def _dpm_flow(config):  # diffusers' DPM flow mode spells FlowMatch's `shift` as `flow_shift`
        return MomentumDPMSolverMultistepScheduler.from_config(
            config,
            momentum=0.8,
            use_flow_sigmas=True,
            prediction_type="flow_prediction",
            flow_shift=float(dict(config).get("shift", 1.0)),
        )

    vp = [
        ("PLMS4 (fastsample)", vp_factory(GHVBScheduler, ghvb_order=4)),
        ("GHVB 1.5", vp_factory(GHVBScheduler, ghvb_order=1.5)),
        ("GHVB 2.5", vp_factory(GHVBScheduler, ghvb_order=2.5)),
        ("GHVB 3.8", vp_factory(GHVBScheduler, ghvb_order=3.8)),
        ("PLMS4 + HB 0.8", vp_factory(HeavyBallScheduler, plms_order=4, momentum=0.8)),
        ("DPM++2M + HB 0.8", factory(MomentumDPMSolverMultistepScheduler, momentum=0.8)),
        ("GHVB 1.8 Karras", vp_factory(GHVBScheduler, ghvb_order=1.8, use_karras_sigmas=True)),
        ("GHVB 2 Karras", vp_factory(GHVBScheduler, ghvb_order=2, use_karras_sigmas=True)),
        (
            "DPM++2M + HB 0.8 Karras",
            factory(MomentumDPMSolverMultistepScheduler, momentum=0.8, use_karras_sigmas=True),
        ),
    ]
    flow = [
        ("GHVB 1.5 (flow)", factory(GHVBScheduler, ghvb_order=1.5)),
        ("GHVB 2.5 (flow)", factory(GHVBScheduler, ghvb_order=2.5)),
        ("GHVB 3.8 (flow)", factory(GHVBScheduler, ghvb_order=3.8)),
        ("PLMS4 + HB 0.8 (flow)", factory(HeavyBallScheduler, plms_order=4, momentum=0.8)),
        ("DPM++2M + HB 0.8 (flow)", _dpm_flow),
    ]
    return [SolverEntry(name, "vp", make) for name, make in vp] + [
        SolverEntry(name, "flow", make) for name, make in flow
    ]
