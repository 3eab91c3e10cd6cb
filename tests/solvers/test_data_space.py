"""The data-prediction space (``solver_space="data"``): exponential Adams–Bashforth weights in λ = log(α/σ),
DDIM / FlowMatch-Euler at order one, and the w = 1 accuracy it buys on the exact oracle."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler

from fastsample.solvers import GHVBScheduler
from fastsample.solvers.coefficients import adams_bashforth, exponential_adams_bashforth
from fastsample.zoo.gmm import GaussianMixture
from fastsample.zoo.oracle import OracleProblem, ReferenceCache, evaluate
from fastsample.zoo.solver_table import SD3_SCHEDULER_CONFIG, SD15_SCHEDULER_CONFIG
from tests.solvers.helpers import SD15, flow_pseudo_model, sample_loop, vp_pseudo_model

X0 = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize("k", [1, 2, 3, 4, 5])
def test_exponential_weights_tend_to_the_tables_for_small_steps(k):
    h = 1e-4
    taus = tuple(math.exp(-j * h) for j in range(k))  # equal steps in λ, newest first
    assert np.allclose(exponential_adams_bashforth(taus, math.exp(h)), adams_bashforth(k), atol=1e-3)


@pytest.mark.parametrize("k", [2, 3, 4])
def test_exponential_weights_integrate_exp_times_polynomials_exactly(k):
    """Σ b_j p(λ_{n−j})·(e^{λ_{n+1}} − e^{λ_n}) = ∫ e^λ p(λ) dλ for deg p < k (scipy quad as reference)."""
    from scipy.integrate import quad

    rng = np.random.default_rng(k)
    lam = np.sort(rng.uniform(-2.0, 0.5, k))[::-1]  # newest (largest λ: the run goes to σ → 0) first
    lam_next = lam[0] + 0.9
    b = exponential_adams_bashforth(tuple(np.exp(lam)), math.exp(lam_next))
    assert sum(b) == pytest.approx(1.0, abs=1e-12)
    for degree in range(k):
        p = np.polynomial.Polynomial(rng.normal(size=degree + 1))
        exact = quad(lambda x, p=p: math.exp(x) * p(x), lam[0], lam_next, epsabs=1e-13)[0]
        approx = (math.exp(lam_next) - math.exp(lam[0])) * sum(w * p(x) for w, x in zip(b, lam))
        assert approx == pytest.approx(exact, rel=1e-9)


def test_exponential_weights_refuse_a_high_order_step_to_sigma_zero():
    assert exponential_adams_bashforth((2.0,), math.inf) == (1.0,)
    with pytest.raises(ValueError, match="first order"):
        exponential_adams_bashforth((2.0, 1.0), math.inf)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_data_space_order_one_is_ddim(prediction_type):
    cfg = dict(SD15, timestep_spacing="trailing", steps_offset=0, prediction_type=prediction_type)
    ddim = DDIMScheduler(**cfg)
    ours = GHVBScheduler.from_config(ddim.config, ghvb_order=1, grid="spacing", solver_space="data")
    eps_model = vp_pseudo_model(ddim.alphas_cumprod)
    ac = ddim.alphas_cumprod.double()

    def model(x, t):
        eps = eps_model(x, t)
        if prediction_type == "epsilon":
            return eps
        a, s = ac[int(t)].sqrt(), (1 - ac[int(t)]).sqrt()
        return (a * eps.double() - s * (x.double() - s * eps.double()) / a).float()

    # 20 steps: T/N is an integer, so DDIM's t − T//N lands on the next grid point
    a = sample_loop(ddim, model, X0.clone(), num_inference_steps=20)
    b = sample_loop(ours, model, X0.clone(), num_inference_steps=20)
    assert (a - b).abs().max() <= 2e-5


def test_data_space_order_one_is_flow_match_euler():
    fm = FlowMatchEulerDiscreteScheduler(shift=3.0)
    ours = GHVBScheduler.from_config(fm.config, ghvb_order=1, grid="spacing", solver_space="data")
    a = sample_loop(fm, flow_pseudo_model, X0.clone(), num_inference_steps=10)
    b = sample_loop(ours, flow_pseudo_model, X0.clone(), num_inference_steps=10)
    assert (a - b).abs().max() <= 2e-5


@pytest.mark.parametrize("family", ["vp", "flow"])
def test_data_space_beats_the_default_without_guidance(family):
    """w = 1 on the oracle (one Gaussian per class): the exponential integrator is far more accurate."""
    config = SD15_SCHEDULER_CONFIG if family == "vp" else SD3_SCHEDULER_CONFIG
    problem = OracleProblem.create(GaussianMixture.random(seed=0), num_samples=100, seed=0)
    cache = ReferenceCache(problem)
    default = evaluate(GHVBScheduler.from_config(config), problem, family=family, nfe=6, cache=cache)
    data = evaluate(
        GHVBScheduler.from_config(
            config, ghvb_order=2, grid="exponential", solver_space="data", variable_step=True
        ),
        problem,
        family=family,
        nfe=6,
        cache=cache,
    )
    assert data.blowup_rate == 0.0
    # measured (100 samples, NFE 6): VP 0.042 → 0.0038 (0.09x), flow 0.0118 → 0.0061 (0.52x)
    assert data.median_error < 0.6 * default.median_error
