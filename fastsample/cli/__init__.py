"""The ``fastsample`` command line.

Each command is a small module of this package with ``NAME``, ``HELP``, ``add_arguments(parser)`` and
``run(args)``. Building the parser imports only these modules and the standard library, so ``fastsample
--help`` and usage errors answer at once; ``run`` imports the capability code (torch, diffusers) when the
command actually runs.

Conventions shared by every command: ``--out`` for what a command writes, ``--pipeline
embedded|fixture:NAME|PATH`` (one loader, :func:`fastsample.cli.loading.load_pipeline`), ``--quiet``
for no progress bar, ``--steps`` for sampling steps only. Logging is at WARNING unless ``-v`` (INFO; ``-vv``
DEBUG). An expected mistake prints ``fastsample CMD: error: ...`` and exits with status 2; ``--debug`` (or
``-v``) shows the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import shlex
import sys
from collections.abc import Sequence
from types import ModuleType

from fastsample import __version__
from fastsample.cli._common import CommandError, Formatter

__all__ = ["COMMAND_MODULES", "build_parser", "main"]

# In the order `fastsample --help` lists them: the main job first.
COMMAND_MODULES: tuple[str, ...] = (
    "fastsample.cli.bench",
    "fastsample.cli.solver_table",
    "fastsample.cli.fit_grid",
    "fastsample.cli.tune",
    "fastsample.cli.fid",
    "fastsample.cli.latency",
    "fastsample.cli.train",
    "fastsample.cli.train_featurenet",
    "fastsample.cli.train_guidance",
    "fastsample.cli.train_router",
)

# Exceptions that an expected mistake raises from inside a command (bad path, bad file, bad value, missing
# optional dependency): reported in one line with exit status 2 unless --debug/-v asks for the traceback.
_EXPECTED = (CommandError, ValueError, TypeError, FileNotFoundError, NotADirectoryError, ImportError)


def _add_verbosity(parser: argparse.ArgumentParser, top: bool) -> None:
    # On subcommands the defaults are SUPPRESSed so that `fastsample -v bench` is not reset by `bench`.
    default = {} if top else {"default": argparse.SUPPRESS}
    parser.add_argument(
        "-v",
        "--verbose",
        action="count",
        help="log INFO (-vv: DEBUG) and show tracebacks (default: warnings only)",
        **({"default": 0} if top else default),
    )
    parser.add_argument(
        "--debug",
        action="store_true",
        help="log DEBUG and show the full traceback of any error",
        **({"default": False} if top else default),
    )


def _command_modules() -> list[ModuleType]:
    return [importlib.import_module(name) for name in COMMAND_MODULES]


def build_parser() -> argparse.ArgumentParser:
    """The ``fastsample`` parser with every command (imports no torch/diffusers)."""
    parser = argparse.ArgumentParser(
        prog="fastsample",
        description="Faster and better diffusers sampling, measured. "
        "Run `fastsample <command> --help` for a command's options.",
        formatter_class=Formatter,
    )
    parser.add_argument("--version", action="version", version=f"fastsample {__version__}")
    _add_verbosity(parser, top=True)
    subparsers = parser.add_subparsers(dest="command", metavar="<command>", title="commands")
    for module in _command_modules():
        sub = subparsers.add_parser(
            module.NAME,
            help=module.HELP,
            description=getattr(module, "DESCRIPTION", module.HELP),
            formatter_class=Formatter,
        )
        module.add_arguments(sub)
        _add_verbosity(sub, top=False)
        sub.set_defaults(func=module.run, _parser=sub, command_line=f"fastsample {module.NAME}")
    return parser


def _configure_logging(verbosity: int, debug: bool) -> None:
    level = logging.DEBUG if debug or verbosity >= 2 else logging.INFO if verbosity == 1 else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", force=True)
    logging.captureWarnings(True)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``fastsample ARGV``; returns the exit status (2 for a usage error or an expected mistake)."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.command_line = shlex.join(["fastsample", *argv])  # recorded in reports
    if args.command is None:
        parser.print_help()
        return 0
    if getattr(args, "_required_out", False) and args.out is None:
        args._parser.error("the following arguments are required: --out")
    _configure_logging(args.verbose, args.debug)
    from tqdm.contrib.logging import logging_redirect_tqdm  # light; keeps log lines out of progress bars

    try:
        with logging_redirect_tqdm():
            return int(args.func(args) or 0)
    except _EXPECTED as error:
        if args.debug or args.verbose:
            raise
        message = str(error) if isinstance(error, CommandError) else f"{type(error).__name__}: {error}"
        args._parser.print_usage(sys.stderr)
        print(f"{args._parser.prog}: error: {message} (--debug shows the traceback)", file=sys.stderr)
        return 2
