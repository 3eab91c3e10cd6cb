"""The guidance methods as pure math, each against an independent reference (the paper's formula written out
here, diffusers' own implementation where the definitions coincide, or the diffusers scheduler step)."""

import math

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler
from diffusers.guiders.adaptive_projected_guidance import MomentumBuffer, normalized_guidance
from diffusers.guiders.classifier_free_zero_star_guidance import ClassifierFreeZeroStarGuidance
from diffusers.guiders.guider_utils import rescale_noise_cfg

from fastsample.guidance import (
    APG,
    CFG,
    AdaptiveGuidance,
    CFGPlusPlus,
    CFGRescale,
    CFGZeroStar,
    GuidanceContext,
)


def _ctx(x, parameterization="epsilon", w=5.0, step=0, alpha=0.6, **kw):
    alpha = torch.as_tensor(alpha, dtype=torch.float64)
    sigma = torch.sqrt(1 - alpha**2) if parameterization != "flow" else 1 - alpha
    return GuidanceContext(
        x=x, alpha=alpha, sigma=sigma, parameterization=parameterization, guidance_scale=w, step=step, **kw
    )


def _apg_paper(d_c, d_u, w, eta, beta, r_abs, m):
    """Algorithm 1 of Sadat et al. (2025), one sample at a time in numpy float64."""
    out, new_m = [], []
    for b in range(d_c.shape[0]):
        c, u = d_c[b].ravel(), d_u[b].ravel()
        delta = c - u
        if beta != 0.0:
            delta = delta + beta * m[b] if m is not None else delta
            new_m.append(delta)
        if r_abs is not None:
            delta = delta * min(1.0, r_abs / np.linalg.norm(delta))
        par = (delta @ c) / (c @ c) * c
        orth = delta - par
        out.append((c + (w - 1) * (orth + eta * par)).reshape(d_c.shape[1:]))
    return np.stack(out), (np.stack(new_m) if new_m else None)


@pytest.mark.parametrize("parameterization", ["epsilon", "v_prediction", "flow"])
def test_apg_matches_paper_formula_over_steps(parameterization):
    g = torch.Generator().manual_seed(0)
    shape = (3, 4, 6, 6)
    method = APG(guidance_scale=9.0, eta=0.2, momentum=-0.5, norm_threshold=0.3)
    m = None
    for step in range(4):
        x = torch.randn(shape, generator=g, dtype=torch.float64)
        c, u = (
            torch.randn(shape, generator=g, dtype=torch.float64),
            torch.randn(shape, generator=g, dtype=torch.float64),
        )
        ctx = _ctx(x, parameterization, w=9.0, step=step, alpha=0.3 + 0.1 * step)
        got = method(c, u, ctx)
        # independent conversion to x0 and back, written from the definitions
        a, s = float(ctx.alpha), float(ctx.sigma)
        x0 = {
            "epsilon": lambda p, x=x, a=a, s=s: (x - s * p) / a,
            "v_prediction": lambda p, x=x, a=a, s=s: a * x - s * p,
            "flow": lambda p, x=x, s=s: x - s * p,
        }[parameterization]
        d_hat, m = _apg_paper(x0(c).numpy(), x0(u).numpy(), 9.0, 0.2, -0.5, 0.3 * math.sqrt(4 * 36), m)
        d_hat = torch.from_numpy(d_hat)
        want = {"epsilon": (x - a * d_hat) / s, "v_prediction": (a * x - d_hat) / s, "flow": (x - d_hat) / s}
        torch.testing.assert_close(got, want[parameterization], rtol=1e-9, atol=1e-9)


def test_apg_matches_diffusers_normalized_guidance_with_original_formulation():
    """diffusers' `normalized_guidance` with `use_original_formulation=True` and scale w−1 IS the
    paper's rule."""
    g = torch.Generator().manual_seed(1)
    shape = (2, 4, 8, 8)
    ours = APG(guidance_scale=7.0, eta=0.0, momentum=-0.75, norm_threshold=0.05)
    buffer = MomentumBuffer(-0.75)
    for step in range(3):
        x = torch.randn(shape, generator=g, dtype=torch.float64)
        ctx = _ctx(x, "sample", w=7.0, step=step)  # "sample": x0 space is the model's own space
        c, u = (
            torch.randn(shape, generator=g, dtype=torch.float64),
            torch.randn(shape, generator=g, dtype=torch.float64),
        )
        want = normalized_guidance(c, u, 6.0, buffer, 0.0, 0.05 * math.sqrt(4 * 64), True)
        torch.testing.assert_close(ours(c, u, ctx), want, rtol=1e-10, atol=1e-10)


def test_apg_without_projection_clamp_or_momentum_is_cfg():
    x = torch.randn(2, 4, 5, 5, dtype=torch.float64)
    c, u = torch.randn_like(x), torch.randn_like(x)
    ctx = _ctx(x, "epsilon", w=4.0)
    got = APG(eta=1.0, momentum=0.0, norm_threshold=None)(c, u, ctx)
    torch.testing.assert_close(got, CFG()(c, u, ctx), rtol=1e-10, atol=1e-10)


def test_apg_momentum_resets():
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    c, u = torch.randn_like(x), torch.randn_like(x)
    method = APG(guidance_scale=5.0, norm_threshold=None)
    first = method(c, u, _ctx(x))
    second = method(c, u, _ctx(x, step=1))
    assert not torch.allclose(first, second)  # momentum changed the second step
    method.reset()
    torch.testing.assert_close(method(c, u, _ctx(x)), first)


def test_cfg_rescale_matches_diffusers():
    c, u = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    ctx = _ctx(torch.randn(3, 4, 8, 8), w=7.5)
    want = rescale_noise_cfg(u + 7.5 * (c - u), c, guidance_rescale=0.7)
    torch.testing.assert_close(CFGRescale(guidance_rescale=0.7)(c, u, ctx), want)


def test_cfg_zero_star_matches_diffusers_guider():
    c, u = torch.randn(3, 16, 8), torch.randn(3, 16, 8)
    guider = ClassifierFreeZeroStarGuidance(guidance_scale=4.0, zero_init_steps=1)
    ours = CFGZeroStar(guidance_scale=4.0, zero_init_steps=1)
    for step in range(3):
        guider.set_state(step, 3, torch.tensor(500))
        ctx = _ctx(torch.randn(3, 16, 8), "flow", w=4.0, step=step)
        assert ours.plan(ctx) == ("none" if step == 0 else "full")
        got = ours(None, None, ctx) if step == 0 else ours(c, u, ctx)
        torch.testing.assert_close(got, guider.forward(c, u).pred, rtol=1e-6, atol=1e-6)


def test_cfg_zero_star_refuses_zero_init_on_epsilon_models():
    with pytest.raises(ValueError, match="flow"):
        CFGZeroStar(zero_init_steps=1).plan(_ctx(torch.randn(1, 4, 2, 2), "epsilon"))
    CFGZeroStar(zero_init_steps=0).plan(_ctx(torch.randn(1, 4, 2, 2), "epsilon"))


def test_cfg_plus_plus_is_the_paper_ddim_step():
    """CFG++ (Chung et al.): x' = α' x̂0(ε_λ) + σ' ε_u, against DDIMScheduler.step fed the hook's guided ε."""
    sched = DDIMScheduler(
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        set_alpha_to_one=False,
        clip_sample=False,
    )
    sched.set_timesteps(10)
    lam = 0.6
    g = torch.Generator().manual_seed(3)
    from fastsample.guidance.hook import next_alpha_sigma

    for t in sched.timesteps[:-1]:
        x = torch.randn(2, 4, 4, 4, generator=g, dtype=torch.float64)
        c, u = torch.randn_like(x), torch.randn_like(x)
        ac = sched.alphas_cumprod.double()
        a, s = ac[t].sqrt(), (1 - ac[t]).sqrt()
        prev = int(t) - 100
        ap = ac[prev] if prev >= 0 else sched.final_alpha_cumprod.double()
        eps_lam = u + lam * (c - u)
        want = ap.sqrt() * (x - s * eps_lam) / a + (1 - ap).sqrt() * u
        ctx = GuidanceContext(
            x=x,
            alpha=a,
            sigma=s,
            parameterization="epsilon",
            guidance_scale=lam,
            next_alpha_sigma=next_alpha_sigma(sched, t, "epsilon"),
        )
        guided = CFGPlusPlus(lam)(c, u, ctx)
        got = sched.step(guided, t, x).prev_sample
        # DDIMScheduler.step uses its float32 alphas_cumprod, hence 1e-6
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


def test_cfg_plus_plus_is_the_paper_flow_step():
    sched = FlowMatchEulerDiscreteScheduler(shift=3.0)
    sched.set_timesteps(6)
    lam = 0.8
    from fastsample.guidance.hook import next_alpha_sigma

    for i, t in enumerate(sched.timesteps):
        x = torch.randn(2, 8, 4, dtype=torch.float64)
        c, u = torch.randn_like(x), torch.randn_like(x)
        s, s_next = sched.sigmas[i].double(), sched.sigmas[i + 1].double()
        x0 = x - s * (u + lam * (c - u))
        want = (1 - s_next) * x0 + s_next * (x + (1 - s) * u)
        ctx = GuidanceContext(
            x=x,
            alpha=1 - s,
            sigma=s,
            parameterization="flow",
            guidance_scale=lam,
            next_alpha_sigma=next_alpha_sigma(sched, t, "flow"),
        )
        guided = CFGPlusPlus(lam)(c, u, ctx)
        got = sched.step(guided, t, x).prev_sample
        # the scheduler keeps its sigmas in float32, hence 1e-6
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


def test_adaptive_guidance_switches_per_sample_and_permanently():
    method = AdaptiveGuidance(guidance_scale=5.0, threshold=0.9)
    x = torch.zeros(2, 8, dtype=torch.float64)
    ctx = _ctx(x, "sample", w=5.0)
    c = torch.tensor([[1.0] * 8, [1.0] * 8], dtype=torch.float64)
    aligned = c * 1.1  # cos = 1
    orthogonal = torch.tensor([[1.0, -1.0] * 4] * 2, dtype=torch.float64)  # cos = 0
    # step 0: sample 0 aligned, sample 1 not
    u = torch.stack([aligned[0], orthogonal[1]])
    assert method.uncond_mask(ctx) is None  # nobody has switched: the whole batch needs u
    out = method(c, u, ctx)
    torch.testing.assert_close(out[0], c[0])
    torch.testing.assert_close(out[1], u[1] + 5.0 * (c[1] - u[1]))
    assert method.plan(ctx) == "full"
    assert method.uncond_mask(ctx).tolist() == [False, True]  # re-pack: only sample 1 needs u
    assert method.switch_steps.tolist() == [0, -1]
    assert AdaptiveGuidance(threshold=0.9, repack=False).uncond_mask(ctx) is None
    # step 1: sample 0 no longer aligned but has switched for good; sample 1 now aligned
    u = torch.stack([orthogonal[0], aligned[1]])
    out = method(c, u, ctx)
    torch.testing.assert_close(out, c)
    assert method.plan(ctx) == "cond" and method.switch_step == 0
    assert method.switch_steps.tolist() == [0, 0]
    assert method(c, None, ctx) is c
    method.reset()
    assert method.plan(ctx) == "full" and method.switch_step is None


def test_context_conversions_match_ddim():
    sched = DDIMScheduler(prediction_type="v_prediction", clip_sample=False)
    sched.set_timesteps(10)
    t = sched.timesteps[3]
    x, v = torch.randn(2, 4, 3, 3, dtype=torch.float64), torch.randn(2, 4, 3, 3, dtype=torch.float64)
    a, s = sched.alphas_cumprod[t].double().sqrt(), (1 - sched.alphas_cumprod[t].double()).sqrt()
    ctx = GuidanceContext(x=x, alpha=a, sigma=s, parameterization="v_prediction", guidance_scale=1.0)
    torch.testing.assert_close(ctx.to_x0(v), sched.step(v, t, x).pred_original_sample)
    torch.testing.assert_close(ctx.from_x0(ctx.to_x0(v)), v)


@pytest.mark.parametrize(
    ("factory", "match"),
    [
        (lambda: AdaptiveGuidance(threshold=0.0), "threshold"),
        (lambda: AdaptiveGuidance(threshold=1.01), "threshold"),
        (lambda: APG(guidance_scale=0.5), "guidance_scale"),
        (lambda: APG(norm_threshold=0.0), "norm_threshold"),
        (lambda: APG(norm_threshold=-1.0), "norm_threshold"),
        (lambda: APG(momentum=0.5), "momentum"),
        (lambda: APG(eta=-0.1), "eta"),
        (lambda: CFGRescale(guidance_rescale=1.5), "guidance_rescale"),
        (lambda: CFGZeroStar(zero_init_steps=-1), "zero_init_steps"),
        (lambda: CFGPlusPlus(1.5), "λ"),
        (lambda: CFG(guidance_scale=float("nan")), "guidance_scale"),
        (lambda: AdaptiveGuidance(guidance_scale=0.9), "guidance_scale"),
    ],
)
def test_bad_arguments_are_refused(factory, match):
    with pytest.raises(ValueError, match=match):
        factory()


def test_non_numeric_scale_is_a_type_error():
    with pytest.raises(TypeError, match="guidance_scale"):
        APG(guidance_scale="7")
    with pytest.raises(TypeError, match="repack"):
        AdaptiveGuidance(repack="yes")
