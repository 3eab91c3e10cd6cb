"""Reliability of the public API on the tiny fixture pipelines (issue 16).

Regressions for the defects found by probing (shared denoisers, SDPA kernel choice across threads, silent
no-ops and late errors) and guards for the properties that already held: undo is bitwise exact for every
capability on every fixture pipeline, an interrupted call leaves no state behind, outputs are deterministic,
and repeated guided and cached calls grow no tensors.
"""

from __future__ import annotations

import gc
import logging
import threading

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fastsample.cache import enable_cache
from fastsample.guidance import APG, CFG, CFGPlusPlus, CFGZeroStar, enable_guidance
from fastsample.integration.adapters import get_adapter
from fastsample.kernels import set_attention
from fastsample.testing import call_kwargs, tiny_pipeline

NAMES = ("dit", "pixart", "sd", "sd3", "flux")
CACHED = ("dit", "pixart", "sd3", "flux")  # transformer pipelines (SD's UNet gets no cache)
GUIDANCE_LOGGER = "fastsample.guidance.hook"


def _optimize(*args, **kwargs):
    from fastsample.optimize import optimize

    return optimize(*args, **kwargs)


def _run(pipe, name, **overrides):
    images = pipe(**call_kwargs(name, seed=0, **overrides)).images
    return images.numpy() if isinstance(images, torch.Tensor) else images


def _denoiser(pipe):
    return get_adapter(pipe).denoiser(pipe)


# ------------------------------------------------------------------------------ defect 2: shared denoisers
def _shared_pair(name):
    """Two pipelines on one denoiser, as ``Pipeline(**other.components)`` / ``from_pipe`` make them."""
    a = tiny_pipeline(name)
    b = type(a)(**a.components)
    b.set_progress_bar_config(disable=True)
    assert _denoiser(a) is _denoiser(b)
    return a, b


def test_guidance_on_a_second_pipeline_sharing_the_denoiser_is_refused_in_our_words():
    a, b = _shared_pair("dit")
    cls = type(b)
    handle = enable_guidance(a, APG())
    with pytest.raises(ValueError, match="another pipeline .*shares it.*disable\\(\\)"):
        enable_guidance(b, CFG())
    assert type(b) is cls  # the refused pipeline is untouched
    handle.disable()
    enable_guidance(b, CFG()).disable()  # and works once the first handle is gone


@pytest.mark.parametrize("name", ["dit", "sd3"])
def test_a_cache_on_one_pipeline_does_not_cache_another_sharing_the_transformer(name):
    a, b = _shared_pair(name)
    b_alone = _run(b, name)
    handle = enable_cache(a, "fora", interval=2)
    a_cached = _run(a, name)
    assert handle.stats().hit_ratio > 0
    stats_before = handle.stats().computed
    np.testing.assert_array_equal(_run(b, name), b_alone)  # B runs its transformer uncached
    after = handle.stats().computed  # ... and leaves A's record and cache alone
    assert stats_before.keys() == after.keys()
    assert all(np.array_equal(stats_before[k], after[k]) for k in after)
    np.testing.assert_array_equal(_run(a, name), a_cached)
    with pytest.raises(ValueError, match="another pipeline that shares it"):
        enable_cache(b, "fora", interval=2)  # one cache per denoiser: the second enable is refused
    handle.disable()


# --------------------------------------------------------------------------- defect 3: SDPA across threads
class _PausingProcessor:
    """A processor that calls SDPA itself (wrapped by set_attention) and pauses inside the attention call."""

    def __init__(self):
        self.inside, self.release = threading.Event(), threading.Event()

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, **kwargs):
        b = hidden_states.shape[0]
        q, k, v = (
            proj(hidden_states).view(b, -1, attn.heads, 8).transpose(1, 2)
            for proj in (attn.to_q, attn.to_k, attn.to_v)
        )
        self.inside.set()
        assert self.release.wait(60)  # a guard against a hang, not a timing assertion
        out = F.scaled_dot_product_attention(q, k, v)
        return attn.to_out[0](out.transpose(1, 2).reshape(b, -1, attn.heads * 8))


def _global_sdpa_flags():
    backends = torch.backends.cuda
    return (
        backends.flash_sdp_enabled(),
        backends.mem_efficient_sdp_enabled(),
        backends.math_sdp_enabled(),
        backends.cudnn_sdp_enabled(),
    )


def test_a_kernel_choice_in_one_thread_leaves_other_threads_alone():
    from diffusers.models.attention_processor import Attention

    module = Attention(query_dim=16, heads=2, dim_head=8).eval()
    probe = _PausingProcessor()
    module.set_processor(probe)
    set_attention(module, "sdpa", kernels=["math"])
    q, k, v = (torch.randn(1, 2, 5, 8) for _ in range(3))
    alone = F.scaled_dot_product_attention(q, k, v)
    flags = _global_sdpa_flags()

    worker = threading.Thread(target=lambda: module(torch.randn(1, 5, 16)))
    worker.start()
    try:
        assert probe.inside.wait(60)
        # While the other thread is inside its math-only attention call, this thread sees torch's defaults
        # and a plain SDPA call here computes exactly what it computed alone.
        observed = _global_sdpa_flags()
        here = F.scaled_dot_product_attention(q, k, v)
    finally:
        probe.release.set()
        worker.join()
    assert observed == flags
    assert torch.equal(here, alone)


@pytest.mark.parametrize("name", ["dit", "sd3"])
def test_the_chosen_kernel_computes_what_sdpa_kernel_selects(name):
    """The direct kernel call is the kernel torch's own selection runs (bitwise), for both processor kinds
    (FastsampleAttnProcessor on DiT, the SDPA redirect around SD3's joint processor)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    pipe = tiny_pipeline(name)
    denoiser, captured = _denoiser(pipe), []
    hook = denoiser.register_forward_pre_hook(lambda m, a, kw: captured.append((a, kw)), with_kwargs=True)
    _run(pipe, name, num_inference_steps=1)  # the denoiser's real inputs (a global sdpa_kernel around the
    hook.remove()  # whole pipeline would also reach its text encoders and VAE)
    args, kwargs = captured[0]
    for kernel, backend in (("math", SDPBackend.MATH), ("flash", SDPBackend.FLASH_ATTENTION)):
        with torch.no_grad():
            with sdpa_kernel([backend]):
                expected = denoiser(*args, **kwargs)[0]
            with set_attention(pipe, "sdpa", kernels=[kernel]):
                got = denoiser(*args, **kwargs)[0]
        assert torch.equal(got, expected), kernel


# -------------------------------------------------------------------- defect 5: silent no-ops, late errors
@pytest.mark.parametrize("scale", [1.0, 0.5, float("nan")])
def test_a_call_that_skips_the_enabled_guidance_warns_once(scale, caplog):
    pipe = tiny_pipeline("dit")
    with enable_guidance(pipe, APG()), caplog.at_level(logging.WARNING, logger=GUIDANCE_LOGGER):
        _run(pipe, "dit", guidance_scale=scale)
        _run(pipe, "dit", guidance_scale=scale)
    warnings = [r for r in caplog.records if r.name == GUIDANCE_LOGGER]
    assert len(warnings) == 1
    assert "APG" in warnings[0].getMessage() and "guidance_scale > 1" in warnings[0].getMessage()


def test_flux_without_true_cfg_warns_naming_true_cfg_scale(caplog):
    pipe = tiny_pipeline("flux")
    with enable_guidance(pipe, CFG()), caplog.at_level(logging.WARNING, logger=GUIDANCE_LOGGER):
        _run(pipe, "flux", true_cfg_scale=1.0, num_inference_steps=1)
        _run(pipe, "flux", true_cfg_scale=4.0, num_inference_steps=1)  # CFG runs: no second warning
    messages = [r.getMessage() for r in caplog.records if r.name == GUIDANCE_LOGGER]
    assert len(messages) == 1 and "true_cfg_scale" in messages[0] and "negative_prompt" in messages[0]


def test_guided_calls_with_cfg_on_do_not_warn(caplog):
    pipe = tiny_pipeline("dit")
    with enable_guidance(pipe, APG()), caplog.at_level(logging.WARNING, logger=GUIDANCE_LOGGER):
        _run(pipe, "dit")
    assert not [r for r in caplog.records if r.name == GUIDANCE_LOGGER]


def test_methods_the_pipeline_cannot_serve_are_refused_when_enabled():
    sd = tiny_pipeline("sd")  # PNDMScheduler: CFG++ needs the next noise level of a first-order step
    with pytest.raises(ValueError, match="PNDMScheduler is not supported"):
        enable_guidance(sd, CFGPlusPlus())
    dit = tiny_pipeline("dit")  # an ε-model: zero-init steps (zero velocity) are meaningless
    with pytest.raises(ValueError, match="zero_init_steps=0"):
        enable_guidance(dit, CFGZeroStar(zero_init_steps=1))
    enable_guidance(dit, CFGZeroStar(zero_init_steps=0)).disable()


def test_a_scheduler_swapped_in_after_enabling_is_refused_before_text_encoding():
    from diffusers import DDIMScheduler, PNDMScheduler

    pipe = tiny_pipeline("sd")
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    encoded = []
    pipe.text_encoder.register_forward_pre_hook(lambda *args: encoded.append(1))
    with enable_guidance(pipe, CFGPlusPlus()):
        pipe.scheduler = PNDMScheduler.from_config(pipe.scheduler.config)
        with pytest.raises(ValueError, match="PNDMScheduler is not supported"):
            _run(pipe, "sd")
    assert not encoded


def test_kernels_given_as_one_string():
    pipe = tiny_pipeline("dit")
    with set_attention(pipe, "sdpa", kernels="math") as handle:
        assert handle.kernels == ("math",)
    with pytest.raises(TypeError, match="list of names"):
        set_attention(pipe, "sdpa", kernels=3)


# ----------------------------------------------------------------------- guards: exact undo, per pipeline
CAPABILITIES = {
    "guidance": lambda name: {"guidance": "apg"},
    "cache": lambda name: {"cache": ("fora", {"interval": 2})} if name in CACHED else None,
    "attention": lambda name: {"attention": ("sdpa", {"kernels": ["math"]})},
    "dit savings": lambda name: {"dit_savings": True} if name == "dit" else None,
    "scheduler": lambda name: {"scheduler": "ghvb"},
}


def _snapshot(pipe):
    denoiser = _denoiser(pipe)
    modules = []
    for module_name, module in denoiser.named_modules():
        modules.append(
            (
                module_name,
                type(module),
                tuple(sorted(module.__dict__)),
                module.__dict__.get("processor"),
                len(module._forward_hooks) + len(module._forward_pre_hooks),
            )
        )
    return {
        "class": type(pipe),
        "attributes": tuple(sorted(pipe.__dict__)),
        "scheduler": pipe.scheduler,
        "scheduler_config": dict(pipe.scheduler.config),
        "modules": modules,
        "state": {k: v.detach().clone() for k, v in denoiser.state_dict().items()},
    }


def _assert_same_snapshot(a, b):
    assert a["class"] is b["class"] and a["attributes"] == b["attributes"]
    assert a["scheduler"] is b["scheduler"] and a["scheduler_config"] == b["scheduler_config"]
    for x, y in zip(a["modules"], b["modules"], strict=True):
        assert x[:3] == y[:3] and x[3] is y[3] and x[4] == y[4], x[0]
    assert a["state"].keys() == b["state"].keys()
    assert all(torch.equal(a["state"][k], b["state"][k]) for k in a["state"])


APPLICABLE = [(n, c) for n in NAMES for c, make in CAPABILITIES.items() if make(n) is not None]


@pytest.mark.parametrize("name, capability", APPLICABLE)
def test_undo_is_bitwise_exact(name, capability):
    recipe = CAPABILITIES[capability](name)
    pipe = tiny_pipeline(name)
    baseline = _run(pipe, name)  # first: a call sets the pipeline's own per-call attributes
    before = _snapshot(pipe)
    handle = _optimize(pipe, **recipe)
    changed = _run(pipe, name)
    handle.disable()
    _assert_same_snapshot(before, _snapshot(pipe))
    np.testing.assert_array_equal(_run(pipe, name), baseline)
    assert np.isfinite(changed).all()


# ------------------------------------------------------- guards: interrupted calls, determinism, memory
def _everything(name):
    recipe = {}
    for make in CAPABILITIES.values():
        recipe.update(make(name) or {})
    return recipe


class _Interrupt(Exception):
    pass


@pytest.mark.parametrize("name", NAMES)
def test_an_interrupted_call_leaves_no_state_behind(name):
    pipe = tiny_pipeline(name)
    with _optimize(pipe, **_everything(name)):
        reference = _run(pipe, name)
        calls = []

        def interrupt(module, args, output):  # inside the denoiser's forward, at the second step
            calls.append(1)
            if len(calls) == 2:
                raise _Interrupt

        hook = list(_denoiser(pipe).children())[-1].register_forward_hook(interrupt)
        with pytest.raises(_Interrupt):
            _run(pipe, name)
        hook.remove()
        np.testing.assert_array_equal(_run(pipe, name), reference)


@pytest.mark.parametrize("name", NAMES)
def test_outputs_are_deterministic(name):
    outputs = []
    for _ in range(2):
        pipe = tiny_pipeline(name)
        with _optimize(pipe, **_everything(name)):
            outputs += [_run(pipe, name), _run(pipe, name)]
    for out in outputs[1:]:
        np.testing.assert_array_equal(out, outputs[0])


def _live_tensors():
    gc.collect()
    tensors = [o for o in gc.get_objects() if isinstance(o, torch.Tensor)]
    return len(tensors), sum(t.untyped_storage().nbytes() for t in tensors if t.device.type == "cpu")


@pytest.mark.slow
def test_repeated_guided_and_cached_calls_grow_no_tensors():
    pipe = tiny_pipeline("dit")
    with _optimize(pipe, **_everything("dit")):
        for _ in range(3):
            _run(pipe, "dit")
        before = _live_tensors()
        for _ in range(30):
            _run(pipe, "dit")
        after = _live_tensors()
    assert after == before
