"""set_attention really changes what runs (processor swap verified), matches the stock model, and resets."""

import importlib.util

import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor2_0

from fastsample.kernels import set_attention
from fastsample.kernels.attention import FastsampleAttnProcessor, SDPAKernelProcessor, _attention_modules
from fastsample.testing import (
    tiny_dit_transformer,
    tiny_flux_transformer,
    tiny_pipeline,
    tiny_pixart_transformer,
)
from tests.cache._models import model_inputs  # tiny Flux inputs: text + image ids, 3-axis RoPE

HAS_TRITON = importlib.util.find_spec("triton") is not None


def _dit_inputs():
    return dict(
        hidden_states=torch.randn(2, 4, 8, 8),
        timestep=torch.tensor([500, 500]),
        class_labels=torch.tensor([3, 1000]),
    )


def _pixart_inputs():
    mask = torch.ones(2, 6)
    mask[1, 3:] = 0  # padded caption: exercises the masked cross-attention
    return dict(
        hidden_states=torch.randn(2, 4, 8, 8),
        encoder_hidden_states=torch.randn(2, 6, 32),
        encoder_attention_mask=mask,
        timestep=torch.tensor([500, 500]),
        added_cond_kwargs={"resolution": None, "aspect_ratio": None},
    )


CASES = [(tiny_dit_transformer, _dit_inputs), (tiny_pixart_transformer, _pixart_inputs)]


def _processors(model):
    return [m.processor for _, m in _attention_modules(model)]


@pytest.mark.parametrize("build, inputs", CASES)
@pytest.mark.parametrize(
    "backend, kernels",
    [("sdpa", None), ("sdpa", ("math",)), ("auto", None)]
    + ([("triton", None)] if HAS_TRITON and not torch.cuda.is_available() else []),
)
def test_legacy_models_change_processor_and_match(build, inputs, backend, kernels):
    model = build(0)
    kwargs = inputs()
    with torch.no_grad():
        expected = model(**kwargs).sample
    before = _processors(model)
    assert all(type(p) is AttnProcessor2_0 for p in before)
    handle = set_attention(model, backend, kernels=kernels)
    after = _processors(model)
    assert all(isinstance(p, FastsampleAttnProcessor) for p in after)  # not a silent no-op
    assert str(len(after)) in handle.describe()
    with torch.no_grad():
        got = model(**kwargs).sample
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    handle.disable()
    assert all(a is b for a, b in zip(_processors(model), before, strict=True))  # identical objects back
    handle.disable()  # idempotent
    assert "reset" in handle.describe()


def test_math_kernel_is_really_selected():
    """The kernel choice reaches SDPA: with a kernel set the device cannot run, torch raises instead of the
    call silently running the default kernel."""
    model = tiny_dit_transformer(0)
    set_attention(model, "sdpa", kernels=("cudnn",))  # no cuDNN attention on CPU
    with pytest.raises(RuntimeError, match="[Nn]o (available kernel|viable backend)"), torch.no_grad():
        model(**_dit_inputs())


def test_sd3_joint_processor_is_wrapped():
    pipe = tiny_pipeline("sd3", seed=0)
    before = _processors(pipe.transformer)
    if HAS_TRITON:  # the Triton kernel covers AttnProcessor2_0 only: refused, not ignored
        with pytest.raises(ValueError, match="cannot replace JointAttnProcessor2_0"):
            set_attention(pipe, "triton")
    handle = set_attention(pipe, "sdpa", kernels=("math",))
    assert all(
        isinstance(p, SDPAKernelProcessor) and p.inner is b
        for p, b in zip(_processors(pipe.transformer), before)
    )
    with pytest.raises(ValueError, match="already runs a fastsample attention path"):
        set_attention(pipe, "sdpa")
    handle.disable()
    assert all(a is b for a, b in zip(_processors(pipe.transformer), before, strict=True))


def test_flux_dispatcher_processors_are_copied_not_mutated():
    model = tiny_flux_transformer(0)
    before = _processors(model)
    old_backends = [p._attention_backend for p in before]
    handle = set_attention(model, "sdpa")
    after = _processors(model)
    assert all(a is not b and type(a) is type(b) for a, b in zip(after, before))
    assert all(a._attention_backend.value == "native" for a in after)
    assert [p._attention_backend for p in before] == old_backends
    handle.disable()
    assert all(a is b for a, b in zip(_processors(model), before, strict=True))


def test_bad_arguments_change_nothing():
    model = tiny_dit_transformer(0)
    before = _processors(model)
    with pytest.raises(ValueError, match="backend must be one of"):
        set_attention(model, "flashy")
    with pytest.raises(ValueError, match="kernels"):
        set_attention(model, "sdpa", kernels=("fast",))
    with pytest.raises(ValueError, match="kernels= is only"):
        set_attention(model, "auto", kernels=("math",))
    with pytest.raises(ValueError, match="no diffusers attention"):
        set_attention(torch.nn.Linear(2, 2), "sdpa")
    with pytest.raises(TypeError, match="pipeline"):
        set_attention(object(), "sdpa")
    if importlib.util.find_spec("xformers") is None:
        with pytest.raises(ImportError, match="pip install"):
            set_attention(model, "xformers")
    assert all(a is b for a, b in zip(_processors(model), before, strict=True))


@pytest.mark.skipif(not HAS_TRITON or torch.cuda.is_available(), reason="CPU check of the device rule")
def test_triton_refused_on_cpu_without_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET")
    with pytest.raises(ValueError, match="CUDA"):
        set_attention(tiny_dit_transformer(0), "triton")


def test_pipeline_end_to_end_with_reset():
    from fastsample.testing import call_kwargs

    pipe = tiny_pipeline("pixart", seed=0)
    expected = pipe(**call_kwargs("pixart", seed=0, output_type="pt")).images
    with set_attention(pipe, "sdpa", kernels=("math",)):
        got = pipe(**call_kwargs("pixart", seed=0, output_type="pt")).images
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.gpu
@pytest.mark.parametrize(
    "backend, kernels", [("sdpa", ("flash",)), ("sdpa", ("efficient",)), ("triton", None)]
)
def test_head_dim_72_bf16_gpu(backend, kernels):
    from diffusers import DiTTransformer2DModel

    model = (
        DiTTransformer2DModel(
            num_attention_heads=2,
            attention_head_dim=72,
            num_layers=1,
            sample_size=8,
            num_embeds_ada_norm=1000,
        )
        .cuda()
        .to(torch.bfloat16)
        .eval()
    )
    kwargs = {k: v.cuda() for k, v in _dit_inputs().items()}
    kwargs["hidden_states"] = kwargs["hidden_states"].to(torch.bfloat16)
    with torch.no_grad():
        expected = model(**kwargs).sample
        with set_attention(model, backend, kernels=kernels):
            got = model(**kwargs).sample
    torch.testing.assert_close(got.float(), expected.float(), atol=3e-2, rtol=3e-2)


@pytest.mark.slow
def test_torch_compile_through_processor():
    """Our processor (with an sdpa_kernel context) traces without graph breaks and matches eager."""
    model = tiny_dit_transformer(0)
    kwargs = _dit_inputs()
    with torch.no_grad():
        expected = model(**kwargs).sample
    handle = set_attention(model, "sdpa", kernels=("math",))
    torch._dynamo.reset()
    with torch.no_grad():
        explained = torch._dynamo.explain(model)(**kwargs)
        got = torch.compile(model, backend="aot_eager")(**kwargs).sample
    assert explained.graph_break_count == 0
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    handle.disable()
    torch._dynamo.reset()


def test_composes_with_savings_cache_and_guidance():
    import fastsample as fs
    from fastsample.testing import call_kwargs

    pipe = tiny_pipeline("dit", seed=0)
    first = pipe.transformer.transformer_blocks[0].norm1.emb.state_dict()
    for block in pipe.transformer.transformer_blocks[1:]:
        block.norm1.emb.load_state_dict(first)
    kwargs = dict(seed=0, num_inference_steps=4, output_type="pt")
    with fs.enable_cache(pipe, "fora", interval=2), fs.guide(pipe, fs.CFG()):
        expected = pipe(**call_kwargs("dit", **kwargs)).images
        with set_attention(pipe, "sdpa", kernels=("math",)) as att, fs.enable_dit_savings(pipe) as sav:
            assert "sdpa[math]" in att.describe() and "1 matmul" in sav.describe()
            got = pipe(**call_kwargs("dit", **kwargs)).images
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------------------------
# Flux: fused QK RMSNorm + RoPE prologue (Triton, run here in the interpreter)
# ------------------------------------------------------------------------------------------------------

needs_interpreter = pytest.mark.skipif(
    not HAS_TRITON or torch.cuda.is_available(), reason="interpreter check"
)


def _flux_forward(model):
    x, cond = model_inputs(model, "flux")
    with torch.no_grad():
        return model(x, timestep=torch.full((x.shape[0],), 0.5), **cond).sample


@pytest.fixture
def prologue_calls(monkeypatch):
    from fastsample.kernels import triton_ops

    calls = []
    real = triton_ops.qk_rmsnorm_rope

    def counted(x, *args, **kwargs):
        calls.append(tuple(x.shape))
        return real(x, *args, **kwargs)

    monkeypatch.setattr(triton_ops, "qk_rmsnorm_rope", counted)
    return calls


@needs_interpreter
@pytest.mark.parametrize(
    "backend, kernels, fused_prologue, label",
    [
        ("triton", None, None, "triton attention, fused QK RMSNorm+RoPE"),
        ("triton", None, False, "triton attention)"),
        ("sdpa", None, True, "native attention, fused QK RMSNorm+RoPE"),
        ("sdpa", ("math",), True, "native attention, fused QK RMSNorm+RoPE"),
    ],
)
def test_flux_fused_prologue_matches_diffusers(prologue_calls, backend, kernels, fused_prologue, label):
    """Against diffusers' own FluxAttnProcessor (q/k RMSNorm, text/image concatenation, RoPE with
    use_real_unbind_dim=-1) on a tiny FluxTransformer2DModel: 1 double-stream block (text and image parts
    with their own norms) and 2 single-stream blocks."""
    model = tiny_flux_transformer(0)
    expected = _flux_forward(model)
    before = _processors(model)
    handle = set_attention(model, backend, kernels=kernels, fused_prologue=fused_prologue)
    assert f"3 FastsampleFluxAttnProcessor({label}" in handle.describe()
    got = _flux_forward(model)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    prologue = fused_prologue is not False
    # per forward: q and k of the double block in 2 parts (text, image), of each single block in 1
    assert len(prologue_calls) == (2 * 2 + 2 * 2 * 1 if prologue else 0)
    handle.disable()
    assert all(a is b for a, b in zip(_processors(model), before, strict=True))
    torch.testing.assert_close(_flux_forward(model), expected, atol=0, rtol=0)


@needs_interpreter
def test_flux_prologue_leaves_autograd_to_diffusers_ops(prologue_calls):
    stock, fused = tiny_flux_transformer(0), tiny_flux_transformer(0)
    set_attention(fused, "triton")
    x, cond = model_inputs(stock, "flux")
    for model in (stock, fused):
        model(x, timestep=torch.full((x.shape[0],), 0.5), **cond).sample.square().mean().backward()
    assert prologue_calls == []
    for (name, a), b in zip(stock.named_parameters(), fused.parameters(), strict=True):
        if a.grad is not None:
            torch.testing.assert_close(b.grad, a.grad, atol=1e-6, rtol=1e-5, msg=name)


@needs_interpreter
def test_fused_prologue_errors(monkeypatch):
    dit, flux = tiny_dit_transformer(0), tiny_flux_transformer(0)
    before = _processors(flux)
    with pytest.raises(TypeError, match="fused_prologue must be"):
        set_attention(flux, "sdpa", fused_prologue="yes")
    with set_attention(dit, "triton") as handle:  # the default prologue flag is a no-op off Flux
        assert "Flux" not in handle.describe()
    with pytest.raises(ValueError, match="no FluxAttnProcessor"):
        set_attention(dit, "sdpa", fused_prologue=True)
    with pytest.raises(ValueError, match="SD3 has no RoPE"):
        set_attention(tiny_pipeline("sd3", seed=0), "sdpa", fused_prologue=True)
    real_norm = flux.transformer_blocks[0].attn.norm_added_k
    flux.transformer_blocks[0].attn.norm_added_k = torch.nn.LayerNorm(16)
    with pytest.raises(ValueError, match="norm_added_k=LayerNorm"):
        set_attention(flux, "sdpa", fused_prologue=True)
    flux.transformer_blocks[0].attn.norm_added_k = real_norm
    monkeypatch.delenv("TRITON_INTERPRET")
    with pytest.raises(ValueError, match="CUDA"):
        set_attention(flux, "sdpa", fused_prologue=True)
    assert all(a is b for a, b in zip(_processors(flux), before, strict=True))


@needs_interpreter
@pytest.mark.slow
def test_flux_fused_prologue_under_torch_compile(prologue_calls):
    model = tiny_flux_transformer(0)
    expected = _flux_forward(model)
    handle = set_attention(model, "sdpa", fused_prologue=True)
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="aot_eager")
    got = _flux_forward(compiled)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert prologue_calls  # the fused path ran
    handle.disable()
    torch._dynamo.reset()


@needs_interpreter
@pytest.mark.slow
def test_flux_fused_prologue_with_cache(prologue_calls):
    """With fastsample's FORA cache on Flux: the same samples as the cache alone (which really skips)."""
    import fastsample as fs
    from tests.cache._models import sample

    model = tiny_flux_transformer(0)
    with fs.enable_cache(model, "fora", interval=2) as cache:
        expected = sample(model, "flux", steps=4)
        hits = cache.stats().hit_ratio
        cache.new_run()
        with set_attention(model, "triton") as handle:
            got = sample(model, "flux", steps=4)
            assert "fused QK RMSNorm+RoPE" in handle.describe()
        assert cache.stats().hit_ratio == hits > 0
    assert prologue_calls
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("head_dim", [64, 72])
@pytest.mark.parametrize("kernel", ["flash", "efficient", "cudnn", "math"])
@pytest.mark.parametrize("masked", [False, True])
def test_direct_kernel_calls_match_sdpa_kernel_on_cuda(kernel, head_dim, dtype, masked):
    """sdpa_with_kernels (no global flags) computes what torch's own selection under sdpa_kernel computes,
    and refuses where torch has no viable kernel either."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from fastsample.kernels.attention import sdpa_with_kernels

    backend = {
        "flash": SDPBackend.FLASH_ATTENTION,
        "efficient": SDPBackend.EFFICIENT_ATTENTION,
        "cudnn": SDPBackend.CUDNN_ATTENTION,
        "math": SDPBackend.MATH,
    }[kernel]
    generator = torch.Generator("cuda").manual_seed(0)
    q, k, v = (
        torch.randn(2, 3, 77, head_dim, device="cuda", dtype=dtype, generator=generator) for _ in range(3)
    )
    mask = torch.randn(2, 1, 1, 77, device="cuda", dtype=dtype, generator=generator) if masked else None
    try:
        with sdpa_kernel([backend]):
            expected = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    except RuntimeError:
        with pytest.raises(RuntimeError, match="no available kernel"):
            sdpa_with_kernels(q, k, v, mask, kernels=[kernel])
        return
    got = sdpa_with_kernels(q, k, v, mask, kernels=[kernel])
    torch.testing.assert_close(got, expected, atol=2e-3, rtol=2e-3)
