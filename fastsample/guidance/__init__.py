"""Classifier-free guidance variants (pure tensor math) and the hook that applies them to a pipeline."""

from .annealing import AnnealedGuidance, AnnealingHead
from .context import GuidanceContext
from .guiders import AdaptiveGuider, APGGuider
from .hook import GuidanceHandle, enable_guidance, guide
from .linear_ag import LinearAG, LinearAGCoefficients
from .methods import (
    APG,
    CFG,
    AdaptiveGuidance,
    CFGPlusPlus,
    CFGRescale,
    CFGZeroStar,
    GuidanceMethod,
    GuidanceWindow,
)

__all__ = [
    "APG",
    "CFG",
    "APGGuider",
    "AdaptiveGuidance",
    "AdaptiveGuider",
    "AnnealedGuidance",
    "AnnealingHead",
    "CFGPlusPlus",
    "CFGRescale",
    "CFGZeroStar",
    "GuidanceContext",
    "GuidanceHandle",
    "GuidanceMethod",
    "GuidanceWindow",
    "LinearAG",
    "LinearAGCoefficients",
    "enable_guidance",
    "guide",
]
