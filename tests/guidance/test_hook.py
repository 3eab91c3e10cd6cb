"""The guidance hook on the tiny fixture pipelines: exactness against the unmodified pipeline, real savings
(model-call counts measured with a forward hook inside the denoiser), per-call state and exact restore."""

import numpy as np
import pytest
import torch

from fastsample.guidance import APG, CFG, AdaptiveGuidance, CFGRescale, CFGZeroStar, enable_guidance, guide
from fastsample.testing import PIPELINE_NAMES, call_kwargs, tiny_pipeline

_PIPES: dict[str, object] = {}


def _pipe(name):
    if name not in _PIPES:
        _PIPES[name] = tiny_pipeline(name)
    return _PIPES[name]


def _run(pipe, name, **overrides):
    overrides.setdefault("output_type", "latent")
    out = pipe(**call_kwargs(name, **overrides)).images
    return out.clone() if isinstance(out, torch.Tensor) else torch.from_numpy(np.array(out))


# Module that receives the denoiser's (possibly sliced) input batch: counts real model evaluations.
_ENTRY = {
    "sd": "conv_in",
    "sdxl": "conv_in",
    "dit": "pos_embed",
    "pixart": "pos_embed",
    "sd3": "pos_embed",
    "flux": "x_embedder",
}


class _Counter:
    def __init__(self, pipe, name):
        denoiser = pipe.unet if name in ("sd", "sdxl") else pipe.transformer
        self.batches = []
        self.handle = getattr(denoiser, _ENTRY[name]).register_forward_pre_hook(
            lambda m, args: self.batches.append(args[0].shape[0])
        )

    def close(self):
        self.handle.remove()


@pytest.mark.parametrize("name", PIPELINE_NAMES)
def test_plain_cfg_reproduces_the_pipeline_and_layout_is_right(name):
    """Plain CFG through the hook equals the unmodified pipeline; and w = 1 through the hook equals the
    pipeline
    with CFG off (conditional pass only), which fails if the adapter's batch order of the halves is wrong."""
    pipe = _pipe(name)
    steps = 2 if name == "pixart" else 1  # diffusers' PixArt loop breaks with one DPM-Solver step
    ref = _run(pipe, name, num_inference_steps=steps)
    with guide(pipe, CFG()):
        out = _run(pipe, name, num_inference_steps=steps)
    if name == "flux":  # separate calls: write-back u' = (w c − g)/(w − 1) needs a division
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    else:
        assert torch.equal(out, ref)
    off = {"true_cfg_scale": 1.0} if name == "flux" else {"guidance_scale": 1.0}
    cond_only = _run(pipe, name, num_inference_steps=steps, **off)
    with guide(pipe, CFG(guidance_scale=1.0)):
        out = _run(pipe, name, num_inference_steps=steps)
    torch.testing.assert_close(out, cond_only, rtol=1e-4, atol=1e-4)
    assert (ref - cond_only).abs().max() > 1e-3  # guidance really changes the result


def test_keep_cond_write_back_and_batches():
    """A2 write-back, batch 2 with num_images_per_prompt 2 and a negative prompt, on SD."""
    pipe, name = _pipe("sd"), "sd"
    kw = {
        "prompt": ["a cat", "a dog"],
        "negative_prompt": ["blurry", "ugly"],
        "num_images_per_prompt": 2,
        "num_inference_steps": 1,
    }
    ref = _run(pipe, name, **kw)
    with guide(pipe, CFG(), write_back="keep_cond"):
        out = _run(pipe, name, **kw)
    assert out.shape[0] == 4
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_cfg_rescale_equals_the_pipelines_guidance_rescale():
    pipe, name = _pipe("sd"), "sd"
    ref = _run(pipe, name, guidance_rescale=0.7, num_inference_steps=1)
    with guide(pipe, CFGRescale(guidance_rescale=0.7)):
        out = _run(pipe, name, num_inference_steps=1)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_adaptive_guidance_call_count_matches_switch_step():
    name, steps = "dit", 6
    pipe = _pipe(name)
    kw = {"class_labels": [1, 2, 3], "num_inference_steps": steps}
    probe = AdaptiveGuidance(threshold=1.0)  # γ ≥ 1 essentially never holds: full CFG, γ recorded per step
    with guide(pipe, probe):
        full = _run(pipe, name, **kw)
    gammas = torch.stack(probe.gammas)  # (steps, B)
    assert gammas.shape == (steps, 3)
    threshold = float(gammas[2].min()) - 1e-9  # every sample passes at step 2 at the latest
    passed = (gammas >= threshold).cummax(dim=0).values.all(dim=1)
    k = int(passed.int().argmax())
    assert passed[k] and k <= 2
    method = AdaptiveGuidance(threshold=threshold, repack=False)  # re-packing: tests/guidance/test_repack.py
    counter = _Counter(pipe, name)
    try:
        with guide(pipe, method) as handle:
            out = _run(pipe, name, **kw)
    finally:
        counter.close()
    assert method.switch_step == k
    # CFG steps 0..k evaluate 2B samples, the later steps only the B conditional ones
    assert counter.batches == [6] * (k + 1) + [3] * (steps - k - 1)
    assert handle.last_stats["model_samples"] == sum(counter.batches)
    if k == steps - 1:
        assert torch.equal(out, full)
    else:
        assert not torch.equal(out, full)


def test_adaptive_guidance_skips_flux_uncond_calls():
    name = "flux"
    pipe = _pipe(name)
    counter = _Counter(pipe, name)
    try:
        with guide(pipe, AdaptiveGuidance(threshold=1e-6)):  # switches at the first step
            _run(pipe, name, num_inference_steps=3)
    finally:
        counter.close()
    assert counter.batches == [1, 1, 1, 1]  # step 0 cond + uncond, then cond only


def test_cfg_zero_star_skips_the_model_on_zero_init_steps():
    name = "sd3"
    pipe = _pipe(name)
    counter = _Counter(pipe, name)
    try:
        with guide(pipe, CFGZeroStar(zero_init_steps=1)) as handle:
            _run(pipe, name, num_inference_steps=3)
    finally:
        counter.close()
    assert counter.batches == [2, 2]
    assert handle.last_stats == {"forward_calls": 3, "model_calls": 2, "model_samples": 4}


def test_state_does_not_leak_between_calls_and_disable_restores_exactly():
    name = "dit"
    pipe = _pipe(name)
    denoiser = pipe.transformer
    cls, forward_in_dict = type(pipe), "forward" in denoiser.__dict__
    had_registry = hasattr(denoiser, "_diffusers_hook")
    processors = {n: m.processor for n, m in denoiser.named_modules() if hasattr(m, "processor")}
    ref = _run(pipe, name)
    handle = enable_guidance(pipe, APG(guidance_scale=6.0))
    first, second = _run(pipe, name), _run(pipe, name)
    assert torch.equal(first, second)  # momentum reset at the start of every call
    assert not torch.equal(first, ref)
    with pytest.raises(ValueError, match="already enabled"):
        enable_guidance(pipe, CFG())
    handle.disable()
    assert type(pipe) is cls
    assert ("forward" in denoiser.__dict__) == forward_in_dict
    assert hasattr(denoiser, "_diffusers_hook") == had_registry
    assert denoiser.forward.__func__ is type(denoiser).forward
    assert all(denoiser.get_submodule(n).processor is p for n, p in processors.items())
    assert torch.equal(_run(pipe, name), ref)


def test_bad_inputs_are_refused():
    pipe = _pipe("dit")
    with pytest.raises(TypeError, match="method"):
        enable_guidance(pipe, "apg")
    with pytest.raises(ValueError, match="write_back"):
        enable_guidance(pipe, CFG(), write_back="sometimes")
    with pytest.raises(ValueError, match="DiTPipeline"):
        enable_guidance(torch.nn.Linear(2, 2), CFG())
    with pytest.raises(ValueError, match="keep_cond"):
        enable_guidance(_pipe("flux"), CFG(), write_back="both")


@pytest.mark.parametrize("scheduler", ["ghvb", "ddpm"])
def test_pixel_dit_with_fastsample_and_learned_variance_schedulers(scheduler):
    """fastsample's own PixelDiTPipeline ([cond; uncond], learned variance) with a fastsample multistep
    scheduler and with DDPM (which consumes the variance channels): CFG exact, w = 1 equals the conditional
    pass."""
    from diffusers import DDPMScheduler, DiTTransformer2DModel

    from fastsample.pipelines.pixel_dit import PixelDiTPipeline
    from fastsample.solvers import GHVBScheduler

    torch.manual_seed(0)
    transformer = DiTTransformer2DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=3, out_channels=6, num_layers=1,
        sample_size=8, patch_size=2, num_embeds_ada_norm=4, norm_type="ada_norm_zero",
    ).eval()  # fmt: skip
    if scheduler == "ghvb":
        sched = GHVBScheduler.from_config(DDPMScheduler().config, ghvb_order=2.5)
    else:
        sched = DDPMScheduler(variance_type="learned_range")
    pipe = PixelDiTPipeline(transformer=transformer, scheduler=sched)
    pipe.set_progress_bar_config(disable=True)

    def run(w):
        gen = torch.Generator().manual_seed(0)
        out = pipe([1, 3], guidance_scale=w, num_inference_steps=3, generator=gen, output_type="latent")
        return out.images.clone()

    ref, cond_only = run(4.0), run(1.0)
    with guide(pipe, CFG()):
        assert torch.equal(run(4.0), ref)
    with guide(pipe, CFG(guidance_scale=1.0)):
        torch.testing.assert_close(run(4.0), cond_only, rtol=1e-4, atol=1e-4)
    assert (ref - cond_only).abs().max() > 1e-3


@pytest.mark.parametrize("negative", ["prompt", "none"])
def test_flux_true_cfg_rule_matches_the_pipeline(negative):
    """The adapter's restated Flux rule (true CFG needs scale > 1 *and* a negative prompt), fed with the
    call's bound arguments, agrees with what the pipeline does: without a negative prompt Flux runs one pass
    per step and the hook stays passive; with one, AG (switching at once) really drops passes."""

    def kwargs():
        kw = call_kwargs("flux", num_inference_steps=2, output_type="latent", true_cfg_scale=3.0)
        if negative == "none":
            del kw["negative_prompt"]
        return kw

    pipe = _pipe("flux")
    counter = _Counter(pipe, "flux")
    try:
        ref = pipe(**kwargs()).images
        plain_calls = len(counter.batches)
        with guide(pipe, AdaptiveGuidance(threshold=1e-6)) as handle:
            out = pipe(**kwargs()).images
        stats = handle.hook.last_stats
    finally:
        counter.close()
    if negative == "prompt":
        assert plain_calls == 4  # the pipeline's own decision: cond + uncond at each of 2 steps
        assert stats["model_calls"] < plain_calls
    else:
        assert plain_calls == 2
        assert stats["model_calls"] == 2 and torch.equal(out, ref)
