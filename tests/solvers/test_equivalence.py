"""Our schedulers against independent references: diffusers' own schedulers and the papers' formulas."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    FlowMatchEulerDiscreteScheduler,
    PNDMScheduler,
)

from fastsample.solvers import (
    GHVBScheduler,
    HeavyBallScheduler,
    MomentumDPMSolverMultistepScheduler,
    PNDMFamilyScheduler,
)
from fastsample.solvers.coefficients import adams_bashforth, ghvb
from tests.solvers.helpers import SD15, flow_pseudo_model, sample_loop, vp_pseudo_model

# the equal-step coefficient tables on the spacing grid (the formulas below are written for them)
EQUAL_STEP = dict(grid="spacing", variable_step=False)

X0 = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))


# ------------------------------------------------------------------------------------------ PNDM
@pytest.mark.parametrize("n", [10, 20, 50])
@pytest.mark.parametrize("skip_prk", [True, False])
def test_pndm_family_reproduces_diffusers_pndm(n, skip_prk):
    """PLMS = PNDMScheduler(skip_prk_steps=True), F-PNDM = PNDMScheduler(skip_prk_steps=False), SD1.5."""
    ref = PNDMScheduler(skip_prk_steps=skip_prk, **{k: v for k, v in SD15.items() if k != "clip_sample"})
    ours = PNDMFamilyScheduler.from_config(
        ref.config, method="plms" if skip_prk else "f_pndm", timestep_spacing="leading"
    )
    ref.set_timesteps(n)
    ours.set_timesteps(n)
    assert torch.equal(ours.timesteps, ref.timesteps)
    assert len(ours.timesteps) == (n + 1 if skip_prk else n + 9)
    model = vp_pseudo_model(ref.alphas_cumprod)
    xa, xb = X0.clone(), X0.clone()
    for t in ref.timesteps:
        xa = ref.step(model(xa, t), t, xa).prev_sample
        xb = ours.step(model(xb, t), t, xb).prev_sample
        assert (xa - xb).abs().max() <= 1e-5
    assert xa.abs().max() > 0.5  # a non-trivial trajectory


def test_f_pndm_timesteps_match_diffusers_steps_offset_example():
    """The exact tensor diffusers asserts in its own test_steps_offset (solvers.md §1.6)."""
    s = PNDMFamilyScheduler(method="f_pndm", timestep_spacing="leading", steps_offset=1)
    s.set_timesteps(10)
    expected = [901, 851, 851, 801, 801, 751, 751, 701, 701, 651, 651, 601, 601, 501, 401, 301, 201, 101, 1]
    assert s.timesteps.tolist() == expected


def _phi(x, e, ac_t, ac_next):
    """PNDM's transfer φ (Liu et al. 2022, eq. 9), written in x directly."""
    coef = (ac_next - ac_t) / (ac_t**0.5 * (((1 - ac_next) * ac_t) ** 0.5 + ((1 - ac_t) * ac_next) ** 0.5))
    return (ac_next / ac_t) ** 0.5 * x - coef * e


def test_s_pndm_matches_paper_algorithm():
    """S-PNDM = one pseudo improved-Euler step, then pseudo AB2, all through φ (paper / original repo)."""
    s = PNDMFamilyScheduler.from_config(SD15, method="s_pndm", timestep_spacing="leading")
    n = 12
    model = vp_pseudo_model(s.alphas_cumprod)
    ours = sample_loop(s, model, X0.clone(), num_inference_steps=n)
    assert len(s.timesteps) == n + 1
    ac = s.alphas_cumprod.double()
    grid = [int(t) for t in dict.fromkeys(s.timesteps.tolist())]  # the N grid timesteps
    levels = [float(ac[t]) for t in grid] + [float(ac[0])]  # set_alpha_to_one=False: end at ᾱ[0]
    x = X0.double()
    e1 = model(x.float(), grid[0]).double()
    e2 = model(_phi(x, e1, levels[0], levels[1]).float(), grid[1]).double()
    x = _phi(x, (e1 + e2) / 2, levels[0], levels[1])
    prev = e1
    for i in range(1, n):
        e = model(x.float(), grid[i]).double()
        x = _phi(x, (3 * e - prev) / 2, levels[i], levels[i + 1])
        prev = e
    assert (ours.double() - x).abs().max() <= 1e-5


# ------------------------------------------------------------------------------------------ q = 1, β = 1
@pytest.mark.parametrize("spacing,offset", [("leading", 1), ("trailing", 0)])
@pytest.mark.parametrize("set_alpha_to_one", [False, True])
def test_ghvb_order_one_is_ddim(spacing, offset, set_alpha_to_one):
    """q = 1 is DDIM (η = 0) on the same grid: diffusers DDIMScheduler, same timesteps and end point."""
    cfg = dict(SD15, steps_offset=offset, set_alpha_to_one=set_alpha_to_one, timestep_spacing=spacing)
    ddim = DDIMScheduler(**cfg)
    ours = GHVBScheduler.from_config(ddim.config, ghvb_order=1, grid="spacing")
    model = vp_pseudo_model(ddim.alphas_cumprod)
    a = sample_loop(ddim, model, X0.clone(), num_inference_steps=20)
    b = sample_loop(ours, model, X0.clone(), num_inference_steps=20)
    assert torch.equal(ours.timesteps, ddim.timesteps)
    assert (a - b).abs().max() <= 1e-5


@pytest.mark.parametrize("grid", [dict(), dict(use_karras_sigmas=True), dict(prediction_type="v_prediction")])
def test_ghvb_order_one_is_the_ddim_formula_on_any_grid(grid):
    """On DPM's linspace and Karras grids (which DDIMScheduler cannot build) every call is one DDIM step:
    x' = α'·x̂0 + σ'·ε̂ with x̂0, ε̂ from the output at the call's own (α, σ)."""
    s = GHVBScheduler.from_config(SD15, ghvb_order=1, final_sigmas_type="zero", **grid)
    eps_model = vp_pseudo_model(s.alphas_cumprod)
    s.set_timesteps(12)
    sig = s.sigmas.double()
    x = X0.clone()
    for i, t in enumerate(s.timesteps):
        a, sg = 1 / (1 + sig[i] ** 2).sqrt(), sig[i] / (1 + sig[i] ** 2).sqrt()
        a2, sg2 = 1 / (1 + sig[i + 1] ** 2).sqrt(), sig[i + 1] / (1 + sig[i + 1] ** 2).sqrt()
        eps = eps_model(x, round(float(t))).double()
        x0 = (x.double() - sg * eps) / a
        out = a * eps - sg * x0 if s.config.prediction_type == "v_prediction" else eps
        nxt = s.step(out.float(), t, x).prev_sample
        assert (nxt.double() - (a2 * x0 + sg2 * eps)).abs().max() <= 2e-5
        x = nxt


@pytest.mark.parametrize("shift,dynamic", [(1.0, False), (3.0, False), (3.0, True)])
def test_ghvb_order_one_is_flow_match_euler(shift, dynamic):
    """Flow q = 1 is FlowMatchEulerDiscreteScheduler: same timesteps, sigmas and samples (SD3/Flux)."""
    fm = FlowMatchEulerDiscreteScheduler(shift=shift, use_dynamic_shifting=dynamic)
    ours = GHVBScheduler.from_config(fm.config, ghvb_order=1, grid="spacing")
    assert ours.config.prediction_type == "flow_prediction"
    kwargs = dict(num_inference_steps=10)
    if dynamic:
        kwargs.update(sigmas=np.linspace(1.0, 1 / 10, 10), mu=0.9)
    fm.set_timesteps(**kwargs)
    ours.set_timesteps(**kwargs)
    assert torch.allclose(ours.timesteps, fm.timesteps, atol=1e-3, rtol=0)
    assert torch.allclose(ours.sigmas, fm.sigmas, atol=1e-6, rtol=0)
    a = sample_loop(fm, flow_pseudo_model, X0.clone(), **kwargs)
    b = sample_loop(ours, flow_pseudo_model, X0.clone(), **kwargs)
    assert (a - b).abs().max() <= 1e-5


@pytest.mark.parametrize("k", [1, 2, 3, 4, 5])
def test_heavy_ball_beta_one_is_plms_k(k):
    """HB with β = 1 (plain and Nesterov) is PLMS-k = GHVB with integer q = k, call for call."""
    plms = GHVBScheduler.from_config(SD15, ghvb_order=k, **EQUAL_STEP)
    model = vp_pseudo_model(plms.alphas_cumprod)
    plain, trace = sample_loop(plms, model, X0.clone(), record=True, num_inference_steps=15)
    for nesterov in (False, True):
        hb = HeavyBallScheduler.from_config(SD15, plms_order=k, momentum=1.0, nesterov=nesterov)
        _, hb_trace = sample_loop(hb, model, X0.clone(), record=True, num_inference_steps=15)
        for a, b in zip(trace, hb_trace):  # the same sums, associated differently in float32
            assert (a - b).abs().max() <= 2e-6


def test_plain_plms_k_matches_adams_bashforth_written_out():
    """GHVB q = 4 is AB1, AB2, AB3, AB4, AB4, ... on ε̂ in (x̄, σ̄) (solvers.md §2.1), in float64 here."""
    s = GHVBScheduler.from_config(SD15, ghvb_order=4, **EQUAL_STEP)
    model = vp_pseudo_model(s.alphas_cumprod)
    ours = sample_loop(s, model, X0.clone(), num_inference_steps=8)
    ac = s.alphas_cumprod.double()
    grid = s.timesteps.tolist()
    sb = [((1 - ac[t]) / ac[t]).sqrt().item() for t in grid] + [((1 - ac[0]) / ac[0]).sqrt().item()]
    x = X0.double()
    xbar = x / ac[grid[0]].sqrt()
    hist = []
    for i, t in enumerate(grid):
        hist.insert(0, model((xbar / (1 + sb[i] ** 2) ** 0.5).float(), t).double())
        b = adams_bashforth(min(4, len(hist)))
        xbar = xbar + (sb[i + 1] - sb[i]) * sum(w * e for w, e in zip(b, hist))
    assert (ours.double() - xbar / (1 + sb[-1] ** 2) ** 0.5).abs().max() <= 1e-5


# ------------------------------------------------------------------------------------------ momentum
def _reference_momentum(kind, k, beta, sched, model, nesterov=False):
    """HB / GHVB written out from solvers.md §2.2–2.3 in float64 on the scheduler's own σ̄ grid."""
    ac = sched.alphas_cumprod.double()
    grid = sched.timesteps.tolist()
    end = 0.0 if sched.config.set_alpha_to_one else ((1 - ac[0]) / ac[0]).sqrt().item()
    sb = [((1 - ac[t]) / ac[t]).sqrt().item() for t in grid] + [end]
    xbar = X0.double() / ac[grid[0]].sqrt()
    hist, vel = [], None
    for i, t in enumerate(grid):
        e = model((xbar / (1 + sb[i] ** 2) ** 0.5).float(), t).double()
        if kind == "hb":
            hist.insert(0, e)
            hist = hist[:k]
            p = sum(w * h for w, h in zip(adams_bashforth(len(hist)), hist))
            vel = p if vel is None else (1 - beta) * vel + beta * p
            u = (1 - beta) * vel + beta * p if nesterov else vel
        else:
            vel = e if vel is None else (1 - beta) * vel + beta * e
            hist.insert(0, vel)
            hist = hist[:k]
            u = sum(c * v for c, v in zip(ghvb(len(hist), beta), hist)) / beta
        xbar = xbar + (sb[i + 1] - sb[i]) * u
    return xbar / (1 + sb[-1] ** 2) ** 0.5


@pytest.mark.parametrize("nesterov", [False, True])
def test_heavy_ball_matches_formula(nesterov):
    s = HeavyBallScheduler.from_config(SD15, plms_order=4, momentum=0.8, nesterov=nesterov)
    model = vp_pseudo_model(s.alphas_cumprod)
    ours = sample_loop(s, model, X0.clone(), num_inference_steps=10)
    ref = _reference_momentum("hb", 4, 0.8, s, model, nesterov=nesterov)
    assert (ours.double() - ref).abs().max() <= 1e-5


@pytest.mark.parametrize("q", [0.5, 1.5, 2.5, 3.8, 4.5])
def test_ghvb_matches_formula(q):
    s = GHVBScheduler.from_config(SD15, ghvb_order=q, **EQUAL_STEP)
    model = vp_pseudo_model(s.alphas_cumprod)
    ours = sample_loop(s, model, X0.clone(), num_inference_steps=10)
    k, beta = int(np.floor(q)) + 1, q - np.floor(q)
    ref = _reference_momentum("ghvb", k, beta, s, model)
    assert (ours.double() - ref).abs().max() <= 1e-5


@pytest.mark.parametrize("k", [2, 3, 4, 5])
def test_ghvb_coefficients_interpolate_between_ab_orders(k):
    """c(1) = AB_k; Σc = β (consistency); as β → 0, (1/β)Σc_j v_j → AB_{k−1}(e) (solvers.md §2.3)."""
    assert np.allclose(ghvb(k, 1.0), adams_bashforth(k))
    for beta in (0.2, 0.5, 0.9):
        assert np.isclose(sum(ghvb(k, beta)), beta)
    # β → 0 with v frozen at v_n ≈ v_{n−j} + β·(e_{n−j+1} + ...): take random e, build v by the EMA
    rng = np.random.default_rng(0)
    e = rng.standard_normal(12)
    beta = 1e-6
    v = [e[0]]
    for x in e[1:]:
        v.append((1 - beta) * v[-1] + beta * x)
    u = sum(c * vv for c, vv in zip(ghvb(k, beta), v[::-1])) / beta
    ab = sum(b * ee for b, ee in zip(adams_bashforth(k - 1), e[::-1]))
    assert abs(u - ab) < 1e-3


@pytest.mark.parametrize(
    "config",
    [
        dict(),
        dict(use_karras_sigmas=True),
        dict(prediction_type="v_prediction", timestep_spacing="trailing"),
    ],
)
def test_dpm_momentum_beta_one_is_diffusers_dpm_step_for_step(config):
    ref = DPMSolverMultistepScheduler(**config)
    ours = MomentumDPMSolverMultistepScheduler.from_config(ref.config, momentum=1.0)
    model = vp_pseudo_model(ref.alphas_cumprod)
    a, ta = sample_loop(ref, model, X0.clone(), record=True, num_inference_steps=12)
    b, tb = sample_loop(ours, model, X0.clone(), record=True, num_inference_steps=12)
    assert torch.equal(ref.timesteps, ours.timesteps)
    for x, y in zip(ta, tb):
        assert (x - y).abs().max() <= 1e-6


def test_dpm_momentum_matches_formula():
    """DPM-Solver++(2M) + HB (solvers.md §2.4) written out in float64 on diffusers' own σ̄ grid."""
    s = MomentumDPMSolverMultistepScheduler(momentum=0.8)
    model = vp_pseudo_model(s.alphas_cumprod)
    ours = sample_loop(s, model, X0.clone(), num_inference_steps=10)
    sig = s.sigmas.double()
    alpha = 1 / (1 + sig**2).sqrt()
    sigma = sig * alpha
    lam = torch.log(alpha) - torch.log(sigma)
    x = X0.double()
    x0_prev, vel = None, None
    n = len(s.timesteps)
    for i, t in enumerate(s.timesteps.tolist()):
        eps = model(x.float(), t).double()
        x0 = (x - sigma[i] * eps) / alpha[i]
        if i == n - 1:  # final step to σ = 0: DPM's first-order step gives x0
            x = x0
            continue
        h = lam[i + 1] - lam[i]
        if x0_prev is None:
            d = x0
        else:
            r = (lam[i] - lam[i - 1]) / h
            d = x0 + (x0 - x0_prev) / (2 * r)
            vel = d if vel is None else 0.2 * vel + 0.8 * d
            d = vel
        x = (sigma[i + 1] / sigma[i]) * x - alpha[i + 1] * (torch.exp(-h) - 1) * d
        x0_prev = x0
    assert (ours.double() - x).abs().max() <= 1e-5
    plain = sample_loop(DPMSolverMultistepScheduler(), model, X0.clone(), num_inference_steps=10)
    assert (ours - plain).abs().max() > 1e-3  # momentum changes the result
