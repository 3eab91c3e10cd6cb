"""The ``fastsample`` parser: built without torch/diffusers, one vocabulary, every option explained, the
mirrored constants equal to the library's."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from dataclasses import asdict

import pytest

from fastsample.cli import COMMAND_MODULES, bench, build_parser, fid, latency, main, solver_table, train
from fastsample.cli import train_router as train_router_cli

HEAVY = ("torch", "diffusers", "numpy", "transformers", "accelerate")


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def _imported_modules(*argv: str) -> tuple[int, str, set[str]]:
    """Run ``python -X importtime -m fastsample.cli ARGV`` in a fresh interpreter; the top-level modules it
    imported."""
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "fastsample.cli", *argv],
        capture_output=True,
        text=True,
        timeout=120,
    )
    names = {
        line.split("|")[-1].strip().split(".")[0]
        for line in result.stderr.splitlines()
        if line.startswith("import time:")
    }
    return result.returncode, result.stdout + result.stderr, names


@pytest.mark.parametrize(
    "argv, code",
    [
        (["--help"], 0),
        (["bench", "--help"], 0),
        (["train", "--help"], 0),
        (["solver-table", "--samples", "0"], 2),  # a usage error answers as fast as --help
        (["fid"], 2),
    ],
)
def test_help_and_usage_errors_import_no_heavy_module(argv, code):
    returncode, output, imported = _imported_modules(*argv)
    assert returncode == code, output[-2000:]
    assert not imported & set(HEAVY), sorted(imported & set(HEAVY))


def test_bench_is_listed_first_and_every_command_is_there(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    names = [__import__(m, fromlist=["NAME"]).NAME for m in COMMAND_MODULES]
    positions = [re.search(rf"^    {re.escape(name)}\s", text, re.M).start() for name in names]
    assert names[0] == "bench" and positions == sorted(positions)


@pytest.mark.parametrize("command", [m.rsplit(".", 1)[1].replace("_", "-") for m in COMMAND_MODULES])
def test_every_option_has_help_and_no_rest_markup(command, capsys):
    sub = _subparsers(build_parser())[command]
    for action in sub._actions:
        if isinstance(action, argparse._HelpAction) or action.help == argparse.SUPPRESS:
            continue
        assert action.help, f"{command} {action.option_strings or action.dest} has no help"
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = capsys.readouterr().out
    for markup in ("``", ":class:", ":func:", ":mod:", ":meth:", "§"):
        assert markup not in text, f"{command} --help prints {markup!r}"
    formatter = sub._get_formatter()
    for action in sub._actions:  # a meaningful default is shown
        shown = action.option_strings and action.default not in (None, False, 0, argparse.SUPPRESS)
        if shown and action.help != argparse.SUPPRESS and not isinstance(action, argparse._HelpAction):
            assert "(default: %(default)s)" in formatter._get_help_string(action), action.option_strings


def test_defaults_are_printed(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "total optimiser steps of the run (default: 20000)" in text
    assert "peak AdamW learning rate (default: 0.0007)" in text
    assert "images per process (default: 64)" in text


def test_one_vocabulary_across_commands():
    parsers = _subparsers(build_parser())
    for name, sub in parsers.items():
        visible = {
            option: action
            for action in sub._actions
            if action.help != argparse.SUPPRESS
            for option in action.option_strings
        }
        for spelling in ("--output", "--output-dir", "-o", "--json", "--no-progress", "--tiny"):
            assert spelling not in visible, f"{name} still lists {spelling}"
        if "--steps" in visible:
            assert "sampling steps" in visible["--steps"].help, name
        assert "-v" in visible and "--debug" in visible
    for name in (
        "bench",
        "solver-table",
        "fid",
        "latency",
        "train",
        "train-guidance",
        "train-router",
        "tune",
    ):
        options = {o for a in parsers[name]._actions for o in a.option_strings}
        assert "--out" in options and "--quiet" in options, name
    for name in ("latency", "train-guidance", "train-router", "bench", "tune"):
        options = {o for a in parsers[name]._actions for o in a.option_strings}
        assert "--pipeline" in options, name


def test_deprecated_spellings_still_work_and_warn(capsys):
    parser = build_parser()
    args = parser.parse_args(["train", "--steps", "3", "--output-dir", "x", "--no-progress"])
    assert (args.train_steps, args.out, args.quiet) == (3, "x", True)
    err = capsys.readouterr().err
    for old, new in (("--steps", "--train-steps"), ("--output-dir", "--out"), ("--no-progress", "--quiet")):
        assert f"{old} is deprecated" in err and f"use {new}" in err
    args = parser.parse_args(["train-router", "--output", "r", "--pipeline", "fixture:dit"])
    assert args.out == "r"
    with pytest.raises(SystemExit) as error:
        main(["train-router", "--pipeline", "fixture:dit"])
    assert error.value.code == 2 and "required: --out" in capsys.readouterr().err
    args = parser.parse_args(["fid", "a", "b", "--json", "r.json"])
    assert args.out == "r.json"
    argv = ["--pipeline", "fixture:dit", "--output", "h", "--inference-steps", "4", "--learning-rate", "0.1"]
    args = parser.parse_args(["train-guidance", *argv])
    assert (args.out, args.steps, args.lr) == ("h", 4, 0.1)
    args = parser.parse_args(["latency", "--tiny", "dit"])
    assert latency.pipeline_spec(args) == "fixture:dit"
    assert "--tiny NAME is deprecated" in capsys.readouterr().err


def test_verbosity_flags_work_before_and_after_the_command():
    parser = build_parser()
    assert parser.parse_args(["-v", "fid", "a", "b"]).verbose == 1
    assert parser.parse_args(["fid", "a", "b", "-vv"]).verbose == 2
    assert parser.parse_args(["fid", "a", "b", "--debug"]).debug is True
    assert parser.parse_args(["fid", "a", "b"]).verbose == 0


def test_mirrored_constants_equal_the_library():
    from fastsample.cache.train import RouterTrainingConfig
    from fastsample.eval import bench as bench_lib
    from fastsample.eval.extractors import EXTRACTOR_NAMES
    from fastsample.eval.inception import INCEPTION_WEIGHTS_ENV, INCEPTION_WEIGHTS_FILENAME
    from fastsample.eval.latency import MIN_REPEATS, SCOPES
    from fastsample.eval.preprocess import PREPROCESSING_MODES
    from fastsample.training.objective import WEIGHTINGS
    from fastsample.training.samplers import SAMPLER_NAMES
    from fastsample.training.trainer import ARCHITECTURE_FIELDS, TRAIN_PREDICTION_TYPES, TrainConfig
    from fastsample.zoo import oracle
    from fastsample.zoo import solver_table as table_lib

    assert (bench_lib.MODELS, bench_lib.SIZES) == (bench.MODELS, bench.SIZES)
    assert (bench_lib.REFERENCE_STEPS, bench_lib.QUICK_REFERENCE_STEPS) == (
        bench.REFERENCE_STEPS,
        bench.QUICK_REFERENCE_STEPS,
    )
    assert (fid.EXTRACTOR_NAMES, fid.PREPROCESSING_MODES) == (EXTRACTOR_NAMES, PREPROCESSING_MODES)
    assert (fid.INCEPTION_WEIGHTS_ENV, fid.INCEPTION_WEIGHTS_FILENAME) == (
        INCEPTION_WEIGHTS_ENV,
        INCEPTION_WEIGHTS_FILENAME,
    )
    assert (latency.SCOPES, latency.MIN_REPEATS) == (SCOPES, MIN_REPEATS)
    assert (train.WEIGHTINGS, train.SAMPLER_NAMES) == (WEIGHTINGS, SAMPLER_NAMES)
    assert (train.TRAIN_PREDICTION_TYPES, train.ARCHITECTURE_FIELDS) == (
        TRAIN_PREDICTION_TYPES,
        ARCHITECTURE_FIELDS,
    )
    config = asdict(TrainConfig())
    assert {k: config[k] for k in train.DEFAULTS} == train.DEFAULTS
    router = asdict(RouterTrainingConfig())
    assert {k: router[k] for k in train_router_cli.DEFAULTS} == train_router_cli.DEFAULTS
    assert set(router) == set(train_router_cli._CONFIG_FIELDS)
    assert solver_table.LABEL_MODES == oracle.LABEL_MODES
    assert (solver_table.QUICK_SAMPLES, solver_table.DEFAULT_MIXTURE_SEED) == (
        table_lib.QUICK_SAMPLES,
        table_lib.DEFAULT_MIXTURE_SEED,
    )
