"""The diffusers contract of PixelDiTPipeline, on a tiny random-weight pixel-space DiT.

References: diffusers' own ``DiTPipeline`` (with an identity "VAE"), and a denoising loop written here
independently (separate conditional and unconditional calls, no batching).
"""

from __future__ import annotations

import copy
from types import SimpleNamespace

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DiTPipeline,
    DiTTransformer2DModel,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
)

from fastsample.pipelines.pixel_dit import PixelDiTPipeline
from fastsample.testing import tiny_pixel_dit_transformer

NUM_CLASSES = 5
SIZE = 8


def tiny_transformer(
    out_channels: int = 3, num_classes: int = NUM_CLASSES, seed: int = 0
) -> DiTTransformer2DModel:
    return tiny_pixel_dit_transformer(
        seed, sample_size=SIZE, num_classes=num_classes, out_channels=out_channels
    )


def make_pipe(scheduler=None, out_channels: int = 3, num_classes: int = NUM_CLASSES, class_names=None):
    scheduler = scheduler if scheduler is not None else DDIMScheduler()
    pipe = PixelDiTPipeline(tiny_transformer(out_channels, num_classes), scheduler, class_names=class_names)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class CallRecorder:
    """Forward hook on the transformer that records each call's batch, class labels and timesteps."""

    def __init__(self, module: torch.nn.Module):
        self.calls: list[dict] = []
        self.handle = module.register_forward_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs, output):
        x = args[0] if args else kwargs["hidden_states"]
        self.calls.append(
            {"x": x.clone(), "labels": kwargs["class_labels"].clone(), "t": kwargs["timestep"].clone()}
        )

    def remove(self):
        self.handle.remove()


def manual_loop(transformer, scheduler, labels, guidance_scale, steps, seed, null_id):
    """Independent reference: separate cond / uncond calls, then ε = ε_u + w (ε_c − ε_u)."""
    scheduler = copy.deepcopy(scheduler)
    generator = gen(seed)
    labels = torch.tensor(labels)
    x = torch.randn(len(labels), 3, SIZE, SIZE, generator=generator) * scheduler.init_noise_sigma
    scheduler.set_timesteps(steps)
    stochastic = isinstance(scheduler, DDPMScheduler)
    with torch.no_grad():
        for t in scheduler.timesteps:
            x_in = scheduler.scale_model_input(x, t)
            tt = t.reshape(1).repeat(len(labels))
            out_c = transformer(x_in, timestep=tt, class_labels=labels).sample
            if guidance_scale > 1:
                out_u = transformer(x_in, timestep=tt, class_labels=torch.full_like(labels, null_id)).sample
                eps = out_u[:, :3] + guidance_scale * (out_c[:, :3] - out_u[:, :3])
            else:
                eps = out_c[:, :3]
            learned = getattr(scheduler.config, "variance_type", None) in ("learned", "learned_range")
            model_output = torch.cat([eps, out_c[:, 3:]], 1) if learned and out_c.shape[1] == 6 else eps
            kwargs = {"generator": generator} if stochastic else {}
            x = scheduler.step(model_output, t, x, **kwargs).prev_sample
    return x


# ----------------------------------------------------------------------------------------------------
# Output contract
def test_output_types_and_shapes():
    pipe = make_pipe(scheduler=DDIMScheduler(clip_sample=False))
    kwargs = {"class_labels": [0, 3], "num_inference_steps": 2, "guidance_scale": 3.0}
    pil = pipe(**kwargs, generator=gen(), output_type="pil").images
    np_images = pipe(**kwargs, generator=gen(), output_type="np").images
    pt = pipe(**kwargs, generator=gen(), output_type="pt").images
    latent = pipe(**kwargs, generator=gen(), output_type="latent").images
    assert isinstance(pil, list) and len(pil) == 2 and all(isinstance(im, PIL.Image.Image) for im in pil)
    assert pil[0].size == (SIZE, SIZE) and pil[0].mode == "RGB"
    assert isinstance(np_images, np.ndarray) and np_images.shape == (2, SIZE, SIZE, 3)
    assert isinstance(pt, torch.Tensor) and pt.shape == (2, 3, SIZE, SIZE)
    assert np_images.min() >= 0 and np_images.max() <= 1 and pt.min() >= 0 and pt.max() <= 1
    # np is pt in NHWC; pt is the [-1, 1] sample mapped to [0, 1] and clipped.
    np.testing.assert_allclose(np_images, pt.permute(0, 2, 3, 1).numpy(), atol=0)
    torch.testing.assert_close(pt, (latent / 2 + 0.5).clamp(0, 1), atol=0, rtol=0)
    assert latent.min() < -1 or latent.max() > 1, "random DiT output should need the clipping that is tested"
    np.testing.assert_array_equal(np.asarray(pil[1]), PixelDiTPipeline.numpy_to_pil(np_images)[1])


def test_return_dict_false_gives_tuple():
    pipe = make_pipe()
    out = pipe(1, num_inference_steps=2, generator=gen(), output_type="np", return_dict=False)
    assert isinstance(out, tuple) and len(out) == 1 and out[0].shape == (1, SIZE, SIZE, 3)


def test_generator_determinism():
    pipe = make_pipe()
    a = pipe([0, 1], num_inference_steps=3, generator=gen(7), output_type="pt").images
    b = pipe([0, 1], num_inference_steps=3, generator=gen(7), output_type="pt").images
    c = pipe([0, 1], num_inference_steps=3, generator=gen(8), output_type="pt").images
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    assert not torch.allclose(a, c)


def test_latents_are_used_and_not_mutated():
    pipe = make_pipe()
    latents = torch.randn(2, 3, SIZE, SIZE, generator=gen(3))
    before = latents.clone()
    a = pipe([0, 1], num_inference_steps=2, latents=latents, output_type="latent").images
    b = pipe([0, 1], num_inference_steps=2, generator=gen(3), output_type="latent").images
    torch.testing.assert_close(latents, before, atol=0, rtol=0)
    torch.testing.assert_close(
        a, b, atol=0, rtol=0
    )  # same noise as the generator draws (init_noise_sigma = 1)


# ----------------------------------------------------------------------------------------------------
# Batching and the CFG layout
def test_batching_labels_and_num_images_per_label():
    pipe = make_pipe()
    recorder = CallRecorder(pipe.transformer)
    out = pipe([0, 2, 4], num_images_per_label=2, num_inference_steps=2, generator=gen(), output_type="pt")
    recorder.remove()
    assert out.images.shape == (6, 3, SIZE, SIZE)
    expected = torch.tensor([0, 0, 2, 2, 4, 4] + [NUM_CLASSES] * 6)
    for call in recorder.calls:
        torch.testing.assert_close(call["labels"], expected)
    # int, list and tensor labels are the same request
    kwargs = {"num_inference_steps": 2, "output_type": "pt"}
    a = pipe(3, generator=gen(1), **kwargs).images
    b = pipe([3], generator=gen(1), **kwargs).images
    c = pipe(torch.tensor([3]), generator=gen(1), **kwargs).images
    d = pipe(torch.tensor(3), generator=gen(1), **kwargs).images
    for other in (b, c, d):
        torch.testing.assert_close(a, other, atol=0, rtol=0)


def test_batch_members_are_independent():
    """Each image of a batch equals the image generated alone from the same noise and label."""
    pipe = make_pipe()
    latents = torch.randn(3, 3, SIZE, SIZE, generator=gen(5))
    batch = pipe([1, 4, 2], num_inference_steps=3, latents=latents, output_type="latent").images
    for i, label in enumerate([1, 4, 2]):
        single = pipe(label, num_inference_steps=3, latents=latents[i : i + 1], output_type="latent").images
        torch.testing.assert_close(batch[i : i + 1], single, atol=1e-4, rtol=1e-4)


def test_guidance_scale_one_runs_cond_half_only():
    pipe = make_pipe()
    recorder = CallRecorder(pipe.transformer)
    pipe([1, 2], guidance_scale=1.0, num_inference_steps=3, generator=gen(), output_type="pt")
    recorder.remove()
    assert len(recorder.calls) == 3  # one transformer call per step
    for call in recorder.calls:
        assert call["x"].shape[0] == 2
        torch.testing.assert_close(call["labels"], torch.tensor([1, 2]))
        assert call["t"].shape == (2,)


def test_guidance_batches_cond_and_uncond():
    pipe = make_pipe()
    recorder = CallRecorder(pipe.transformer)
    pipe([1, 2], guidance_scale=2.5, num_inference_steps=3, generator=gen(), output_type="pt")
    recorder.remove()
    assert len(recorder.calls) == 3  # still exactly one (batched) call per step
    timesteps = []
    for call in recorder.calls:
        x, labels, t = call["x"], call["labels"], call["t"]
        assert x.shape[0] == 4
        torch.testing.assert_close(x[:2], x[2:], atol=0, rtol=0)  # [cond; uncond] see the same sample
        torch.testing.assert_close(labels, torch.tensor([1, 2, NUM_CLASSES, NUM_CLASSES]))
        assert t.shape == (4,) and bool((t == t[0]).all())
        timesteps.append(int(t[0]))
    assert timesteps == sorted(timesteps, reverse=True) and len(set(timesteps)) == 3


SCHEDULER_CASES = [
    pytest.param(DDIMScheduler, {}, 3, id="ddim-eps"),
    pytest.param(DDIMScheduler, {}, 6, id="ddim-learned-sigma-model"),
    pytest.param(DPMSolverMultistepScheduler, {}, 3, id="dpmsolver++-eps"),
    pytest.param(DPMSolverMultistepScheduler, {}, 6, id="dpmsolver++-learned-sigma-model"),
    pytest.param(EulerDiscreteScheduler, {}, 3, id="euler-eps"),
    pytest.param(EulerDiscreteScheduler, {}, 6, id="euler-learned-sigma-model"),
    # DDPM with a learned variance consumes the variance channels (a 3-channel model is refused, see below).
    pytest.param(DDPMScheduler, {"variance_type": "learned_range"}, 6, id="ddpm-learned-range"),
]


@pytest.mark.parametrize("guidance_scale", [1.0, 3.0])
@pytest.mark.parametrize(("scheduler_class", "scheduler_kwargs", "out_channels"), SCHEDULER_CASES)
def test_matches_independent_manual_loop(scheduler_class, scheduler_kwargs, out_channels, guidance_scale):
    scheduler = scheduler_class(**scheduler_kwargs)
    pipe = make_pipe(scheduler=scheduler, out_channels=out_channels)
    labels = [0, 4, 2]
    ours = pipe(
        labels, guidance_scale=guidance_scale, num_inference_steps=4, generator=gen(11), output_type="latent"
    )
    reference = manual_loop(
        pipe.transformer, scheduler_class(**scheduler_kwargs), labels, guidance_scale, 4, 11, NUM_CLASSES
    )
    assert torch.isfinite(reference).all()
    # Tolerance: float32 rounding differs between the batched and the separate calls, and x̂0 = (x − σ ε)/α
    # amplifies it at high noise; a wrong combine or layout differs by O(1).
    torch.testing.assert_close(ours.images, reference, atol=1e-3, rtol=1e-3)


def test_euler_uses_init_noise_sigma_and_scale_model_input():
    """With Euler, init_noise_sigma ≫ 1 and scale_model_input rescales the transformer input."""
    scheduler = EulerDiscreteScheduler()
    pipe = make_pipe(scheduler=scheduler)
    recorder = CallRecorder(pipe.transformer)
    latents = torch.randn(1, 3, SIZE, SIZE, generator=gen(2))
    pipe(0, guidance_scale=1.0, num_inference_steps=2, latents=latents, output_type="pt")
    recorder.remove()
    sigma_max = float(pipe.scheduler.sigmas[0])
    assert pipe.scheduler.init_noise_sigma > 10
    expected_first_input = latents * pipe.scheduler.init_noise_sigma / (sigma_max**2 + 1) ** 0.5
    torch.testing.assert_close(recorder.calls[0]["x"], expected_first_input, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("out_channels", [3, 6])
def test_matches_diffusers_dit_pipeline_with_identity_vae(out_channels):
    """diffusers' DiTPipeline (null class hard-coded to 1000) with an identity VAE is the same sampler."""

    class IdentityVAE(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.config = SimpleNamespace(scaling_factor=1.0)

        device = torch.device("cpu")
        dtype = torch.float32

        def decode(self, z):
            return SimpleNamespace(sample=z)

    transformer = tiny_transformer(out_channels=out_channels, num_classes=1000)
    reference_pipe = DiTPipeline(transformer=transformer, vae=IdentityVAE(), scheduler=DDIMScheduler())
    reference_pipe.set_progress_bar_config(disable=True)
    ours_pipe = PixelDiTPipeline(transformer, DDIMScheduler())
    ours_pipe.set_progress_bar_config(disable=True)
    for guidance_scale in (1.0, 4.0):
        kwargs = {"guidance_scale": guidance_scale, "num_inference_steps": 3, "output_type": "np"}
        reference = reference_pipe(class_labels=[7, 999], generator=gen(4), **kwargs).images
        ours = ours_pipe([7, 999], generator=gen(4), **kwargs).images
        np.testing.assert_allclose(ours, reference, atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------------------------------
# Serialisation, schedulers, callbacks, names
def test_save_pretrained_from_pretrained_round_trip(tmp_path):
    pipe = make_pipe(scheduler=DPMSolverMultistepScheduler(), out_channels=6, class_names=list("abcde"))
    pipe.save_pretrained(tmp_path)
    loaded = PixelDiTPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert isinstance(loaded.scheduler, DPMSolverMultistepScheduler)
    assert loaded.class_names == tuple("abcde")
    kwargs = {"class_labels": [0, 4], "guidance_scale": 3.0, "num_inference_steps": 3, "output_type": "pt"}
    torch.testing.assert_close(
        pipe(**kwargs, generator=gen(9)).images, loaded(**kwargs, generator=gen(9)).images, atol=0, rtol=0
    )


def test_callback_on_step_end_sees_and_replaces_latents():
    pipe = make_pipe()
    seen = []

    def callback(p, step, timestep, callback_kwargs):
        seen.append((step, callback_kwargs["latents"].shape))
        if step == p.num_timesteps - 1:
            return {"latents": torch.zeros_like(callback_kwargs["latents"])}
        return {}

    out = pipe(
        [0, 1], num_inference_steps=3, generator=gen(), output_type="pt", callback_on_step_end=callback
    )
    assert seen == [(0, (2, 3, SIZE, SIZE)), (1, (2, 3, SIZE, SIZE)), (2, (2, 3, SIZE, SIZE))]
    torch.testing.assert_close(out.images, torch.full_like(out.images, 0.5))


def test_class_names_and_label_ids():
    pipe = make_pipe(class_names=["red", "green", "blue", "cyan", "pink"])
    assert (
        pipe.id2label[2] == "blue" and pipe.num_classes == NUM_CLASSES and pipe.null_class_id == NUM_CLASSES
    )
    assert pipe.get_label_ids(["pink", "red"]) == [4, 0]
    with pytest.raises(ValueError, match="unknown class name"):
        pipe.get_label_ids("purple")
    assert make_pipe().class_names is None and make_pipe().id2label == {}


# ----------------------------------------------------------------------------------------------------
# Bad input is refused early, with the argument named
@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"class_labels": NUM_CLASSES}, ValueError, "class_labels"),  # the null class is not a user label
        ({"class_labels": [-1]}, ValueError, "class_labels"),
        ({"class_labels": []}, ValueError, "class_labels"),
        ({"class_labels": [1.0]}, TypeError, "class_labels"),
        ({"class_labels": True}, TypeError, "class_labels"),
        ({"class_labels": "red"}, TypeError, "get_label_ids"),
        ({"class_labels": torch.tensor([0.5])}, TypeError, "class_labels"),
        ({"class_labels": torch.zeros(2, 2, dtype=torch.long)}, ValueError, "class_labels"),
        ({"guidance_scale": -1.0}, ValueError, "guidance_scale"),
        ({"guidance_scale": float("nan")}, ValueError, "guidance_scale"),
        ({"guidance_scale": "4"}, TypeError, "guidance_scale"),
        ({"num_inference_steps": 0}, ValueError, "num_inference_steps"),
        ({"num_inference_steps": 2.0}, ValueError, "num_inference_steps"),
        ({"num_images_per_label": 0}, ValueError, "num_images_per_label"),
        ({"output_type": "latents"}, ValueError, "output_type"),
        ({"latents": torch.zeros(1, 3, SIZE + 1, SIZE)}, ValueError, "latents"),
        ({"generator": [gen(), gen()]}, ValueError, "generator"),
        (
            {"callback_on_step_end_tensor_inputs": ["noise_pred"]},
            ValueError,
            "callback_on_step_end_tensor_inputs",
        ),
    ],
)
def test_bad_inputs_refused(kwargs, error, match):
    pipe = make_pipe()
    call = {"class_labels": 0, "num_inference_steps": 2, "output_type": "pt", **kwargs}
    recorder = CallRecorder(pipe.transformer)
    with pytest.raises(error, match=match):
        pipe(**call)
    recorder.remove()
    assert recorder.calls == []  # refused before any model call


def test_bad_components_refused():
    with pytest.raises(ValueError, match="in_channels=3"):
        PixelDiTPipeline(
            DiTTransformer2DModel(
                num_attention_heads=2, attention_head_dim=8, in_channels=4, num_layers=1, sample_size=8
            ),
            DDIMScheduler(),
        )
    with pytest.raises(ValueError, match="out_channels"):
        PixelDiTPipeline(tiny_transformer(out_channels=4), DDIMScheduler())
    with pytest.raises(ValueError, match="class_names"):
        make_pipe(class_names=["only", "two"])
    pipe = make_pipe(scheduler=DDPMScheduler(variance_type="learned_range"), out_channels=3)
    with pytest.raises(ValueError, match="variance_type"):
        pipe(0, num_inference_steps=2)
