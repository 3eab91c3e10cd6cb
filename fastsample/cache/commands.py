"""``fastsample train-router``: train a HarmoniCa router for a class-conditional DiT pipeline.

Several processes/GPUs: ``accelerate launch -m fastsample.cli train-router ...``.
"""

from __future__ import annotations

import argparse
import logging
import os
from dataclasses import fields
from typing import Any

logger = logging.getLogger(__name__)

_FIXTURE_PREFIX = "fixture:"


def load_pipeline(spec: str, scheduler: str = "keep") -> Any:
    """A local pipeline directory, or ``fixture:<name>`` for ``fastsample.testing.tiny_pipeline(name)``."""
    if spec.startswith(_FIXTURE_PREFIX):
        from fastsample.testing import tiny_pipeline

        pipe = tiny_pipeline(spec[len(_FIXTURE_PREFIX) :])
    elif os.path.isdir(spec):
        from diffusers import DiffusionPipeline

        pipe = DiffusionPipeline.from_pretrained(spec)
    else:
        raise ValueError(f"pipeline {spec!r} is neither a local directory nor 'fixture:<name>'.")
    if scheduler == "ddim":
        from diffusers import DDIMScheduler

        pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    elif scheduler != "keep":
        raise ValueError(f"scheduler must be 'keep' or 'ddim', got {scheduler!r}.")
    return pipe


def _run(args: argparse.Namespace) -> int:
    from accelerate import Accelerator

    from fastsample.cache.train import RouterTrainingConfig, train_router

    names = {f.name for f in fields(RouterTrainingConfig)}
    config = RouterTrainingConfig(**{k: v for k, v in vars(args).items() if k in names})
    accelerator = Accelerator()
    pipe = load_pipeline(args.pipeline, args.scheduler).to(accelerator.device)
    artifact, history = train_router(pipe, config, accelerator=accelerator, progress=not args.quiet)
    if accelerator.is_main_process:
        path = artifact.save_pretrained(args.output)
        mask = artifact.mask()
        print(
            f"router saved to {path}: {config.iterations} iterations, "
            f"loss {history[0]:.4g} -> {history[-1]:.4g}, "
            f"scheduled hit ratio {100 * (1 - mask.mean()):.1f}% at tau={artifact.threshold:g}"
        )
    return 0


def register(subparsers: Any) -> None:
    """Add ``train-router`` to the ``fastsample`` CLI."""
    from fastsample.cache.train import RouterTrainingConfig

    d = RouterTrainingConfig()
    p = subparsers.add_parser(
        "train-router",
        help="train a HarmoniCa cache router (image-free) for a class-conditional DiT pipeline",
        description=__doc__,
    )
    p.add_argument("pipeline", help="local pipeline directory, or fixture:<name> (e.g. fixture:dit)")
    p.add_argument(
        "--output", "-o", required=True, help="directory for router.safetensors + router_config.json"
    )
    p.add_argument(
        "--scheduler",
        choices=("keep", "ddim"),
        default="keep",
        help="keep the pipeline's scheduler or switch to DDIM (the paper's sampler)",
    )
    p.add_argument("--steps", dest="num_inference_steps", type=int, default=d.num_inference_steps)
    p.add_argument("--guidance-scale", type=float, default=d.guidance_scale)
    p.add_argument("--iterations", type=int, default=d.iterations)
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="per process")
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--beta", type=float, default=d.beta, help="weight of the Σ r reuse penalty")
    p.add_argument(
        "--tau", dest="threshold", type=float, default=d.threshold, help="refresh/compute threshold τ"
    )
    p.add_argument(
        "--iepo-every", type=int, default=d.iepo_every, help="recompute the IEPO weights λ every C iterations"
    )
    p.add_argument(
        "--init-interval",
        type=int,
        default=d.init_interval,
        help="start the router from FORA(N)'s schedule instead of a random init",
    )
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_run)
