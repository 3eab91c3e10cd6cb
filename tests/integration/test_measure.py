"""fastsample.integration.measure: the one clock, MAC counter and NFE counter."""

import math

import pytest
import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention

from fastsample.integration.measure import Clock, MacCounter, NFECounter, Stopwatch, count_macs, sdpa_macs


@pytest.mark.parametrize("backend", ["math", "default"])
def test_attention_macs_match_a_hand_count(backend):
    """softmax(QKᵀ)V with B·H = 2·3, L_q = 5, L_k = 7, E = 4, E_v = 6: QKᵀ is B·H·L_q·L_k·E MACs and the
    weighted sum of V is B·H·L_q·L_k·E_v, whatever kernel runs it (the math kernel's own matmuls are not
    added on top)."""
    q, k, v = torch.randn(2, 3, 5, 4), torch.randn(2, 3, 7, 4), torch.randn(2, 3, 7, 6)
    by_hand = 2 * 3 * (5 * 7 * 4 + 5 * 7 * 6)
    assert sdpa_macs(q, k, v) == by_hand
    if backend == "math":
        from torch.nn.attention import SDPBackend, sdpa_kernel

        context = sdpa_kernel(SDPBackend.MATH)
    else:
        import contextlib

        context = contextlib.nullcontext()
    with context, MacCounter() as counter:
        F.scaled_dot_product_attention(q, k, v)
        F.scaled_dot_product_attention(query=q, key=k, value=v, attn_mask=torch.ones(5, 7, dtype=torch.bool))
    assert counter.attention_calls == 2
    assert counter.attention_macs == counter.total_macs == 2 * by_hand


def test_diffusers_attention_module_macs_match_a_hand_count():
    """A diffusers self-attention block: q, k, v, out projections (4·N·D² with bias adds not counted) plus
    2·N²·d per head."""
    batch, tokens, heads, head_dim = 2, 9, 2, 8
    width = heads * head_dim
    attn = Attention(query_dim=width, heads=heads, dim_head=head_dim).eval()
    x = torch.randn(batch, tokens, width)
    counter = count_macs(lambda: attn(x), modules={"attn": attn})
    projections = batch * tokens * 4 * width * width
    attention = batch * heads * 2 * tokens**2 * head_dim
    assert counter.attention_macs == attention
    assert counter.total_macs == counter.module_macs["attn"] == projections + attention


def test_readings_while_running_split_work_exactly():
    """The cache attributes MACs to a site as the difference of two readings inside one count."""
    a, b = torch.randn(4, 8), torch.randn(8, 16)
    with MacCounter() as counter:
        a @ b
        before = counter.total_macs
        a @ b @ b.T
        inside = counter.total_macs - before
    assert inside == 4 * 8 * 16 + 4 * 16 * 8 and counter.total_macs == 4 * 8 * 16 + inside


def test_the_cache_profile_uses_the_same_counter():
    """enable_cache's MAC profile of a forward equals the MacCounter count of the same forward."""
    import fastsample as fs
    from fastsample.testing import tiny_dit_transformer

    model = tiny_dit_transformer(0)
    x = torch.randn(2, model.config.in_channels, model.config.sample_size, model.config.sample_size)
    kwargs = dict(timestep=torch.tensor([10, 10]), class_labels=torch.tensor([1, 2]))
    with torch.no_grad():
        expected = count_macs(lambda: model(x, **kwargs)).total_macs
        with fs.enable_cache(model, "fora", interval=2) as handle:
            model(x, **kwargs)
            totals = handle.stats().total_macs
    assert list(totals.values()) == [expected]


def test_nfe_counter_counts_calls_and_samples():
    module = torch.nn.Linear(3, 3)
    counter = NFECounter(module)
    module(torch.zeros(2, 3))
    module(torch.zeros(5, 3))
    assert (counter.count, counter.samples) == (2, 7)
    counter.reset()
    assert (counter.count, counter.samples) == (0, 0)
    counter.remove()
    module(torch.zeros(1, 3))
    assert counter.count == 0 and not module._forward_pre_hooks


def test_cpu_clock_and_stopwatch():
    clock = Clock()
    assert clock.device.type == "cpu" and clock.method.startswith("perf_counter")
    seconds, _ = clock.run(lambda: sum(range(1000)))
    assert seconds >= 0
    start = clock.mark()
    assert clock.seconds_between(start, clock.mark()) >= 0
    with Stopwatch() as watch:
        assert watch.elapsed() >= 0
    assert watch.seconds >= 0 and watch.cpu_seconds >= 0 and watch.elapsed() == watch.seconds
    with pytest.raises(RuntimeError, match="not been started"):
        Stopwatch().stop()
    assert math.isnan(Stopwatch().seconds)
