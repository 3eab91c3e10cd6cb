"""Tests for the offline pipeline fixtures in ``fastsample.testing``.

References: diffusers' own pipelines (their ``__call__`` decides the image shape, the CFG batch layout and
the scheduler loop), transformers' tokenizers (round trips through the generated vocabularies), and
torch's RNG (determinism by seed).
"""

from __future__ import annotations

import socket
import sys

import numpy as np
import pytest
import torch

from fastsample import testing
from fastsample.testing import PIPELINE_NAMES, call_kwargs, tiny_pipeline


def _forbid_network(monkeypatch) -> None:
    """Make every hub download function and every socket connection raise."""

    import huggingface_hub
    import huggingface_hub._snapshot_download
    import huggingface_hub.file_download

    def refuse(*args, **kwargs):
        raise AssertionError(f"network/download attempted: args={args!r}")

    # huggingface_hub resolves its top-level names lazily, so set those explicitly
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", refuse, raising=False)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", refuse, raising=False)
    for module in list(sys.modules.values()):
        name = getattr(module, "__name__", None) or ""
        if name.split(".")[0] not in ("huggingface_hub", "transformers", "diffusers"):
            continue
        namespace = getattr(module, "__dict__", {})
        for attr in ("hf_hub_download", "snapshot_download", "cached_download"):
            if callable(namespace.get(attr)):
                monkeypatch.setattr(module, attr, refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def _images(pipe, name: str, **overrides) -> np.ndarray:
    return pipe(**call_kwargs(name, **overrides)).images


def _denoiser(pipe) -> torch.nn.Module:
    return pipe.unet if hasattr(pipe, "unet") else pipe.transformer


def _denoiser_batches(pipe, name: str, **overrides) -> list[int]:
    """Batch size of every denoiser forward pass during one call."""
    batches: list[int] = []

    def record(module, args, kwargs):
        sample = args[0] if args else kwargs.get("sample", kwargs.get("hidden_states"))
        batches.append(sample.shape[0])

    handle = _denoiser(pipe).register_forward_pre_hook(record, with_kwargs=True)
    try:
        _images(pipe, name, **overrides)
    finally:
        handle.remove()
    return batches


def _cfg_off(name: str) -> dict:
    # Flux's classifier-free guidance is true_cfg_scale (its guidance_scale is the distilled embedding)
    return {"true_cfg_scale": 1.0} if name == "flux" else {"guidance_scale": 1.0}


def test_pipeline_names():
    assert PIPELINE_NAMES == ("sd", "sdxl", "dit", "pixart", "sd3", "flux")


@pytest.mark.parametrize("name", PIPELINE_NAMES)
def test_fixture_generates_offline_with_cfg(name, monkeypatch):
    # fresh tokenizer files so that generating them is also covered by the network guard
    monkeypatch.setattr(testing, "_FILES_DIR", None)
    _forbid_network(monkeypatch)
    import huggingface_hub

    with pytest.raises(AssertionError, match="download attempted"):  # the guard itself works
        huggingface_hub.hf_hub_download("some/repo", "config.json")

    pipe = tiny_pipeline(name, seed=0)
    images = _images(pipe, name, seed=0)
    assert isinstance(images, np.ndarray)
    assert images.shape == testing.expected_image_shape(name) == (1, 16, 16, 3)
    assert np.isfinite(images).all()
    assert images.min() >= 0.0 and images.max() <= 1.0
    assert images.std() > 1e-3  # not a constant image

    # same seed, fresh pipeline and fresh generator: identical images
    np.testing.assert_array_equal(_images(tiny_pipeline(name, seed=0), name, seed=0), images)
    # another generator seed: different noise, different images
    assert np.abs(_images(pipe, name, seed=1) - images).max() > 1e-4
    # CFG is on: guidance off gives a different image
    assert np.abs(_images(pipe, name, seed=0, **_cfg_off(name)) - images).max() > 1e-4


@pytest.mark.parametrize("name", PIPELINE_NAMES)
def test_cfg_doubles_the_denoiser_work(name):
    """diffusers' own loop runs the denoiser on a cond+uncond batch of 2 (Flux: two passes of 1) per
    scheduler timestep when CFG is on, and on a batch of 1 when it is off. (PNDM's PLMS warm-up repeats
    one timestep, so the scheduler's timestep list, not num_inference_steps, counts the evaluations.)"""
    pipe = tiny_pipeline(name)
    with_cfg = _denoiser_batches(pipe, name)
    evaluations = len(pipe.scheduler.timesteps)
    without_cfg = _denoiser_batches(pipe, name, **_cfg_off(name))
    assert evaluations >= 2
    if name == "flux":
        assert with_cfg == [1] * (2 * evaluations)
    else:
        assert with_cfg == [2] * evaluations
    assert without_cfg == [1] * evaluations


def test_weights_are_deterministic_per_seed_and_leave_global_rng_alone():
    state = torch.random.get_rng_state()
    a, b, c = tiny_pipeline("dit", seed=0), tiny_pipeline("dit", seed=0), tiny_pipeline("dit", seed=1)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert a is not b and a.transformer is not b.transformer and a.scheduler is not b.scheduler
    sa, sb, sc = (p.transformer.state_dict() for p in (a, b, c))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa)


def test_component_builders_match_pipeline_components():
    pipe = tiny_pipeline("dit", seed=5)
    alone = testing.tiny_dit_transformer(seed=5 + testing._SEED_OFFSETS["denoiser"])
    ref = alone.state_dict()
    assert all(torch.equal(v, ref[k]) for k, v in pipe.transformer.state_dict().items())


def test_default_schedulers_match_the_released_pipelines():
    import diffusers

    expected = {
        "sd": diffusers.PNDMScheduler,
        "sdxl": diffusers.EulerDiscreteScheduler,
        "dit": diffusers.DDIMScheduler,
        "pixart": diffusers.DPMSolverMultistepScheduler,
        "sd3": diffusers.FlowMatchEulerDiscreteScheduler,
        "flux": diffusers.FlowMatchEulerDiscreteScheduler,
    }
    for name, cls in expected.items():
        assert type(testing.default_scheduler(name)) is cls
    sd = testing.default_scheduler("sd").config
    assert (sd.skip_prk_steps, sd.steps_offset, sd.beta_schedule) == (True, 1, "scaled_linear")
    assert testing.default_scheduler("sd3").config.shift == 3.0
    assert testing.default_scheduler("flux").config.use_dynamic_shifting


def test_clip_tokenizer_from_generated_files():
    tok = testing.tiny_clip_tokenizer()
    vocab, _ = testing.clip_vocab_and_merges()
    text = "a photo of a cat eating a burger"
    enc = tok(text, padding="max_length", max_length=tok.model_max_length)
    assert tok.model_max_length == 77 and len(enc.input_ids) == 77
    assert enc.input_ids[0] == vocab["<|startoftext|>"] and enc.input_ids[-1] == vocab["<|endoftext|>"]
    # every generated word is one whole-word token (checked by the tokenizers library's own BPE), and
    # decoding round-trips
    assert [tok.tokenize(w) for w in testing._WORDS] == [[w + "</w>"] for w in testing._WORDS]
    assert tok.tokenize(text) == [w + "</w>" for w in text.split()]
    assert tok.decode(enc.input_ids, skip_special_tokens=True) == text
    # byte-level fallback: unseen characters never become unknown tokens
    assert tok.unk_token_id not in tok("zebra Ω 42")["input_ids"][1:-1]
    assert max(tok("zebra Ω 42")["input_ids"]) < testing.CLIP_VOCAB_SIZE


def test_t5_tokenizer_from_generated_files():
    tok = testing.tiny_t5_tokenizer()
    text = "a photo of a cat eating a burger"
    ids = tok(text).input_ids
    assert ids[-1] == tok.eos_token_id == 1 and tok.pad_token_id == 0
    assert tok.convert_ids_to_tokens(ids[:-1]) == ["▁" + w for w in text.split()]
    assert [tok.tokenize(w) for w in testing._WORDS] == [["▁" + w] for w in testing._WORDS]
    assert tok.decode(ids, skip_special_tokens=True) == text
    assert tok.decode(tok("Zebra 42!").input_ids, skip_special_tokens=True) == "Zebra 42!"
    assert len(tok) <= testing.T5_VOCAB_SIZE


def test_call_kwargs_contents_and_overrides():
    for name in PIPELINE_NAMES:
        kw = call_kwargs(name, seed=3)
        assert kw["num_inference_steps"] == 2 and kw["output_type"] == "np"
        assert torch.equal(kw["generator"].get_state(), torch.Generator("cpu").manual_seed(3).get_state())
        if name == "dit":
            assert "class_labels" in kw and kw["guidance_scale"] > 1
        else:
            assert kw["prompt"] and kw["negative_prompt"]
        assert (kw["true_cfg_scale"] if name == "flux" else kw["guidance_scale"]) > 1
    kw = call_kwargs("sd", num_inference_steps=4, guidance_scale=2.0, eta=0.5)
    assert (kw["num_inference_steps"], kw["guidance_scale"], kw["eta"]) == (4, 2.0, 0.5)
    # each call gets a fresh generator
    assert call_kwargs("sd")["generator"] is not call_kwargs("sd")["generator"]


def test_dtype_is_applied():
    pipe = tiny_pipeline("dit", dtype=torch.bfloat16)
    assert {p.dtype for p in pipe.transformer.parameters()} == {torch.bfloat16}


@pytest.mark.gpu
@pytest.mark.parametrize("name", PIPELINE_NAMES)
def test_fixture_runs_on_cuda(name):
    pipe = tiny_pipeline(name, device="cuda")
    assert _denoiser(pipe).device.type == "cuda"
    images = _images(pipe, name)
    assert images.shape == testing.expected_image_shape(name) and np.isfinite(images).all()


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda: tiny_pipeline("sd4"), ValueError),
        (lambda: call_kwargs("unet"), ValueError),
        (lambda: testing.default_scheduler("kandinsky"), ValueError),
        (lambda: call_kwargs("sd", num_inference_steps=0), ValueError),
        (lambda: tiny_pipeline("dit", seed="0"), TypeError),
        (lambda: tiny_pipeline("dit", dtype="float16"), TypeError),
    ],
)
def test_bad_input_is_refused(call, error):
    with pytest.raises(error) as info:
        call()
    if error is ValueError and "num_inference_steps" not in str(info.value):
        assert all(name in str(info.value) for name in PIPELINE_NAMES)
