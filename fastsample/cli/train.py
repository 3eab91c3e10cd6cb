"""``fastsample train``: train the embedded pixel-space DiT on the procedural zoo data
(:mod:`fastsample.training.trainer`)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from fastsample.cli._common import (
    CommandError,
    add_deprecated_alias,
    add_out,
    add_quiet,
    non_negative_int,
    positive_float,
    positive_int,
)

NAME = "train"
HELP = "train the embedded DiT on the procedural zoo data (Min-SNR, MixFlow, samplers, EMA, resumable)"
DESCRIPTION = """\
Train the embedded pixel-space DiT (VP or rectified flow) on fresh procedural zoo images, with Min-SNR-γ
weighting, timestep samplers, MixFlow, an EMA and bit-exact resumption; post-train from a checkpoint or an
export with --init-from.

Examples:
  fastsample train --train-steps 20000 --out runs/dit --export fastsample/zoo/weights
  fastsample train --out runs/dit --resume latest          # continue bit-exactly
  fastsample train --out runs/post --init-from runs/dit/checkpoint-20000 --train-steps 600
  accelerate launch --num_processes 2 -m fastsample.cli train --train-steps 100 --out runs/x
"""

# Mirrors of fastsample.training (a test checks they agree with TrainConfig() and the tables), so --help
# needs no torch.
WEIGHTINGS = ("none", "min_snr")
SAMPLER_NAMES = ("uniform", "logit_normal", "mode", "cosmap", "beta")
TRAIN_PREDICTION_TYPES = ("epsilon", "sample", "v_prediction", "flow")
ARCHITECTURE_FIELDS = ("width", "head_dim", "depth", "patch_size")
DEFAULTS = {
    "output_dir": "zoo_runs/dit",
    "steps": 20_000,
    "batch_size": 64,
    "lr": 7e-4,
    "warmup_steps": 300,
    "weighting": "min_snr",
    "gamma": 5.0,
    "sampler": "uniform",
    "prediction_type": "epsilon",
    "label_dropout": 0.1,
    "ema_decay": 0.999,
    "width": 128,
    "head_dim": 32,
    "depth": 6,
    "patch_size": 4,
    "seed": 0,
    "mixed_precision": "no",
    "checkpoint_every_steps": 0,
    "checkpoint_every_minutes": 8.0,
    "keep_checkpoints": 2,
    "log_every": 50,
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = DEFAULTS
    add_out(
        parser, "folder of the checkpoints, the config and the logs", d["output_dir"], old=("--output-dir",)
    )
    parser.add_argument(
        "--train-steps", type=positive_int, default=d["steps"], help="total optimiser steps of the run"
    )
    add_deprecated_alias(parser, "--steps", new="--train-steps", dest="train_steps", type=positive_int)
    parser.add_argument("--batch-size", type=positive_int, default=d["batch_size"], help="images per process")
    parser.add_argument("--lr", type=positive_float, default=d["lr"], help="peak AdamW learning rate")
    parser.add_argument(
        "--warmup-steps", type=non_negative_int, default=d["warmup_steps"], help="linear LR warm-up steps"
    )
    parser.add_argument(
        "--weighting", choices=WEIGHTINGS, default=d["weighting"], help="loss weight over timesteps"
    )
    parser.add_argument(
        "--snr-gamma", type=positive_float, default=d["gamma"], help="Min-SNR γ: weight min(SNR, γ)/SNR (ε)"
    )
    parser.add_argument("--sampler", choices=SAMPLER_NAMES, default=d["sampler"], help="timestep density")
    parser.add_argument(
        "--logit-mean", type=float, default=0.0, help="logit_normal sampler: mean (> 0 = noisier)"
    )
    parser.add_argument("--logit-std", type=positive_float, default=1.0, help="logit_normal sampler: std")
    parser.add_argument("--mode-scale", type=float, default=1.29, help="mode sampler: scale s")
    parser.add_argument(
        "--prediction-type",
        choices=TRAIN_PREDICTION_TYPES,
        default=d["prediction_type"],
        help="what the network predicts; flow = rectified flow (FlowMatch Euler schedule, target ε − x0)",
    )
    parser.add_argument(
        "--mixflow-gamma",
        type=float,
        default=None,
        help="MixFlow slowed-timestep range γ in (0, 1] (default: off; experimental on VP)",
    )
    parser.add_argument(
        "--label-dropout", type=float, default=d["label_dropout"], help="share of labels dropped (for CFG)"
    )
    parser.add_argument("--ema-decay", type=float, default=d["ema_decay"], help="maximum EMA decay")
    # Architecture: None = the --init-from source's, else the default shown.
    for name, what in (
        ("width", "transformer width (heads × head dim)"),
        ("head_dim", "attention head dimension"),
        ("depth", "transformer blocks"),
        ("patch_size", "patch size in pixels"),
    ):
        parser.add_argument(
            "--" + name.replace("_", "-"),
            type=positive_int,
            default=None,
            help=f"{what} (default {d[name]}, or the --init-from source's)",
        )
    parser.add_argument("--seed", type=int, default=d["seed"], help="seed of the weights, data and noise")
    parser.add_argument(
        "--mixed-precision", choices=("no", "bf16"), default=d["mixed_precision"], help="autocast dtype"
    )
    parser.add_argument(
        "--compile", action="store_true", help="torch.compile the training forward (helps on a GPU)"
    )
    parser.add_argument(
        "--checkpoint-every-steps",
        type=non_negative_int,
        default=d["checkpoint_every_steps"],
        help="checkpoint every N steps (0: by time only)",
    )
    parser.add_argument(
        "--checkpoint-every-minutes",
        type=positive_float,
        default=d["checkpoint_every_minutes"],
        help="checkpoint at least this often",
    )
    parser.add_argument(
        "--keep-checkpoints", type=positive_int, default=d["keep_checkpoints"], help="newest checkpoints kept"
    )
    parser.add_argument(
        "--resume",
        default=None,
        metavar="CHECKPOINT",
        help="continue a run bit-exactly: a checkpoint folder, or 'latest' (the newest in --out; refused "
        "when there is none). A checkpoint folder holds model.safetensors, ema.safetensors, optimizer.bin, "
        "scheduler.bin, random_states_<p>.pkl and trainer_state.json (earlier versions: "
        "custom_checkpoint_0.pkl for the EMA); every file is checked first and only tensors are ever "
        "unpickled (torch.load(weights_only=True)): a file that would run code is refused, by name",
    )
    parser.add_argument(
        "--init-from",
        default=None,
        metavar="PATH",
        help="post-train: start a new run (step 0, fresh optimizer/LR/EMA warm-up) from the EMA weights of a "
        "checkpoint folder or from an exported folder; architecture flags default to the source's and must "
        "match it; not with --resume",
    )
    parser.add_argument(
        "--export", default=None, metavar="DIR", help="export the EMA weights here at every checkpoint"
    )
    parser.add_argument("--num-threads", type=positive_int, default=None, help="torch CPU threads")
    parser.add_argument("--log-every", type=positive_int, default=d["log_every"], help="log every N steps")
    parser.add_argument("--log-file", default=None, metavar="PATH", help="also write the INFO log here")
    add_quiet(parser)


def config_from_args(args: argparse.Namespace):
    """The :class:`fastsample.training.trainer.TrainConfig` of the parsed flags."""
    from fastsample.training.trainer import ARCHITECTURE_FIELDS, TrainConfig, init_source

    # Architecture flags not given: the --init-from source's (so post-training needs no repeated flags),
    # else the defaults; given ones that differ from the source's are refused by the trainer.
    source = init_source(args.init_from)["architecture"] if args.init_from is not None else {}
    architecture = {}
    for name in ARCHITECTURE_FIELDS:
        value = getattr(args, name)
        architecture[name] = value if value is not None else source.get(name, getattr(TrainConfig, name))
    sampler_kwargs = {}
    if args.sampler == "logit_normal":
        sampler_kwargs = {"mean": args.logit_mean, "std": args.logit_std}
    elif args.sampler == "mode":
        sampler_kwargs = {"mode_scale": args.mode_scale}
    return TrainConfig(
        output_dir=args.out,
        steps=args.train_steps,
        batch_size=args.batch_size,
        lr=args.lr,
        warmup_steps=args.warmup_steps,
        weighting=args.weighting,
        gamma=args.snr_gamma,
        sampler=args.sampler,
        sampler_kwargs=sampler_kwargs,
        prediction_type=args.prediction_type,
        mixflow_gamma=args.mixflow_gamma,
        label_dropout=args.label_dropout,
        ema_decay=args.ema_decay,
        **architecture,
        seed=args.seed,
        mixed_precision=args.mixed_precision,
        compile=args.compile,
        checkpoint_every_steps=args.checkpoint_every_steps,
        checkpoint_every_minutes=args.checkpoint_every_minutes,
        keep_checkpoints=args.keep_checkpoints,
        export_dir=args.export,
        num_threads=args.num_threads,
        log_every=args.log_every,
        progress=not args.quiet,
        init_from=args.init_from,
    )


def _check_resume(args: argparse.Namespace) -> None:
    """``--resume latest`` continues a run: with no checkpoint in ``--out`` it is refused, not silently a
    fresh run (a named checkpoint folder is checked by the trainer)."""
    if args.resume == "latest" and args.init_from is None:  # with --init-from: the trainer refuses both
        from fastsample.training.trainer import latest_checkpoint

        if latest_checkpoint(args.out) is None:
            raise CommandError(
                "--resume",
                f"'latest': no checkpoint in {args.out!r} to resume; omit --resume to start a new run there",
            )


def run(args: argparse.Namespace) -> int:
    _check_resume(args)
    root = logging.getLogger()
    handlers: list[logging.Handler] = []
    if args.log_file:  # the file gets the INFO log whatever the console's level
        Path(args.log_file).parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(args.log_file)
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
        handler.setLevel(logging.INFO)
        for existing in root.handlers:
            existing.setLevel(root.level)
        root.addHandler(handler)
        handlers.append(handler)
        root.setLevel(min(root.level, logging.INFO))
    try:
        from fastsample.training.trainer import train

        config = config_from_args(args)
        summary = train(config, resume=args.resume)
    finally:
        for handler in handlers:
            root.removeHandler(handler)
            handler.close()
    print(
        f"trained to step {summary['step']} (loss {summary['loss']:.5f}) in {summary['seconds']:.0f} s; "
        f"checkpoints in {summary['output_dir']}",
        file=sys.stdout,
    )
    return 0
