"""One Handle base: the same verbs everywhere, old verbs as warning aliases, the one resolve_denoiser."""

import warnings

import pytest
import torch

import fastsample as fs
from fastsample.integration.adapters import resolve_denoiser
from fastsample.integration.handles import Handle
from fastsample.testing import tiny_dit_transformer, tiny_pipeline


def _no_hooks(model):
    return all("_diffusers_hook" not in m.__dict__ and "forward" not in m.__dict__ for m in model.modules())


def test_every_handle_has_the_same_verbs():
    pipe = tiny_pipeline("dit")
    scheduler = pipe.scheduler
    handles = [
        fs.enable_guidance(pipe, fs.APG()),
        fs.set_attention(pipe, "sdpa"),
    ]
    for handle in handles:
        assert isinstance(handle, Handle) and handle.active
        assert isinstance(handle.describe(), str) and type(handle).__name__ in repr(handle)
    for handle in reversed(handles):
        handle.disable()
        handle.disable()  # idempotent
        assert not handle.active
    assert _no_hooks(pipe.transformer) and pipe.scheduler is scheduler
    model = tiny_dit_transformer(0)
    for enable in (lambda: fs.enable_cache(model, "fora", interval=2), lambda: fs.enable_dit_savings(model)):
        handle = enable()
        with handle as same:
            assert same is handle and handle.active
        assert not handle.active and _no_hooks(model)
    with fs.optimize(pipe, scheduler="ghvb", guidance="apg") as handle:
        assert isinstance(handle, Handle) and "GHVBScheduler" in handle.describe()
    assert not handle.active and pipe.scheduler is scheduler and _no_hooks(pipe.transformer)


def test_old_verbs_warn_and_still_work():
    model = tiny_dit_transformer(0)
    cache = fs.enable_cache(model, "fora", interval=2)
    with pytest.warns(FutureWarning, match=r"CacheHandle.reset\(\) is deprecated.*new_run"):
        cache.reset()
    assert cache.enabled and cache.active
    cache.disable()
    assert not cache.enabled
    attention = fs.set_attention(model, "sdpa")
    with pytest.warns(FutureWarning, match=r"AttentionHandle.reset\(\).*disable"):
        attention.reset()
    assert not attention.active
    savings = fs.enable_dit_savings(model)
    with pytest.warns(FutureWarning, match=r"DiTSavingsHandle.reset\(\).*disable"):
        savings.reset()
    assert not savings.active and _no_hooks(model)
    pipe = tiny_pipeline("dit")
    scheduler = pipe.scheduler
    handle = fs.optimize(pipe, scheduler="hb")
    with pytest.warns(FutureWarning, match=r"OptimizeHandle.undo\(\).*disable"):
        handle.undo()
    assert pipe.scheduler is scheduler and not handle.active
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fs.optimize(pipe, scheduler="hb").disable()  # the new verbs do not warn


def test_guide_is_an_alias_of_enable_guidance():
    pipe = tiny_pipeline("dit")
    with fs.guide(pipe, fs.APG()) as handle:
        assert handle.active and "APG" in handle.describe()
    assert not handle.active and _no_hooks(pipe.transformer)


def test_optimize_module_and_function():
    """``fastsample.optimize`` is the function, and calling the module (once imported) runs it too."""
    import importlib

    module = importlib.import_module("fastsample.optimize")
    pipe = tiny_pipeline("dit")
    for entry in (fs.optimize, module):
        handle = entry(pipe, scheduler="plms")
        assert type(pipe.scheduler).__name__ == "GHVBScheduler"
        handle.disable()


def test_resolve_denoiser():
    pipe = tiny_pipeline("dit")
    assert resolve_denoiser(pipe) is pipe.transformer
    assert resolve_denoiser(pipe.transformer) is pipe.transformer
    with pytest.raises(TypeError, match="set_attention expects a diffusers pipeline, got the model"):
        resolve_denoiser(pipe.transformer, "set_attention", allow_model=False)
    with pytest.raises(TypeError, match="latency expects"):
        resolve_denoiser(object(), "latency")

    class Other:  # a pipeline without an adapter: found by attribute unless an adapter is required
        unet = torch.nn.Linear(2, 2)

    assert resolve_denoiser(Other()) is Other.unet
    with pytest.raises(ValueError, match="no adapter for Other"):
        resolve_denoiser(Other(), require_adapter=True)
