"""``fastsample train-featurenet``: retrain the shipped in-domain feature network from scratch
(:mod:`fastsample.zoo.featurenet`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from fastsample.cli._common import add_deprecated_alias, add_out, add_quiet, positive_float, positive_int

NAME = "train-featurenet"
HELP = "train the in-domain feature/classifier network on the procedural zoo data"
DESCRIPTION = """\
Train FeatureNet (the in-domain FD feature extractor and classifier) on fresh procedural samples, half of
each batch in greyscale, and write its safetensors weights with the training summary as metadata.
"""

DEFAULT_OUT = str(Path(__file__).resolve().parent.parent / "zoo" / "weights" / "featurenet.safetensors")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--train-steps", type=positive_int, default=1500, help="optimiser steps")
    add_deprecated_alias(parser, "--steps", new="--train-steps", dest="train_steps", type=positive_int)
    parser.add_argument("--batch-size", type=positive_int, default=128, help="images per step")
    parser.add_argument("--lr", type=positive_float, default=2e-3, help="learning rate")
    parser.add_argument(
        "--grey-fraction", type=float, default=0.5, help="share of each batch shown in greyscale"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights and the data")
    parser.add_argument("--threads", type=positive_int, default=1, help="torch CPU threads")
    parser.add_argument(
        "--eval-samples", type=positive_int, default=5000, help="fresh samples for held-out accuracy"
    )
    parser.add_argument("--eval-seed", type=int, default=2024, help="seed of the held-out samples")
    add_out(parser, "output .safetensors path (default: the package's shipped weights)", DEFAULT_OUT)
    add_quiet(parser)


def run(args: argparse.Namespace) -> int:
    import torch

    from fastsample.zoo.featurenet import evaluate_accuracy, save_feature_net, train_feature_net

    torch.set_num_threads(args.threads)
    net, summary = train_feature_net(
        steps=args.train_steps,
        batch_size=args.batch_size,
        lr=args.lr,
        grey_fraction=args.grey_fraction,
        seed=args.seed,
        progress=not args.quiet,
    )
    accuracy = evaluate_accuracy(net, n=args.eval_samples, seed=args.eval_seed)
    grey_accuracy = evaluate_accuracy(net, n=args.eval_samples, seed=args.eval_seed, greyscale=True)
    summary.update(
        seed=args.seed,
        lr=args.lr,
        grey_fraction=args.grey_fraction,
        eval_seed=args.eval_seed,
        eval_samples=args.eval_samples,
        accuracy=accuracy,
        greyscale_accuracy=grey_accuracy,
        torch_threads=args.threads,
        torch_version=torch.__version__,
    )
    save_feature_net(net, args.out, metadata=summary)
    print(json.dumps(summary, indent=2))
    print(f"wrote {args.out}")
    return 0
