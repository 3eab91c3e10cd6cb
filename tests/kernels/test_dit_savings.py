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
    """The shipped DiT was trained from a random init: its 6 embeddings differ, so this is the bmm path.

    The denoiser output is compared at fp32 round-off (1e-5). The 3-step images are compared more loosely:
    the batched matmul sums in another order (~2e-6 on the model output), and the first solver step turns ε
    into x0 by dividing by sqrt(ᾱ) = 6.3e-3 at t = 999, scaling that round-off by ~160.
    """
    pipe = fs.load_default_pipeline()
    pipe.set_progress_bar_config(disable=True)
    model = pipe.transformer
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, 32, 32, generator=generator)
    inputs = dict(timestep=torch.tensor([999, 500, 100, 10]), class_labels=torch.tensor([0, 1, 10, 3]))
    kwargs = dict(class_labels=[0, 1], num_inference_steps=3, output_type="pt")
    with torch.no_grad():
        expected_forward = model(x, **inputs).sample
    expected = pipe(**kwargs, generator=torch.Generator().manual_seed(0)).images
    with enable_dit_savings(pipe) as handle:
        with torch.no_grad():
            got_forward = model(x, **inputs).sample
        got = pipe(**kwargs, generator=torch.Generator().manual_seed(0)).images
        described = handle.describe()
    assert "6 distinct embedding(s)" in described and "bmm" in described
    torch.testing.assert_close(got_forward, expected_forward, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got, expected, atol=1e-3, rtol=1e-3)


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


# ------------------------------------------------------------------------------------------------------
# fused gated residual (Triton, run here in the interpreter)
# ------------------------------------------------------------------------------------------------------

needs_interpreter = pytest.mark.skipif(
    importlib.util.find_spec("triton") is None or torch.cuda.is_available(), reason="interpreter check"
)


@pytest.fixture
def kernel_calls(monkeypatch):
    """Counts the calls of each fused kernel, so a test fails if the fused path is silently not taken."""
    from fastsample.kernels import triton_ops

    calls = {"gated_residual": 0, "adaln_modulate": 0}
    for name in calls:
        real = getattr(triton_ops, name)

        def counted(*args, _real=real, _name=name, **kwargs):
            calls[_name] += 1
            return _real(*args, **kwargs)

        monkeypatch.setattr(triton_ops, name, counted)
    return calls


@needs_interpreter
@pytest.mark.parametrize(
    "options, modulates",
    [
        (dict(shared_embedding=False, batched_adaln=False), 0),
        (dict(fused_modulate=True), 2),  # norm1's and, inside the fused block, norm3's
    ],
)
@pytest.mark.parametrize("chunked", [False, True])
def test_fused_gated_residual_matches_stock(kernel_calls, options, modulates, chunked):
    model = _share_embeddings(tiny_dit_transformer(0))
    if chunked:  # diffusers' chunked feed-forward (memory saving) is reproduced, not refused
        for block in model.transformer_blocks:
            block.set_chunk_feed_forward(8, dim=1)
    layers = len(model.transformer_blocks)
    kwargs = _inputs()
    expected = _forward(model, kwargs)
    handle = enable_dit_savings(model, fused_gated_residual=True, **options)
    got = _forward(model, kwargs)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert kernel_calls == {"gated_residual": 2 * layers, "adaln_modulate": modulates * layers}
    assert "fused gated residual (2 per block)" in handle.describe()
    assert ("norm1 and norm3" in handle.describe()) == bool(modulates)
    handle.disable()
    assert "fused gated residual" not in handle.describe()
    for block in model.transformer_blocks:
        assert "forward" not in block.__dict__ and "_diffusers_hook" not in block.__dict__
    torch.testing.assert_close(_forward(model, kwargs), expected, atol=0, rtol=0)


@needs_interpreter
def test_fused_paths_leave_autograd_to_the_stock_expressions(kernel_calls):
    """The kernels have no backward: while autograd records, the stock expressions run (same gradients)."""
    stock = _share_embeddings(tiny_dit_transformer(0))
    fused = _share_embeddings(tiny_dit_transformer(0))
    kwargs = _inputs()
    only_fused = dict(shared_embedding=False, batched_adaln=False)  # sharing moves embedding gradients
    enable_dit_savings(fused, fused_modulate=True, fused_gated_residual=True, **only_fused)
    for model in (stock, fused):
        model(**kwargs).sample.square().mean().backward()
    assert kernel_calls == {"gated_residual": 0, "adaln_modulate": 0}
    for (name, a), b in zip(stock.named_parameters(), fused.parameters(), strict=True):
        if a.grad is not None:
            torch.testing.assert_close(b.grad, a.grad, atol=1e-6, rtol=1e-5, msg=name)


@needs_interpreter
@pytest.mark.parametrize("level", ["unit", "block"])
def test_fused_gated_residual_with_cache_and_guidance(kernel_calls, level):
    """Same images as the FORA cache (+ CFG) alone; the cache really skips work in both runs. A unit cache
    hooks attn1/ff, which the fused block calls as modules; a block cache enabled afterwards wraps it."""
    pipe = tiny_pipeline("dit", seed=0)
    _share_embeddings(pipe.transformer)
    kwargs = dict(seed=0, num_inference_steps=4, output_type="pt")
    with fs.guide(pipe, fs.CFG()):
        cache = fs.enable_cache(pipe, "fora", interval=2, level=level)
        expected = pipe(**call_kwargs("dit", **kwargs)).images
        expected_hits = cache.stats().hit_ratio
        cache.disable()
        with enable_dit_savings(pipe, fused_gated_residual=True, fused_modulate=True) as savings:
            cache = fs.enable_cache(pipe, "fora", interval=2, level=level)
            got = pipe(**call_kwargs("dit", **kwargs)).images
            assert cache.stats().hit_ratio == expected_hits > 0
            cache.disable()
            assert "fused gated residual" in savings.describe()
    assert kernel_calls["gated_residual"] > 0
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@needs_interpreter
def test_fused_gated_residual_refuses_what_it_does_not_reimplement():
    from diffusers.models.embeddings import SinusoidalPositionalEmbedding

    model = tiny_dit_transformer(0)
    kwargs = _inputs()
    cache = fs.enable_cache(model, "fora", interval=2, level="block")  # hooks the blocks first
    with pytest.raises(ValueError, match=r"transformer_blocks\[0\] already has its forward replaced"):
        enable_dit_savings(model, fused_gated_residual=True)
    cache.disable()
    edits = {
        "has a cross-attention attn2": lambda b: setattr(b, "attn2", b.attn1),
        "has a positional embedding": lambda b: setattr(
            b, "pos_embed", SinusoidalPositionalEmbedding(b.dim, max_seq_length=16)
        ),
        "norm_type 'ada_norm'": lambda b: setattr(b, "norm_type", "ada_norm"),
        "GLIGEN fuser": lambda b: setattr(b, "fuser", torch.nn.Identity()),
        "affine norm3": lambda b: setattr(b, "norm3", torch.nn.LayerNorm(b.dim)),
    }
    for message, edit in edits.items():
        model = tiny_dit_transformer(0)
        edit(model.transformer_blocks[1])
        with pytest.raises(ValueError, match=rf"transformer_blocks\[1\] .*{message}"):
            enable_dit_savings(model, fused_gated_residual=True, fused_modulate=True)
        assert all("forward" not in m.__dict__ for m in model.modules())  # nothing was hooked
    model = tiny_dit_transformer(0)
    with (
        enable_dit_savings(model, fused_gated_residual=True),
        pytest.raises(ValueError, match="GLIGEN"),
        torch.no_grad(),
    ):
        model(**kwargs, cross_attention_kwargs={"gligen": {"objs": None}})


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs triton")
@pytest.mark.parametrize("flag", ["fused_modulate", "fused_gated_residual"])
def test_fused_flags_refused_on_cpu_without_interpreter(monkeypatch, flag):
    if torch.cuda.is_available():
        pytest.skip("CPU check of the device rule")
    monkeypatch.delenv("TRITON_INTERPRET")
    model = tiny_dit_transformer(0)
    with pytest.raises(ValueError, match="needs a CUDA model"):
        enable_dit_savings(model, **{flag: True})
    assert "_diffusers_hook" not in model.__dict__


@needs_interpreter
@pytest.mark.slow
def test_fused_paths_under_torch_compile(kernel_calls):
    """Correct under torch.compile. In the interpreter each launch runs outside the graph (a graph break per
    kernel call, see triton_ops); on CUDA dynamo captures the kernels (not checked here: no GPU)."""
    model = _share_embeddings(tiny_dit_transformer(0))
    kwargs = _inputs()
    expected = _forward(model, kwargs)
    handle = enable_dit_savings(model, fused_modulate=True, fused_gated_residual=True)
    torch._dynamo.reset()
    with torch.no_grad():
        got = torch.compile(model, backend="aot_eager")(**kwargs).sample
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert kernel_calls["gated_residual"] >= 2 * len(model.transformer_blocks)
    handle.disable()
    torch._dynamo.reset()
