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
    handle.reset()
    assert all(a is b for a, b in zip(_processors(model), before, strict=True))  # identical objects back
    handle.reset()  # idempotent
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
    handle.reset()
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
    handle.reset()
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
    handle.reset()
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
