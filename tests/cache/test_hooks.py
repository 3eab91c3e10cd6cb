"""Unit/block hooks on bare transformers: exactness, schedules, restoration, buffers, errors."""

import numpy as np
import pytest
import torch

from fastsample.cache import FORA, StaticSchedule, enable_cache, find_blocks, find_units
from fastsample.cache.hooks import SITE_HOOK
from tests.cache._models import FAMILIES, sample, tiny_model

STEPS = 4


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize(
    "method,knobs",
    [
        ("none", {}),
        ("fora", {"interval": 1}),
        ("fora", {"interval": 1, "level": "block"}),
        ("dynamic", {"threshold": 0.0}),
        ("taylorseer", {"interval": 1, "order": 2}),
        ("dynamic", {"threshold": 0.0, "order": 1}),
    ],
)
def test_zero_reuse_is_bitwise_equal_to_no_cache(family, method, knobs):
    model = tiny_model(family)
    reference = sample(model, family, STEPS)
    handle = enable_cache(model, method, **knobs)
    cached = sample(model, family, STEPS)
    assert torch.equal(cached, reference)
    stats = handle.stats()
    assert stats.hit_ratio == 0.0 and stats.num_forwards == STEPS
    handle.disable()


@pytest.mark.parametrize("family", ["dit", "pixart"])
def test_static_mask_gives_exactly_the_scheduled_hits_and_unit_calls(family):
    model = tiny_model(family)
    units = find_units(model)
    rng = np.random.default_rng(0)
    mask = rng.random((STEPS, len(units))) < 0.5
    mask[0] = True
    # count real computations with forward hooks on a leaf Linear inside each unit: it only runs when the
    # unit's original forward runs (a forward hook on the unit itself would also fire on a cache hit)
    calls = np.zeros(len(units), dtype=int)
    probes = []
    for i, unit in enumerate(units):
        leaf = next(m for m in unit.module.modules() if isinstance(m, torch.nn.Linear))
        probes.append(leaf.register_forward_hook(lambda *_, i=i: calls.__setitem__(i, calls[i] + 1)))
    handle = enable_cache(model, "static", mask=mask)
    sample(model, family, STEPS)
    stats = handle.stats()
    np.testing.assert_array_equal(calls, mask.sum(axis=0))
    np.testing.assert_array_equal(stats.computed["default"], mask)
    assert stats.hit_ratio == pytest.approx(1 - mask.mean())
    np.testing.assert_allclose(stats.per_step_hit_ratio, 1 - mask.mean(axis=1))
    np.testing.assert_allclose(stats.per_site_hit_ratio, 1 - mask.mean(axis=0))
    assert stats.unit_calls == mask.sum()
    for probe in probes:
        probe.remove()
    handle.disable()


def test_reused_output_is_the_step_it_was_computed_at():
    """Independent reference: with FORA(2) each unit's output at step 2j+1 is exactly its output at 2j."""
    model = tiny_model("dit")
    units = find_units(model)
    seen = {u.name: [] for u in units}
    probes = [
        u.module.register_forward_hook(lambda m, a, o, n=u.name: seen[n].append(o.clone())) for u in units
    ]
    handle = enable_cache(model, "fora", interval=2)
    sample(model, "dit", STEPS)
    for name, outputs in seen.items():
        assert len(outputs) == STEPS
        for k in range(1, STEPS, 2):
            assert torch.equal(outputs[k], outputs[k - 1]), name
        assert not torch.equal(outputs[2], outputs[1]), name
    for probe in probes:
        probe.remove()
    handle.disable()


@pytest.mark.parametrize("family", FAMILIES)
def test_disable_restores_the_model_exactly(family):
    model = tiny_model(family)
    reference = sample(model, family, STEPS)
    modules_before = dict(model.named_modules())
    dicts_before = {name: dict(m.__dict__) for name, m in model.named_modules()}
    state_before = {k: v.clone() for k, v in model.state_dict().items()}
    for method, knobs in [
        ("fora", {"interval": 2}),
        ("dynamic", {"threshold": 1.0}),
        ("fora", {"level": "block"}),
        ("taylorseer", {"interval": 2, "order": 2}),
        ("dynamic", {"threshold": 1.0, "order": 1}),
    ]:
        handle = enable_cache(model, method, **knobs)
        assert not torch.equal(sample(model, family, STEPS), reference)
        handle.disable()
        handle.disable()  # idempotent
        assert dict(model.named_modules()) == modules_before
        for name, m in model.named_modules():
            assert m.__dict__.keys() == dicts_before[name].keys(), name
            assert "forward" not in m.__dict__ and "_diffusers_hook" not in m.__dict__
            assert m.forward.__func__ is type(m).forward
        assert all(torch.equal(v, state_before[k]) for k, v in model.state_dict().items())
        assert torch.equal(sample(model, family, STEPS), reference)


def test_disable_keeps_hooks_that_were_there_before():
    from diffusers.hooks import HookRegistry, ModelHook

    model = tiny_model("dit")
    ff = model.transformer_blocks[0].ff
    registry = HookRegistry.check_if_exists_or_initialize(ff)
    registry.register_hook(ModelHook(), "someone_else")
    forward_before = ff.forward
    handle = enable_cache(model, "fora", interval=2)
    handle.disable()
    assert ff._diffusers_hook is registry and list(registry.hooks) == ["someone_else"]
    assert ff.forward is forward_before
    assert registry.get_hook(SITE_HOOK) is None


def test_buffers_are_allocated_once_and_copied_into():
    model = tiny_model("dit")
    handle = enable_cache(model, "fora", interval=2)
    sample(model, "dit", STEPS)
    slots = handle._controller.states["default"].slots
    pointers = [s.load().data_ptr() for s in slots]
    for _ in range(2):
        handle.new_run()
        sample(model, "dit", STEPS, seed=1)
    assert [s.allocations for s in slots] == [1] * len(slots)
    assert [s.load().data_ptr() for s in slots] == pointers
    handle.disable()


def test_reset_starts_a_new_run():
    model = tiny_model("dit")
    handle = enable_cache(model, "fora", interval=3)
    first = sample(model, "dit", STEPS)
    handle.new_run()
    second = sample(model, "dit", STEPS)
    assert torch.equal(first, second)
    assert handle.stats().num_forwards == STEPS
    # without reset the step counter goes on: steps 4..7 of FORA(3) reuse at 4, 5, 7
    sample(model, "dit", STEPS)
    assert handle.stats().num_forwards == 2 * STEPS
    handle.disable()


def test_block_level_static_schedule_counts_block_calls():
    model = tiny_model("sd3")
    blocks = find_blocks(model)
    mask = np.ones((STEPS, len(blocks)), dtype=bool)
    mask[2, 1] = mask[3, 0] = False
    calls = np.zeros(len(blocks), dtype=int)
    probes = [
        b.module.norm1.register_forward_hook(lambda *_, i=i: calls.__setitem__(i, calls[i] + 1))
        for i, b in enumerate(blocks)
    ]
    handle = enable_cache(model, StaticSchedule(mask, level="block"))
    sample(model, "sd3", STEPS)
    np.testing.assert_array_equal(calls, mask.sum(axis=0))
    assert handle.stats().hit_ratio == pytest.approx(2 / mask.size)
    for probe in probes:
        probe.remove()
    handle.disable()


def test_dynamic_threshold_skips_the_tail_and_respects_max_consecutive():
    model = tiny_model("flux")
    handle = enable_cache(model, "dynamic", threshold=1e9)  # always below: skip every tail after warm-up
    sample(model, "flux", STEPS)
    computed = handle.stats().computed["default"]
    assert computed[0].all() and computed[:, 0].all() and not computed[1:, 1:].any()
    handle.disable()
    handle = enable_cache(model, "dynamic", threshold=1e9, max_consecutive=1, warmup_steps=2)
    sample(model, "flux", 6)
    computed = handle.stats().computed["default"]
    np.testing.assert_array_equal(computed[:, 1], [True, True, False, True, False, True])
    handle.disable()


def test_mac_accounting_matches_closed_form_for_dit():
    """Site MACs against the closed form: attention 4·N·D² + 2·N²·D, MLP 8·N·D² per sample."""
    model = tiny_model("dit")
    handle = enable_cache(model, "fora", interval=2)
    sample(model, "dit", STEPS)
    stats = handle.stats()
    c = model.config
    n = (c.sample_size // c.patch_size) ** 2
    d = c.num_attention_heads * c.attention_head_dim
    batch = 2
    expected = {"attn1": batch * (4 * n * d * d + 2 * n * n * d), "ff": batch * 8 * n * d * d}
    site_macs = stats.site_macs["default"]
    for name, macs in zip(stats.site_names, site_macs):
        assert macs == expected[name.rsplit(".", 1)[1]], name
    total = stats.total_macs["default"]
    skipped = site_macs.sum() * (STEPS // 2)
    assert stats.computed_mac_fraction == pytest.approx((total * STEPS - skipped) / (total * STEPS))
    assert stats.theoretical_speedup == pytest.approx(1 / stats.computed_mac_fraction)
    # one [2, N, D] float32 buffer per unit
    assert stats.cache_bytes == len(stats.site_names) * batch * n * d * 4
    line = handle.summary()
    assert "fora(interval=2, unit)" in line and "hit ratio 50.0%" in line and "theoretical" in line
    handle.disable()


def test_nothing_reused_warns_for_bare_models(caplog):
    model = tiny_model("dit")
    handle = enable_cache(model, "dynamic", threshold=0.0)  # a threshold nothing passes
    sample(model, "dit", 3)
    with caplog.at_level("WARNING", logger="fastsample.cache.api"):
        handle.stats()
    assert "reused nothing" in caplog.text
    handle.disable()


def test_bad_knobs_and_targets_are_refused():
    model = tiny_model("dit")
    with pytest.raises(ValueError, match="unknown cache method"):
        enable_cache(model, "teacache")
    with pytest.raises(TypeError, match="unknown knob"):
        enable_cache(model, "fora", intervall=2)
    with pytest.raises(ValueError, match="interval"):
        enable_cache(model, "fora", interval=0)
    with pytest.raises(ValueError, match="level"):
        enable_cache(model, "fora", level="layer")
    with pytest.raises(ValueError, match="threshold"):
        enable_cache(model, "dynamic", threshold=-1)
    with pytest.raises(ValueError, match="max_consecutive"):
        enable_cache(model, "dynamic", max_consecutive=0)
    for order in (3, -1, True, 1.0):
        with pytest.raises(ValueError, match="order"):
            enable_cache(model, "fora", order=order)
    with pytest.raises(ValueError, match="columns"):
        enable_cache(model, "static", mask=np.ones((3, 2), dtype=bool))
    with pytest.raises(ValueError, match="step 0"):
        enable_cache(model, "static", mask=np.zeros((3, 4), dtype=bool))
    with pytest.raises(TypeError, match="boolean"):
        enable_cache(model, "static", mask=np.ones((3, 4)))
    with pytest.raises(TypeError, match="policy object"):
        enable_cache(model, FORA(2), interval=3)
    with pytest.raises(TypeError, match="compile"):
        enable_cache(model, "fora", compile="yes")
    with pytest.raises(ValueError, match="does not support"):
        enable_cache(torch.nn.Linear(2, 2), "fora")
    with pytest.raises(TypeError, match="pipeline or transformer"):
        enable_cache("dit", "fora")
    handle = enable_cache(model, "fora")
    with pytest.raises(ValueError, match="already has a fastsample cache"):
        enable_cache(model, "fora")
    handle.disable()
    assert "_diffusers_hook" not in model.__dict__


def test_schedule_shorter_than_the_run_is_refused():
    model = tiny_model("dit")
    mask = np.ones((2, 4), dtype=bool)
    handle = enable_cache(model, "static", mask=mask)
    with pytest.raises(RuntimeError, match="covers 2 steps"):
        sample(model, "dit", 3)
    handle.disable()


def test_measure_speedup_reports_consistent_figures():
    from fastsample.cache import measure_speedup

    model = tiny_model("dit")
    report = measure_speedup(
        lambda: sample(model, "dit", STEPS), model, "fora", repeats=1, warmup=0, interval=2
    )
    assert report.measured == pytest.approx(report.uncached_s / report.cached_s)
    assert report.stats.measured_speedup == pytest.approx(report.measured)
    assert report.theoretical == pytest.approx(1 / report.stats.computed_mac_fraction)
    assert report.stats.hit_ratio == 0.5 and "measured" in report.stats.summary()
    assert "_diffusers_hook" not in model.__dict__  # the cache was disabled again
    with pytest.raises(ValueError, match="repeats"):
        measure_speedup(lambda: None, model, "fora", repeats=0)


def test_handle_is_a_context_manager():
    model = tiny_model("dit")
    with enable_cache(model, "fora", interval=2) as handle:
        sample(model, "dit", STEPS)
        assert handle.stats().hit_ratio == 0.5
    assert not handle.enabled and "_diffusers_hook" not in model.__dict__


def test_skipped_tail_adds_the_residuals_of_the_last_full_step():
    """Reference: at a skipped step the last block's output is block 0's fresh output plus the residuals
    (out - in) that blocks 1..L-1 produced at the last fully computed step (FirstBlockCache semantics)."""
    model = tiny_model("pixart")
    blocks = [b.module for b in find_blocks(model)]
    seen = []  # (block index, input, output) in call order
    probes = [
        block.register_forward_hook(lambda m, a, o, i=i: seen.append((i, a[0].clone(), o.clone())))
        for i, block in enumerate(blocks)
    ]
    handle = enable_cache(model, "dynamic", threshold=1e9)
    sample(model, "pixart", 2)
    assert handle.stats().computed["default"].tolist() == [[True, True], [True, False]]
    step0, step1 = seen[: len(blocks)], seen[len(blocks) :]
    residuals = sum(out - inp for i, inp, out in step0 if i > 0)
    torch.testing.assert_close(step1[-1][2], step1[0][2] + residuals)
    for probe in probes:
        probe.remove()
    handle.disable()
