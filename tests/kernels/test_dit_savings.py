"""Exact DiT savings: same output as the stock model, the saved work is really skipped, disable restores."""

import importlib.util

import pytest
import torch

import fastsample as fs
from fastsample.kernels import enable_dit_savings
from fastsample.testing import call_kwargs, tiny_dit_transformer, tiny_pipeline


def _inputs(batch=2):
    return dict(
        hidden_states=torch.randn(batch, 4, 8, 8),
        timestep=torch.tensor([500] * batch),
        class_labels=torch.tensor([3, 1000][:batch] * (batch // 2 or 1)),
    )


def _share_embeddings(model):
    """Converted DiT checkpoints carry identical copies of the embedding in every block; a random init does
    not, so copy block 0's into the others."""
    first = model.transformer_blocks[0].norm1.emb.state_dict()
    for block in model.transformer_blocks[1:]:
        block.norm1.emb.load_state_dict(first)
    return model


class _Counter:
    """Counts the real computations: the timestep MLP of every embedding and every adaLN Linear."""

    def __init__(self, model):
        self.emb = self.linear = 0
        self.handles = []
        for block in model.transformer_blocks:
            self.handles.append(block.norm1.emb.timestep_embedder.register_forward_hook(self._emb))
            self.handles.append(block.norm1.linear.register_forward_hook(self._linear))

    def _emb(self, *_):
        self.emb += 1

    def _linear(self, *_):
        self.linear += 1

    def remove(self):
        for h in self.handles:
            h.remove()


def _forward(model, kwargs):
    with torch.no_grad():
        return model(**kwargs).sample


@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("options", [{}, {"batched_adaln": False}, {"shared_embedding": False}])
def test_same_output_and_work_skipped(shared, options):
    model = tiny_dit_transformer(0)
    if shared:
        _share_embeddings(model)
    layers = len(model.transformer_blocks)
    kwargs = _inputs()
    counter = _Counter(model)
    expected = _forward(model, kwargs)
    assert (counter.emb, counter.linear) == (layers + 1, layers)  # the stock model's work
    counter.emb = counter.linear = 0
    handle = enable_dit_savings(model, **options)
    got = _forward(model, kwargs)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    share = options.get("shared_embedding", True)
    assert counter.emb == ((1 if shared else layers) if share else layers + 1)
    assert counter.linear == (0 if options.get("batched_adaln", True) else layers)
    assert "dit savings" in handle.describe()
    counter.remove()
    handle.disable()
    assert "forward" not in model.__dict__ and "_diffusers_hook" not in model.__dict__
    for block in model.transformer_blocks:
        assert (
            "_diffusers_hook" not in block.norm1.__dict__
            and "_diffusers_hook" not in block.norm1.emb.__dict__
        )
    torch.testing.assert_close(_forward(model, kwargs), expected, atol=0, rtol=0)


def test_groups_follow_weight_equality():
    model = tiny_dit_transformer(0)
    handle = enable_dit_savings(model)
    assert "2 distinct embedding(s)" in handle.describe()
    handle.disable()
    handle = enable_dit_savings(_share_embeddings(model))
    assert "1 distinct embedding(s)" in handle.describe() and "1 matmul" in handle.describe()
    handle.disable()


def test_errors():
    model = tiny_dit_transformer(0)
    with pytest.raises(TypeError, match="DiTTransformer2DModel"):
        enable_dit_savings(tiny_pipeline("pixart", seed=0))
    with pytest.raises(ValueError, match="nothing requested"):
        enable_dit_savings(model, shared_embedding=False, batched_adaln=False)
    handle = enable_dit_savings(model)
    with pytest.raises(ValueError, match="already enabled"):
        enable_dit_savings(model)
    handle.disable()
    handle.disable()  # idempotent


def test_weights_follow_dtype_change():
    model = _share_embeddings(tiny_dit_transformer(0))
    kwargs = _inputs()
    with enable_dit_savings(model):
        _forward(model, kwargs)
        model.to(torch.float64)
        got = _forward(model, {k: v.double() if v.is_floating_point() else v for k, v in kwargs.items()})
    expected = _forward(model, {k: v.double() if v.is_floating_point() else v for k, v in kwargs.items()})
    torch.testing.assert_close(got, expected, atol=1e-12, rtol=1e-12)


def test_pipeline_with_cache_and_guidance():
    """Composes with a FORA cache and fastsample's CFG hook: same images as those two without savings."""
    pipe = tiny_pipeline("dit", seed=0)
    _share_embeddings(pipe.transformer)
    kwargs = call_kwargs("dit", seed=0, num_inference_steps=4, output_type="pt")
    cache = fs.enable_cache(pipe, "fora", interval=2)
    with fs.guide(pipe, fs.CFG()):
        expected = pipe(**kwargs).images
        with enable_dit_savings(pipe) as handle:
            got = pipe(**call_kwargs("dit", seed=0, num_inference_steps=4, output_type="pt")).images
    assert cache.stats().summary()  # the cache ran in both calls
    cache.disable()
    assert not handle.active
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_shipped_default_dit():
    """The shipped DiT was trained from a random init: its 6 embeddings differ, so this is the bmm path."""
    pipe = fs.load_default_pipeline()
    pipe.set_progress_bar_config(disable=True)
    kwargs = dict(class_labels=[0, 1], num_inference_steps=3, output_type="pt")
    expected = pipe(**kwargs, generator=torch.Generator().manual_seed(0)).images
    with enable_dit_savings(pipe) as handle:
        got = pipe(**kwargs, generator=torch.Generator().manual_seed(0)).images
        described = handle.describe()
    assert "6 distinct embedding(s)" in described and "bmm" in described
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_torch_compile():
    """Dynamo traces through the hooks in one graph, and new inputs of the same shape are still exact."""
    model = _share_embeddings(tiny_dit_transformer(0))
    first, second = _inputs(), _inputs()
    expected = [_forward(model, first), _forward(model, second)]
    handle = enable_dit_savings(model)
    torch._dynamo.reset()
    with torch.no_grad():
        explained = torch._dynamo.explain(model)(**first)
        compiled = torch.compile(model, backend="aot_eager")
        got = [compiled(**first).sample, compiled(**second).sample]
    assert explained.graph_break_count == 0
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, atol=1e-5, rtol=1e-5)
    handle.disable()
    torch._dynamo.reset()


def test_training_mode_runs_the_stock_computation():
    """Label dropout is random per call in training mode, so nothing may be shared there."""
    model = _share_embeddings(tiny_dit_transformer(0))
    layers = len(model.transformer_blocks)
    handle = enable_dit_savings(model)
    model.train()
    counter = _Counter(model)
    _forward(model, _inputs())
    assert (counter.emb, counter.linear) == (layers + 1, layers)
    counter.remove()
    model.eval()
    handle.disable()


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("triton") is None or torch.cuda.is_available(), reason="interpreter check"
)
def test_fused_modulate_in_interpreter():
    model = _share_embeddings(tiny_dit_transformer(0))
    kwargs = _inputs()
    expected = _forward(model, kwargs)
    with enable_dit_savings(model, fused_modulate=True) as handle:
        got = _forward(model, kwargs)
        assert "fused modulate" in handle.describe()
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
