"""What every ``fastsample`` command shares: the help formatter, the common flags and their deprecated
spellings, argument types, and the error that a command raises for an expected mistake.

This module imports only the standard library: the whole parser is built without torch or diffusers, so
``fastsample --help`` and usage errors answer at once. A command's heavy code is imported when it runs.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from typing import Any

__all__ = [
    "PIPELINE_HELP",
    "CommandError",
    "Formatter",
    "add_deprecated_alias",
    "add_out",
    "add_pipeline",
    "add_quiet",
    "non_negative_int",
    "positive_float",
    "positive_int",
]

PIPELINE_HELP = (
    "'embedded' (the small pixel-space VP DiT shipped with fastsample; 'embedded:flow' its rectified-flow "
    "twin), 'fixture:NAME' (a tiny random-weight pipeline of fastsample.testing: sd, sdxl, dit, pixart, sd3, "
    "flux) or PATH (a local pipeline folder written by save_pretrained; nothing is downloaded)"
)


class CommandError(Exception):
    """An expected mistake found while a command runs: printed as ``fastsample CMD: error: argument
    --FLAG: MESSAGE`` with exit status 2, like argparse's own usage errors (no traceback without
    ``--debug``)."""

    def __init__(self, argument: str | None, message: str) -> None:
        self.argument = argument
        self.message = message
        super().__init__(f"argument {argument}: {message}" if argument else message)


class Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Every option's default shown after its help; descriptions printed as written (examples keep their
    line breaks)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        help_text = action.help or ""
        says_nothing = (
            action.default is None or action.default is False or isinstance(action, argparse._CountAction)
        )
        if says_nothing or "%(default)" in help_text:
            return help_text  # "default: None/False/0" says nothing
        return super()._get_help_string(action)


class _DeprecatedAlias(argparse.Action):
    """A hidden old spelling of an option: warns once on stderr, then acts like the new one."""

    def __init__(self, option_strings, dest, new: str, store_const: Any = None, **kwargs) -> None:
        self.new = new
        self.store_const = store_const
        if store_const is not None:
            kwargs["nargs"] = 0
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        print(
            f"{parser.prog}: warning: {option_string} is deprecated and will be removed in the next "
            f"release; use {self.new}",
            file=sys.stderr,
        )
        setattr(namespace, self.dest, self.store_const if self.store_const is not None else values)


def add_deprecated_alias(
    parser: argparse.ArgumentParser,
    *old: str,
    new: str,
    dest: str,
    type: Callable[[str], Any] | None = None,
    store_const: Any = None,
) -> None:
    """Accept ``old`` spellings of ``new`` (same ``dest``) without listing them in ``--help``."""
    parser.add_argument(
        *old,
        dest=dest,
        action=_DeprecatedAlias,
        new=new,
        type=type,
        store_const=store_const,
        default=argparse.SUPPRESS,
        help=argparse.SUPPRESS,
    )


def add_out(
    parser: argparse.ArgumentParser,
    help: str,
    default: Any = None,
    *,
    old: tuple[str, ...] = (),
    required: bool = False,
    metavar: str = "PATH",
) -> None:
    """``--out``: where a command writes its result (``old``: former spellings kept as hidden aliases; a
    required ``--out`` given by an old spelling counts, checked by :func:`fastsample.cli.main`)."""
    if required and old:
        help += " (required)"
        parser.set_defaults(_required_out=True)
    parser.add_argument("--out", default=default, required=required and not old, metavar=metavar, help=help)
    if old:
        add_deprecated_alias(parser, *old, new="--out", dest="out")


def add_pipeline(parser: argparse.ArgumentParser, default: str | None = "embedded", help: str = "") -> None:
    """``--pipeline embedded|fixture:NAME|PATH``, loaded by :func:`fastsample.cli.pipeline.load_pipeline`."""
    parser.add_argument(
        "--pipeline",
        default=default,
        required=default is None,
        metavar="SPEC",
        help=(help + "; " if help else "") + PIPELINE_HELP,
    )


def add_quiet(parser: argparse.ArgumentParser) -> None:
    """``--quiet``: no progress bar (``--no-progress`` kept as a hidden alias)."""
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    add_deprecated_alias(parser, "--no-progress", new="--quiet", dest="quiet", store_const=True)


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def positive_int(text: str) -> int:
    """An ``int`` >= 1 (argparse type)."""
    value = _integer(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    """An ``int`` >= 0 (argparse type)."""
    value = _integer(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value}")
    return value


def positive_float(text: str) -> float:
    """A finite ``float`` > 0 (argparse type)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text}")
    return value
