"""fastsample.optimize: composition, summary, exact undo, refusal before any change."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from fastsample.cache import enable_cache
from fastsample.guidance import APG, AdaptiveGuidance, enable_guidance
from fastsample.integration.adapters import get_adapter
from fastsample.integration.call_scope import has_call_hook
from fastsample.optimize import OptimizeHandle, _scheduler_factories
from fastsample.optimize import optimize as _optimize
from fastsample.solvers import GHVBScheduler, HeavyBallScheduler
from fastsample.testing import call_kwargs, tiny_pipeline

# the shortcuts spelled out by hand (the solver table's rows, fastsample.solvers.benchmark_entries)
BY_HAND = {
    ("dit", "ghvb"): lambda c: GHVBScheduler.from_config(
        c, ghvb_order=1.8, use_karras_sigmas=True, final_sigmas_type="zero"
    ),
    ("sd3", "ghvb"): lambda c: GHVBScheduler.from_config(c, ghvb_order=1.8),
    ("pixart", "hb"): lambda c: HeavyBallScheduler.from_config(
        c, plms_order=4, momentum=0.8, final_sigmas_type="zero"
    ),
    ("sd", "hb"): lambda c: HeavyBallScheduler.from_config(
        c, plms_order=4, momentum=0.8, final_sigmas_type="zero"
    ),
}
# (pipeline, scheduler shortcut, guidance name, cache spec); SD's UNet gets no cache.
RECIPES = {
    "dit": ("ghvb", "apg", ("fora", {"interval": 2})),
    "pixart": ("hb", "apg", ("fora", {"interval": 2})),
    "sd3": ("ghvb", "apg", ("fora", {"interval": 2})),
    "sd": ("hb", "ag", None),
}
GUIDANCE = {"apg": APG, "ag": AdaptiveGuidance}
# These tests compose explicit pieces: every component not named is off (the defaults are "auto", tested
# in test_optimize_auto.py).
OFF = {"scheduler": None, "guidance": None, "cache": None, "attention": None, "dit_savings": False}


def optimize(pipe, **kwargs):
    return _optimize(pipe, **{**OFF, **kwargs})


def _run(pipe, name):
    return pipe(**call_kwargs(name, seed=0)).images


def _untouched(pipe) -> bool:
    """No fastsample hook anywhere on the pipeline or its denoiser."""
    module = get_adapter(pipe).denoiser(pipe)
    hooked = any(
        getattr(m, "_diffusers_hook", None) is not None and m._diffusers_hook.hooks for m in module.modules()
    )
    return not (
        has_call_hook(pipe, "fastsample.guidance") or has_call_hook(pipe, "fastsample.cache") or hooked
    )


@pytest.mark.parametrize("name", list(RECIPES))
def test_compose_summary_undo_and_by_hand(name, caplog):
    baseline = _run(tiny_pipeline(name), name)  # a pipeline never touched
    pipe = tiny_pipeline(name)
    original = pipe.scheduler
    sched, guid, cache = RECIPES[name]

    with caplog.at_level(logging.INFO, logger="fastsample.optimize"):
        handle = optimize(pipe, scheduler=sched, guidance=guid, cache=cache)
    assert not _untouched(pipe)  # the hook check sees the hooks while they are on
    optimized = _run(pipe, name)
    if cache:
        assert handle.cache.stats().hit_ratio > 0  # the cache really reused features
    assert np.isfinite(optimized).all()
    assert not np.array_equal(optimized, baseline)  # the composition changed something

    summary = handle.summary()
    assert type(pipe.scheduler).__name__ in summary and GUIDANCE[guid].__name__ in summary
    assert len(summary.splitlines()) == (3 if cache else 2)
    assert ("cache: FORA" in summary) == bool(cache)
    assert all(line in caplog.text for line in summary.splitlines())

    handle.disable()
    handle.disable()  # idempotent
    assert pipe.scheduler is original
    assert _untouched(pipe)
    np.testing.assert_array_equal(_run(pipe, name), baseline)

    # the same pieces applied by hand give the same images
    pipe.scheduler = BY_HAND[name, sched](original.config)
    guidance_handle = enable_guidance(pipe, GUIDANCE[guid]())
    cache_handle = enable_cache(pipe, cache[0], **cache[1]) if cache else None
    by_hand = _run(pipe, name)
    if cache_handle:
        cache_handle.disable()
    guidance_handle.disable()
    pipe.scheduler = original
    np.testing.assert_array_equal(optimized, by_hand)


def test_scheduler_forms_and_context_manager():
    pipe = tiny_pipeline("dit")
    original = pipe.scheduler
    baseline = _run(pipe, "dit")
    instance = HeavyBallScheduler.from_config(original.config, momentum=0.5)
    with optimize(pipe, scheduler=instance) as handle:
        assert pipe.scheduler is instance and isinstance(handle, OptimizeHandle)
    assert pipe.scheduler is original
    with optimize(pipe, scheduler=GHVBScheduler):
        assert type(pipe.scheduler) is GHVBScheduler
        assert pipe.scheduler.config.num_train_timesteps == original.config.num_train_timesteps
    ghvb = _scheduler_factories(original.config)["ghvb"]()
    assert ghvb.config.ghvb_order == 1.8 and ghvb.config.grid == "auto"  # the class default
    assert pipe.scheduler is original
    empty = optimize(pipe)
    assert "nothing active" in empty.summary()
    empty.disable()
    np.testing.assert_array_equal(_run(pipe, "dit"), baseline)


def test_vp_shortcuts_match_bench_recipes():
    """``ghvb``/``hb`` are the same schedulers as ``fastsample bench``'s recipes of the same name."""
    from fastsample.eval.bench import build_scheduler

    config = tiny_pipeline("dit").scheduler.config
    for shortcut in ("ghvb", "hb"):
        ours = _scheduler_factories(config)[shortcut]()
        assert type(ours) is type(build_scheduler(shortcut, config))
        assert dict(ours.config) == dict(build_scheduler(shortcut, config).config)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"scheduler": "nope"}, ValueError, "unknown scheduler"),
        ({"scheduler": 3}, TypeError, "scheduler must be"),
        ({"scheduler": "ghvb", "guidance": "nope"}, ValueError, "unknown guidance"),
        ({"scheduler": "ghvb", "guidance": "apg", "cache": "nope"}, ValueError, "unknown cache method"),
        ({"scheduler": "hb", "guidance": "apg", "cache": ("fora", {"bad_knob": 1})}, TypeError, "bad_knob"),
        ({"scheduler": "hb", "guidance": "apg", "cache": 5}, TypeError, "cache must be"),
        ({"scheduler": "hb", "guidance": "apg", "attention": "flash"}, ValueError, "attention backend"),
        ({"scheduler": "hb", "attention": ("sdpa", {"kernel": ["math"]})}, ValueError, "knob"),
        ({"scheduler": "hb", "attention": 3}, TypeError, "attention must be"),
        ({"scheduler": "hb", "dit_savings": "yes"}, TypeError, "dit_savings must be"),
    ],
)
def test_bad_inputs_raise_before_any_change(kwargs, error, match):
    pipe = tiny_pipeline("dit")
    original = pipe.scheduler
    with pytest.raises(error, match=match):
        optimize(pipe, **kwargs)
    assert pipe.scheduler is original
    assert _untouched(pipe)


def _processors(pipe) -> dict:
    modules = get_adapter(pipe).denoiser(pipe).named_modules()
    return {name: m.processor for name, m in modules if hasattr(m, "processor")}


@pytest.mark.parametrize("name", ["dit", "pixart"])
def test_attention_and_dit_savings_compose_and_undo_exactly(name):
    pipe = tiny_pipeline(name)
    baseline = _run(pipe, name)
    processors = _processors(pipe)
    sched, guid, cache = RECIPES[name]
    handle = optimize(
        pipe,
        scheduler=sched,
        guidance=guid,
        cache=cache,
        attention=("sdpa", {"kernels": ["math"]}),
        dit_savings=name == "dit",
    )
    assert all(getattr(p, "_fastsample_attention", False) for p in _processors(pipe).values())
    lines = handle.summary().splitlines()
    assert sum(line.split(": ", 1)[1].startswith("attention:") for line in lines) == 1
    assert any("dit savings:" in line for line in lines) == (name == "dit")
    composed = _run(pipe, name)
    handle.disable()
    assert _processors(pipe).keys() == processors.keys()
    assert all(_processors(pipe)[k] is processors[k] for k in processors)  # the same objects back
    assert _untouched(pipe)
    np.testing.assert_array_equal(_run(pipe, name), baseline)

    # the attention path and the savings are exact: without them the same recipe gives the same images
    with optimize(pipe, scheduler=sched, guidance=guid, cache=cache):
        np.testing.assert_allclose(_run(pipe, name), composed, atol=1e-5)


def test_fused_dit_path_under_a_block_level_cache():
    """The Triton fusions (interpreter mode on CPU) with a block-level FORA cache: optimize enables the
    savings before the cache, so the cache wraps the fused blocks; same images as the cache alone."""
    pipe = tiny_pipeline("dit")
    sched, guid, _ = RECIPES["dit"]
    cache = ("fora", {"interval": 2, "level": "block"})
    with optimize(pipe, scheduler=sched, guidance=guid, cache=cache):
        reference = _run(pipe, "dit")
    fused = {"fused_modulate": True, "fused_gated_residual": True}
    with optimize(pipe, scheduler=sched, guidance=guid, cache=cache, dit_savings=fused) as handle:
        assert "fused gated residual" in handle.summary()
        out = _run(pipe, "dit")
        assert handle.cache.stats().hit_ratio > 0
    np.testing.assert_allclose(out, reference, atol=1e-5)
    assert _untouched(pipe)


def test_dit_savings_refused_on_other_denoisers():
    pipe = tiny_pipeline("pixart")
    with pytest.raises(ValueError, match="DiTTransformer2DModel"):
        optimize(pipe, scheduler="hb", dit_savings=True)
    assert _untouched(pipe)


def test_unet_cache_refused_and_unsupported_pipeline():
    pipe = tiny_pipeline("sd")
    original = pipe.scheduler
    with pytest.raises(ValueError, match="UNet"):
        optimize(pipe, scheduler="hb", guidance="apg", cache="fora")
    assert pipe.scheduler is original and _untouched(pipe)
    with pytest.raises(ValueError, match="supported pipelines"):
        optimize(object(), scheduler="hb")


def test_failure_while_enabling_rolls_back():
    pipe = tiny_pipeline("dit")
    original = pipe.scheduler
    existing = enable_cache(pipe, "fora")  # a cache already on: optimize's enable_cache fails last
    with pytest.raises(ValueError, match="already has a fastsample cache"):
        optimize(pipe, scheduler="ghvb", guidance="apg", cache="fora")
    assert pipe.scheduler is original
    assert not has_call_hook(pipe, "fastsample.guidance")
    existing.disable()
    assert _untouched(pipe)
