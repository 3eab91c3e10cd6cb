"""HarmoniCa: router artifact, mismatch refusal, inference schedule, SDT+IEPO training, CLI."""

import json

import numpy as np
import pytest
import torch

from fastsample.cache import Router, RouterArtifact, enable_cache, find_units
from fastsample.cache.router import model_config_hash
from fastsample.cache.train import RouterTrainingConfig, evaluate_router_loss, train_router
from fastsample.testing import call_kwargs, tiny_pipeline

TINY = RouterTrainingConfig(
    num_inference_steps=3, iterations=8, batch_size=2, lr=0.1, beta=1e-4, iepo_every=4
)


def _artifact(pipe, steps=3, guidance_scale=4.0, logits=None):
    pipe.scheduler.set_timesteps(steps)
    units = find_units(pipe.transformer)
    if logits is None:
        logits = torch.randn(steps, len(units), generator=torch.Generator().manual_seed(0)) * 3
        logits[0] = 5
    return RouterArtifact(
        logits=logits,
        model_class=type(pipe.transformer).__name__,
        model_config_hash=model_config_hash(pipe.transformer),
        unit_names=[u.name for u in units],
        scheduler_class=type(pipe.scheduler).__name__,
        timesteps=[float(t) for t in pipe.scheduler.timesteps],
        guidance_scale=guidance_scale,
    )


def test_artifact_round_trip(tmp_path):
    pipe = tiny_pipeline("dit")
    artifact = _artifact(pipe)
    artifact.save_pretrained(tmp_path)
    loaded = RouterArtifact.from_pretrained(tmp_path)
    assert torch.equal(loaded.logits, artifact.logits)
    assert loaded.metadata() == artifact.metadata()
    np.testing.assert_array_equal(loaded.mask(), (torch.sigmoid(artifact.logits) > 0.1).numpy())
    with pytest.raises(FileNotFoundError):
        RouterArtifact.from_pretrained(tmp_path / "missing")


def test_harmonica_policy_runs_its_mask_in_the_pipeline(tmp_path):
    pipe = tiny_pipeline("dit")
    logits = torch.tensor([[5.0, 5, 5, 5], [-5, 5, -5, 5], [5, -5, -5, 5]])
    _artifact(pipe, logits=logits).save_pretrained(tmp_path)
    handle = enable_cache(pipe, "harmonica", router=str(tmp_path))
    pipe(**call_kwargs("dit", num_inference_steps=3))
    expected = (torch.sigmoid(logits) > 0.1).numpy()
    np.testing.assert_array_equal(handle.stats().computed["default"], expected)
    handle.disable()


def test_router_refuses_a_call_with_another_guidance_scale():
    """DiT keeps its scale only as a ``__call__`` argument: the check reads the call's bound arguments."""
    pipe = tiny_pipeline("dit")
    artifact = _artifact(pipe, guidance_scale=4.0)
    with enable_cache(pipe, "harmonica", router=artifact):
        pipe(**call_kwargs("dit", num_inference_steps=3, guidance_scale=4.0))  # the trained scale runs
        with pytest.raises(ValueError, match="guidance scale 2.0 != 4.0"):
            pipe(**call_kwargs("dit", num_inference_steps=3, guidance_scale=2.0))


def test_router_mismatch_is_refused(tmp_path):
    pipe = tiny_pipeline("dit")
    artifact = _artifact(pipe)
    # another model config
    other = type(pipe.transformer).from_config({**pipe.transformer.config, "num_layers": 3})
    with pytest.raises(ValueError, match="config hash"):
        enable_cache(other, "harmonica", router=artifact)
    # another number of steps / timesteps
    handle = enable_cache(pipe, "harmonica", router=artifact)
    with pytest.raises(ValueError, match="timesteps"):
        pipe(**call_kwargs("dit", num_inference_steps=4))
    handle.disable()
    # another scheduler
    from diffusers import DPMSolverMultistepScheduler

    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    handle = enable_cache(pipe, "harmonica", router=artifact)
    with pytest.raises(ValueError, match="scheduler DPMSolverMultistepScheduler"):
        pipe(**call_kwargs("dit", num_inference_steps=3))
    handle.disable()
    # another guidance scale
    with pytest.raises(ValueError, match="guidance_scale"):
        enable_cache(pipe, "harmonica", router=artifact, guidance_scale=1.5)
    # bare model: the first timestep is checked
    handle = enable_cache(pipe.transformer, "harmonica", router=artifact)
    x = torch.randn(2, 4, 8, 8)
    with pytest.raises(ValueError, match="first timestep"):
        pipe.transformer(x, timestep=torch.tensor([1, 1]), class_labels=torch.tensor([1, 1000]))
    handle.disable()
    # a damaged config file
    artifact.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "router_config.json").read_text())
    config["format"] = "something-else"
    (tmp_path / "router_config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="fastsample HarmoniCa router config"):
        RouterArtifact.from_pretrained(tmp_path)


def test_router_training_lowers_its_loss_and_leaves_the_model_unchanged():
    pipe = tiny_pipeline("dit")
    state = {k: v.clone() for k, v in pipe.transformer.state_dict().items()}
    start = Router(TINY.num_inference_steps, 4, generator=torch.Generator().manual_seed(TINY.seed))
    before = evaluate_router_loss(pipe, start, TINY)
    artifact, history = train_router(pipe, TINY, progress=False)
    assert len(history) == TINY.iterations
    trained = Router(TINY.num_inference_steps, 4)
    trained.theta.data = artifact.logits[1:].clone()
    after = evaluate_router_loss(pipe, trained, TINY)
    assert after < before
    assert (artifact.logits[0] == 5).all() and artifact.logits.abs().max() <= 5
    pipe.scheduler.set_timesteps(TINY.num_inference_steps)
    assert artifact.timesteps == [float(t) for t in pipe.scheduler.timesteps]
    assert artifact.training["num_processes"] == 1
    assert all(torch.equal(v, state[k]) for k, v in pipe.transformer.state_dict().items())
    assert "_diffusers_hook" not in pipe.transformer.__dict__
    assert all(p.requires_grad for p in pipe.transformer.parameters())  # restored after freezing


def test_training_config_is_validated():
    pipe = tiny_pipeline("dit")
    for bad in ({"num_inference_steps": 1}, {"threshold": 1.5}, {"iterations": 0}, {"lr": 0.0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            train_router(pipe, RouterTrainingConfig(**bad), progress=False)
    with pytest.raises(ValueError, match="class-conditional"):
        train_router(tiny_pipeline("pixart"), TINY, progress=False)


def test_train_router_cli(tmp_path, capsys):
    from fastsample.cli import build_parser, main

    parser = build_parser()
    args = parser.parse_args(
        [
            "train-router",
            "--pipeline",
            "fixture:dit",
            "--out",
            str(tmp_path),
            "--steps",
            "3",
            "--iterations",
            "2",
            "--batch-size",
            "1",
            "--scheduler",
            "ddim",
            "--quiet",
        ]
    )
    assert args.func(args) == 0
    loaded = RouterArtifact.from_pretrained(tmp_path)
    assert loaded.scheduler_class == "DDIMScheduler" and loaded.num_steps == 3
    assert "router saved" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["train-router", "--pipeline", "fixture:dit"])  # --out is required


def test_router_trains_on_fastsample_pixel_dit_pipeline():
    from diffusers import DDIMScheduler

    from fastsample.pipelines.pixel_dit import PixelDiTPipeline
    from fastsample.testing import tiny_dit_transformer

    transformer = tiny_dit_transformer()
    transformer = type(transformer).from_config({**transformer.config, "in_channels": 3, "out_channels": 6})
    pipe = PixelDiTPipeline(transformer=transformer.eval(), scheduler=DDIMScheduler())
    pipe.set_progress_bar_config(disable=True)
    config = RouterTrainingConfig(num_inference_steps=3, iterations=2, batch_size=1, guidance_scale=2.0)
    artifact, history = train_router(pipe, config, progress=False)
    assert len(history) == 2 and artifact.scheduler_class == "DDIMScheduler"
    handle = enable_cache(pipe, "harmonica", router=artifact)
    pipe(class_labels=[1], guidance_scale=2.0, num_inference_steps=3, output_type="np")
    np.testing.assert_array_equal(handle.stats().computed["default"], artifact.mask())
    handle.disable()


def test_iepo_weights_are_refreshed_every_iepo_every_iterations(monkeypatch):
    """λ is recomputed at the first episode start at or after each multiple of ``iepo_every``, also when
    ``iepo_every`` is not a multiple of the iterations per episode (T - 1). The old rule refreshed only at
    common multiples: with the paper's T=10, C=500 every 4,500 instead of every 500 iterations."""
    import fastsample.cache.train as train_module

    calls = []
    real = train_module._iepo_weights

    def counting(sampler, router, x, labels):
        calls.append(1)
        return real(sampler, router, x, labels)

    monkeypatch.setattr(train_module, "_iepo_weights", counting)
    pipe = tiny_pipeline("dit")
    # T = 3: 2 iterations per episode; episodes start at 0, 2, 4, 6, 8; multiples of 3: 0, 3, 6
    config = RouterTrainingConfig(
        num_inference_steps=3, iterations=9, batch_size=1, lr=0.1, beta=1e-4, iepo_every=3
    )
    artifact, history = train_router(pipe, config, progress=False)
    assert len(history) == 9
    assert artifact.training["iepo_refreshed_at"] == [0, 4, 6]
    assert len(calls) == 3
    per_episode = config.num_inference_steps - 1
    for multiple in range(0, config.iterations, config.iepo_every):
        assert any(multiple <= at < multiple + per_episode for at in artifact.training["iepo_refreshed_at"])


def test_router_can_start_from_the_fora_schedule():
    pipe = tiny_pipeline("dit")
    steps = 4
    # reference: which units FORA(2) computes in a real cached run
    handle = enable_cache(pipe, "fora", interval=2)
    pipe(**call_kwargs("dit", num_inference_steps=steps))
    fora_mask = handle.stats().computed["default"]
    handle.disable()
    assert not fora_mask.all()
    router = Router(steps, fora_mask.shape[1], init_mask=fora_mask)
    assert torch.equal(torch.sigmoid(router.logits) > 0.1, torch.from_numpy(fora_mask))
    with pytest.raises(ValueError, match="init_mask"):
        Router(steps, fora_mask.shape[1], init_mask=fora_mask[1:])
    with pytest.raises(ValueError, match="init_logit"):
        Router(steps, fora_mask.shape[1], init_mask=fora_mask, init_logit=6.0)
    # training from it with a negligible learning rate keeps FORA(2)'s schedule
    config = RouterTrainingConfig(
        num_inference_steps=steps, iterations=3, batch_size=1, lr=1e-6, beta=1e-4, init_interval=2
    )
    artifact, _ = train_router(pipe, config, progress=False)
    np.testing.assert_array_equal(artifact.mask(), fora_mask)
    assert artifact.training["init_interval"] == 2
    with pytest.raises(ValueError, match="init_interval"):
        train_router(pipe, RouterTrainingConfig(init_interval=0), progress=False)
