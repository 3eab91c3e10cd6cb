"""``fastsample train``: train the embedded pixel-space DiT on the procedural zoo data.

Examples::

    fastsample train --steps 20000 --output-dir runs/dit --export fastsample/zoo/weights
    fastsample train --output-dir runs/dit --resume latest          # continue bit-exactly
    fastsample train --output-dir runs/post --init-from runs/dit/checkpoint-20000 --steps 600  # post-train
    accelerate launch --num_processes 2 -m fastsample.training.commands train --steps 100 --output-dir runs/x

``python -m fastsample.training.commands train ...`` is the same command without the top-level CLI.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from .objective import WEIGHTINGS
from .samplers import SAMPLER_NAMES

__all__ = ["main", "register"]


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _add_train_arguments(parser: argparse.ArgumentParser) -> None:
    from .trainer import TRAIN_PREDICTION_TYPES, TrainConfig

    d = TrainConfig()
    parser.add_argument("--output-dir", default=d.output_dir, help="checkpoints and logs")
    parser.add_argument("--steps", type=_positive_int, default=d.steps, help="total optimiser steps")
    parser.add_argument("--batch-size", type=_positive_int, default=d.batch_size, help="batch per process")
    parser.add_argument("--lr", type=float, default=d.lr)
    parser.add_argument("--warmup-steps", type=int, default=d.warmup_steps)
    parser.add_argument("--weighting", choices=WEIGHTINGS, default=d.weighting)
    parser.add_argument("--snr-gamma", type=float, default=d.gamma, help="Min-SNR gamma (> 0)")
    parser.add_argument("--sampler", choices=SAMPLER_NAMES, default=d.sampler, help="timestep density")
    parser.add_argument("--logit-mean", type=float, default=0.0, help="logit_normal mean (>0 = noisier)")
    parser.add_argument("--logit-std", type=float, default=1.0)
    parser.add_argument("--mode-scale", type=float, default=1.29)
    parser.add_argument(
        "--prediction-type",
        choices=TRAIN_PREDICTION_TYPES,
        default=d.prediction_type,
        help="flow = rectified flow (FlowMatch Euler schedule, target ε − x0)",
    )
    parser.add_argument(
        "--mixflow-gamma", type=float, default=None, help="MixFlow range γ in (0, 1] (experimental on VP)"
    )
    parser.add_argument("--label-dropout", type=float, default=d.label_dropout)
    parser.add_argument("--ema-decay", type=float, default=d.ema_decay)
    # Architecture: None = the --init-from source's, else the default shown.
    parser.add_argument("--width", type=_positive_int, default=None, help=f"transformer width ({d.width})")
    parser.add_argument("--head-dim", type=_positive_int, default=None, help=f"({d.head_dim})")
    parser.add_argument("--depth", type=_positive_int, default=None, help=f"({d.depth})")
    parser.add_argument("--patch-size", type=_positive_int, default=None, help=f"({d.patch_size})")
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--mixed-precision", choices=("no", "bf16"), default=d.mixed_precision)
    parser.add_argument("--checkpoint-every-steps", type=int, default=0)
    parser.add_argument("--checkpoint-every-minutes", type=float, default=d.checkpoint_every_minutes)
    parser.add_argument("--keep-checkpoints", type=_positive_int, default=d.keep_checkpoints)
    parser.add_argument(
        "--resume",
        default=None,
        help="a checkpoint folder, or 'latest' in --output-dir. A checkpoint folder holds "
        "model.safetensors, ema.safetensors, optimizer.bin, scheduler.bin, random_states_<p>.pkl and "
        "trainer_state.json (earlier versions: custom_checkpoint_0.pkl for the EMA); every file is checked "
        "first and only tensors are ever unpickled (torch.load(weights_only=True)): a file that would run "
        "code is refused, by name",
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
    parser.add_argument("--num-threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--log-every", type=_positive_int, default=d.log_every)
    parser.add_argument("--log-file", default=None, help="also write the log here")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def _config_from_args(args: argparse.Namespace):
    from .trainer import ARCHITECTURE_FIELDS, TrainConfig, init_source

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
        output_dir=args.output_dir,
        steps=args.steps,
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
        checkpoint_every_steps=args.checkpoint_every_steps,
        checkpoint_every_minutes=args.checkpoint_every_minutes,
        keep_checkpoints=args.keep_checkpoints,
        export_dir=args.export,
        num_threads=args.num_threads,
        log_every=args.log_every,
        progress=not args.no_progress,
        init_from=args.init_from,
    )


def _run_train(args: argparse.Namespace) -> int:
    from .trainer import train

    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if args.log_file:
        Path(args.log_file).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(args.log_file))
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        handlers=handlers,
        force=True,
    )
    try:
        config = _config_from_args(args)
        summary = train(config, resume=args.resume)
    except (ValueError, TypeError, FileNotFoundError) as error:
        print(f"fastsample train: error: {error}", file=sys.stderr)
        return 2
    print(
        f"trained to step {summary['step']} (loss {summary['loss']:.5f}) in {summary['seconds']:.0f} s; "
        f"checkpoints in {summary['output_dir']}"
    )
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``train`` to the ``fastsample`` command line."""
    parser = subparsers.add_parser(
        "train",
        help="train the embedded DiT on the procedural zoo data (Min-SNR, samplers, EMA, resumable)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_train_arguments(parser)
    parser.set_defaults(func=_run_train)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fastsample.training.commands")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
