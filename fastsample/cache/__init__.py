"""Feature caching for diffusion transformers: hooks, static/dynamic/learned (HarmoniCa) reuse policies."""

from fastsample.cache.api import METHODS, CacheHandle, enable_cache, make_policy
from fastsample.cache.calibration import CacheCalibration, calibrate_cache, load_calibration
from fastsample.cache.measure import SpeedupReport, measure_speedup
from fastsample.cache.policies import (
    FORA,
    CachePolicy,
    DynamicThreshold,
    NoCache,
    StaticSchedule,
    TaylorSeer,
)
from fastsample.cache.router import HarmoniCaPolicy, Router, RouterArtifact
from fastsample.cache.stats import CacheStats
from fastsample.cache.train import RouterTrainingConfig, evaluate_router_loss, train_router
from fastsample.cache.units import SUPPORTED_MODELS, find_blocks, find_units

__all__ = [
    "FORA",
    "METHODS",
    "SUPPORTED_MODELS",
    "CacheCalibration",
    "CacheHandle",
    "CachePolicy",
    "CacheStats",
    "DynamicThreshold",
    "HarmoniCaPolicy",
    "NoCache",
    "Router",
    "RouterArtifact",
    "RouterTrainingConfig",
    "SpeedupReport",
    "StaticSchedule",
    "TaylorSeer",
    "calibrate_cache",
    "enable_cache",
    "evaluate_router_loss",
    "find_blocks",
    "find_units",
    "load_calibration",
    "make_policy",
    "measure_speedup",
    "train_router",
]
