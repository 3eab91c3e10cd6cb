"""Unknown keyword arguments raise naming the closest key; variable-step Adams–Bashforth / GHVB weights."""

from __future__ import annotations

import numpy as np
import pytest
from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler, PNDMScheduler

from fastsample.solvers import (
    GHVBScheduler,
    HeavyBallScheduler,
    MomentumDPMSolverMultistepScheduler,
    PNDMFamilyScheduler,
)
from fastsample.solvers.coefficients import adams_bashforth, ghvb, variable_adams_bashforth, variable_ghvb
from tests.solvers.helpers import SD15

CLASSES = (GHVBScheduler, HeavyBallScheduler, PNDMFamilyScheduler, MomentumDPMSolverMultistepScheduler)


@pytest.mark.parametrize(
    "cls, key, suggestion",
    [
        (GHVBScheduler, "ghvb_ordr", "ghvb_order"),
        (HeavyBallScheduler, "beta", "momentum"),
        (MomentumDPMSolverMultistepScheduler, "beta", "momentum"),
        (PNDMFamilyScheduler, "methd", "method"),
        (GHVBScheduler, "use_karas_sigmas", "use_karras_sigmas"),
    ],
)
def test_unknown_keyword_names_the_closest(cls, key, suggestion):
    with pytest.raises(TypeError, match=f"`{key}`; did you mean `{suggestion}`"):
        cls(**{key: 1})
    with pytest.raises(TypeError, match=f"`{key}`; did you mean `{suggestion}`"):
        cls.from_config(SD15, **{key: 1})


@pytest.mark.parametrize("cls", CLASSES)
def test_foreign_config_keys_are_still_ignored(cls):
    """A pipeline's DDIM/PNDM/FlowMatch config carries keys these classes do not take: accepted as diffusers
    does (routed to unused_kwargs), both inside the config and passed explicitly by a generic swap loop."""
    for config in (
        PNDMScheduler.from_config(SD15).config,
        DDIMScheduler(set_alpha_to_one=False).config,
        FlowMatchEulerDiscreteScheduler(shift=3.0).config,
        {**SD15, "skip_prk_steps": True, "some_future_key": 1},
    ):
        cls.from_config(config)
    _, unused = cls.from_config(SD15, return_unused_kwargs=True, skip_prk_steps=True)
    assert unused["skip_prk_steps"] is True


def test_unknown_keyword_error_does_not_fire_on_valid_keys_and_keeps_config():
    s = GHVBScheduler.from_config(SD15, ghvb_order=2.0, variable_step=False)
    assert s.config.ghvb_order == 2.0 and s.config.variable_step is False
    assert HeavyBallScheduler(momentum=0.5).config.momentum == 0.5


@pytest.mark.parametrize("k", [1, 2, 3, 4, 5])
def test_variable_step_weights_reduce_to_the_tables_on_a_uniform_grid(k):
    taus = tuple(2.0 + 0.3 * j for j in range(k))  # newest first, decreasing τ (older nodes larger)
    assert np.allclose(variable_adams_bashforth(taus, 1.7), adams_bashforth(k), atol=1e-12)
    for beta in (0.2, 0.5, 0.8, 1.0):
        assert np.allclose(variable_ghvb(taus, 1.7, beta), np.array(ghvb(k, beta)) / beta, atol=1e-12)


@pytest.mark.parametrize("k", [1, 2, 3, 4, 5])
def test_variable_step_weights_integrate_polynomials_exactly(k):
    """Σ b_j p(τ_{n−j})·h equals ∫ p over the step for every polynomial of degree < k (non-uniform nodes)."""
    rng = np.random.default_rng(k)
    taus = tuple(np.sort(rng.uniform(0.5, 3.0, k)))  # newest (smallest: the ODE runs towards τ = 0) first
    tau_next = taus[0] - 0.4
    b = variable_adams_bashforth(taus, tau_next)
    for degree in range(k):
        poly = np.polynomial.Polynomial(rng.normal(size=degree + 1))
        exact = poly.integ()(tau_next) - poly.integ()(taus[0])
        approx = (tau_next - taus[0]) * sum(w * poly(t) for w, t in zip(b, taus))
        assert approx == pytest.approx(exact, rel=1e-9, abs=1e-12)


def test_variable_step_rejects_bad_nodes():
    with pytest.raises(ValueError, match="distinct"):
        variable_adams_bashforth((1.0, 1.0), 0.5)
    with pytest.raises(ValueError, match="zero step"):
        variable_adams_bashforth((1.0, 2.0), 1.0)
    with pytest.raises(ValueError, match="1..5"):
        variable_adams_bashforth(tuple(range(6, 0, -1)), 0.0)
