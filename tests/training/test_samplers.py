import math

import numpy as np
import pytest
import torch
from scipy import integrate, optimize, special, stats

from fastsample.training import sample_noise_levels, shift_noise_levels, to_vp_timesteps

N = 20_000
P_MIN = 1e-3  # a correct sampler fails this with probability 1e-3 per test; a wrong density fails it surely


def draw(name, **kwargs):
    t = sample_noise_levels(name, N, generator=torch.Generator().manual_seed(1234), **kwargs)
    return t.double().numpy()


def test_uniform():
    assert stats.kstest(draw("uniform"), "uniform").pvalue > P_MIN


@pytest.mark.parametrize(("mean", "std"), [(0.0, 1.0), (0.8, 0.6), (-0.5, 1.5)])
def test_logit_normal_paper_convention(mean, std):
    t = draw("logit_normal", mean=mean, std=std)

    def cdf(x):
        return stats.norm.cdf((special.logit(x) - mean) / std)

    assert stats.kstest(t, cdf).pvalue > P_MIN
    # The paper's sign: m > 0 puts more mass on noise (t > 1/2).
    if mean > 0:
        assert np.median(t) > 0.5
    if mean < 0:
        assert np.median(t) < 0.5


@pytest.mark.parametrize("scale", [0.0, 0.5, 1.29])
def test_mode(scale):
    t = draw("mode", mode_scale=scale)

    def f(u):
        return 1 - u - scale * (math.cos(math.pi / 2 * u) ** 2 - 1 + u)

    def cdf_scalar(x):
        # f is decreasing in u, so P(t <= x) = 1 - f^{-1}(x); invert numerically.
        return 1 - optimize.brentq(lambda u: f(u) - x, 0.0, 1.0)

    cdf = np.vectorize(cdf_scalar)
    sub = t[:4000]  # brentq per point: keep the test quick
    assert stats.kstest(sub, cdf).pvalue > P_MIN
    if scale > 0:
        assert np.mean(np.abs(t - 0.5) < 0.25) > 0.5  # the mode scale favours the middle


def test_cosmap_is_the_real_density():
    t = draw("cosmap")

    def density(x):
        return 2 / (math.pi * (1 - 2 * x + 2 * x * x))

    assert math.isclose(integrate.quad(density, 0, 1)[0], 1.0, rel_tol=1e-9)
    grid = np.linspace(0, 1, 2001)
    pieces = [integrate.quad(density, a, b)[0] for a, b in zip(grid[:-1], grid[1:], strict=True)]
    cdf_grid = np.concatenate([[0.0], np.cumsum(pieces)])

    def cdf(x):
        return np.interp(x, grid, cdf_grid)

    assert stats.kstest(t, cdf).pvalue > P_MIN
    # ... and not uniform, unlike diffusers' compute_density_for_timestep_sampling("cosmap").
    assert stats.kstest(t, "uniform").pvalue < 1e-6


def test_diffusers_cosmap_is_uniform_documented_trap():
    from diffusers.training_utils import compute_density_for_timestep_sampling

    torch.manual_seed(0)
    u = compute_density_for_timestep_sampling("cosmap", N).double().numpy()
    assert stats.kstest(u, "uniform").pvalue > P_MIN


@pytest.mark.parametrize(("a", "b"), [(1.0, 2.0), (2.0, 1.0), (2.0, 3.0)])
def test_beta(a, b):
    assert stats.kstest(draw("beta", beta_a=a, beta_b=b), stats.beta(a, b).cdf).pvalue > P_MIN


def test_shift():
    k = 3.0
    t = draw("uniform", shift=k)
    # t' = k t / (1 + (k - 1) t) with t uniform  =>  P(t' <= x) = x / (k - (k - 1) x).
    assert stats.kstest(t, lambda x: x / (k - (k - 1) * x)).pvalue > P_MIN
    shifted = shift_noise_levels(torch.tensor([0.0, 0.5, 1.0]), k)
    assert torch.allclose(shifted, torch.tensor([0.0, 0.75, 1.0]))


def test_vp_timesteps_and_determinism():
    t = torch.tensor([0.0, 0.0004, 0.5, 0.9999, 1.0])
    assert to_vp_timesteps(t, 1000).tolist() == [0, 0, 500, 999, 999]
    a = sample_noise_levels("cosmap", 10, generator=torch.Generator().manual_seed(0))
    b = sample_noise_levels("cosmap", 10, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and a.dtype == torch.float32 and ((a > 0) & (a < 1)).all()


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("cosine", {}),
        ("logit_normal", {"std": 0.0}),
        ("mode", {"mode_scale": 2.0}),
        ("beta", {"beta_a": 0.0}),
        ("uniform", {"shift": 0.0}),
    ],
)
def test_bad_sampler_arguments(name, kwargs):
    with pytest.raises(ValueError):
        sample_noise_levels(name, 4, **kwargs)
