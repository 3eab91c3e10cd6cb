"""``fastsample bench``: diffusers' samplers against fastsample's recipes (:mod:`fastsample.eval.bench`)."""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

from fastsample.cli._common import CommandError, add_out, add_quiet, positive_int

NAME = "bench"
HELP = (
    "the main job: diffusers baselines vs fastsample recipes (latency ratio, NFE, FD, accuracy, saturation)"
)

# Mirrors of fastsample.eval.bench's tables (a test checks they agree), so --help needs no torch.
DEFAULT_RECIPE_NAMES = (
    "baseline",
    "dpm++2m-10",
    "ddim-10",
    "plms-10",
    "euler-10",
    "ghvb-10",
    "hb-10",
    "ghvb-10-ag",
    "ghvb-10-apg",
    "ghvb-10-fora",
    "composed",
    "composed-kernels",
)
QUICK_RECIPE_NAMES = ("quick-baseline", "quick-ddim", "quick-ghvb-ag")
DEFAULT_SAMPLES = 200
QUICK_SAMPLES = 4
DEFAULT_BATCH_SIZE = 40
DEFAULT_REFERENCE_SAMPLES = 2000
QUICK_REFERENCE_SAMPLES = 200
DTYPES = ("float32", "float16", "bfloat16")
DEFAULT_OUT = "fastsample-bench"

DESCRIPTION = f"""\
Run the benchmark table on the embedded default DiT (or a saved PixelDiTPipeline folder) and write a report
folder: report.md, results.json, report_pareto.png and grids/.

Every recipe samples the same balanced class labels from the same initial noise; batches of all recipes are
interleaved so that load drift hits every recipe alike. Latency ratios are taken against the baseline
(diffusers DPM-Solver++ 2M, 50 steps, full CFG) measured in the same run.

Configs: {", ".join(DEFAULT_RECIPE_NAMES)}; with --quick: {", ".join(QUICK_RECIPE_NAMES)}.

Examples:
  fastsample bench                         # the full table (minutes on a CPU)
  fastsample bench --quick --out /tmp/b    # a smoke run
  fastsample bench --configs ghvb-10,composed --samples 100
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_out(parser, "report folder", DEFAULT_OUT)
    parser.add_argument(
        "--samples",
        type=positive_int,
        default=None,
        help=f"generated images per config (default {DEFAULT_SAMPLES}; {QUICK_SAMPLES} with --quick)",
    )
    parser.add_argument(
        "--batch-size",
        type=positive_int,
        default=None,
        help=f"images per pipeline call (default min(samples, {DEFAULT_BATCH_SIZE}))",
    )
    parser.add_argument(
        "--reference-samples",
        type=positive_int,
        default=None,
        help=f"real procedural images of the FD reference (default {DEFAULT_REFERENCE_SAMPLES}; "
        f"{QUICK_REFERENCE_SAMPLES} with --quick)",
    )
    parser.add_argument("--quick", action="store_true", help="tiny run: 3 configs, 4 samples, 2-4 steps")
    parser.add_argument(
        "--configs",
        default=None,
        help="comma-separated config names (the baseline always runs; default: all of the table)",
    )
    parser.add_argument(
        "--pipeline",
        default="embedded",
        metavar="SPEC",
        help="'embedded' (the shipped DiT) or PATH, a PixelDiTPipeline folder written by save_pretrained",
    )
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda, cuda:1")
    parser.add_argument("--dtype", default="float32", choices=DTYPES, help="dtype of the pipeline")
    parser.add_argument(
        "--guidance-scale", type=float, default=4.0, help="CFG scale of every row (> 1: every row uses CFG)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the noise, the labels and the reference")
    parser.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        help="torch CPU threads (default: all cores of this process; on a busy machine use the free cores)",
    )
    parser.add_argument(
        "--fd-tolerance",
        type=float,
        default=0.1,
        help="relative FD margin for 'matches the baseline' in the verdict (0.1 = +10%%)",
    )
    add_quiet(parser)


def settings_from_args(args: argparse.Namespace):
    """The :class:`fastsample.eval.bench.BenchSettings` of the parsed flags (CommandError naming the flag)."""
    from fastsample.cli.pipeline import check_device
    from fastsample.eval.bench import DEFAULT_RECIPES, QUICK_RECIPES, RECIPES, BenchSettings

    table = QUICK_RECIPES if args.quick else DEFAULT_RECIPES
    recipes = table
    if args.configs is not None:
        names = [name.strip() for name in args.configs.split(",") if name.strip()]
        unknown = [name for name in names if name not in RECIPES]
        if unknown or not names:
            raise CommandError(
                "--configs", f"unknown config(s) {unknown or names}; choose from {', '.join(RECIPES)}"
            )
        baseline = table[0]  # ratios need the baseline in the same run
        recipes = (baseline, *(RECIPES[name] for name in dict.fromkeys(names) if name != baseline.name))
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
    if not math.isfinite(args.guidance_scale) or args.guidance_scale <= 1:
        raise CommandError(
            "--guidance-scale",
            f"must be > 1 (every row uses classifier-free guidance), got {args.guidance_scale}",
        )
    if not math.isfinite(args.fd_tolerance) or args.fd_tolerance < 0:
        raise CommandError("--fd-tolerance", f"must be >= 0, got {args.fd_tolerance}")
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
    return BenchSettings(
        out=Path(args.out),
        recipes=tuple(recipes),
        samples=samples,
        batch_size=min(batch_size, samples),
        reference_samples=reference,
        guidance_scale=float(args.guidance_scale),
        seed=args.seed,
        device=args.device,
        dtype=args.dtype,
        pipeline=pipeline,
        fd_tolerance=args.fd_tolerance,
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

    previous_threads = torch.get_num_threads()
    torch.set_num_threads(args.threads or _core_count())
    try:
        results = run_bench(settings, command=args.command_line, progress=not args.quiet)
    finally:
        torch.set_num_threads(previous_threads)
    print(results["verdict"])
    print(f"report: {settings.out / 'report.md'} ({results['wall_time_s']:.0f} s)")
    return 0
