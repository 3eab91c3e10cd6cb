"""fastsample: faster and better sampling for HuggingFace diffusers pipelines, and the proof.

Capabilities live in one subpackage each (``solvers``, ``guidance``, ``cache``, ``kernels``, ``training``,
``eval``, ``pipelines``, ``zoo``). Their main public names are re-exported here and imported lazily on
first use, so ``import fastsample`` stays cheap::

    import fastsample as fs

    pipe.scheduler = fs.GHVBScheduler.from_config(pipe.scheduler.config, ghvb_order=2.5)
    with fs.enable_guidance(pipe, fs.APG()):
        image = pipe(prompt).images[0]
    handle = fs.enable_cache(pipe, "fora", interval=2)
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY_EXPORTS: dict[str, str] = {
    # solvers
    "PNDMFamilyScheduler": "fastsample.solvers",
    "HeavyBallScheduler": "fastsample.solvers",
    "GHVBScheduler": "fastsample.solvers",
    "MomentumDPMSolverMultistepScheduler": "fastsample.solvers",
    # guidance
    "guide": "fastsample.guidance",
    "enable_guidance": "fastsample.guidance",
    "CFG": "fastsample.guidance",
    "APG": "fastsample.guidance",
    "AdaptiveGuidance": "fastsample.guidance",
    "LinearAG": "fastsample.guidance",
    "AnnealedGuidance": "fastsample.guidance",
    "CFGRescale": "fastsample.guidance",
    "CFGZeroStar": "fastsample.guidance",
    "CFGPlusPlus": "fastsample.guidance",
    "GuidanceWindow": "fastsample.guidance",
    # cache
    "enable_cache": "fastsample.cache",
    "calibrate_cache": "fastsample.cache",
    # kernels
    "set_attention": "fastsample.kernels",
    "enable_dit_savings": "fastsample.kernels",
    # training
    "min_snr_weights": "fastsample.training",
    # eval
    "frechet_distance": "fastsample.eval",
    "paired_fidelity": "fastsample.eval",
    "shape_accuracy": "fastsample.eval",
    "hue_accuracy": "fastsample.eval",
    # pipelines and defaults
    "optimize": "fastsample.optimize",
    "PixelDiTPipeline": "fastsample.pipelines.pixel_dit",
    "get_adapter": "fastsample.integration.adapters",
    "load_default_pipeline": "fastsample.zoo.default",
    "load_feature_net": "fastsample.zoo.default",
}

__all__ = ["__version__", *_LAZY_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _LAZY_EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'fastsample' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
