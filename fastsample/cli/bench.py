"""``fastsample bench``: diffusers' samplers against fastsample's recipes (:mod:`fastsample.eval.bench`)."""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

from fastsample.cli._common import CommandError, add_out, add_quiet, positive_int

NAME = "bench"
HELP = "the main job: the speed/quality frontier of diffusers, fastsample and cache-dit recipes"

# Mirrors of fastsample.eval.bench's tables (a test checks they agree), so --help needs no torch.
MODELS = ("vp", "flow")
SIZES = ("quick", "default", "full")
DEFAULT_SAMPLES = 100
QUICK_SAMPLES = 4
DEFAULT_BATCH_SIZE = 20
DEFAULT_REFERENCE_SAMPLES = 2000
QUICK_REFERENCE_SAMPLES = 200
REFERENCE_STEPS = 100
QUICK_REFERENCE_STEPS = 8
DTYPES = ("float32", "float16", "bfloat16")
DEFAULT_OUT = "fastsample-bench"
EXPECTED_DEFAULT = "about 6 minutes per model at the default sample count on an idle 2-core CPU"

DESCRIPTION = f"""\
Find the speed/quality frontier on the embedded default DiT (or a saved PixelDiTPipeline folder) and write a
report folder: report.md, results.json, <model>_pareto.png and <model>_grid.png.

Every recipe (scheduler x steps x guidance x cache x kernels) samples the same balanced class labels from the
same initial noise as the reference (VP: DPM-Solver++ 2M, {REFERENCE_STEPS} steps, full CFG; flow: FlowMatch
Euler, {REFERENCE_STEPS} steps). Quality: paired PSNR/SSIM/feature distance to the reference with bootstrap
intervals, FD with its interval and the real-vs-real floor, shape and hue accuracy, saturation. For each
quality level (PSNR >= 30 dB, >= 25 dB, FD within the reference's interval) the report names the fastest
recipe of each family (diffusers, fastsample, cache-dit when installed) and fastsample's speed-up with the
p10-p90 of per-round ratios; a winner is named only when that band excludes 1.

The default recipe set takes about 6 minutes on an idle 2-core CPU (VP); --quick is a smoke run; --full is
the complete grid (hours on a CPU).

Examples:
  fastsample bench                          # the default frontier (VP)
  fastsample bench --quick --out /tmp/b     # a smoke run
  fastsample bench --model both --samples 50
  fastsample bench --full --device cuda
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_out(parser, "report folder", DEFAULT_OUT)
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="smoke run: a few 2-4 step recipes, 4 samples")
    size.add_argument("--full", action="store_true", help="the complete grid of schedulers, steps and caches")
    parser.add_argument(
        "--model", default="vp", choices=(*MODELS, "both"), help="embedded model: VP, flow matching, or both"
    )
    parser.add_argument(
        "--samples",
        type=positive_int,
        default=None,
        help=f"generated images per recipe (default {DEFAULT_SAMPLES}; {QUICK_SAMPLES} with --quick)",
    )
    parser.add_argument(
        "--batch-size",
        type=positive_int,
        default=None,
        help=f"images per pipeline call; each batch is one timed round (default min(samples, "
        f"{DEFAULT_BATCH_SIZE}))",
    )
    parser.add_argument(
        "--reference-samples",
        type=positive_int,
        default=None,
        help=f"real procedural images of the FD reference (default {DEFAULT_REFERENCE_SAMPLES}; "
        f"{QUICK_REFERENCE_SAMPLES} with --quick)",
    )
    parser.add_argument(
        "--reference-steps",
        type=positive_int,
        default=None,
        help=f"steps of the reference sampler (default {REFERENCE_STEPS}; {QUICK_REFERENCE_STEPS} with "
        "--quick)",
    )
    parser.add_argument(
        "--configs",
        default=None,
        help="comma-separated recipe names of the chosen set to run (the reference always runs; "
        "default: all)",
    )
    parser.add_argument(
        "--pipeline",
        default="embedded",
        metavar="SPEC",
        help="'embedded' (the shipped DiTs) or PATH, a PixelDiTPipeline folder written by save_pretrained",
    )
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda, cuda:1")
    parser.add_argument("--dtype", default="float32", choices=DTYPES, help="dtype of the pipeline")
    parser.add_argument(
        "--guidance-scale",
        type=float,
        default=4.0,
        help="CFG scale of every recipe (> 1: every recipe uses CFG)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the noise, the labels and the reference")
    parser.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        help="torch CPU threads (default: all cores of this process; on a busy machine use the free cores)",
    )
    add_quiet(parser)


def settings_from_args(args: argparse.Namespace):
    """The :class:`fastsample.eval.bench.BenchSettings` of the parsed flags (CommandError naming the flag)."""
    from fastsample.cli.pipeline import check_device
    from fastsample.eval.bench import BenchSettings, recipe_set

    size = "quick" if args.quick else "full" if args.full else "default"
    models = MODELS if args.model == "both" else (args.model,)
    names = None
    if args.configs is not None:
        names = tuple(dict.fromkeys(name.strip() for name in args.configs.split(",") if name.strip()))
        known = {r.name for model in models for r in recipe_set(model, size)}
        unknown = [name for name in names if name not in known]
        if unknown or not names:
            raise CommandError(
                "--configs",
                f"unknown config(s) {unknown or list(names)} for --model {args.model} ({size} set); choose "
                f"from {', '.join(sorted(known))}",
            )
    samples = args.samples if args.samples is not None else (QUICK_SAMPLES if args.quick else DEFAULT_SAMPLES)
    if samples < 2:
        raise CommandError(
            "--samples", f"must be >= 2 (a Fréchet distance needs a covariance), got {samples}"
        )
    batch_size = args.batch_size if args.batch_size is not None else DEFAULT_BATCH_SIZE
    reference = args.reference_samples
    if reference is None:
        reference = QUICK_REFERENCE_SAMPLES if args.quick else DEFAULT_REFERENCE_SAMPLES
    if reference < 2:
        raise CommandError("--reference-samples", f"must be >= 2, got {reference}")
    steps = args.reference_steps or (QUICK_REFERENCE_STEPS if args.quick else REFERENCE_STEPS)
    if not math.isfinite(args.guidance_scale) or args.guidance_scale <= 1:
        raise CommandError(
            "--guidance-scale",
            f"must be > 1 (every recipe uses classifier-free guidance), got {args.guidance_scale}",
        )
    check_device(args.device)
    pipeline = None
    if args.pipeline != "embedded":
        pipeline = Path(args.pipeline)
        if not (pipeline / "model_index.json").is_file():
            raise CommandError(
                "--pipeline",
                f"{args.pipeline!r} is not 'embedded' or a saved PixelDiTPipeline folder (no "
                "model_index.json); save one with PixelDiTPipeline.save_pretrained",
            )
        if args.model == "both":
            raise CommandError(
                "--model", "'both' needs the embedded models; a --pipeline folder is one model"
            )
    return BenchSettings(
        out=Path(args.out),
        models=models,
        size=size,
        samples=samples,
        batch_size=min(batch_size, samples),
        reference_samples=reference,
        reference_steps=steps,
        guidance_scale=float(args.guidance_scale),
        seed=args.seed,
        device=args.device,
        dtype=args.dtype,
        pipeline=pipeline,
        names=names,
        **({"n_boot": 200, "fd_boot": 50} if args.quick else {}),
    )


def _core_count() -> int:
    """CPU cores this process may use (its affinity mask where the OS exposes one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def run(args: argparse.Namespace) -> int:
    """Validate the flags, run the bench, print the verdict and where the report is."""
    settings = settings_from_args(args)
    import torch

    from fastsample.eval.bench import run_bench

    if not args.quiet:
        expected = {"quick": "seconds", "default": EXPECTED_DEFAULT, "full": "hours on a CPU"}[settings.size]
        recipes = sum(len(r) for r in settings.recipes.values())
        print(
            f"fastsample bench: {recipes} recipes + the reference on {', '.join(settings.models)}; expected "
            f"time {expected} ({'' if settings.size == 'quick' else '--quick for a smoke run, '}--help for "
            "the options)",
            file=sys.stderr,
        )
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(args.threads or _core_count())
    try:
        results = run_bench(settings, command=args.command_line, progress=not args.quiet)
    finally:
        torch.set_num_threads(previous_threads)
    print(results["headline"])
    print(f"report: {settings.out / 'report.md'} ({results['wall_time_s']:.0f} s)")
    return 0
