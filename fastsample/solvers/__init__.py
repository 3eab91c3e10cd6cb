"""Drop-in diffusers schedulers: the PNDM family, Heavy-Ball momentum and GHVB (VP and flow matching).

Per-model tuning lives in submodules (imported on demand): :mod:`fastsample.solvers.grid_fit` (``fit_grid``:
an optimized step grid as a JSON ``GridArtifact``; ``fastsample fit-grid``,
:mod:`fastsample.cli.fit_grid`) and :mod:`fastsample.solvers.learned` (``fit_coefficients``: learned
per-step multistep weights as a JSON ``LearnedCoefficients``, applied with
``scheduler.set_learned_coefficients``).
"""

from __future__ import annotations

from fastsample.solvers.core import MultistepCore, is_flow_config
from fastsample.solvers.dpm_momentum import MomentumDPMSolverMultistepScheduler
from fastsample.solvers.momentum import GHVBScheduler, HeavyBallScheduler
from fastsample.solvers.pndm import PNDMFamilyScheduler
from fastsample.solvers.presets import benchmark_entries

__all__ = [
    "GHVBScheduler",
    "HeavyBallScheduler",
    "MomentumDPMSolverMultistepScheduler",
    "MultistepCore",
    "PNDMFamilyScheduler",
    "benchmark_entries",
    "is_flow_config",
]
SCHEDULER_CLASSES = (
    "GHVBScheduler",
    "HeavyBallScheduler",
    "MomentumDPMSolverMultistepScheduler",
    "PNDMFamilyScheduler",
)
