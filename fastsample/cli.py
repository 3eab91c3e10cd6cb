"""The ``fastsample`` command line.

Each capability contributes its subcommands through a ``register(subparsers)`` function in its own
``commands`` module; this file only assembles them, so a subcommand lives next to the code it runs.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from fastsample import __version__

# Modules that define ``register(subparsers: argparse._SubParsersAction) -> None``.
COMMAND_MODULES: tuple[str, ...] = (
    "fastsample.zoo.commands",
    "fastsample.zoo.featurenet",
    "fastsample.training.commands",
    "fastsample.guidance.commands",
    "fastsample.cache.commands",
    "fastsample.eval.commands",
    "fastsample.eval.bench",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fastsample",
        description="Faster and better diffusers sampling, measured. "
        "Run `fastsample <command> --help` for details.",
    )
    parser.add_argument("--version", action="version", version=f"fastsample {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    subparsers = parser.add_subparsers(dest="command", metavar="<command>", title="commands")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    if args.command is None:
        parser.print_help()
        return 0
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
