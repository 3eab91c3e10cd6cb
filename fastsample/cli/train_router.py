"""``fastsample train-router``: train a HarmoniCa cache router for a class-conditional DiT pipeline
(:mod:`fastsample.cache.train`).

Several processes/GPUs: ``accelerate launch -m fastsample.cli train-router ...``.
"""

from __future__ import annotations

import argparse
import inspect
import sys

from fastsample.cli._common import (
    CommandError,
    add_out,
    add_pipeline,
    add_quiet,
    positive_float,
    positive_int,
)

NAME = "train-router"
HELP = "train a HarmoniCa cache router (image-free) for a class-conditional DiT pipeline"
DESCRIPTION = """\
Train a HarmoniCa router (which steps reuse the cached features) for a class-conditional DiT pipeline,
image-free, and save router.safetensors + router_config.json; use it with
enable_cache(pipe, "harmonica", router=RouterArtifact.from_pretrained(OUT)).

Examples:
  fastsample train-router --pipeline fixture:dit --out router/ --iterations 50
  accelerate launch -m fastsample.cli train-router --pipeline ./dit-xl --out router/ --scheduler ddim
"""

# Mirrors of fastsample.cache.train.RouterTrainingConfig() (a test checks they agree): --help needs no torch.
DEFAULTS = {
    "num_inference_steps": 10,
    "guidance_scale": 1.5,
    "iterations": 20000,
    "batch_size": 16,
    "lr": 0.01,
    "beta": 7e-8,
    "threshold": 0.1,
    "iepo_every": 500,
    "seed": 0,
}
_CONFIG_FIELDS = (*DEFAULTS, "init_interval")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = DEFAULTS
    parser.add_argument("pipeline_positional", nargs="?", default=None, help=argparse.SUPPRESS)  # deprecated
    add_pipeline(parser, default="embedded", help="a class-conditional DiT pipeline")
    add_out(
        parser, "folder for router.safetensors + router_config.json", required=True, old=("--output", "-o")
    )
    parser.add_argument(
        "--scheduler",
        choices=("keep", "ddim"),
        default="keep",
        help="keep the pipeline's scheduler or switch to DDIM (the paper's sampler)",
    )
    parser.add_argument(
        "--steps",
        dest="num_inference_steps",
        type=positive_int,
        default=d["num_inference_steps"],
        help="sampling steps the router schedules",
    )
    parser.add_argument("--guidance-scale", type=float, default=d["guidance_scale"], help="CFG scale")
    parser.add_argument(
        "--iterations", type=positive_int, default=d["iterations"], help="training iterations"
    )
    parser.add_argument("--batch-size", type=positive_int, default=d["batch_size"], help="per process")
    parser.add_argument("--lr", type=positive_float, default=d["lr"], help="learning rate of the router")
    parser.add_argument("--beta", type=float, default=d["beta"], help="weight of the Σ r reuse penalty")
    parser.add_argument(
        "--tau", dest="threshold", type=float, default=d["threshold"], help="refresh/compute threshold τ"
    )
    parser.add_argument(
        "--iepo-every",
        type=positive_int,
        default=d["iepo_every"],
        help="recompute the IEPO weights λ every C iterations",
    )
    parser.add_argument(
        "--init-interval",
        type=positive_int,
        default=None,
        help="start the router from FORA(N)'s schedule (default: a random init, as the paper)",
    )
    parser.add_argument("--seed", type=int, default=d["seed"], help="seed of the router, labels and noise")
    add_quiet(parser)


def run(args: argparse.Namespace) -> int:
    if args.pipeline_positional is not None:
        print(
            "fastsample train-router: warning: the positional PIPELINE is deprecated and will be removed in "
            "the next release; use --pipeline",
            file=sys.stderr,
        )
        args.pipeline = args.pipeline_positional
    from fastsample.cli.pipeline import load_pipeline_arg

    loaded = load_pipeline_arg(args.pipeline)
    pipe = loaded.pipe
    if "class_labels" not in inspect.signature(pipe.__call__).parameters:
        raise CommandError(
            "--pipeline",
            f"{args.pipeline} is a {type(pipe).__name__}; HarmoniCa routers are trained for "
            "class-conditional DiT pipelines (class_labels)",
        )
    from accelerate import Accelerator

    from fastsample.cache.train import RouterTrainingConfig, train_router

    if args.scheduler == "ddim":
        from diffusers import DDIMScheduler

        pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    config = RouterTrainingConfig(**{name: getattr(args, name) for name in _CONFIG_FIELDS})
    accelerator = Accelerator()
    pipe.to(accelerator.device)
    artifact, history = train_router(pipe, config, accelerator=accelerator, progress=not args.quiet)
    if accelerator.is_main_process:
        path = artifact.save_pretrained(args.out)
        mask = artifact.mask()
        print(
            f"router saved to {path}: {config.iterations} iterations, "
            f"loss {history[0]:.4g} -> {history[-1]:.4g}, "
            f"scheduled hit ratio {100 * (1 - mask.mean()):.1f}% at tau={artifact.threshold:g}"
        )
    return 0
