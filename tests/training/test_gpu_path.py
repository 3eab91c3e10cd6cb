"""The GPU training path, run for a few steps on the CPU: benchmarks/train_zoo_gpu.sh and ``--compile``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fastsample.zoo.default import load_default_pipeline

ROOT = Path(__file__).resolve().parents[2]
TINY = "--width 32 --head-dim 16 --depth 1 --num-threads 1"


@pytest.mark.slow
def test_gpu_script_trains_and_exports_both_models(tmp_path):
    env = {
        **os.environ,
        "STEPS": "2",
        "BATCH": "4",
        "COMPILE": "",  # compiling is tested below, once
        "PRECISION": "no",
        "EVAL": "0",
        "EXTRA": TINY,
        "PYTHONPATH": str(ROOT),
    }
    subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "train_zoo_gpu.sh"), str(tmp_path)], check=True, env=env, cwd=ROOT
    )
    for model in ("vp", "flow"):
        pipe = load_default_pipeline(model=model, directory=tmp_path / model / "export")
        image = pipe(class_labels=[1], num_inference_steps=2, output_type="pt").images
        assert image.shape == (1, 3, 32, 32) and torch.isfinite(image).all()
    config = (tmp_path / "flow" / "export" / "scheduler_config.json").read_text()
    assert "FlowMatchEulerDiscreteScheduler" in config


@pytest.mark.slow
def test_compiled_bf16_training_exports_plain_weights(tmp_path):
    command = [
        sys.executable,
        "-m",
        "fastsample.cli",
        "train",
        "--out",
        str(tmp_path / "run"),
        "--train-steps",
        "2",
    ]
    command += [
        "--batch-size",
        "4",
        "--compile",
        "--mixed-precision",
        "bf16",
        "--export",
        str(tmp_path / "x"),
    ]
    command += [*TINY.split(), "--quiet", "--checkpoint-every-steps", "2"]
    subprocess.run(command, check=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    from safetensors import safe_open

    with safe_open(str(tmp_path / "x" / "dit.safetensors"), framework="pt") as handle:
        keys = list(handle.keys())
        assert handle.metadata()["step"] == "2"
    assert keys and not any("_orig_mod" in key for key in keys)
    load_default_pipeline(directory=tmp_path / "x")  # loads as a plain DiT
