import json
import os
import shutil
import subprocess

import pytest
import torch
from safetensors.torch import load_file

from fastsample.cli import build_parser, main
from fastsample.training.trainer import (
    CONFIG_FILE,
    SCHEDULER_FILE,
    WEIGHT_FILE,
    latest_checkpoint,
    read_checkpoint_ema,
)
from fastsample.zoo.default import load_dit

TINY = ["--width", "32", "--head-dim", "16", "--depth", "1", "--patch-size", "8", "--batch-size", "4"]


def run_train(out, steps, *extra):
    argv = ["train", "--out", str(out), "--train-steps", str(steps), "--quiet", "--log-every", "1"]
    return main(argv + TINY + list(extra))


def load_checkpoint(path):
    """Model, EMA and optimizer state of an accelerate checkpoint folder."""
    model = load_file(path / "model.safetensors")
    ema = read_checkpoint_ema(path)
    optimizer = torch.load(path / "optimizer.bin", weights_only=True)
    return model, ema, optimizer


def assert_same(a, b, where=""):
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def test_register_adds_train_subcommand():
    parser = build_parser()
    args = parser.parse_args(["train", "--train-steps", "3", "--weighting", "none", "--sampler", "cosmap"])
    assert args.train_steps == 3 and args.weighting == "none" and args.sampler == "cosmap"
    assert callable(args.func)


def test_train_export_and_bit_exact_resume(tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    export = tmp_path / "export"
    assert run_train(straight, 4, "--export", str(export)) == 0
    assert run_train(resumed, 2) == 0
    assert latest_checkpoint(resumed).name == "checkpoint-2"
    assert run_train(resumed, 4, "--resume", "latest") == 0
    assert latest_checkpoint(straight).name == "checkpoint-4" == latest_checkpoint(resumed).name

    a = load_checkpoint(straight / "checkpoint-4")
    b = load_checkpoint(resumed / "checkpoint-4")
    half = load_checkpoint(resumed / "checkpoint-2")
    assert_same(a, b)  # model, EMA (incl. its step counter) and optimizer moments are bit-identical
    assert any(not torch.equal(a[0][k], half[0][k]) for k in a[0])  # and training moved the weights

    # Export: fp16 EMA weights that load into a DiT and equal the checkpoint's EMA shadow parameters.
    assert {WEIGHT_FILE, CONFIG_FILE, SCHEDULER_FILE} <= set(os.listdir(export))
    shipped = load_file(export / WEIGHT_FILE)
    assert all(t.dtype == torch.float16 for t in shipped.values())
    model = load_dit(export)
    names = [name for name, _ in model.named_parameters()]
    shadow = a[1]["shadow_params"]
    assert len(shadow) == len(names)
    for name, value in zip(names, shadow, strict=True):
        assert torch.equal(shipped[name], value.half()), name
    config = json.loads((export / CONFIG_FILE).read_text())
    assert config["_class_name"] == "DiTTransformer2DModel" and config["num_embeds_ada_norm"] == 10
    scheduler_config = json.loads((export / SCHEDULER_FILE).read_text())
    assert scheduler_config["_class_name"] == "DPMSolverMultistepScheduler"
    assert scheduler_config["beta_schedule"] == "linear" and scheduler_config["beta_end"] == 0.02
    # The exported model runs and respects the shapes of the embedded default.
    with torch.no_grad():
        x = torch.zeros(2, 3, 32, 32)
        out = model(x, timestep=torch.tensor([10, 500]), class_labels=torch.tensor([0, 10]))
    assert out.sample.shape == (2, 3, 32, 32) and torch.isfinite(out.sample).all()


def test_label_dropout_is_done_once_per_sample(tmp_path):
    from diffusers.models.embeddings import LabelEmbedding

    from fastsample.training.trainer import TrainConfig, build_model

    model = build_model(TrainConfig(width=32, head_dim=16, depth=2, patch_size=8))
    embeddings = [m for m in model.modules() if isinstance(m, LabelEmbedding)]
    assert len(embeddings) == 2 and all(m.dropout_prob == 0.0 for m in embeddings)
    assert all(m.embedding_table.num_embeddings == 11 for m in embeddings)  # 10 classes + the null label
    model.train()
    labels = torch.arange(10)
    for m in embeddings:  # in training mode no block drops labels on its own
        assert torch.equal(m(labels), m.embedding_table(labels))


@pytest.mark.parametrize(
    "extra",
    [
        ["--snr-gamma", "0"],
        ["--snr-gamma", "-2"],
        ["--prediction-type", "velocity"],
        ["--sampler", "nope"],
        ["--weighting", "p2"],
        ["--mixflow-gamma", "1.5"],
    ],
)
def test_bad_arguments_refused(tmp_path, extra, capsys):
    try:
        code = run_train(tmp_path / "bad", 1, *extra)
    except SystemExit as exit_:  # argparse rejects choices with exit code 2
        code = exit_.code
    assert code == 2
    assert not (tmp_path / "bad" / "checkpoint-1").exists()


def test_other_prediction_types_and_samplers_train(tmp_path):
    extra = ["--prediction-type", "v_prediction", "--sampler", "logit_normal", "--logit-mean", "0.5"]
    assert run_train(tmp_path / "v", 2, *extra, "--mixflow-gamma", "0.3") == 0
    assert (tmp_path / "v" / "checkpoint-2" / "model.safetensors").exists()


def test_resume_from_missing_checkpoint_refused(tmp_path):
    assert run_train(tmp_path / "r", 1, "--resume", str(tmp_path / "nothing")) == 2


@pytest.mark.slow
def test_two_cpu_processes_under_accelerate_launch(tmp_path):
    if shutil.which("accelerate") is None:
        pytest.skip("accelerate CLI not on PATH")
    out = tmp_path / "ddp"
    cmd = [
        "accelerate", "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29517",
        "-m", "fastsample.cli", "train", "--out", str(out), "--train-steps", "3",
        "--quiet", *TINY,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=os.getcwd())
    assert result.returncode == 0, result.stderr[-3000:]
    checkpoint = out / "checkpoint-3"
    # One RNG-state file per process: both ranks ran and checkpointed together.
    assert (checkpoint / "random_states_0.pkl").exists() and (checkpoint / "random_states_1.pkl").exists()
    assert json.loads((checkpoint / "trainer_state.json").read_text())["step"] == 3


def test_flow_matching_train_with_mixflow_exports_a_sampling_pipeline(tmp_path):
    """``--prediction-type flow``: rectified-flow training (FlowMatch schedule, MixFlow on), exported with the
    FlowMatch Euler config, and the export samples through PixelDiTPipeline."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    from fastsample.pipelines.pixel_dit import PixelDiTPipeline
    from fastsample.training.trainer import build_noise_scheduler

    out, export = tmp_path / "flow", tmp_path / "export"
    extra = [
        "--prediction-type",
        "flow",
        "--mixflow-gamma",
        "0.4",
        "--sampler",
        "beta",
        "--export",
        str(export),
    ]
    assert run_train(out, 2, *extra) == 0
    saved = json.loads((out / "train_config.json").read_text())
    assert saved["prediction_type"] == "flow" and saved["mixflow_gamma"] == 0.4
    config = json.loads((export / SCHEDULER_FILE).read_text())
    assert config["_class_name"] == "FlowMatchEulerDiscreteScheduler"
    public = {k: v for k, v in build_noise_scheduler("flow").config.items() if not k.startswith("_")}
    assert {k: config[k] for k in public} == public
    pipe = PixelDiTPipeline(load_dit(export), FlowMatchEulerDiscreteScheduler.from_config(config))
    images = pipe([0, 1], num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="pt")
    assert torch.isfinite(images.images).all()


def test_unknown_prediction_type_is_refused(tmp_path):
    from fastsample.training.trainer import TrainConfig

    with pytest.raises(ValueError, match="prediction_type must be one of"):
        TrainConfig(output_dir=str(tmp_path), prediction_type="velocity").validate()
