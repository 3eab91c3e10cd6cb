"""``fastsample solver-table``: the exact Gaussian-mixture solver table (see fastsample.zoo.solver_table)."""

from __future__ import annotations

import argparse
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the zoo's subcommands to the ``fastsample`` command line."""
    from fastsample.zoo.solver_table import add_arguments

    parser = subparsers.add_parser(
        "solver-table",
        help="measure schedulers against the exact Gaussian-mixture oracle (median error, blow-ups)",
        description="Median error / blow-up rate of diffusers' and fastsample's schedulers against the exact "
        "probability-flow ODE solution of a Gaussian mixture, at several NFE and guidance scales.",
    )
    add_arguments(parser)
    parser.set_defaults(func=_solver_table)


def _solver_table(args: argparse.Namespace) -> int:
    from fastsample.zoo.solver_table import run_from_args

    command = "fastsample " + " ".join(sys.argv[1:]) if sys.argv and "fastsample" in sys.argv[0] else None
    print(run_from_args(args, command or "fastsample solver-table"))
    return 0
