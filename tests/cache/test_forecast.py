"""Forecasting reuse (issue 18, item 2): Newton/Taylor extrapolation of cached features in the step index.

Reference: the polynomial itself. On a feature that is exactly a degree-k polynomial in the step, the order-k
forecast equals the value the site would have computed, for any spacing of the computed steps; order k − 1
does not (so the tests can fail)."""

import numpy as np
import pytest
import torch

from fastsample.cache import DynamicThreshold, StaticSchedule, TaylorSeer, enable_cache, find_units
from fastsample.cache.forecast import ForecastSlot
from tests.cache._models import sample, tiny_model

COEFFS = [torch.randn(3, 5, generator=torch.Generator().manual_seed(i)) for i in range(3)]


def _poly(k, degree, rows=None):
    value = sum(c * float(k) ** j for j, c in enumerate(COEFFS[: degree + 1]))
    return value if rows is None else value[rows]


@pytest.mark.parametrize("degree", [0, 1, 2])
def test_order_k_forecast_is_exact_on_a_degree_k_polynomial_with_irregular_steps(degree):
    slot = ForecastSlot(degree)
    computed = [0, 2, 3, 7]
    for k in computed:
        slot.store(_poly(k, degree), step=k)
    for k in (8, 9, 12):
        torch.testing.assert_close(slot.read(k), _poly(k, degree), rtol=1e-5, atol=1e-4)
    if degree:
        lower = ForecastSlot(degree - 1)
        for k in computed:
            lower.store(_poly(k, degree), step=k)
        assert not torch.allclose(lower.read(9), _poly(9, degree), rtol=1e-3, atol=1e-3)


def test_forecast_lowers_its_order_until_enough_steps_were_computed():
    slot = ForecastSlot(2)
    slot.store(_poly(0, 1), step=0)
    assert torch.equal(slot.read(1), _poly(0, 1))  # one value: plain reuse
    slot.store(_poly(1, 1), step=1)
    torch.testing.assert_close(slot.read(4), _poly(4, 1))  # two values: linear


def test_forecast_keeps_each_rows_own_history():
    """Rows computed at different steps (a re-packed batch) each extrapolate from their own steps."""
    slot = ForecastSlot(1)
    rows_all, rows_some = torch.arange(3), torch.tensor([0, 2])
    slot.store(_poly(0, 1), step=0, rows=rows_all, full=3)
    slot.store(_poly(1, 1, rows_some), step=1, rows=rows_some, full=3)  # row 1 not carried at step 1
    slot.store(_poly(3, 1, torch.tensor([1])), step=3, rows=torch.tensor([1]), full=3)
    torch.testing.assert_close(slot.read(5, rows_all), _poly(5, 1), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(slot.read(4, rows_some), _poly(4, 1, rows_some), rtol=1e-5, atol=1e-4)


def test_half_precision_features_are_differenced_in_float32():
    slot = ForecastSlot(1)
    for k in (0, 1):
        slot.store(_poly(k, 1).to(torch.bfloat16), step=k)
    assert slot.terms[1].load().dtype == torch.float32
    assert slot.read(2).dtype == torch.bfloat16


class _Clock:
    """The step of the sampling loop (a forward pre-hook on the model: one model call = one step)."""

    def __init__(self, model):
        self.k = -1
        model.register_forward_pre_hook(self._tick)

    def _tick(self, module, args):
        self.k += 1


def _polynomial(clock, degree, seed):
    """A function of a tensor ``h``: a degree-``degree`` polynomial in the step, shaped like ``h``."""
    c = torch.randn(degree + 1, generator=torch.Generator().manual_seed(seed)).tolist()

    def value(h):
        base = torch.linspace(-1.0, 1.0, h.shape[-1], dtype=h.dtype)
        return base * sum(cj * float(clock.k) ** j for j, cj in enumerate(c)) + 0 * h

    return value


def _model_with_polynomial_sites(level, degree):
    """The tiny DiT with every block's ``ff`` unit (level ``"unit"``) or every block after the first (level
    ``"block"``: its residual) replaced by a degree-``degree`` polynomial in the step."""
    model = tiny_model("dit")
    clock = _Clock(model)
    for i, block in enumerate(model.transformer_blocks):
        poly = _polynomial(clock, degree, seed=i)
        if level == "unit":
            block.ff.forward = lambda hidden_states, *a, _p=poly, **k: _p(hidden_states)
        elif i > 0:
            block.forward = lambda hidden_states, *a, _p=poly, **k: hidden_states + _p(hidden_states)
    return model, clock


def _run(model, clock, steps, policy=None):
    clock.k = -1
    handle = enable_cache(model, policy) if policy is not None else None
    try:
        return sample(model, "dit", steps), handle.stats() if handle else None
    finally:
        if handle is not None:
            handle.disable()


STEPS = 7


@pytest.mark.parametrize("order", [1, 2])
def test_static_schedule_forecast_reproduces_polynomial_units_exactly(order):
    """``ff`` is a degree-``order`` polynomial in the step; it computes at steps 0..order and is forecast at
    the later ones (the attention units always compute): the cached run equals the uncached run."""
    model, clock = _model_with_polynomial_sites("unit", order)
    reference, _ = _run(model, clock, STEPS)
    kinds = [site.kind for site in find_units(model)]
    mask = np.ones((STEPS, len(kinds)), dtype=bool)
    mask[order + 1 :, [i for i, kind in enumerate(kinds) if kind == "ff"]] = False
    cached, stats = _run(model, clock, STEPS, StaticSchedule(mask, order=order))
    assert stats.hit_ratio > 0
    torch.testing.assert_close(cached, reference, rtol=1e-5, atol=1e-5)
    lower, _ = _run(model, clock, STEPS, StaticSchedule(mask, order=order - 1))
    assert not torch.allclose(lower, reference, rtol=1e-3, atol=1e-3)


def test_taylorseer_on_fora_schedule_reproduces_linear_units_exactly():
    model, clock = _model_with_polynomial_sites("unit", 1)
    reference, _ = _run(model, clock, STEPS)
    # every unit on FORA(3)'s schedule: attention is not polynomial, so compare the ff outputs themselves
    seen = []
    for block in model.transformer_blocks:
        block.ff.register_forward_hook(lambda m, a, o: seen.append(o.clone()))
    _run(model, clock, STEPS, TaylorSeer(interval=3, order=1))
    served = seen[:]
    seen.clear()
    _run(model, clock, STEPS, "none")
    # from step 4 on two computed steps (0, 3) exist, so the forecast is exact; before, it is a copy
    for k in range(4, STEPS):
        for b in range(len(model.transformer_blocks)):
            index = k * len(model.transformer_blocks) + b
            torch.testing.assert_close(served[index], seen[index], rtol=1e-6, atol=1e-6)
    assert not torch.allclose(served[len(model.transformer_blocks)], seen[len(model.transformer_blocks)])
    del reference


@pytest.mark.parametrize("order", [1, 2])
def test_dynamic_threshold_forecast_reproduces_polynomial_block_residuals_exactly(order):
    """Blocks 1.. add a degree-``order`` polynomial residual; the dynamic policy computes everything up to
    ``warmup_steps = order + 1`` and skips the tail afterwards (threshold never reached), forecasting the
    residuals: the cached run equals the uncached run."""
    model, clock = _model_with_polynomial_sites("block", order)
    reference, _ = _run(model, clock, STEPS)
    policy = DynamicThreshold(threshold=1e9, warmup_steps=order + 1, order=order)
    cached, stats = _run(model, clock, STEPS, policy)
    assert stats.computed["default"][order + 1 :, 1:].sum() == 0  # the tail was skipped after the warmup
    torch.testing.assert_close(cached, reference, rtol=1e-5, atol=1e-5)
    lower, _ = _run(
        model, clock, STEPS, DynamicThreshold(threshold=1e9, warmup_steps=order + 1, order=order - 1)
    )
    assert not torch.allclose(lower, reference, rtol=1e-3, atol=1e-3)
