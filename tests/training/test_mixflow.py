import logging

import pytest
import torch
from diffusers import DDPMScheduler, FlowMatchEulerDiscreteScheduler
from scipy import stats

from fastsample.training import DiffusionObjective, mixflow_slowed_levels


def test_slowed_levels_range_and_distribution():
    gamma = 0.4
    tau = torch.rand(20_000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    slowed = mixflow_slowed_levels(tau, gamma, generator=torch.Generator().manual_seed(1))
    width = gamma * (1 - tau)
    assert (slowed >= tau).all() and (slowed <= tau + width + 1e-12).all() and (slowed <= 1).all()
    # (τ' − τ) / (γ(1 − τ)) is the ρ of the recipe: uniform on [0, 1].
    rho = ((slowed - tau) / width).numpy()
    assert stats.kstest(rho, "uniform").pvalue > 1e-3


@pytest.mark.parametrize("gamma", [0.0, -0.1, 1.5])
def test_bad_gamma(gamma):
    with pytest.raises(ValueError):
        mixflow_slowed_levels(torch.zeros(3), gamma)
    with pytest.raises(ValueError):
        DiffusionObjective(FlowMatchEulerDiscreteScheduler(), mixflow_gamma=gamma)


def test_flow_objective_uses_slowed_input_unslowed_label_and_velocity_target():
    gamma = 0.4
    objective = DiffusionObjective(
        FlowMatchEulerDiscreteScheduler(), weighting="none", sampler="beta", mixflow_gamma=gamma
    )
    x0 = torch.randn(4096, 2, dtype=torch.float64)
    batch = objective.prepare(x0, generator=torch.Generator().manual_seed(0))
    sigma = batch.timesteps.double() / 1000  # the conditioning level τ
    eps = batch.noise
    # Recover the level the input was built at from x_in = (1 − τ') x0 + τ' ε (per sample, any element).
    seen = ((batch.model_input - x0) / (eps - x0))[:, 0]
    assert torch.allclose(((batch.model_input - x0) / (eps - x0))[:, 1], seen, atol=1e-6)
    assert (seen >= sigma - 1e-6).all() and (seen <= sigma + gamma * (1 - sigma) + 1e-6).all()
    assert (seen > sigma + 1e-3).float().mean() > 0.9  # slowed, not equal
    assert torch.allclose(batch.target, eps - x0)
    # Training-time density of τ: Beta(1, 2) (the paper's τ = 1 − √r).
    assert stats.kstest(sigma.numpy(), stats.beta(1, 2).cdf).pvalue > 1e-3
    rho = ((seen - sigma) / (gamma * (1 - sigma))).numpy()
    assert stats.kstest(rho, "uniform").pvalue > 1e-3


def test_vp_variant_is_experimental_and_in_range(caplog):
    scheduler = DDPMScheduler()
    with caplog.at_level(logging.WARNING):
        objective = DiffusionObjective(scheduler, weighting="none", mixflow_gamma=0.5)
    assert "experimental" in caplog.text
    x0 = torch.randn(2000, 3, dtype=torch.float64)
    batch = objective.prepare(x0, generator=torch.Generator().manual_seed(0))
    abar = scheduler.alphas_cumprod.double()
    t = batch.timesteps
    # Recover ᾱ of the input level from x_in = √ᾱ' x0 + √(1 − ᾱ') ε, and find t' in the table.
    a_seen = (batch.model_input[:, 0] * batch.noise[:, 1] - batch.model_input[:, 1] * batch.noise[:, 0]) / (
        x0[:, 0] * batch.noise[:, 1] - x0[:, 1] * batch.noise[:, 0]
    )
    t_seen = (abar.sqrt()[None, :] - a_seen[:, None]).abs().argmin(1)
    assert (t_seen >= t).all()
    assert (t_seen <= t + torch.floor(0.5 * (999 - t))).all()
    assert torch.equal(batch.target, batch.noise)  # ε target unchanged


def test_without_mixflow_vp_input_is_diffusers_add_noise():
    scheduler = DDPMScheduler(beta_schedule="squaredcos_cap_v2")
    objective = DiffusionObjective(scheduler, prediction_type="v_prediction", weighting="none")
    x0 = torch.randn(64, 3, 4, 4)
    batch = objective.prepare(x0, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(batch.model_input, scheduler.add_noise(x0, batch.noise, batch.timesteps), atol=1e-6)
    assert torch.allclose(batch.target, scheduler.get_velocity(x0, batch.noise, batch.timesteps), atol=1e-6)
    assert torch.equal(batch.weights, torch.ones(64))
