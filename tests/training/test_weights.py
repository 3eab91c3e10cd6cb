import math

import pytest
import torch
from diffusers import DDPMScheduler, FlowMatchEulerDiscreteScheduler
from diffusers.training_utils import compute_snr as diffusers_compute_snr

from fastsample.training import DiffusionObjective, compute_snr, min_snr_weights

GAMMA = 5.0


@pytest.fixture
def vp():
    return DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")


def diffusers_example_weights(scheduler, timesteps, gamma, prediction_type):
    """The canonical diffusers example-script formula (train_text_to_image.py, --snr_gamma)."""
    snr = diffusers_compute_snr(scheduler, timesteps)
    mse_loss_weights = torch.stack([snr, gamma * torch.ones_like(timesteps)], dim=1).min(dim=1)[0]
    if prediction_type == "epsilon":
        mse_loss_weights = mse_loss_weights / snr
    elif prediction_type == "v_prediction":
        mse_loss_weights = mse_loss_weights / (snr + 1)
    return mse_loss_weights


def test_snr_matches_diffusers(vp):
    t = torch.arange(0, 1000, 7)
    assert torch.allclose(compute_snr(vp, t).float(), diffusers_compute_snr(vp, t), rtol=1e-5)


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
def test_vp_weights_match_diffusers_example_formula(vp, prediction_type):
    t = torch.arange(0, 1000, 3)
    ours = min_snr_weights(vp, t, GAMMA, prediction_type)
    ref = diffusers_example_weights(vp, t, GAMMA, prediction_type)
    assert torch.allclose(ours, ref, rtol=1e-5, atol=1e-7)


def test_vp_weights_closed_forms(vp):
    """Independent scalar formulas from the paper's table, evaluated from ᾱ directly in Python floats."""
    t = torch.tensor([0, 10, 100, 300, 500, 700, 900, 999])
    for k, step in enumerate(t.tolist()):
        abar = float(vp.alphas_cumprod[step])
        snr = abar / (1 - abar)
        sigma2 = 1 - abar
        expected = {
            "epsilon": min(1.0, GAMMA / snr),
            "sample": min(snr, GAMMA),
            # k_v = 1/(SNR+1) = σ² = 1 - ᾱ
            "v_prediction": min(snr, GAMMA) * sigma2,
        }
        for ptype, value in expected.items():
            got = float(min_snr_weights(vp, t, GAMMA, ptype)[k])
            assert math.isclose(got, value, rel_tol=1e-5), (ptype, step, got, value)


def test_x0_space_equivalence_of_weights(vp):
    """w_pred / k_pred = min(SNR, γ) for every target, with k the x0-error conversion factor."""
    t = torch.arange(0, 1000)
    snr = compute_snr(vp, t)
    base = torch.clamp(snr, max=GAMMA)
    k = {"epsilon": 1 / snr, "sample": torch.ones_like(snr), "v_prediction": 1 / (snr + 1)}
    for ptype, factor in k.items():
        w = min_snr_weights(vp, t, GAMMA, ptype).double()
        assert torch.allclose(w / factor, base, rtol=1e-5), ptype


def test_flow_weights_closed_form():
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000)
    s = torch.linspace(0.001, 1.0, 500, dtype=torch.float64)
    w = min_snr_weights(scheduler, s * 1000, GAMMA).double()  # prediction type defaults to flow
    expected = torch.minimum((1 - s) ** 2, GAMMA * s**2)
    assert torch.allclose(w, expected, rtol=1e-5, atol=1e-9)
    # Peak at s* = 1/(1+√γ) (training_eval.md §1.1): value 0.477 for γ = 5.
    fine = torch.linspace(0.01, 0.99, 9801, dtype=torch.float64)
    wf = min_snr_weights(snr=((1 - fine) / fine) ** 2, gamma=GAMMA, prediction_type="flow").double()
    assert abs(float(fine[wf.argmax()]) - 1 / (1 + math.sqrt(GAMMA))) < 2e-3
    # Independent route: x0-space weight times k_u = s².
    snr = ((1 - s) / s) ** 2
    assert torch.allclose(w, torch.clamp(snr, max=GAMMA) * s**2, rtol=1e-5, atol=1e-9)


def test_zero_terminal_snr_is_finite_where_diffusers_is_nan():
    scheduler = DDPMScheduler(num_train_timesteps=1000, rescale_betas_zero_snr=True)
    t = torch.tensor([0, 500, 999])
    assert float(scheduler.alphas_cumprod[999]) == 0.0
    assert torch.isnan(diffusers_example_weights(scheduler, t, GAMMA, "epsilon")[-1])
    for ptype, end in (("epsilon", 1.0), ("sample", 0.0), ("v_prediction", 0.0)):
        w = min_snr_weights(scheduler, t, GAMMA, ptype)
        assert torch.isfinite(w).all()
        assert float(w[-1]) == end
    # SNR = ∞ (s = 0 in flow matching, or a user-given snr).
    inf = torch.tensor([math.inf, 0.0])
    assert min_snr_weights(snr=inf, prediction_type="epsilon").tolist() == [0.0, 1.0]
    assert min_snr_weights(snr=inf, prediction_type="sample").tolist() == [GAMMA, 0.0]
    assert min_snr_weights(snr=inf, prediction_type="v_prediction").tolist() == [0.0, 0.0]
    assert min_snr_weights(snr=inf, prediction_type="flow").tolist() == [0.0, 0.0]


def test_prediction_type_defaults_to_scheduler():
    scheduler = DDPMScheduler(prediction_type="v_prediction")
    t = torch.tensor([10, 500])
    explicit = min_snr_weights(scheduler, t, prediction_type="v_prediction")
    assert torch.equal(min_snr_weights(scheduler, t), explicit)


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction", "flow"])
def test_same_objective_in_every_parameterisation(prediction_type):
    """The Min-SNR loss on ε, x0, v (and u for flow) targets is the same number: min(SNR,γ)·‖x̂0 − x0‖²."""
    torch.manual_seed(0)
    flow = prediction_type == "flow"
    if flow:
        scheduler = FlowMatchEulerDiscreteScheduler()
    else:
        scheduler = DDPMScheduler(beta_schedule="squaredcos_cap_v2")
    x0 = torch.randn(16, 3, 8, 8, dtype=torch.float64)
    x0_hat = x0 + 0.3 * torch.randn_like(x0)  # one model belief, expressed in every parameterisation
    losses = {}
    types = ["flow"] if flow else ["epsilon", "sample", "v_prediction"]
    for ptype in types:
        objective = DiffusionObjective(scheduler, prediction_type=ptype, weighting="min_snr", gamma=GAMMA)
        batch = objective.prepare(x0, generator=torch.Generator().manual_seed(3))
        x_t = batch.model_input
        if flow:
            s = (batch.timesteps.double() / 1000).view(-1, 1, 1, 1)
            pred = (x_t - x0_hat) / s  # û with x̂0 = x_t − s û
            snr = ((1 - s) / s) ** 2
        else:
            abar = scheduler.alphas_cumprod.double()[batch.timesteps].view(-1, 1, 1, 1)
            a, sig = abar.sqrt(), (1 - abar).sqrt()
            eps_hat = (x_t - a * x0_hat) / sig
            pred = {"epsilon": eps_hat, "sample": x0_hat, "v_prediction": a * eps_hat - sig * x0_hat}[ptype]
            snr = abar / (1 - abar)
        losses[ptype] = float(objective.loss(pred.double(), batch))
        # Reference: x0-space loss with weight min(SNR, γ), independent of the parameterisation.
        x0_err = ((x0_hat - x0) ** 2).flatten(1).mean(1)
        ref = float((torch.clamp(snr.flatten(), max=GAMMA) * x0_err).mean())
        assert math.isclose(losses[ptype], ref, rel_tol=1e-4), (ptype, losses[ptype], ref)
    values = list(losses.values())
    assert all(math.isclose(v, values[0], rel_tol=1e-4) for v in values)


@pytest.mark.parametrize("gamma", [0, -1.0, math.nan, math.inf, True, "5"])
def test_bad_gamma_refused(vp, gamma):
    with pytest.raises(ValueError, match="gamma"):
        min_snr_weights(vp, torch.tensor([1]), gamma, "epsilon")
    with pytest.raises(ValueError, match="gamma"):
        DiffusionObjective(vp, gamma=gamma)


def test_bad_arguments_refused(vp):
    with pytest.raises(ValueError, match="prediction_type"):
        min_snr_weights(vp, torch.tensor([1]), 5.0, "velocity")
    with pytest.raises(ValueError, match="prediction_type"):
        DiffusionObjective(vp, prediction_type="x0")
    with pytest.raises(ValueError, match="prediction_type"):
        min_snr_weights(snr=torch.tensor([1.0]))
    with pytest.raises(ValueError):
        min_snr_weights(vp, torch.tensor([1]), snr=torch.tensor([1.0]), prediction_type="epsilon")
    with pytest.raises(ValueError):
        min_snr_weights(snr=torch.tensor([-1.0]), prediction_type="epsilon")
    with pytest.raises(ValueError, match="integer"):
        compute_snr(vp, torch.tensor([1.5]))
    with pytest.raises(ValueError):
        compute_snr(vp, torch.tensor([1000]))
    with pytest.raises(TypeError):
        compute_snr(object(), torch.tensor([1]))
    with pytest.raises(ValueError, match="does not match"):
        DiffusionObjective(FlowMatchEulerDiscreteScheduler(), prediction_type="epsilon")
    with pytest.raises(ValueError, match="weighting"):
        DiffusionObjective(vp, weighting="p2")
