"""The scheduler driver, the DOP853 reference and the metrics of the exact Gaussian-mixture oracle."""

import math

import diffusers
import numpy as np
import pytest
import torch

from fastsample.zoo.gmm import GaussianMixture, vp_alpha_sigma
from fastsample.zoo.oracle import (
    OracleProblem,
    ReferenceCache,
    compare,
    evaluate,
    final_noise_level,
    noise_level,
    reference_solution,
    run_scheduler,
    sigma_bar_table,
    steps_for_nfe,
)
from fastsample.zoo.solver_table import DIFFUSERS_ENTRIES, SD3_SCHEDULER_CONFIG, SD15_SCHEDULER_CONFIG

SD15 = SD15_SCHEDULER_CONFIG


def _vp(name, **overrides):
    return getattr(diffusers, name).from_config(SD15, **overrides)


# ---------------------------------------------------------------------------------------------- reference
def test_reference_matches_exact_single_gaussian_vp():
    """For N(μ, s²I) the PF-ODE is linear: x̄(σ̄) − μ = (x̄(σ̄₀) − μ)·√(s²+σ̄²)/√(s²+σ̄₀²)."""
    mu, s = torch.tensor([[0.3, -1.2, 2.0, 0.0]], dtype=torch.float64), 0.3
    problem = OracleProblem.create(GaussianMixture(mu, [s], [1.0]), num_samples=50, seed=1)
    sb0 = 14.6
    start = problem.noise * math.sqrt(1 + sb0**2)
    for sb1 in (0.0292, 0.0):
        for w in (1.0, 7.5):  # one component: c = u, so guidance changes nothing
            ref = reference_solution(
                problem,
                family="vp",
                start_level=sb0,
                end_level=sb1,
                start_scale=math.sqrt(1 + sb0**2),
                guidance_scale=w,
            )
            exact = mu + (start - mu) * math.sqrt(s**2 + sb1**2) / math.sqrt(s**2 + sb0**2)
            assert (ref - exact).abs().max().item() < 1e-8


def test_reference_matches_exact_single_gaussian_flow():
    """Flow x = (1−s)x0 + sε: x(s) − (1−s)μ = (x(s₀) − (1−s₀)μ)·√((1−s)²c²+s²)/√((1−s₀)²c²+s₀²)."""
    mu, c = torch.tensor([[1.0, -0.5, 0.25]], dtype=torch.float64), 0.5
    problem = OracleProblem.create(GaussianMixture(mu, [c], [1.0]), num_samples=40, seed=2)

    def sd(s):
        return math.sqrt((1 - s) ** 2 * c**2 + s**2)

    for s0, s1 in ((1.0, 0.0), (0.9, 0.05)):
        ref = reference_solution(problem, family="flow", start_level=s0, end_level=s1, guidance_scale=3.0)
        exact = (1 - s1) * mu + (problem.noise - (1 - s0) * mu) * sd(s1) / sd(s0)
        assert (ref - exact).abs().max().item() < 1e-8


# ---------------------------------------------------------------------------------------------- levels
def test_noise_level_vp_integer_and_fractional_timesteps():
    ddim = _vp("DDIMScheduler")
    ddim.set_timesteps(10)
    table = sigma_bar_table(ddim)
    for i, t in enumerate(ddim.timesteps):
        assert noise_level(ddim, "vp", t, i) == table[int(t)]
    # Euler: fractional t with linear σ̄ interpolation (default) and log-σ̄ interpolation (Karras)
    for karras in (False, True):
        euler = _vp("EulerDiscreteScheduler", use_karras_sigmas=karras)
        euler.set_timesteps(7)
        for i, t in enumerate(euler.timesteps):
            assert noise_level(euler, "vp", t, i) == pytest.approx(float(euler.sigmas[i]), rel=2e-6)
    # DPM++ Karras rounds its timesteps: a network (and the oracle) sees σ̄ of the rounded t
    dpm = _vp("DPMSolverMultistepScheduler", use_karras_sigmas=True)
    dpm.set_timesteps(10)
    levels = [noise_level(dpm, "vp", t, i) for i, t in enumerate(dpm.timesteps)]
    assert levels == [table[int(t)] for t in dpm.timesteps]
    with pytest.raises(ValueError, match="training range"):
        noise_level(ddim, "vp", torch.tensor(1000.5), 0)


def test_noise_level_flow_uses_scheduler_sigmas():
    for entry in (e for e in DIFFUSERS_ENTRIES if e.family == "flow"):
        sched = entry.make(dict(SD3_SCHEDULER_CONFIG))
        sched.set_timesteps(6)
        for i, t in enumerate(sched.timesteps):
            assert noise_level(sched, "flow", t, i) == float(sched.sigmas[i])
        assert final_noise_level(sched, "flow") == 0.0
        with pytest.raises(ValueError, match="does not match"):
            noise_level(sched, "flow", sched.timesteps[0], 3)


class _ZeroSlope(GaussianMixture):
    """A "model" whose PF-ODE slope is zero (ε̂ = 0 for VP, v̂ = 0 for flow): x̄ (or x) stays constant.

    Every consistent solver keeps the state exactly, so the driver's final state, converted with its end
    level and latent convention, must equal the start state: an independent check of both rules.
    """

    calls = 0

    def predict(self, x, level, prediction_type, *, family="vp", labels=None, guidance_scale=1.0):
        type(self).calls += 1
        x = torch.as_tensor(x, dtype=torch.float64)
        if family == "flow":
            return torch.zeros_like(x) if prediction_type == "flow_prediction" else x.clone()
        alpha, sigma = (float(v) for v in vp_alpha_sigma(level))
        return {"epsilon": torch.zeros_like(x), "sample": x / alpha, "v_prediction": -sigma * x / alpha}[
            prediction_type
        ]


@pytest.mark.parametrize("entry", DIFFUSERS_ENTRIES, ids=lambda e: e.name)
def test_end_level_and_latent_convention_with_a_zero_slope_model(entry):
    problem = OracleProblem.create(_ZeroSlope([[0.0, 0.0, 0.0]], [1.0], [1.0]), num_samples=16, seed=0)
    base = SD15 if entry.family == "vp" else SD3_SCHEDULER_CONFIG
    run = run_scheduler(entry.make(dict(base)), problem, family=entry.family, num_inference_steps=5)
    torch.testing.assert_close(run.final, problem.noise * run.start_scale, rtol=5e-6, atol=5e-6)


@pytest.mark.parametrize(
    ("overrides", "steps", "expected_alpha_cumprod"),
    [
        ({}, 5, "first"),  # leading: last prev < 0 -> final_alpha_cumprod = ᾱ[0]
        ({"set_alpha_to_one": True}, 5, 1.0),  # ... = 1 (σ̄ = 0)
        ({"set_alpha_to_one": True, "timestep_spacing": "trailing"}, 7, "first"),  # prev = 0 -> ᾱ[0]
    ],
)
def test_ddim_end_levels(overrides, steps, expected_alpha_cumprod):
    sched = _vp("DDIMScheduler", **overrides)
    sched.set_timesteps(steps)
    ac = float(sched.alphas_cumprod[0]) if expected_alpha_cumprod == "first" else expected_alpha_cumprod
    assert final_noise_level(sched, "vp") == pytest.approx(math.sqrt((1 - ac) / ac), abs=1e-12)
    if overrides.get("timestep_spacing") == "trailing":
        # No zero-slope probe here: with trailing spacing and T/N not an integer, DDIM steps to t − T//N
        # (857) but labels the next call 856, so even a zero slope does not keep x̄ fixed (a diffusers quirk).
        return
    problem = OracleProblem.create(_ZeroSlope([[0.0, 0.0]], [1.0], [1.0]), num_samples=8, seed=0)
    run = run_scheduler(_vp("DDIMScheduler", **overrides), problem, family="vp", num_inference_steps=steps)
    torch.testing.assert_close(run.final, problem.noise * run.start_scale, rtol=5e-6, atol=5e-6)


# ---------------------------------------------------------------------------------------------- driver
def test_nfe_counting_and_step_choice():
    problem = OracleProblem.create(_ZeroSlope([[0.0, 0.0]], [1.0], [1.0]), num_samples=4, seed=0)
    pndm = _vp("PNDMScheduler")
    assert steps_for_nfe(pndm, 10) == 9  # PLMS: N steps cost N + 1 calls
    assert steps_for_nfe(_vp("DPMSolverMultistepScheduler"), 10) == 10
    _ZeroSlope.calls = 0
    run = run_scheduler(pndm, problem, family="vp", num_inference_steps=9, guidance_scale=7.5)
    assert run.nfe == 10 and _ZeroSlope.calls == 10  # cond + uncond together: one call per NFE
    assert pndm.timesteps is None  # the scheduler passed in is not touched (a copy is run)
    with pytest.raises(ValueError, match="exactly 4 model calls"):
        steps_for_nfe(_vp("HeunDiscreteScheduler"), 4)  # Heun: 2N − 1 calls
    with pytest.raises(ValueError, match="family='flow'"):
        run_scheduler(
            diffusers.FlowMatchEulerDiscreteScheduler(), problem, family="vp", num_inference_steps=3
        )
    with pytest.raises(ValueError, match="family='flow'"):
        run_scheduler(
            _vp("DPMSolverMultistepScheduler", use_flow_sigmas=True),
            problem,
            family="vp",
            num_inference_steps=3,
        )


@pytest.mark.parametrize("name", ["DDIMScheduler", "DPMSolverMultistepScheduler"])
def test_prediction_types_give_the_same_samples(name):
    """The oracle answers in ε, x̂0 or v; a scheduler converts back, so its samples agree up to float32."""
    problem = OracleProblem.create(GaussianMixture.random(seed=1), num_samples=64, seed=3)
    finals = [
        run_scheduler(
            _vp(name, prediction_type=p), problem, family="vp", num_inference_steps=8, guidance_scale=7.5
        ).final
        for p in ("epsilon", "sample", "v_prediction")
    ]
    for other in finals[1:]:
        assert (other - finals[0]).abs().max().item() < 1e-3


def test_ddim_converges_at_first_order():
    """DDIM is Euler in (x̄, σ̄): the median error halves when the NFE doubles."""
    problem = OracleProblem.create(GaussianMixture.random(seed=1, std="smooth"), num_samples=100, seed=0)
    cache = ReferenceCache(problem)
    errors = [
        evaluate(
            _vp("DDIMScheduler", timestep_spacing="linspace"), problem, family="vp", nfe=n, cache=cache
        ).median_error
        for n in (50, 100, 200)
    ]
    assert len(cache.solutions) == 1  # same start (t = 999) and end (ᾱ[0]) for all three
    ratios = [errors[0] / errors[1], errors[1] / errors[2]]
    assert all(1.75 < r < 2.2 for r in ratios), ratios


def test_blowup_metric_detects_pndm_at_high_guidance():
    """solvers.md §5.2: diffusers' PNDM (PLMS) diverges at NFE 8, w = 15; DDIM does not."""
    problem = OracleProblem.create(GaussianMixture.random(seed=1), num_samples=200, seed=0)
    cache = ReferenceCache(problem)
    pndm = evaluate(_vp("PNDMScheduler"), problem, family="vp", nfe=8, guidance_scale=15.0, cache=cache)
    ddim = evaluate(_vp("DDIMScheduler"), problem, family="vp", nfe=8, guidance_scale=15.0, cache=cache)
    assert pndm.nfe == ddim.nfe == 8
    assert pndm.blowup_rate > 0.9 and pndm.median_error > 5 and pndm.magnitude_ratio > 5
    assert ddim.blowup_rate < 0.02 and ddim.median_error < 0.2 and 0.5 < ddim.magnitude_ratio < 1.5


def test_reference_cache_is_shared_between_schedulers_with_the_same_endpoints():
    problem = OracleProblem.create(GaussianMixture.random(seed=1), num_samples=32, seed=0)
    cache = ReferenceCache(problem)
    for name in ("DPMSolverMultistepScheduler", "UniPCMultistepScheduler"):  # both: t = 999 -> σ̄ = 0
        evaluate(_vp(name), problem, family="vp", nfe=5, guidance_scale=7.5, cache=cache)
    assert len(cache.solutions) == 1
    evaluate(_vp("DEISMultistepScheduler"), problem, family="vp", nfe=5, guidance_scale=7.5, cache=cache)
    assert len(cache.solutions) == 2  # DEIS ends at σ_min
    with pytest.raises(ValueError, match="different OracleProblem"):
        evaluate(
            _vp("DDIMScheduler"),
            OracleProblem.create(problem.mixture, 32, 1),
            family="vp",
            nfe=5,
            cache=cache,
        )


def test_problem_labels_uniform_or_from_the_prior():
    mixture = GaussianMixture.random(seed=1)
    uniform = OracleProblem.create(mixture, 20000, seed=0).labels
    prior = OracleProblem.create(mixture, 20000, seed=0, labels="prior").labels
    counts_u = torch.bincount(uniform, minlength=5).double() / 20000
    counts_p = torch.bincount(prior, minlength=5).double() / 20000
    assert torch.allclose(counts_u, torch.full((5,), 0.2, dtype=torch.float64), atol=0.015)
    assert torch.allclose(counts_p, mixture.class_weights, atol=0.015)
    torch.testing.assert_close(
        OracleProblem.create(mixture, 10, seed=3).noise,
        OracleProblem.create(mixture, 10, seed=3, labels="prior").noise,
    )
    with pytest.raises(ValueError, match="labels"):
        OracleProblem.create(mixture, 10, labels="balanced")
    with pytest.raises(ValueError, match="num_samples"):
        OracleProblem.create(mixture, 0)


# ---------------------------------------------------------------------------------------------- metrics
def test_compare_metrics_on_known_errors():
    mix = GaussianMixture(means=[[0.0, 0.0], [4.0, 0.0]], stds=[0.1, 0.1], weights=[0.5, 0.5])
    reference = torch.tensor([[0.0, 0.0], [0.0, 0.0], [4.0, 0.0], [4.0, 0.0]], dtype=torch.float64)
    final = reference.clone()
    final[0, 0] = 0.2 * math.sqrt(2)  # e = 0.2
    final[1, 0] = 3.5  # e = 3.5/√2, and nearest mean flips to component 1
    final[2, 1] = -1.0  # e = 1/√2
    m = compare(final, reference, mix, nfe=7)
    expected = np.array([0.2, 3.5 / math.sqrt(2), 1 / math.sqrt(2), 0.0])
    np.testing.assert_allclose(m.errors, expected, rtol=1e-12)
    assert m.median_error == pytest.approx(np.median(expected))
    assert m.blowup_rate == 0.5 and m.mode_flip_rate == 0.25 and m.nfe == 7
    assert m.magnitude_ratio == pytest.approx(1.0)
    final[3, 0] = math.nan
    m = compare(final, reference, mix)
    assert math.isinf(m.errors[3]) and m.blowup_rate == 0.75 and m.mode_flip_rate == 0.5
    assert math.isinf(m.magnitude_ratio)
