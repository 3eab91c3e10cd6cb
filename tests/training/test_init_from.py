"""``fastsample train --init-from``: post-training from a checkpoint or an export, and its refusals."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fastsample.training.trainer import (
    WEIGHT_FILE,
    TrainConfig,
    build_model,
    init_source,
    load_init_weights,
    read_checkpoint_ema,
)
from tests.training.test_train_cli import run_train

TINY_ARCH = {"width": 32, "head_dim": 16, "depth": 1, "patch_size": 8}


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A 3-step tiny flow run with a checkpoint and an export (shared by the tests of this module)."""
    root = tmp_path_factory.mktemp("source")
    extra = ["--prediction-type", "flow", "--weighting", "none", "--export", str(root / "export")]
    assert run_train(root / "run", 3, *extra) == 0
    return root


def _params(model):
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def test_weights_after_loading_equal_the_source_exactly(source):
    checkpoint, export = source / "run" / "checkpoint-3", source / "export"
    shadow = read_checkpoint_ema(checkpoint)["shadow_params"]
    exported = load_file(export / WEIGHT_FILE)
    for path, kind in ((checkpoint, "checkpoint"), (export, "export")):
        config = TrainConfig(**TINY_ARCH, prediction_type="flow", init_from=str(path))
        model = build_model(config)
        fresh = _params(model)
        assert load_init_weights(config, model)["kind"] == kind
        loaded = _params(model)
        assert any(not torch.equal(fresh[k], loaded[k]) for k in loaded)  # it did replace the init
        if kind == "checkpoint":  # the EMA weights, float32, bit for bit
            assert len(shadow) == len(loaded)
            for (name, value), ema in zip(loaded.items(), shadow, strict=True):
                assert value.dtype == torch.float32 and torch.equal(value, ema), name
        else:  # the fp16 export, upcast exactly
            assert loaded.keys() == exported.keys()
            for name, value in loaded.items():
                assert torch.equal(value, exported[name].float()), name


def test_post_training_starts_from_the_source_and_runs(source, tmp_path):
    """A 1-step run at lr 1e-6 (Adam moves each weight by ≲ lr) stays within 1e-5 of the source's EMA
    weights and far from a fresh initialisation; the run starts at step 0 and records its source."""
    checkpoint = source / "run" / "checkpoint-3"
    out = tmp_path / "post"
    flags = [
        "--prediction-type",
        "flow",
        "--lr",
        "1e-6",
        "--warmup-steps",
        "0",
        "--init-from",
        str(checkpoint),
    ]
    argv = ["train", "--out", str(out), "--train-steps", "1", "--quiet", "--batch-size", "4"]
    from fastsample.cli import main

    assert main(argv + flags) == 0  # no architecture flags: they come from the source
    assert not (out / "checkpoint-4").exists() and (out / "checkpoint-1").exists()
    saved = json.loads((out / "train_config.json").read_text())
    assert saved["init_from"] == str(checkpoint)
    assert {k: saved[k] for k in TINY_ARCH} == TINY_ARCH
    start_model = build_model(TrainConfig(**TINY_ARCH))
    load_init_weights(
        TrainConfig(**TINY_ARCH, prediction_type="flow", init_from=str(checkpoint)), start_model
    )
    start = _params(start_model)
    after = load_file(out / "checkpoint-1" / "model.safetensors")
    fresh = _params(build_model(TrainConfig(**TINY_ARCH)))
    assert max((after[k] - start[k]).abs().max().item() for k in start) < 1e-5
    assert max((after[k] - fresh[k]).abs().max().item() for k in start) > 1e-2

    # A few more steps at the default lr run, and the resumed run keeps the init_from record.
    assert run_train(out, 3, "--prediction-type", "flow", "--resume", "latest") == 0
    assert json.loads((out / "checkpoint-3" / "trainer_state.json").read_text())["step"] == 3
    assert json.loads((out / "train_config.json").read_text())["init_from"] == str(checkpoint)


def test_init_from_an_export_trains(source, tmp_path):
    assert (
        run_train(tmp_path / "post", 2, "--prediction-type", "flow", "--init-from", str(source / "export"))
        == 0
    )
    assert (tmp_path / "post" / "checkpoint-2" / "model.safetensors").exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--init-from", "{missing}"], "does not exist"),
        (["--init-from", "{empty}"], "neither a checkpoint folder"),
        (["--init-from", "{checkpoint}", "--resume", "latest"], "exclude each other"),
    ],
)
def test_refusals(source, tmp_path, capsys, extra, message):
    (tmp_path / "empty").mkdir()
    paths = {
        "missing": tmp_path / "nothing",
        "empty": tmp_path / "empty",
        "checkpoint": source / "run/checkpoint-3",
    }
    extra = [e.format(**paths) for e in extra]
    assert run_train(tmp_path / "bad", 1, *extra) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "bad" / "checkpoint-1").exists()


@pytest.mark.parametrize("target", ["checkpoint", "export"])
def test_architecture_mismatch_refused(source, tmp_path, capsys, target):
    path = source / "run" / "checkpoint-3" if target == "checkpoint" else source / "export"
    argv = ["--width", "64", "--head-dim", "16", "--init-from", str(path)]
    from fastsample.cli import main

    code = main(["train", "--out", str(tmp_path / "bad"), "--train-steps", "1", "--quiet", *argv])
    assert code == 2
    err = capsys.readouterr().err
    assert "width: requested 64, source 32" in err
    assert not (tmp_path / "bad").exists()


def test_init_source_describes_both_kinds(source):
    ckpt = init_source(source / "run" / "checkpoint-3")
    export = init_source(source / "export")
    assert ckpt["kind"] == "checkpoint" and export["kind"] == "export"
    assert ckpt["architecture"] == export["architecture"] == TINY_ARCH
    assert ckpt["prediction_type"] == export["prediction_type"] == "flow"


def _benchmark():
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "training_convergence.py"
    spec = importlib.util.spec_from_file_location("training_convergence", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmark_sampler_follows_the_saved_prediction_type(source, tmp_path):
    """Flow runs are sampled with their own FlowMatch Euler config (50 steps), VP runs with DPM++ (20)."""
    from diffusers import DPMSolverMultistepScheduler, FlowMatchEulerDiscreteScheduler

    from fastsample.training.trainer import build_noise_scheduler

    bench = _benchmark()
    flow = bench.load_run_config(source / "run")
    scheduler, steps = bench.sampler_for(flow, None)
    assert isinstance(scheduler, FlowMatchEulerDiscreteScheduler) and steps == 50
    reference = build_noise_scheduler("flow").config
    assert {k: scheduler.config[k] for k in reference if not k.startswith("_")} == {
        k: v for k, v in reference.items() if not k.startswith("_")
    }
    scheduler, steps = bench.sampler_for(TrainConfig(prediction_type="epsilon"), 7)
    assert isinstance(scheduler, DPMSolverMultistepScheduler) and steps == 7
    assert scheduler.config.beta_end == 0.02 and scheduler.config.algorithm_type == "dpmsolver++"


def test_benchmark_step_zero_is_the_start(source, tmp_path):
    """Step 0 of a post-training run loads the source's EMA weights; other steps their checkpoint's EMA."""
    bench = _benchmark()
    checkpoint = source / "run" / "checkpoint-3"
    out = tmp_path / "post"
    assert run_train(out, 1, "--prediction-type", "flow", "--init-from", str(checkpoint)) == 0
    model, config = bench.load_ema_transformer(out, 0)
    shadow = read_checkpoint_ema(checkpoint)["shadow_params"]
    for param, ema in zip(model.parameters(), shadow, strict=True):
        assert torch.equal(param, ema)
    model, _ = bench.load_ema_transformer(out, 1)
    shadow = read_checkpoint_ema(out / "checkpoint-1")["shadow_params"]
    for param, ema in zip(model.parameters(), shadow, strict=True):
        assert torch.equal(param, ema)


def test_benchmark_report_shares_step_zero(tmp_path, capsys):
    bench = _benchmark()
    common = {"fd_floor": 0.3, "init_from": "/runs/pre/checkpoint-9"}
    rows_a = [{"step": 0, "fd": 10.0, "class_accuracy": 0.5}, {"step": 100, "fd": 8.0, "class_accuracy": 0.6}]
    rows_b = [{"step": 50, "fd": 9.0, "class_accuracy": 0.5}, {"step": 100, "fd": 6.0, "class_accuracy": 0.7}]
    files = []
    for name, rows in (("base", rows_a), ("mix", rows_b)):
        files.append(tmp_path / f"{name}.json")
        files[-1].write_text(json.dumps({"run": name, "rows": rows, **common}))
    import argparse

    bench.report(
        argparse.Namespace(results=[str(f) for f in files], baseline="base", candidate="mix", plot=None)
    )
    out = capsys.readouterr().out
    assert "| 0 | 10.000 | 0.500 | 10.000 | 0.500 |" in out  # the start is shared
    # Baseline final FD 8 is reached between mix's 50 (9.0) and 100 (6.0): 50 + (9-8)/(9-6)*50 ≈ 67.
    assert "reaches it at step 67" in out


def test_benchmark_report_says_when_the_start_is_already_better(tmp_path, capsys):
    import argparse

    bench = _benchmark()
    common = {"fd_floor": 0.3, "init_from": "/runs/pre/checkpoint-9"}
    runs = {
        "base": [
            {"step": 0, "fd": 4.0, "class_accuracy": 1.0},
            {"step": 100, "fd": 5.0, "class_accuracy": 1.0},
        ],
        "mix": [{"step": 100, "fd": 4.5, "class_accuracy": 1.0}],
    }
    files = []
    for name, rows in runs.items():
        files.append(tmp_path / f"{name}.json")
        files[-1].write_text(json.dumps({"run": name, "rows": rows, **common}))
    bench.report(
        argparse.Namespace(results=[str(f) for f in files], baseline="base", candidate="mix", plot=None)
    )
    assert "already at or below the baseline's final FD" in capsys.readouterr().out
