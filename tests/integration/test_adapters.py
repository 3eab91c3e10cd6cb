"""The per-pipeline adapter table: lookups, refusals, and the noise-level facts against diffusers' schedulers.
(That every fixture's ``cfg_layout`` is right is proven behaviourally in tests/guidance/test_hook.py.)"""

import diffusers
import pytest
import torch

from fastsample.integration.adapters import ADAPTERS, get_adapter, supported_pipelines

EXPECTED = {
    "StableDiffusionPipeline": ("unet", "uncond_first"),
    "StableDiffusionImg2ImgPipeline": ("unet", "uncond_first"),
    "StableDiffusionXLPipeline": ("unet", "uncond_first"),
    "PixArtAlphaPipeline": ("transformer", "uncond_first"),
    "PixArtSigmaPipeline": ("transformer", "uncond_first"),
    "StableDiffusion3Pipeline": ("transformer", "uncond_first"),
    "DiTPipeline": ("transformer", "cond_first"),
    "PixelDiTPipeline": ("transformer", "cond_first"),
    "FluxPipeline": ("transformer", "separate_calls"),
}


@pytest.mark.parametrize("cls_name", sorted(EXPECTED))
def test_table_entries(cls_name):
    cls = getattr(diffusers, cls_name, None)
    if cls is None:
        from fastsample.pipelines import pixel_dit

        cls = getattr(pixel_dit, cls_name)
    adapter = get_adapter(cls)
    assert (adapter.denoiser_attr, adapter.cfg_layout) == EXPECTED[cls_name]
    assert adapter.opens_cache_context == (cls_name == "FluxPipeline")
    assert adapter.learned_sigma == (cls_name in ("DiTPipeline", "PixelDiTPipeline") or "PixArt" in cls_name)


def test_subclasses_resolve_through_the_mro():
    class MyPipeline(diffusers.StableDiffusionXLPipeline):
        pass

    assert get_adapter(MyPipeline) is ADAPTERS["StableDiffusionXLPipeline"]


def test_unsupported_pipeline_names_the_supported_ones():
    with pytest.raises(ValueError) as err:
        get_adapter(diffusers.DDPMPipeline)
    for name in supported_pipelines():
        assert name in str(err.value)


def test_vp_alpha_sigma_matches_the_schedulers_noise_levels():
    """α, σ at integer timesteps are √ᾱ, √(1−ᾱ); at the fractional timesteps EulerDiscreteScheduler feeds the
    model (Karras sigmas), ρ = σ/α reproduces the scheduler's own sigma."""
    sched = diffusers.EulerDiscreteScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, use_karras_sigmas=True
    )
    sched.set_timesteps(7)

    class Fake:
        scheduler = sched

    adapter = ADAPTERS["StableDiffusionXLPipeline"]
    alpha, sigma = adapter.alpha_sigma(Fake, torch.tensor([10, 500, 999]))
    ac = sched.alphas_cumprod.double()[[10, 500, 999]]
    torch.testing.assert_close(alpha, ac.sqrt())
    torch.testing.assert_close(sigma, (1 - ac).sqrt())
    alpha, sigma = adapter.alpha_sigma(Fake, sched.timesteps)
    torch.testing.assert_close((sigma / alpha).float(), sched.sigmas[:-1], rtol=1e-4, atol=1e-5)


def test_flow_alpha_sigma():
    class Fake:
        scheduler = None

    a, s = ADAPTERS["StableDiffusion3Pipeline"].alpha_sigma(Fake, torch.tensor([750.0]))
    assert float(s) == 0.75 and float(a) == 0.25
    a, s = ADAPTERS["FluxPipeline"].alpha_sigma(Fake, torch.tensor([0.25]))
    assert float(s) == 0.25 and float(a) == 0.75


def test_pixel_dit_on_a_flow_schedule_is_a_flow_model():
    """FlowMatch Euler (no prediction_type in its config) and DPM-Solver/UniPC in flow mode
    ("flow_prediction") both mean that the model's output is the flow velocity."""
    from fastsample.solvers.presets import build
    from fastsample.zoo.default import load_default_pipeline

    pipe = load_default_pipeline(model="flow")
    adapter = get_adapter(pipe)
    assert adapter.prediction_type(pipe) == "flow"
    config = pipe.scheduler.config
    for shortcut in ("dpm++2m", "unipc", "ghvb"):
        pipe.scheduler = build(shortcut, config, baselines=True)
        assert adapter.prediction_type(pipe) == "flow", shortcut
    assert adapter.prediction_type(load_default_pipeline(model="vp")) == "epsilon"
    # its noise level is the flow time s = t / T_train (x_t = (1 − s) x0 + s ε), not a VP table's
    alpha, sigma = adapter.alpha_sigma(pipe, torch.tensor([250.0, 1000.0]))
    torch.testing.assert_close(sigma, torch.tensor([0.25, 1.0], dtype=torch.float64))
    torch.testing.assert_close(alpha, 1 - sigma)
