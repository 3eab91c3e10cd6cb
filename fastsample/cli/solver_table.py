"""``fastsample solver-table``: schedulers against the exact Gaussian-mixture oracle
(:mod:`fastsample.zoo.solver_table`)."""

from __future__ import annotations

import argparse

from fastsample.cli._common import add_out, add_quiet, positive_int

NAME = "solver-table"
HELP = "measure schedulers against the exact Gaussian-mixture oracle (median error, blow-ups)"
DESCRIPTION = """\
Median error and blow-up rate of diffusers' and fastsample's schedulers against the exact probability-flow
ODE solution of a Gaussian mixture, at several NFE and guidance scales; prints a markdown table.

Examples:
  fastsample solver-table --quick
  fastsample solver-table --sensitivity 0,1,2,3,4 --out table.md
"""

# Mirrors of fastsample.zoo.solver_table / oracle (a test checks they agree), so --help needs no torch.
DEFAULT_SAMPLES = 1000
QUICK_SAMPLES = 200
DEFAULT_MIXTURE_SEED = 0
LABEL_MODES = ("uniform", "prior")


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The flags of ``fastsample solver-table`` (also used by ``benchmarks/solver_table.py``)."""
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a subset: 5 diffusers rows + fastsample's, NFE 5 and 10, guidance 0 and 7.5, "
        f"{QUICK_SAMPLES} samples unless --samples is given",
    )
    parser.add_argument(
        "--samples",
        type=positive_int,
        default=None,
        help=f"number of samples (default {DEFAULT_SAMPLES}; {QUICK_SAMPLES} with --quick)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the noise and the labels")
    parser.add_argument(
        "--mixture-seed", type=int, default=DEFAULT_MIXTURE_SEED, help="seed of the random mixture"
    )
    parser.add_argument(
        "--labels",
        choices=LABEL_MODES,
        default="uniform",
        help="class labels: uniform over the classes, or drawn from the mixture weights p(y)",
    )
    add_out(parser, "also write the markdown report to this file")
    parser.add_argument(
        "--sensitivity",
        default=None,
        metavar="SEEDS",
        help="also run the headline cells on these comma-separated mixture seeds, e.g. 0,1,2,3,4",
    )
    add_quiet(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    from fastsample.zoo.solver_table import run_from_args

    print(run_from_args(args, args.command_line))
    return 0
