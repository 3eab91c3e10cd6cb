"""Each fastsample scheduler swapped into every fixture pipeline generates an image; img2img with strength."""

from __future__ import annotations

import numpy as np
import pytest

from fastsample.solvers import (
    GHVBScheduler,
    HeavyBallScheduler,
    MomentumDPMSolverMultistepScheduler,
    PNDMFamilyScheduler,
)

testing = pytest.importorskip("fastsample.testing")
pytest.importorskip("transformers")

SCHEDULERS = {
    "plms": lambda cfg: PNDMFamilyScheduler.from_config(cfg),
    "f_pndm": lambda cfg: PNDMFamilyScheduler.from_config(cfg, method="f_pndm"),
    "ghvb": lambda cfg: GHVBScheduler.from_config(cfg),
    "hb": lambda cfg: HeavyBallScheduler.from_config(cfg),
}
NUM_STEPS = 2  # PLMS: 3 calls (Heun start + AB2); F-PNDM: 5 calls (one RK4 step with midpoints + AB2)
# the pipeline-facing behaviour lives in the shared core; F-PNDM's eight calls are spent where its
# midpoint grid differs in kind: one VP (sd) and one flow (flux) pipeline
F_PNDM_PIPELINES = ("sd", "flux")


@pytest.fixture(scope="module")
def pipelines():
    return {name: testing.tiny_pipeline(name) for name in testing.PIPELINE_NAMES}


@pytest.mark.slow
@pytest.mark.parametrize("name", testing.PIPELINE_NAMES)
def test_every_scheduler_generates_an_image_in_every_pipeline(name, pipelines):
    pipe = pipelines[name]
    original = pipe.scheduler
    flow = "FlowMatch" in type(original).__name__
    try:
        for key, make in SCHEDULERS.items():
            if key == "f_pndm" and name not in F_PNDM_PIPELINES:
                continue
            pipe.scheduler = make(original.config)
            assert pipe.scheduler.is_flow == flow, (name, key)
            images = pipe(**testing.call_kwargs(name, num_inference_steps=NUM_STEPS)).images
            assert images.shape == testing.expected_image_shape(name), (name, key)
            assert np.isfinite(images).all(), (name, key)
            assert pipe.scheduler.step_index == len(pipe.scheduler.timesteps), (name, key)
        if not flow:
            pipe.scheduler = MomentumDPMSolverMultistepScheduler.from_config(original.config)
            images = pipe(**testing.call_kwargs(name, num_inference_steps=NUM_STEPS)).images
            assert np.isfinite(images).all()
    finally:
        pipe.scheduler = original


@pytest.mark.slow
@pytest.mark.parametrize("key", list(SCHEDULERS))
def test_img2img_with_strength(key, pipelines):
    """StableDiffusionImg2ImgPipeline from the sd fixture's components: set_begin_index + add_noise path."""
    from diffusers import StableDiffusionImg2ImgPipeline

    sd = pipelines["sd"]
    scheduler = SCHEDULERS[key](sd.scheduler.config)
    pipe = StableDiffusionImg2ImgPipeline(**{**sd.components, "scheduler": scheduler})
    pipe.set_progress_bar_config(disable=True)
    kwargs = testing.call_kwargs("sd", num_inference_steps=2)
    kwargs.pop("height", None), kwargs.pop("width", None)
    size = testing.expected_image_shape("sd")[1]
    image = np.random.default_rng(0).random((1, size, size, 3)).astype(np.float32)
    # strength 0.5 of 2 steps: t_start = 1, inside F-PNDM's RK warm-up and PLMS's Heun pair
    out = pipe(image=image, strength=0.5, **kwargs).images
    assert out.shape == testing.expected_image_shape("sd") and np.isfinite(out).all()
    sched = pipe.scheduler
    assert sched.begin_index == 1 and sched.step_index == len(sched.timesteps)
