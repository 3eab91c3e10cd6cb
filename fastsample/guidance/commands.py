"""``fastsample train-guidance``: train the learned annealing-guidance head for one pipeline.

The lead registers this module in ``fastsample.cli.COMMAND_MODULES``. Examples::

    fastsample train-guidance --pipeline fixture:dit --output head/ --train-steps 5 --inference-steps 3
    accelerate launch -m fastsample.cli train-guidance --pipeline ./my-sd15 --prompt "a cat" "a dog" \\
        --guidance-scale 7.5 --output head/
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

logger = logging.getLogger(__name__)

_FIXTURE = "fixture:"


def load_pipeline(spec: str) -> tuple[Any, str | None]:
    """``fixture:NAME`` (a :mod:`fastsample.testing` tiny pipeline) or a local diffusers pipeline
    directory."""
    if spec.startswith(_FIXTURE):
        from fastsample.testing import PIPELINE_NAMES, tiny_pipeline

        name = spec[len(_FIXTURE) :]
        if name not in PIPELINE_NAMES:
            raise ValueError(f"unknown fixture {name!r}; expected one of {', '.join(PIPELINE_NAMES)}.")
        return tiny_pipeline(name), name
    from diffusers import DiffusionPipeline

    return DiffusionPipeline.from_pretrained(spec, local_files_only=True), None


def calibration_calls(fixture: str | None, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Pipeline kwargs for ``args.calibration_calls`` recorded CFG runs (seeds 0, 1, ...)."""
    import torch

    calls = []
    for seed in range(args.calibration_calls):
        if fixture is not None:
            from fastsample.testing import call_kwargs

            kwargs = call_kwargs(fixture, seed=seed, num_inference_steps=args.inference_steps)
        else:
            kwargs = {
                "num_inference_steps": args.inference_steps,
                "generator": torch.Generator().manual_seed(seed),
            }
            if args.class_labels:
                kwargs["class_labels"] = args.class_labels
            elif args.prompt:
                kwargs["prompt"] = args.prompt
            else:
                raise ValueError(
                    "a pipeline directory needs --prompt (text pipelines) or --class-labels (DiT)."
                )
        if args.guidance_scale is not None:
            kwargs["guidance_scale"] = args.guidance_scale
        kwargs["output_type"] = "latent"  # z0 is recorded from the denoiser; nothing needs decoding
        calls.append(kwargs)
    return calls


def run_train_guidance(args: argparse.Namespace) -> int:
    from .train import train_annealing_head

    if args.calibration_calls < 1:
        raise ValueError(f"--calibration-calls must be >= 1, got {args.calibration_calls}.")
    if args.inference_steps < 2:
        raise ValueError(f"--inference-steps must be >= 2, got {args.inference_steps}.")
    pipe, fixture = load_pipeline(args.pipeline)
    head = train_annealing_head(
        pipe,
        calibration_calls(fixture, args),
        num_train_steps=args.train_steps,
        learning_rate=args.learning_rate,
        seed=args.seed,
    )
    head.save_pretrained(args.output)
    print(f"saved annealing head to {args.output}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train-guidance",
        help="train the learned annealing-guidance head (w_θ) for a pipeline",
        description="Train the annealing-guidance scale network (arXiv 2506.24108) for one pipeline; "
        "load the result with AnnealingHead.from_pretrained(OUTPUT) and use "
        "AnnealedGuidance('learned', head=...).",
    )
    p.add_argument(
        "--pipeline", required=True, help="fixture:NAME (sd, sdxl, dit, pixart, sd3) or a local directory"
    )
    p.add_argument("--output", required=True, help="directory to save the trained head in")
    p.add_argument("--train-steps", type=int, default=1000)
    p.add_argument("--learning-rate", type=float, default=1e-3)
    p.add_argument("--inference-steps", type=int, default=50, help="sampler grid the head is trained on")
    p.add_argument("--calibration-calls", type=int, default=4, help="recorded CFG pipeline calls (data)")
    p.add_argument("--guidance-scale", type=float, default=None, help="CFG scale of the calibration calls")
    p.add_argument("--prompt", nargs="+", default=None)
    p.add_argument("--class-labels", nargs="+", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run_train_guidance)


__all__ = ["register", "run_train_guidance"]
