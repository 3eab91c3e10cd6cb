"""Drop-in diffusers schedulers: the PNDM family, Heavy-Ball momentum and GHVB (VP and flow matching)."""

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
