"""The exact Gaussian-mixture denoiser against closed forms and numerical integration."""

import math

import numpy as np
import pytest
import torch
from scipy import integrate

from fastsample.zoo.gmm import GaussianMixture, flow_alpha_sigma, vp_alpha_sigma


def _mixture_1d():
    return GaussianMixture(
        means=[[-1.0], [0.4], [2.0]],
        stds=[0.3, 0.15, 0.6],
        weights=[0.5, 0.2, 0.3],
        component_labels=[0, 1, 0],
    )


def _quad_posterior_1d(mix, x, alpha, sigma, components):
    """E[x0 | x] and E[ε | x] by scipy quad over the prior restricted to ``components``."""

    def prior(x0):
        return sum(
            float(mix.weights[k])
            * math.exp(-0.5 * ((x0 - float(mix.means[k, 0])) / float(mix.stds[k, 0])) ** 2)
            / float(mix.stds[k, 0])
            for k in components
        )

    def lik(x0):
        return math.exp(-0.5 * ((x - alpha * x0) / sigma) ** 2)

    lo, hi = -8.0, 8.0
    points = [float(mix.means[k, 0]) for k in components] + [x / alpha]
    z = integrate.quad(lambda u: prior(u) * lik(u), lo, hi, points=points, epsabs=0, epsrel=1e-12, limit=400)[
        0
    ]
    m = integrate.quad(
        lambda u: u * prior(u) * lik(u), lo, hi, points=points, epsabs=0, epsrel=1e-12, limit=400
    )[0]
    x0 = m / z
    return x0, (x - alpha * x0) / sigma


@pytest.mark.parametrize("sigma_bar", [0.05, 0.3, 1.0, 4.0])
@pytest.mark.parametrize("x", [-1.3, 0.2, 1.7])
def test_posterior_matches_numerical_integration_1d(sigma_bar, x):
    mix = _mixture_1d()
    alpha, sigma = (float(v) for v in vp_alpha_sigma(sigma_bar))
    xt = torch.tensor([[x], [x]], dtype=torch.float64)
    x0u, epsu = mix.posterior(xt, alpha, sigma)
    x0c, epsc = mix.posterior(xt, alpha, sigma, labels=torch.tensor([0, 1]))
    ref_u = _quad_posterior_1d(mix, x, alpha, sigma, [0, 1, 2])
    ref_c0 = _quad_posterior_1d(mix, x, alpha, sigma, [0, 2])  # class 0 = components 0 and 2
    ref_c1 = _quad_posterior_1d(mix, x, alpha, sigma, [1])
    assert x0u[0, 0].item() == pytest.approx(ref_u[0], abs=1e-9)
    assert epsu[0, 0].item() == pytest.approx(ref_u[1], abs=1e-8)
    assert x0c[0, 0].item() == pytest.approx(ref_c0[0], abs=1e-9)
    assert x0c[1, 0].item() == pytest.approx(ref_c1[0], abs=1e-9)
    assert epsc[1, 0].item() == pytest.approx(ref_c1[1], abs=1e-8)


def test_posterior_matches_numerical_integration_2d_diagonal():
    """Diagonal stds in 2-D against a tensor-product trapezoid rule (spectrally accurate here)."""
    mix = GaussianMixture(means=[[0.0, 1.0], [1.5, -0.5]], stds=[[0.3, 0.8], [0.5, 0.2]], weights=[0.3, 0.7])
    alpha, sigma = 0.8, 0.6
    x = np.array([0.7, 0.1])
    grid = np.linspace(-6.0, 7.0, 1301)
    u, v = np.meshgrid(grid, grid, indexing="ij")
    prior = sum(
        float(mix.weights[k])
        * np.exp(
            -0.5
            * (
                ((u - float(mix.means[k, 0])) / float(mix.stds[k, 0])) ** 2
                + ((v - float(mix.means[k, 1])) / float(mix.stds[k, 1])) ** 2
            )
        )
        / float(mix.stds[k, 0] * mix.stds[k, 1])
        for k in range(2)
    )
    dens = prior * np.exp(-0.5 * ((x[0] - alpha * u) ** 2 + (x[1] - alpha * v) ** 2) / sigma**2)
    z = integrate.trapezoid(integrate.trapezoid(dens, grid), grid)
    mu = integrate.trapezoid(integrate.trapezoid(u * dens, grid), grid) / z
    mv = integrate.trapezoid(integrate.trapezoid(v * dens, grid), grid) / z
    x0, _ = mix.posterior(torch.from_numpy(x[None]), alpha, sigma)
    assert x0[0].tolist() == pytest.approx([mu, mv], abs=1e-9)


def _random_batch(mix, n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return 2.0 * torch.randn(n, mix.dim, generator=g, dtype=torch.float64), mix.sample_labels(n, g)


@pytest.mark.parametrize("sigma_bar", [0.0, 0.01, 0.7, 14.6, 1e6])
def test_tweedie_consistency_vp(sigma_bar):
    mix = GaussianMixture.random(seed=3)
    x, labels = _random_batch(mix)
    alpha, sigma = vp_alpha_sigma(sigma_bar)
    for lab in (None, labels):
        eps = mix.eps_vp(x, sigma_bar, lab)
        x0 = mix.x0_vp(x, sigma_bar, lab)
        v = mix.v_vp(x, sigma_bar, lab)
        torch.testing.assert_close(alpha * x0 + sigma * eps, x, rtol=0, atol=1e-10)
        torch.testing.assert_close(v, alpha * eps - sigma * x0, rtol=0, atol=1e-12)


@pytest.mark.parametrize("s", [0.0, 0.02, 0.5, 0.97, 1.0])
def test_flow_velocity_consistency(s):
    mix = GaussianMixture.random(seed=4, std="smooth")
    x, labels = _random_batch(mix)
    v = mix.velocity_flow(x, s, labels)
    eps = mix.predict(x, s, "epsilon", family="flow", labels=labels)
    x0 = mix.predict(x, s, "sample", family="flow", labels=labels)
    torch.testing.assert_close(v, eps - x0, rtol=0, atol=1e-12)
    torch.testing.assert_close((1 - s) * x0 + s * eps, x, rtol=0, atol=1e-10)
    if s < 1:  # solvers.md §5.4: v = (ε − x)/(1 − s)
        torch.testing.assert_close(v, (eps - x) / (1 - s), rtol=1e-9, atol=1e-9)
    if 0 < s < 1:  # the same posterior as the VP schedule at σ̄ = s/(1−s), with x rescaled (solvers.md §0)
        sb = s / (1 - s)
        alpha_vp = float(vp_alpha_sigma(sb)[0])
        torch.testing.assert_close(eps, mix.eps_vp(x * alpha_vp / (1 - s), sb, labels), rtol=1e-9, atol=1e-10)


def test_endpoints_are_exact_and_finite():
    mix = GaussianMixture.random(seed=5)
    x, labels = _random_batch(mix, n=16)
    # clean data: x̂0 = x, ε̂ = 0
    torch.testing.assert_close(mix.x0_vp(x, 0.0, labels), x, rtol=0, atol=1e-14)
    assert mix.eps_vp(x, 0.0).abs().max() == 0
    torch.testing.assert_close(mix.velocity_flow(x, 0.0), -x, rtol=0, atol=1e-14)
    # pure noise: ε̂ = x, x̂0 = the (class) prior mean
    prior_mean = (mix.weights[:, None] * mix.means).sum(0)
    for level, family in ((math.inf, "vp"), (1.0, "flow")):
        eps = mix.predict(x, level, "epsilon", family=family)
        x0u = mix.predict(x, level, "sample", family=family)
        x0c = mix.predict(x, level, "sample", family=family, labels=labels)
        torch.testing.assert_close(eps, x, rtol=0, atol=1e-14)
        torch.testing.assert_close(x0u, prior_mean.expand_as(x), rtol=0, atol=1e-14)
        torch.testing.assert_close(x0c, mix.means[labels], rtol=0, atol=1e-14)
    # very large σ̄ approaches the σ̄ = ∞ limit without overflow
    far = mix.x0_vp(x, 1e12)
    assert torch.isfinite(far).all()
    torch.testing.assert_close(far, prior_mean.expand_as(x), rtol=0, atol=1e-9)
    # far-away inputs: log-sum-exp keeps the responsibilities finite
    assert torch.isfinite(mix.x0_vp(1e4 * x, 0.01, labels)).all()
    assert torch.isfinite(mix.eps_vp(1e4 * x, 0.01)).all()


def test_single_gaussian_is_linear_and_conditional_equals_unconditional():
    mu, s = torch.tensor([[0.5, -1.0, 2.0]], dtype=torch.float64), 0.4
    mix = GaussianMixture(mu, [s], [1.0])
    x, _ = _random_batch(mix, n=8)
    labels = torch.zeros(8, dtype=torch.long)
    for sb in (0.1, 1.0, 7.0):
        alpha, sigma = (float(v) for v in vp_alpha_sigma(sb))
        var = alpha**2 * s**2 + sigma**2
        torch.testing.assert_close(mix.eps_vp(x, sb), sigma * (x - alpha * mu) / var, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(mix.x0_vp(x, sb, labels), mix.x0_vp(x, sb), rtol=0, atol=0)
        torch.testing.assert_close(
            mix.predict(x, sb, "epsilon", labels=labels, guidance_scale=7.5),
            mix.eps_vp(x, sb),
            rtol=1e-12,
            atol=1e-12,
        )


@pytest.mark.parametrize(
    ("family", "ptype"),
    [
        ("vp", "epsilon"),
        ("vp", "sample"),
        ("vp", "v_prediction"),
        ("flow", "flow_prediction"),
        ("flow", "epsilon"),
    ],
)
def test_guidance_is_cfg_of_the_outputs(family, ptype):
    mix = GaussianMixture.random(seed=6)
    x, labels = _random_batch(mix, n=32)
    level = 0.8 if family == "vp" else 0.4
    c = mix.predict(x, level, ptype, family=family, labels=labels)
    u = mix.predict(x, level, ptype, family=family)
    for w in (0.0, 1.0, 7.5):
        guided = mix.predict(x, level, ptype, family=family, labels=labels, guidance_scale=w)
        torch.testing.assert_close(guided, u + w * (c - u), rtol=1e-10, atol=1e-10)


def test_per_sample_levels_match_scalar_levels():
    mix = GaussianMixture.random(seed=7)
    x, labels = _random_batch(mix, n=6)
    levels = torch.tensor([0.0, 0.1, 0.5, 1.0, 3.0, 20.0], dtype=torch.float64)
    alpha, sigma = vp_alpha_sigma(levels)
    batched = mix.posterior(x, alpha, sigma, labels)[0]
    for i in range(6):
        single = mix.posterior(x[i : i + 1], float(alpha[i]), float(sigma[i]), labels[i : i + 1])[0]
        torch.testing.assert_close(batched[i : i + 1], single, rtol=1e-13, atol=1e-13)


def test_sampling_is_seeded_and_follows_the_mixture():
    mix = GaussianMixture.random(seed=8)
    a = mix.sample(20000, torch.Generator().manual_seed(1))
    b = mix.sample(20000, torch.Generator().manual_seed(1))
    torch.testing.assert_close(a[0], b[0], rtol=0, atol=0)
    x0, labels = a
    freq = torch.bincount(labels, minlength=mix.num_classes).double() / len(labels)
    assert torch.allclose(freq, mix.class_weights, atol=0.015)
    for c in range(mix.num_classes):
        xc = x0[labels == c]
        assert torch.allclose(xc.mean(0), mix.means[c], atol=0.02)
        assert xc.std(0).mean().item() == pytest.approx(0.15, rel=0.05)
    fixed = torch.full((100,), 2)
    x2, l2 = mix.sample(100, torch.Generator().manual_seed(0), labels=fixed)
    assert (l2 == 2).all() and (mix.nearest_component(x2) == 2).float().mean() > 0.95


def test_presets_and_validation():
    assert float(GaussianMixture.random(std="hard").stds[0, 0]) == 0.15
    assert float(GaussianMixture.random(std="smooth").stds[0, 0]) == 0.5
    mix = GaussianMixture.random(dim=3, num_components=4, seed=2)
    assert (mix.dim, mix.num_components) == (3, 4) and mix.weights.sum().item() == pytest.approx(1.0)
    torch.testing.assert_close(GaussianMixture.random(seed=2).means, GaussianMixture.random(seed=2).means)
    with pytest.raises(ValueError, match="preset"):
        GaussianMixture.random(std="sharp")
    with pytest.raises(ValueError, match="stds"):
        GaussianMixture([[0.0]], [0.0], [1.0])
    with pytest.raises(ValueError, match="weights"):
        GaussianMixture([[0.0], [1.0]], [1.0, 1.0], [1.0])
    with pytest.raises(ValueError, match="labels"):
        mix.eps_vp(torch.zeros(2, 3), 1.0, labels=torch.tensor([0, 4]))
    with pytest.raises(TypeError, match="labels"):
        mix.eps_vp(torch.zeros(2, 3), 1.0, labels=torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="shape"):
        mix.eps_vp(torch.zeros(2, 4), 1.0)
    with pytest.raises(ValueError, match="prediction_type"):
        mix.predict(torch.zeros(2, 3), 0.5, "flow_prediction", family="vp")
    with pytest.raises(ValueError, match="prediction_type"):
        mix.predict(torch.zeros(2, 3), 0.5, "v_prediction", family="flow")
    with pytest.raises(ValueError, match="family"):
        mix.predict(torch.zeros(2, 3), 0.5, "epsilon", family="ve")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        flow_alpha_sigma(1.5)
    with pytest.raises(ValueError, match=">= 0"):
        vp_alpha_sigma(-0.1)
