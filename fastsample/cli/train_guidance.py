"""``fastsample train-guidance``: train the learned annealing-guidance head for one pipeline
(:mod:`fastsample.guidance.train`)."""

from __future__ import annotations

import argparse
from typing import Any

from fastsample.cli._common import (
    CommandError,
    add_deprecated_alias,
    add_out,
    add_pipeline,
    add_quiet,
    positive_float,
    positive_int,
)

NAME = "train-guidance"
HELP = "train the learned annealing-guidance head (w_θ) for a pipeline"
DESCRIPTION = """\
Train the annealing-guidance scale network (arXiv 2506.24108) for one pipeline from recorded CFG calls;
load the result with AnnealingHead.from_pretrained(OUT) and use AnnealedGuidance('learned', head=...).

Examples:
  fastsample train-guidance --pipeline fixture:dit --out head/ --train-steps 5 --steps 3
  accelerate launch -m fastsample.cli train-guidance --pipeline ./my-sd15 --prompt "a cat" "a dog" \\
      --guidance-scale 7.5 --out head/
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_pipeline(parser, default=None, help="the pipeline to train the head for")
    add_out(parser, "folder to save the trained head in", required=True, old=("--output",))
    parser.add_argument("--train-steps", type=positive_int, default=1000, help="optimiser steps")
    parser.add_argument("--lr", type=positive_float, default=1e-3, help="Adam learning rate")
    add_deprecated_alias(parser, "--learning-rate", new="--lr", dest="lr", type=positive_float)
    parser.add_argument(
        "--steps", type=positive_int, default=50, help="sampling steps of the grid the head is trained on"
    )
    add_deprecated_alias(parser, "--inference-steps", new="--steps", dest="steps", type=positive_int)
    parser.add_argument(
        "--calibration-calls", type=positive_int, default=4, help="recorded CFG pipeline calls (the data)"
    )
    parser.add_argument(
        "--guidance-scale",
        type=float,
        default=None,
        help="CFG scale of the calibration calls (default: the pipeline's)",
    )
    parser.add_argument("--prompt", nargs="+", default=None, help="prompts of a text pipeline folder")
    parser.add_argument(
        "--class-labels", nargs="+", type=int, default=None, help="class labels of a DiT pipeline folder"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the head and the calibration noise")
    add_quiet(parser)


def calibration_calls(fixture: str | None, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Pipeline kwargs for ``args.calibration_calls`` recorded CFG runs (seeds 0, 1, ...)."""
    import torch

    calls = []
    for seed in range(args.calibration_calls):
        if fixture is not None:
            from fastsample.testing import call_kwargs

            kwargs = call_kwargs(fixture, seed=seed, num_inference_steps=args.steps)
        else:
            kwargs = {"num_inference_steps": args.steps, "generator": torch.Generator().manual_seed(seed)}
            if args.class_labels:
                kwargs["class_labels"] = args.class_labels
            elif args.prompt:
                kwargs["prompt"] = args.prompt
            else:
                raise CommandError(
                    "--pipeline", "a pipeline folder needs --prompt (text pipelines) or --class-labels (DiT)"
                )
        if args.guidance_scale is not None:
            kwargs["guidance_scale"] = args.guidance_scale
        kwargs["output_type"] = "latent"  # z0 is recorded from the denoiser; nothing needs decoding
        calls.append(kwargs)
    return calls


def run(args: argparse.Namespace) -> int:
    from fastsample.cli.pipeline import load_pipeline_arg

    if args.steps < 2:
        raise CommandError("--steps", f"must be >= 2, got {args.steps}")
    loaded = load_pipeline_arg(args.pipeline)
    calls = calibration_calls(loaded.fixture, args)
    from fastsample.guidance.train import train_annealing_head

    head = train_annealing_head(
        loaded.pipe,
        calls,
        num_train_steps=args.train_steps,
        learning_rate=args.lr,
        seed=args.seed,
        progress=not args.quiet,
    )
    head.save_pretrained(args.out)
    print(f"saved annealing head to {args.out}")
    return 0
