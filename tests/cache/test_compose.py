"""Feature caching composed with Adaptive Guidance's batch re-packing (issue 18, item 1).

Once some samples have switched to their conditional prediction, the guidance hook runs the model on all
conditional rows plus the unconditional rows of the samples still guided. The cache keeps its state per
canonical row (CFG half × sample) and follows the rows each forward carries, so the composed recipe keeps the
cache's hit ratio and its work is the product of the two savings (the issue's target: ≤ 1.05 × the product).
Before per-row state, a re-packed batch no longer matched the cached shapes and was recomputed.
"""

import dataclasses

import numpy as np
import pytest
import torch

from fastsample.cache import enable_cache
from fastsample.guidance import AdaptiveGuidance, guide
from fastsample.testing import call_kwargs, tiny_pipeline
from tests.guidance.test_repack import _ScriptedSwitch

STEPS = 6
# per sample: the step it switches at (−1: never). EVEN switches only at FORA(2)'s computed steps, so the rows
# per step do not correlate with its schedule and the composed work is exactly the product of the savings;
# ODD switches at reused steps too (where a cache without per-row state recomputed: hit ratio 0.17, not 0.5),
# and the composed work is FORA's per-step savings applied to the rows actually carried
EVEN = [2, 4, -1, 2]
ODD = [2, 3, -1, 1]
LABELS = [1, 2, 2, 3]
PROMPTS, NEGATIVE = ("a cat", "a dog"), ("blurry", "ugly")


def _kwargs(name, steps=STEPS):
    gens = [torch.Generator().manual_seed(20 + i) for i in range(len(LABELS))]
    if name == "dit":
        return call_kwargs(
            name, num_inference_steps=steps, class_labels=LABELS, generator=gens, output_type="latent"
        )
    return call_kwargs(
        name,
        num_inference_steps=steps,
        prompt=list(PROMPTS),
        negative_prompt=list(NEGATIVE),
        num_images_per_prompt=len(LABELS) // 2,
        generator=gens,
        output_type="latent",
    )


def _latents(pipe, kwargs):
    out = pipe(**kwargs).images
    return out.clone() if isinstance(out, torch.Tensor) else torch.from_numpy(np.array(out))


def _run(pipe, name, *, cache=None, method=None, cache_first=False):
    """(latents, cache stats or None, guidance stats or None) of one call with the given capabilities."""
    handles = []
    try:
        if cache is not None and cache_first:
            handles.append(enable_cache(pipe, *cache[:1], **cache[1]))
        if method is not None:
            handles.append(guide(pipe, method))
        if cache is not None and not cache_first:
            handles.append(enable_cache(pipe, *cache[:1], **cache[1]))
        out = _latents(pipe, _kwargs(name))
        cache_stats = next((h.stats() for h in handles if hasattr(h, "stats")), None)
        guidance_stats = next((h.last_stats for h in handles if hasattr(h, "last_stats")), None)
        return out, cache_stats, guidance_stats
    finally:
        for handle in reversed(handles):
            handle.disable()


@pytest.mark.parametrize("switch", [EVEN, ODD], ids=["even", "odd"])
@pytest.mark.parametrize("cache_first", [False, True], ids=["guidance-then-cache", "cache-then-guidance"])
@pytest.mark.parametrize("name", ["dit", "sd3", "pixart"])
def test_repacked_guidance_keeps_the_hit_ratio_and_the_savings_multiply(name, cache_first, switch):
    pipe = tiny_pipeline(name)
    b = len(switch)
    fora = ("fora", {"interval": 2})
    plain, fora_stats, _ = _run(pipe, name, cache=fora)
    _, _, ag_stats = _run(pipe, name, method=_ScriptedSwitch(switch))
    composed, stats, composed_ag = _run(
        pipe, name, cache=fora, method=_ScriptedSwitch(switch), cache_first=cache_first
    )

    # the guidance really re-packed: B + (still guided) rows per step, fewer than 2B at most steps
    rows = [b + int(_ScriptedSwitch(switch)._guided(s).sum()) for s in range(STEPS)]
    assert stats.rows["default"].tolist() == rows
    assert composed_ag["model_samples"] == ag_stats["model_samples"] == sum(rows) < 2 * b * STEPS

    # the cache's schedule is untouched by the re-packing
    assert stats.hit_ratio == fora_stats.hit_ratio == 0.5
    np.testing.assert_array_equal(stats.computed["default"], fora_stats.computed["default"])

    # work = samples × computed fraction, against the product of the two savings measured alone
    ag_fraction = ag_stats["model_samples"] / (2 * b * STEPS)
    cache_fraction = fora_stats.work_fraction(2 * b)
    assert cache_fraction == pytest.approx(fora_stats.computed_mac_fraction)
    assert stats.computed_mac_fraction == pytest.approx(fora_stats.computed_mac_fraction)
    if switch is EVEN:  # the target, and here exactly the product
        assert stats.work_fraction(2 * b) <= 1.05 * ag_fraction * cache_fraction
        assert stats.work_fraction(2 * b) == pytest.approx(ag_fraction * cache_fraction, rel=1e-12)
    # exactly FORA's per-step savings applied to AG's rows (the product up to how the two schedules align)
    expected = dataclasses.replace(fora_stats, rows={"default": np.array(rows)}).work_fraction(2 * b)
    assert stats.work_fraction(2 * b) == pytest.approx(expected, rel=1e-12)

    # the sample that is never switched ran exactly FORA-without-AG's rows and schedule
    never = switch.index(-1)
    ref = plain[never]
    torch.testing.assert_close(composed[never], ref, rtol=1e-4, atol=2e-6 * float(ref.abs().max()))


def test_rows_of_a_repacked_forward_reuse_their_own_cached_values():
    """Reference: at a reused step, the unit output each canonical row receives is the one that row computed
    at the last computed step (the rows are gathered, not taken positionally from a differently packed
    batch)."""
    pipe = tiny_pipeline("dit")
    unit = pipe.transformer.transformer_blocks[0].ff
    seen = []  # what the unit returned to its block (computed, or served by the cache)
    probe = unit.register_forward_hook(lambda m, a, o: seen.append(o.clone()))
    with guide(pipe, _ScriptedSwitch([-1, 1, -1, 2])), enable_cache(pipe, "fora", interval=2) as handle:
        # step 0 computes 8 rows; step 1 carries 4 cond + 3 uncond rows (sample 1's uncond row dropped);
        # step 2 computes 6 rows into the same buffers; step 3 reuses them
        _latents(pipe, _kwargs("dit", steps=4))
        stats = handle.stats()
        slots = [slot for state in handle._controller.states.values() for slot in state.slots]
    probe.remove()
    step0, step1, step2, step3 = seen
    assert stats.rows["default"].tolist() == [8, 7, 6, 6]
    np.testing.assert_array_equal(stats.computed["default"].all(axis=1), [True, False, True, False])
    assert not stats.computed["default"][1].any()  # step 1 served every unit from the cache
    kept = torch.tensor([0, 1, 2, 3, 4, 6, 7])  # cond_first: cond rows 0-3, uncond rows 4-7 minus 5
    assert torch.equal(step1, step0[kept])
    assert torch.equal(step3, step2)  # same 6 rows (uncond of samples 0 and 2), reused from step 2
    # the buffers keep the canonical 8 rows: allocated once, then copied into (stable addresses)
    assert all(slot.allocations == 1 for slot in slots)


@pytest.mark.slow
def test_adaptive_guidance_and_fora_multiply_on_the_embedded_default():
    from fastsample.zoo.default import load_default_pipeline

    pipe = load_default_pipeline()
    steps, b = 10, 4

    def call():
        gens = [torch.Generator().manual_seed(100 + i) for i in range(b)]
        return pipe(
            class_labels=list(range(b)),
            num_inference_steps=steps,
            guidance_scale=4.0,
            generator=gens,
            output_type="pt",
        )

    with enable_cache(pipe, "fora", interval=2) as handle:
        call()
        fora = handle.stats()
    method = AdaptiveGuidance(threshold=0.99)
    with guide(pipe, method) as g, enable_cache(pipe, "fora", interval=2) as handle:
        call()
        composed = handle.stats()
        samples = g.last_stats["model_samples"]
    assert samples < 2 * b * steps  # AG did switch some samples (so the batch was re-packed)
    assert composed.rows["default"].sum() == samples and int(composed.rows["default"].min()) < 2 * b
    assert composed.hit_ratio == fora.hit_ratio == 0.5
    np.testing.assert_array_equal(composed.computed["default"], fora.computed["default"])
    # the cache loses nothing to the re-packing: its per-step savings apply to the rows AG carried. (Against
    # AG measured alone the product can differ by a sample or two switching a step later or earlier, as the
    # cached features move γ; benchmarks/cache_compose.py measures that on 40 samples.)
    on_rows = dataclasses.replace(fora, rows=composed.rows).work_fraction(2 * b)
    assert composed.work_fraction(2 * b) == pytest.approx(on_rows, rel=1e-12)
    assert composed.work_fraction(2 * b) <= 1.05 * samples / (2 * b * steps) * fora.work_fraction(2 * b)


def test_flux_true_cfg_contexts_keep_separate_state_when_guidance_skips_the_uncond_pass():
    """Flux runs cond and uncond as separate calls in ``cache_context("cond")``/``("uncond")``. When the
    guidance method stops the unconditional pass (here after step 2), the uncond context simply takes no more
    steps; the cond context keeps FORA's schedule, and each reused output is its own context's."""
    pipe = tiny_pipeline("flux")
    unit = pipe.transformer.transformer_blocks[0].ff
    kwargs = call_kwargs("flux", num_inference_steps=STEPS)
    for cache_first in (False, True):
        outputs = []
        probe = unit.register_forward_hook(lambda m, a, o, seen=outputs: seen.append(o.clone()))
        if cache_first:
            handle = enable_cache(pipe, "fora", interval=2)
            g = guide(pipe, _ScriptedSwitch([2]))
        else:
            g = guide(pipe, _ScriptedSwitch([2]))
            handle = enable_cache(pipe, "fora", interval=2)
        pipe(**kwargs)
        stats = handle.stats()
        handle.disable()
        g.disable()
        probe.remove()
        assert sorted(stats.computed) == ["cond", "uncond"]
        np.testing.assert_array_equal(stats.computed["cond"].all(axis=1), [True, False] * (STEPS // 2))
        np.testing.assert_array_equal(stats.computed["uncond"].all(axis=1), [True, False])  # steps 0, 1
        assert stats.rows["cond"].tolist() == [1] * STEPS and stats.rows["uncond"].tolist() == [1, 1]
        # what ff returned, in call order: cond/uncond at steps 0 and 1, then cond alone at steps 2-5
        cond0, uncond0, cond1, uncond1, cond2, cond3, cond4, cond5 = outputs
        assert not torch.equal(cond0, uncond0)
        assert torch.equal(cond1, cond0) and torch.equal(uncond1, uncond0)
        assert torch.equal(cond3, cond2) and torch.equal(cond5, cond4) and not torch.equal(cond2, cond0)


def test_cache_slot_rows_gather_scatter_and_validity():
    from fastsample.cache.buffers import CacheSlot

    slot = CacheSlot()
    full = torch.arange(12.0).reshape(4, 3)
    slot.store(full)
    assert slot.holds() and slot.holds(torch.tensor([1, 3]), 4) and not slot.holds(None, 5)
    slot.store(-full[[1, 3]], torch.tensor([1, 3]), 4)
    expected = full.clone()
    expected[[1, 3]] *= -1
    assert torch.equal(slot.load(), expected) and slot.allocations == 1
    assert torch.equal(slot.load(torch.tensor([3, 0])), expected[[3, 0]])
    assert slot.load(torch.arange(4)) is slot.load()  # identity rows: the buffer itself, no copy
    fresh = CacheSlot()  # a first store of some rows only: the other rows are not held
    fresh.store(full[[2]], torch.tensor([2]), 4)
    assert (
        fresh.holds(torch.tensor([2]), 4) and not fresh.holds(torch.tensor([1, 2]), 4) and not fresh.holds()
    )
    fresh.invalidate()
    assert not fresh.holds(torch.tensor([2]), 4)
