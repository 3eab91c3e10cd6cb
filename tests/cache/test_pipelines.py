"""enable_cache inside diffusers pipelines (DiT, PixArt, SD3, Flux true CFG) and fastsample's PixelDiT."""

import numpy as np
import pytest
import torch

from fastsample.cache import enable_cache
from fastsample.testing import call_kwargs, tiny_dit_transformer, tiny_pipeline

STEPS = 3


def _kwargs(name, **extra):
    kwargs = call_kwargs(name, num_inference_steps=STEPS, **extra)
    if name == "flux":
        assert kwargs.get("true_cfg_scale", 1) > 1 and kwargs.get(
            "negative_prompt"
        )  # separate cond/uncond calls
    return kwargs


@pytest.mark.parametrize("name", ["dit", "pixart", "sd3", "flux"])
def test_pipeline_fora_resets_per_call_and_disable_restores(name):
    pipe = tiny_pipeline(name)
    pipe_class = type(pipe)
    reference = pipe(**_kwargs(name)).images

    handle = enable_cache(pipe, "fora", interval=1)  # 0 % reuse
    np.testing.assert_array_equal(pipe(**_kwargs(name)).images, reference)
    handle.disable()

    handle = enable_cache(pipe, "fora", interval=2)
    first = pipe(**_kwargs(name)).images
    second = pipe(**_kwargs(name)).images
    np.testing.assert_array_equal(first, second)  # nothing leaks from one call into the next
    assert not np.array_equal(first, reference)
    stats = handle.stats()
    contexts = ["cond", "uncond"] if name == "flux" else ["default"]
    assert sorted(stats.computed) == contexts  # Flux: cond and uncond cached separately
    for ctx in contexts:
        assert stats.computed[ctx].shape[0] == STEPS  # counted from 0 again in the second call
        np.testing.assert_array_equal(stats.computed[ctx].all(axis=1), [True, False, True])
    assert stats.hit_ratio == pytest.approx(1 / 3)
    handle.disable()
    assert type(pipe) is pipe_class
    np.testing.assert_array_equal(pipe(**_kwargs(name)).images, reference)


def test_flux_cond_and_uncond_have_separate_caches():
    """Reference: a reused cond/uncond output equals the one computed in its own context at the last step."""
    pipe = tiny_pipeline("flux")
    unit = pipe.transformer.transformer_blocks[0].ff
    outputs = []
    probe = unit.register_forward_hook(lambda m, a, o: outputs.append(o.clone()))
    handle = enable_cache(pipe, "fora", interval=2)
    pipe(**_kwargs("flux"))
    probe.remove()
    # call order per step: cond, uncond; step 1 reuses step 0 of the same context
    cond0, uncond0, cond1, uncond1 = outputs[:4]
    assert not torch.equal(cond0, uncond0)
    assert torch.equal(cond1, cond0) and torch.equal(uncond1, uncond0)
    handle.disable()


def test_pixel_dit_pipeline_with_fastsample_guidance_and_solver():
    from diffusers import DDIMScheduler

    from fastsample.guidance import CFG, enable_guidance
    from fastsample.pipelines.pixel_dit import PixelDiTPipeline
    from fastsample.solvers import HeavyBallScheduler

    transformer = tiny_dit_transformer()
    transformer = type(transformer).from_config({**transformer.config, "in_channels": 3, "out_channels": 6})
    pipe = PixelDiTPipeline(transformer=transformer.eval(), scheduler=DDIMScheduler())
    pipe.scheduler = HeavyBallScheduler.from_config(pipe.scheduler.config, momentum=0.8)
    pipe.set_progress_bar_config(disable=True)

    def run():
        return pipe(
            class_labels=[1, 2],
            guidance_scale=3.0,
            num_inference_steps=4,
            output_type="np",
            generator=torch.Generator().manual_seed(0),
        ).images

    guidance = enable_guidance(pipe, CFG())
    reference = run()
    handle = enable_cache(pipe, "fora", interval=1)
    np.testing.assert_array_equal(run(), reference)
    handle.disable()
    handle = enable_cache(pipe, "fora", interval=2)
    cached = run()
    assert handle.stats().hit_ratio == pytest.approx(0.5)
    assert np.abs(cached - reference).max() > 0
    handle.disable()
    guidance.disable()


def test_pipeline_warns_when_nothing_is_reused(caplog):
    pipe = tiny_pipeline("dit")
    handle = enable_cache(pipe, "dynamic", threshold=0.0)
    with caplog.at_level("WARNING", logger="fastsample.cache.api"):
        pipe(**_kwargs("dit"))
    assert "reused nothing" in caplog.text
    handle.disable()


def test_unsupported_pipeline_and_denoiser_are_refused():
    with pytest.raises(ValueError, match="does not support UNet2DConditionModel"):
        enable_cache(tiny_pipeline("sd"), "fora")

    class NotAPipeline:
        components = {}

        def __call__(self):
            pass

    with pytest.raises(ValueError, match="no adapter"):
        enable_cache(NotAPipeline(), "fora")
