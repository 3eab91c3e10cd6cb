"""Latency tooling: NFE hook counts, MACs against a hand computation, interleaved comparison, scopes."""

import pytest
import torch
from diffusers import DiTTransformer2DModel

from fastsample.eval import compare_latency, count_macs, count_nfe, measure_pipeline, time_function
from fastsample.eval.latency import MacCounter, sdpa_macs


def test_nfe_counter_counts_forward_calls_exactly():
    module = torch.nn.Linear(3, 3)
    with count_nfe(module) as nfe:
        for _ in range(7):
            module(torch.zeros(1, 3))
        assert nfe.count == 7
        nfe.reset()
        module(torch.zeros(2, 3))
    assert nfe.count == 1
    module(torch.zeros(1, 3))  # hook removed on exit
    assert nfe.count == 1 and not module._forward_pre_hooks
    with pytest.raises(TypeError):
        count_nfe(lambda x: x).__enter__()


def _tiny_dit(layers=2, heads=2, head_dim=8, sample=8, patch=2, channels=4):
    return DiTTransformer2DModel(
        num_attention_heads=heads,
        attention_head_dim=head_dim,
        in_channels=channels,
        num_layers=layers,
        sample_size=sample,
        patch_size=patch,
        num_embeds_ada_norm=10,
        norm_type="ada_norm_zero",
    ).eval()


def _dit_macs_by_hand(batch, layers, heads, head_dim, sample, patch, channels):
    """DiT forward MACs from its definition (Peebles & Xie 2023; diffusers DiTTransformer2DModel)."""
    width = heads * head_dim
    tokens = (sample // patch) ** 2
    patch_embed = batch * tokens * channels * patch**2 * width  # conv, kernel = stride = patch
    conditioning = batch * (256 * width + width * width)  # timestep MLP 256→D→D (labels: a lookup)
    per_block = (
        conditioning  # every block recomputes its own conditioning embedding
        + batch * width * 6 * width  # adaLN-Zero modulation
        + batch * tokens * 4 * width * width  # q, k, v, out projections
        + batch * heads * 2 * tokens**2 * head_dim  # QKᵀ and attention·V (SDPA)
        + batch * tokens * 2 * width * 4 * width  # feed-forward D→4D→D
    )
    final = conditioning + batch * width * 2 * width + batch * tokens * width * patch**2 * channels
    attention = layers * batch * heads * 2 * tokens**2 * head_dim
    return patch_embed + layers * per_block + final, attention


def test_macs_of_tiny_dit_match_hand_computation():
    config = dict(layers=2, heads=2, head_dim=8, sample=8, patch=2, channels=4)
    model = _tiny_dit(**config)
    batch = 3
    x = torch.randn(batch, 4, 8, 8)
    t = torch.tensor([10, 500, 999])
    labels = torch.tensor([1, 2, 3])
    counter = count_macs(lambda: model(x, timestep=t, class_labels=labels), modules={"dit": model})
    expected_total, expected_attention = _dit_macs_by_hand(batch, **config)
    assert counter.attention_calls == config["layers"]
    assert counter.attention_macs == expected_attention
    assert counter.total_macs == expected_total
    assert counter.module_macs["dit"] == expected_total and counter.module_calls["dit"] == 1
    # The linear/convolution part alone is what FlopCounterMode reports (it sees no SDPA FLOPs on CPU).
    assert counter.flop_counter_macs == expected_total - expected_attention


def test_sdpa_macs_cross_attention_shapes():
    q, k, v = torch.zeros(2, 3, 5, 4), torch.zeros(2, 3, 7, 4), torch.zeros(2, 3, 7, 6)
    assert sdpa_macs(q, k, v) == 2 * 3 * 5 * 7 * (4 + 6)
    with MacCounter() as counter:
        torch.nn.functional.scaled_dot_product_attention(q, k, v)
    assert counter.attention_macs == 2 * 3 * 5 * 7 * (4 + 6) and counter.total_macs == counter.attention_macs


def test_time_function_reports_runs_and_validates():
    calls = []
    result = time_function(lambda: calls.append(1), warmup=2, repeats=10)
    assert len(calls) == 12 and len(result.times_s) == 10
    assert min(result.times_s) <= result.median_s <= result.p90_s <= max(result.times_s)
    with pytest.raises(ValueError, match="≥ 10"):
        time_function(lambda: None, repeats=5)
    with pytest.raises(TypeError):
        time_function(42)


def test_interleaved_comparison_order_and_ratios():
    order = []
    comparison = compare_latency(lambda: order.append("A"), lambda: order.append("B"), warmup=1, repeats=10)
    assert order == ["A", "B"] * 11
    a, b = comparison.baseline.times_s, comparison.candidate.times_s
    assert len(a) == len(b) == 10
    assert comparison.speedup == pytest.approx(comparison.baseline.median_s / comparison.candidate.median_s)
    ratios = sorted(x / y for x, y in zip(a, b))
    assert comparison.pairwise_ratio_median == pytest.approx((ratios[4] + ratios[5]) / 2)


def test_measure_pipeline_scopes_nfe_and_macs():
    testing = pytest.importorskip("fastsample.testing")
    pipe = testing.tiny_pipeline("dit")
    pipe.set_progress_bar_config(disable=True)
    kwargs = testing.call_kwargs("dit", num_inference_steps=2)
    denoiser = pipe.transformer
    latency = measure_pipeline(pipe, kwargs, warmup=0, repeats=10)
    assert set(latency.scopes) == {"model_step", "denoising_loop", "end_to_end"}
    assert latency.nfe_per_call == 2  # DiT batches the CFG halves: one call per step
    loop, end_to_end = latency.scopes["denoising_loop"], latency.scopes["end_to_end"]
    assert len(loop.times_s) == len(end_to_end.times_s) == 10
    assert all(inner <= outer for inner, outer in zip(loop.times_s, end_to_end.times_s))  # loop ⊂ call
    # The pipeline is left exactly as it was.
    assert (
        "step" not in vars(pipe.scheduler) and not denoiser._forward_pre_hooks and not denoiser._forward_hooks
    )
    # MACs of the denoiser over one call = NFE × MACs of one step at the same inputs.
    x = torch.randn(2, denoiser.config.in_channels, 8, 8)
    one_step = count_macs(
        lambda: denoiser(x, timestep=torch.tensor([5, 5]), class_labels=torch.tensor([1, 1000]))
    )
    assert latency.denoiser_macs_per_call == 2 * one_step.total_macs
    assert latency.macs_per_call > latency.denoiser_macs_per_call  # the VAE decode counts too
    with pytest.raises(ValueError, match="scopes"):
        measure_pipeline(pipe, kwargs, scopes=("vae",))
