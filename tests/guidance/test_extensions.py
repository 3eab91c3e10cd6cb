"""LinearAG, annealed schedules and the learned head, train-guidance, and the diffusers guiders."""

import math

import numpy as np
import pytest
import torch
from diffusers.guiders import AdaptiveProjectedGuidance

from fastsample.guidance import (
    APG,
    CFG,
    AdaptiveGuider,
    AnnealedGuidance,
    AnnealingHead,
    APGGuider,
    CFGPlusPlus,
    GuidanceContext,
    LinearAG,
    LinearAGCoefficients,
    guide,
)
from fastsample.guidance.linear_ag import pipeline_signature
from fastsample.guidance.methods import cfg_combine
from fastsample.testing import call_kwargs, tiny_pipeline

_PIPES = {}


def _dit(seed=0):
    if seed not in _PIPES:
        _PIPES[seed] = tiny_pipeline("dit", seed=seed)
    return _PIPES[seed]


def _kw(seed, steps=6, labels=(1, 2)):
    return call_kwargs("dit", seed=seed, num_inference_steps=steps, class_labels=list(labels))


class _Counter:
    def __init__(self, pipe):
        self.batches = []
        self.handle = pipe.transformer.pos_embed.register_forward_pre_hook(
            lambda m, a: self.batches.append(a[0].shape[0])
        )

    def close(self):
        self.handle.remove()


class _Recorder(CFG):
    """Plain CFG that keeps every step's (c, u) for an independent least-squares fit."""

    def __init__(self):
        super().__init__()
        self.runs = []

    def reset(self):
        self.runs.append([])

    def __call__(self, cond, uncond, ctx):
        self.runs[-1].append((cond.double().flatten().numpy(), uncond.double().flatten().numpy()))
        return super().__call__(cond, uncond, ctx)


def test_linear_ag_fit_matches_numpy_least_squares_and_saves_nfe(tmp_path):
    pipe = _dit()
    coefficients = LinearAG.fit(pipe, [_kw(0, steps=4, labels=(1, 3))], steps=[1, 2])
    recorder = _Recorder()
    with guide(pipe, recorder):
        pipe(**_kw(0, steps=4, labels=(1, 3)))
    run = recorder.runs[-1]
    assert len(run) == 4
    for step in (1, 2):
        (c, u), (c_prev, u_prev) = run[step], run[step - 1]
        rows = np.stack([c, c_prev, u_prev, np.ones_like(c)], axis=1)
        want = np.linalg.lstsq(rows, u, rcond=None)[0]
        np.testing.assert_allclose(coefficients.coefficients[step], want, rtol=1e-5, atol=1e-6)

    coefficients.save_pretrained(tmp_path)
    loaded = LinearAGCoefficients.from_pretrained(tmp_path)
    assert loaded.coefficients == coefficients.coefficients and loaded.signature == coefficients.signature
    counter = _Counter(pipe)
    try:
        with guide(pipe, LinearAG(loaded)):
            pipe(**_kw(5, steps=4))
    finally:
        counter.close()
    assert counter.batches == [4, 2, 2, 4]  # steps 1 and 2 run the conditional half only

    with pytest.raises(ValueError, match="num_steps"), guide(pipe, LinearAG(loaded)):
        pipe(**_kw(5, steps=3))  # refused at the first denoiser call
    for key in ("model", "scheduler"):
        with pytest.raises(ValueError, match=key):
            loaded.check({**loaded.signature, key: "something else"})
    # another model with the same config but other weights has another signature
    assert loaded.signature["model"] != pipeline_signature(_dit(seed=1))["model"]


def test_linear_ag_refuses_bad_input():
    with pytest.raises(TypeError):
        LinearAG({1: [1, 0, 0, 0]})
    with pytest.raises(ValueError, match="step 0"):
        LinearAG(LinearAGCoefficients({}, {0: [1.0, 0.0, 0.0, 0.0]}))
    with pytest.raises(ValueError, match="calibration_calls"):
        LinearAG.fit(_dit(), [])


def test_analytic_schedules_have_mean_w_and_the_stated_endpoints():
    x = torch.zeros(1, 4)
    for schedule in ("linear", "cosine"):
        method = AnnealedGuidance(schedule, guidance_scale=6.0)
        taus = torch.linspace(0, 1, 2001)
        contexts = [GuidanceContext(x, 0.5, 0.5, "epsilon", 6.0, noise_fraction=float(t)) for t in taus]
        ws = torch.stack([method.scale(ctx) for ctx in contexts])
        assert abs(float(torch.trapezoid(ws.squeeze(), taus)) - 6.0) < 1e-4  # mean over τ is w
        assert float(ws[-1]) == pytest.approx(1.0)  # no guidance at pure noise
        assert float(ws[0]) == pytest.approx(11.0)  # 1 + 2 (w − 1) at τ = 0


def test_interval_guidance_skips_the_uncond_pass_outside_the_sigma_interval():
    pipe = _dit()
    steps, lo, hi = 8, 0.5, 3.0
    sched = pipe.scheduler
    sched.set_timesteps(steps)
    ac = sched.alphas_cumprod.double()[sched.timesteps]
    rho = torch.sqrt((1 - ac) / ac)
    expected = [4 if lo < float(r) <= hi else 2 for r in rho]
    assert 2 in expected and 4 in expected
    counter = _Counter(pipe)
    try:
        with guide(pipe, AnnealedGuidance("interval", sigma_interval=(lo, hi))):
            pipe(**_kw(0, steps=steps))
    finally:
        counter.close()
    assert counter.batches == expected


def test_learned_head_with_constant_output_is_cfg_plus_plus(tmp_path):
    head = AnnealingHead(hidden_dim=8, depth=1, w_bias=0.7)
    torch.nn.init.zeros_(head.mlp[-1].weight)
    torch.nn.init.zeros_(head.mlp[-1].bias)
    head.save_pretrained(tmp_path)
    loaded = AnnealingHead.from_pretrained(tmp_path)
    for p, q in zip(head.parameters(), loaded.parameters()):
        assert torch.equal(p, q)
    x = torch.randn(2, 4, 3, 3)
    c, u = torch.randn_like(x), torch.randn_like(x)
    ctx = GuidanceContext(x, 0.6, 0.8, "epsilon", 1.0, noise_fraction=0.5, next_alpha_sigma=(0.7, 0.714))
    got = AnnealedGuidance("learned", head=loaded)(c, u, ctx)
    torch.testing.assert_close(got, CFGPlusPlus(0.7)(c, u, ctx))


def test_learned_head_runs_in_a_pipeline():
    pipe = _dit()
    ref = torch.from_numpy(np.array(pipe(**_kw(0, steps=3)).images))
    with guide(pipe, AnnealedGuidance("learned", head=AnnealingHead(hidden_dim=8, depth=1))) as handle:
        out = torch.from_numpy(np.array(pipe(**_kw(0, steps=3)).images))
    assert handle.last_stats["model_samples"] == 12
    assert out.shape == ref.shape and torch.isfinite(out).all()


def test_annealed_guidance_refuses_bad_arguments():
    with pytest.raises(ValueError, match="schedule"):
        AnnealedGuidance("exponential")
    with pytest.raises(ValueError, match="head"):
        AnnealedGuidance("learned")
    with pytest.raises(ValueError, match="sigma_interval"):
        AnnealedGuidance("interval", sigma_interval=(2.0, 1.0))
    with pytest.raises(ValueError, match="lam"):
        AnnealedGuidance("learned", head=AnnealingHead(), lam=1.5)


def test_train_guidance_command_trains_and_saves_a_loadable_head(tmp_path):
    from fastsample.cli import build_parser, main

    parser = build_parser()
    out = tmp_path / "head"
    args = parser.parse_args(
        ["train-guidance", "--pipeline", "fixture:dit", "--out", str(out), "--train-steps", "3",
         "--steps", "3", "--calibration-calls", "1", "--class-labels", "1", "2"]
    )  # fmt: skip
    torch.manual_seed(0)
    initial = AnnealingHead()
    torch.manual_seed(0)
    assert args.func(args) == 0
    head = AnnealingHead.from_pretrained(out)
    changed = [not torch.equal(p, q) for p, q in zip(head.parameters(), initial.parameters())]
    assert any(changed)  # the optimiser moved the weights
    assert main(["train-guidance", "--pipeline", "fixture:nope", "--out", str(out)]) == 2


def test_apg_guider_matches_diffusers_with_the_paper_formulation():
    """diffusers' guider with use_original_formulation=True, scale w − 1, momentum β, rescale r·√N."""
    w, beta, r = 9.0, -0.5, 0.05
    shape = (2, 4, 8, 8)
    ours = APGGuider(guidance_scale=w, eta=0.0, momentum=beta, norm_threshold=r)
    ref = AdaptiveProjectedGuidance(
        guidance_scale=w - 1, adaptive_projected_guidance_momentum=beta,
        adaptive_projected_guidance_rescale=r * math.sqrt(4 * 64), eta=0.0, use_original_formulation=True,
    )  # fmt: skip
    g = torch.Generator().manual_seed(0)
    for _generation in range(2):  # the momentum restarts at step 0 of each generation
        for step in range(3):
            c, u = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
            for guider in (ours, ref):
                guider.set_state(step, 3, torch.tensor(999 - step))
                guider.prepare_inputs({"noise_pred": (c, u)})
            torch.testing.assert_close(ours.forward(c, u).pred, ref.forward(c, u).pred, rtol=1e-5, atol=1e-5)
    x = torch.randn(shape)
    direct = APG(w, momentum=beta, norm_threshold=r)(c, u, GuidanceContext(x, 1.0, 0.0, "sample", w))
    assert direct.shape == shape


def test_adaptive_guider_drops_to_one_condition_after_the_switch():
    guider = AdaptiveGuider(guidance_scale=5.0, threshold=0.9)
    c = torch.randn(2, 4, 4, 4)
    guider.set_state(0, 4, torch.tensor(999))
    assert guider.num_conditions == 2 and len(guider.prepare_inputs({"noise_pred": (c, -c)})) == 2
    out = guider.forward(c, -c).pred  # cos = −1: CFG
    torch.testing.assert_close(out, cfg_combine(c, -c, 5.0))
    guider.set_state(1, 4, torch.tensor(700))
    guider.prepare_inputs({"noise_pred": (c, 0.5 * c)})
    torch.testing.assert_close(guider.forward(c, 0.5 * c).pred, c)  # cos = 1: switched
    guider.set_state(2, 4, torch.tensor(400))
    assert guider.num_conditions == 1 and len(guider.prepare_inputs({"noise_pred": (c, None)})) == 1
    guider.set_state(0, 4, torch.tensor(999))  # a new generation starts over
    guider.prepare_inputs({"noise_pred": (c, -c)})
    assert guider.num_conditions == 2
