"""The diffusers scheduler contract (solvers.md §3): config, compatibles, indexing, grids, errors."""

from __future__ import annotations

import math

import diffusers
import numpy as np
import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    PNDMScheduler,
)
from diffusers.schedulers.scheduling_utils import KarrasDiffusionSchedulers, SchedulerOutput
from diffusers.utils import DummyObject

from fastsample.solvers import (
    GHVBScheduler,
    HeavyBallScheduler,
    MomentumDPMSolverMultistepScheduler,
    PNDMFamilyScheduler,
)
from tests.solvers.helpers import SD15, flow_pseudo_model, sample_loop, vp_pseudo_model

OURS = {
    "plms": (PNDMFamilyScheduler, dict(method="plms")),
    "s_pndm": (PNDMFamilyScheduler, dict(method="s_pndm")),
    "f_pndm": (PNDMFamilyScheduler, dict(method="f_pndm")),
    "ghvb": (GHVBScheduler, dict(ghvb_order=2.5, grid="spacing")),
    "ghvb_default": (GHVBScheduler, {}),
    "hb": (HeavyBallScheduler, dict(plms_order=4, momentum=0.8)),
    "nesterov": (HeavyBallScheduler, dict(plms_order=3, momentum=0.7, nesterov=True)),
}
X0 = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))


def _make(name, **extra):
    cls, kw = OURS[name]
    return cls.from_config(SD15, **{**kw, **extra})


def _diffusers_vp_classes():
    out = []
    for e in KarrasDiffusionSchedulers:
        cls = getattr(diffusers, e.name, None)
        if cls is not None and not isinstance(cls, DummyObject) and not issubclass(cls, DummyObject):
            out.append(cls)
    return out


# ------------------------------------------------------------------------------------------ config
@pytest.mark.parametrize("name", list(OURS))
def test_save_pretrained_round_trip(name, tmp_path):
    s = _make(name)
    s.save_pretrained(tmp_path)
    loaded = type(s).from_pretrained(tmp_path)
    a, b = dict(s.config), dict(loaded.config)
    a.pop("_use_default_values", None), b.pop("_use_default_values", None)
    assert a == b
    model = vp_pseudo_model(s.alphas_cumprod)
    assert torch.equal(
        sample_loop(s, model, X0, num_inference_steps=6),
        sample_loop(loaded, model, X0, num_inference_steps=6),
    )


def test_dpm_momentum_save_pretrained_round_trip(tmp_path):
    s = MomentumDPMSolverMultistepScheduler(momentum=0.7, use_karras_sigmas=True)
    s.save_pretrained(tmp_path)
    loaded = MomentumDPMSolverMultistepScheduler.from_pretrained(tmp_path)
    assert loaded.config.momentum == 0.7 and loaded.config.use_karras_sigmas
    model = vp_pseudo_model(s.alphas_cumprod)
    assert torch.equal(
        sample_loop(s, model, X0, num_inference_steps=6),
        sample_loop(loaded, model, X0, num_inference_steps=6),
    )


def test_trained_betas_survive_round_trip(tmp_path):
    s = GHVBScheduler(num_train_timesteps=2, trained_betas=np.array([0.1, 0.3]))
    assert s.betas.dtype == torch.float32
    s.save_pretrained(tmp_path)
    assert torch.equal(GHVBScheduler.from_pretrained(tmp_path).betas, s.betas)


def test_class_attributes_and_public_api():
    s = _make("ghvb")
    assert s.order == 1 and len(s) == 1000 and s.init_noise_sigma == 1.0
    assert torch.equal(s.scale_model_input(X0, 0.0), X0)
    assert DPMSolverMultistepScheduler in s.compatibles and FlowMatchEulerDiscreteScheduler in s.compatibles


@pytest.mark.parametrize("source", _diffusers_vp_classes(), ids=lambda c: c.__name__)
def test_from_config_of_every_diffusers_vp_scheduler(source):
    """Every diffusers VP scheduler config (SD1.5 values) converts to each of ours and samples finitely."""
    try:
        src = source.from_config(dict(SD15, prediction_type="epsilon"))
    except Exception as exc:  # pragma: no cover - a diffusers class that cannot take the SD config at all
        pytest.skip(f"{source.__name__} cannot be built from the SD config: {exc}")
    for name, (cls, kw) in OURS.items():
        s = cls.from_config(src.config, **kw)
        assert s.config.prediction_type == "epsilon" and not s.is_flow, name
        assert s.config.steps_offset == 1 and s.config.beta_schedule == "scaled_linear", name
    out = sample_loop(s, vp_pseudo_model(s.alphas_cumprod), X0, num_inference_steps=5)
    assert torch.isfinite(out).all()
    back = source.from_config(GHVBScheduler.from_config(src.config).config)
    assert type(back) is source


def test_explicit_source_keys_carry_over_and_defaults_are_ours():
    """SD2-v style config: v_prediction and steps_offset carry over; keys left at default take ours."""
    src = PNDMScheduler(steps_offset=1, prediction_type="v_prediction", skip_prk_steps=True)
    s = GHVBScheduler.from_config(src.config)
    assert s.config.prediction_type == "v_prediction" and s.config.steps_offset == 1
    assert s.config.timestep_spacing == "linspace"  # PNDM's default "leading" was not set explicitly
    assert GHVBScheduler.from_config(PNDMScheduler().config).config.prediction_type == "epsilon"


def test_compatibles_both_ways_round_trip_our_keys():
    ours = GHVBScheduler.from_config(SD15, ghvb_order=3.5, use_karras_sigmas=True)
    keys = [k for k in ours.config if not k.startswith("_")]
    for other in ours.compatibles:
        if isinstance(other, DummyObject) or other is GHVBScheduler:
            continue
        converted = other.from_config(ours.config)
        back = GHVBScheduler.from_config(converted.config)
        for k in keys:
            assert back.config[k] == ours.config[k] or (k == "prediction_type" and back.is_flow), (other, k)


@pytest.mark.parametrize(
    "flow_cfg",
    [
        dict(shift=3.0),  # SD3
        dict(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15),  # Flux
        dict(),  # every key at its default: detected from the class name
    ],
)
def test_flow_match_configs_switch_to_the_flow_family(flow_cfg):
    fm = FlowMatchEulerDiscreteScheduler(**flow_cfg)
    for name, (cls, kw) in OURS.items():
        s = cls.from_config(fm.config, **kw)
        assert s.is_flow and s.config.prediction_type == "flow_prediction", name
        assert s.config.shift == fm.config.shift
        assert s.config.use_dynamic_shifting == fm.config.use_dynamic_shifting
        mu = 0.7 if s.config.use_dynamic_shifting else None
        out = sample_loop(s, flow_pseudo_model, X0, num_inference_steps=6, mu=mu)
        assert torch.isfinite(out).all()
        back = FlowMatchEulerDiscreteScheduler.from_config(s.config)
        assert back.config.shift == fm.config.shift
        assert type(s).from_config(back.config, **kw).is_flow


def test_dpm_spelled_flow_config_switches_to_flow():
    dpm = DPMSolverMultistepScheduler(use_flow_sigmas=True, flow_shift=3.0, prediction_type="flow_prediction")
    s = GHVBScheduler.from_config(dpm.config, ghvb_order=1, grid="spacing")
    assert s.is_flow and s.config.use_flow_sigmas
    dpm.set_timesteps(8)
    s.set_timesteps(8)
    assert torch.allclose(s.sigmas, dpm.sigmas, atol=1e-6)
    out = sample_loop(s, flow_pseudo_model, X0, num_inference_steps=8)
    ref = sample_loop(dpm, flow_pseudo_model, X0, num_inference_steps=8)
    assert torch.isfinite(out).all() and ref.shape == out.shape


def test_dynamic_shifting_needs_mu():
    s = GHVBScheduler.from_config(FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True).config)
    with pytest.raises(ValueError, match="mu"):
        s.set_timesteps(4)


# ------------------------------------------------------------------------------------------ stepping
@pytest.mark.parametrize("name", list(OURS))
def test_tuple_and_dataclass_outputs_are_equal(name):
    s = _make(name)
    model = vp_pseudo_model(s.alphas_cumprod)
    s.set_timesteps(6)
    x, outs = X0.clone(), []
    for t in s.timesteps:
        out = s.step(model(x, t), t, x)
        assert isinstance(out, SchedulerOutput)
        x = out.prev_sample
        outs.append(x)
    s.set_timesteps(6)  # must reset every piece of state
    x = X0.clone()
    for t, ref in zip(s.timesteps, outs):
        x = s.step(model(x, t), t, x, return_dict=False)
        assert isinstance(x, tuple)
        x = x[0]
        assert torch.equal(x, ref)


def test_fp16_model_output_gives_fp16_sample():
    s = _make("ghvb")
    model = vp_pseudo_model(s.alphas_cumprod)
    s.set_timesteps(4)
    x = X0.half()
    for t in s.timesteps:
        x = s.step(model(x.float(), t).half(), t, x).prev_sample
        assert x.dtype == torch.float16
    assert torch.isfinite(x).all()


@pytest.mark.parametrize("name", list(OURS))
@pytest.mark.parametrize("begin", [0, 1, 2, 3, 5])
@pytest.mark.parametrize("grid", [{}, {"use_karras_sigmas": True}], ids=["linspace", "karras"])
def test_constant_slope_is_integrated_exactly_from_any_begin_index(name, begin, grid):
    """Every consistent method integrates dx̄/dσ̄ = c exactly: x̄_end = x̄_b + (σ̄_end − σ̄_b)·c, whatever
    warm-up stage the img2img begin index cuts (set_begin_index + add_noise, as the pipelines do)."""
    s = _make(name, final_sigmas_type="zero", **grid)
    s.set_timesteps(8)
    s.set_begin_index(begin)
    c = torch.randn_like(X0)
    x0 = torch.randn_like(X0)
    x = s.add_noise(x0, c, s.timesteps[begin : begin + 1].repeat(X0.shape[0]))
    for t in s.timesteps[begin:]:
        x = s.step(c, t, x).prev_sample
    # start: x̄_b = x/α_b = x0 + σ̄_b·c; end at σ̄ = 0 → x̄ = x0
    assert s.step_index == len(s.timesteps)
    assert (x.double() - x0.double()).abs().max() <= 2e-5


@pytest.mark.parametrize("name", list(OURS))
@pytest.mark.parametrize("begin", [0, 2])
def test_flow_constant_velocity_is_integrated_exactly(name, begin):
    """Flow family: dx/ds = v constant gives x_end = x_b − s_b·v exactly (scale_noise + begin index path)."""
    cls, kw = OURS[name]
    s = cls.from_config(FlowMatchEulerDiscreteScheduler(shift=3.0).config, **kw)
    s.set_timesteps(8)
    s.set_begin_index(begin)
    v = torch.randn_like(X0)
    x0 = torch.randn_like(X0)
    x = s.scale_noise(x0, s.timesteps[begin : begin + 1], x0 + v)  # ε = x0 + v, so v = ε − x0
    for t in s.timesteps[begin:]:
        x = s.step(v, t, x).prev_sample
    assert (x - x0).abs().max() <= 2e-5


def test_img2img_path_matches_ddim_for_q_one():
    """set_begin_index + add_noise + timesteps[t_start:] (StableDiffusionImg2ImgPipeline's path) vs DDIM."""
    ddim = DDIMScheduler(**SD15)
    ours = GHVBScheduler.from_config(ddim.config, ghvb_order=1, timestep_spacing="leading", grid="spacing")
    model = vp_pseudo_model(ddim.alphas_cumprod)
    results = []
    for s in (ddim, ours):
        s.set_timesteps(10)
        t_start = 4
        if hasattr(s, "set_begin_index"):  # the pipeline's own guard
            s.set_begin_index(t_start)
        ts = s.timesteps[t_start:]
        x = s.add_noise(X0, torch.ones_like(X0), ts[:1].repeat(2))
        for t in ts:
            x = s.step(model(x, t), t, x).prev_sample
        results.append(x)
    assert (results[0] - results[1]).abs().max() <= 1e-5


def test_step_index_without_begin_index_uses_the_timestep():
    s = _make("ghvb")
    s.set_timesteps(10)
    t = s.timesteps[3]
    s.step(torch.zeros_like(X0), t, X0)
    assert s.step_index == 4 and s.begin_index is None


def test_flow_scale_noise_matches_flow_match_euler():
    fm = FlowMatchEulerDiscreteScheduler(shift=3.0)
    s = GHVBScheduler.from_config(fm.config, grid="spacing")
    for sch in (fm, s):
        sch.set_timesteps(10)
        sch.set_begin_index(3)
    noise = torch.randn_like(X0)
    a = fm.scale_noise(X0, fm.timesteps[3:4], noise)
    b = s.scale_noise(X0, s.timesteps[3:4], noise)
    assert (a - b).abs().max() <= 1e-6


# ------------------------------------------------------------------------------------------ grids
@pytest.mark.parametrize("grid", ["use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas"])
def test_sigma_grids_match_dpm_solver(grid):
    dpm = DPMSolverMultistepScheduler.from_config(SD15, **{grid: True})
    ours = GHVBScheduler.from_config(SD15, final_sigmas_type="zero", **{grid: True})
    dpm.set_timesteps(12)
    ours.set_timesteps(12)
    assert torch.allclose(ours.sigmas, dpm.sigmas, rtol=1e-5, atol=1e-6)
    # DPM rounds/truncates the timesteps, we keep them exact
    assert (ours.timesteps - dpm.timesteps.float()).abs().max() <= 1.0


@pytest.mark.parametrize("spacing", ["linspace", "trailing"])
def test_spacings_match_dpm_solver(spacing):
    dpm = DPMSolverMultistepScheduler.from_config(SD15, timestep_spacing=spacing)
    ours = GHVBScheduler.from_config(SD15, timestep_spacing=spacing, final_sigmas_type="zero", grid="spacing")
    dpm.set_timesteps(15)
    ours.set_timesteps(15)
    assert torch.equal(ours.timesteps, dpm.timesteps)
    assert torch.allclose(ours.sigmas, dpm.sigmas, rtol=1e-6)


def test_leading_matches_euler_and_custom_sigmas_match_euler():
    eul = EulerDiscreteScheduler.from_config(SD15, timestep_spacing="leading")
    ours = GHVBScheduler.from_config(
        SD15, timestep_spacing="leading", final_sigmas_type="zero", grid="spacing"
    )
    eul.set_timesteps(10)
    ours.set_timesteps(10)
    assert torch.equal(ours.timesteps, eul.timesteps.long())
    assert torch.allclose(ours.sigmas, eul.sigmas, rtol=1e-6)
    sig = [10.0, 5.0, 2.0, 1.0, 0.5, 0.0]  # Euler's convention: the end value is included
    eul.set_timesteps(sigmas=sig)
    ours.set_timesteps(sigmas=sig)
    assert torch.allclose(ours.sigmas, eul.sigmas, rtol=1e-6)
    assert torch.allclose(ours.timesteps, eul.timesteps, atol=1e-3)


def test_custom_timesteps():
    s = _make("plms")
    s.set_timesteps(timesteps=[999, 700, 400, 100])
    assert s.timesteps.tolist() == [999, 700, 700, 400, 100]
    out = sample_loop(s, vp_pseudo_model(s.alphas_cumprod), X0, timesteps=[999, 700, 400, 100])
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", list(OURS))
def test_zero_terminal_snr_runs_finite(name):
    """rescale_betas_zero_snr + trailing starts at ᾱ = 0 (σ̄ = ∞): run in the flow-like space, finite."""
    s = _make(name, rescale_betas_zero_snr=True, timestep_spacing="trailing", prediction_type="v_prediction")
    s.set_timesteps(8)
    assert float(s.alphas_cumprod[int(s.timesteps[0])]) == 0.0 and math.isinf(float(s.sigmas[0]))
    ac = s.alphas_cumprod.double()

    def v_model(x, t):  # v of the N(0, 0.25) denoiser at label t
        a, sg = ac[int(t)].sqrt(), (1 - ac[int(t)]).sqrt()
        var = a * a * 0.25 + sg * sg
        x0 = a * 0.25 * x.double() / var
        eps = sg * x.double() / var
        return (a * eps - sg * x0).float()

    out = sample_loop(s, v_model, X0, num_inference_steps=8)
    assert torch.isfinite(out).all() and out.abs().max() < 10


def test_zero_terminal_snr_q_one_matches_ddim():
    cfg = dict(
        SD15,
        rescale_betas_zero_snr=True,
        timestep_spacing="trailing",
        prediction_type="v_prediction",
        steps_offset=0,
    )
    ddim = DDIMScheduler(**cfg)
    ours = GHVBScheduler.from_config(ddim.config, ghvb_order=1, grid="spacing")
    model = vp_pseudo_model(ddim.alphas_cumprod)  # any output works as a v here: both convert the same way
    a = sample_loop(ddim, model, X0, num_inference_steps=10)
    b = sample_loop(ours, model, X0, num_inference_steps=10)
    assert torch.isfinite(b).all() and (a - b).abs().max() <= 1e-5


# ------------------------------------------------------------------------------------------ bad input
def test_bad_configuration_is_refused():
    with pytest.raises(ValueError, match="prediction_type"):
        GHVBScheduler(prediction_type="x0")
    for q in (0, -1, 5.5, 7):
        with pytest.raises(ValueError, match="ghvb_order"):
            GHVBScheduler(ghvb_order=q)
    with pytest.raises(TypeError, match="ghvb_order"):
        GHVBScheduler(ghvb_order="2.5")
    for beta in (0.0, -0.2, 1.5):
        with pytest.raises(ValueError, match="momentum"):
            HeavyBallScheduler(momentum=beta)
        with pytest.raises(ValueError, match="momentum"):
            MomentumDPMSolverMultistepScheduler(momentum=beta)
    with pytest.raises(ValueError, match="plms_order"):
        HeavyBallScheduler(plms_order=6)
    with pytest.raises(ValueError, match="method"):
        PNDMFamilyScheduler(method="rk45")
    with pytest.raises(ValueError, match="clip_sample"):
        GHVBScheduler(clip_sample=True)
    with pytest.raises(ValueError, match="timestep_spacing"):
        GHVBScheduler(timestep_spacing="uniform")
    with pytest.raises(ValueError, match="beta_schedule"):
        GHVBScheduler(beta_schedule="cosine")
    with pytest.raises(ValueError, match="only one"):
        GHVBScheduler(use_karras_sigmas=True, use_beta_sigmas=True)
    with pytest.raises(ValueError, match="dpmsolver"):
        MomentumDPMSolverMultistepScheduler(algorithm_type="sde-dpmsolver++")
    with pytest.raises(ValueError, match="epsilon"):
        GHVBScheduler(rescale_betas_zero_snr=True, timestep_spacing="trailing").set_timesteps(4)


def test_bad_calls_are_refused():
    s = _make("ghvb")
    with pytest.raises(ValueError, match="set_timesteps"):
        s.step(X0, 999, X0)
    with pytest.raises(ValueError, match="decreasing"):
        s.set_timesteps(timesteps=[100, 500])
    with pytest.raises(ValueError, match="num_inference_steps"):
        s.set_timesteps(0)
    s.set_timesteps(5)
    with pytest.raises(ValueError, match="not in"):
        s.step(X0, 123, X0)


def test_finite_check_default_and_override():
    """The per-step NaN check synchronises the device: by default it runs on the CPU only (None = auto);
    ``check_finite = False`` turns it off."""
    s = _make("ghvb_default")
    assert s.check_finite is None
    s.set_timesteps(4)
    out = torch.full_like(X0, float("nan"))
    with pytest.raises(ValueError, match="NaN"):
        s.step(out, s.timesteps[0], X0)
    s = _make("ghvb_default")
    s.check_finite = False
    s.set_timesteps(4)
    assert torch.isnan(s.step(out, s.timesteps[0], X0).prev_sample).all()


def test_nan_in_model_output_names_the_step():
    s = _make("plms")
    s.check_finite = True  # forced on (the default checks on the CPU only)
    model = vp_pseudo_model(s.alphas_cumprod)
    s.set_timesteps(6)
    x = X0.clone()
    for i, t in enumerate(s.timesteps):
        out = model(x, t)
        if i == 3:
            out[0, 0, 0, 0] = float("nan")
            with pytest.raises(ValueError, match="step index 3"):
                s.step(out, t, x)
            return
        x = s.step(out, t, x).prev_sample


# ------------------------------------------------------------------------------------------ solver table
def test_benchmark_entries_build_on_the_solver_table_base_configs():
    solver_table = pytest.importorskip("fastsample.zoo.solver_table")
    from fastsample.solvers import benchmark_entries

    entries = benchmark_entries()
    assert {e.family for e in entries} == {"vp", "flow"}
    assert len({e.name for e in entries}) == len(entries)
    for entry in entries:
        assert isinstance(entry, solver_table.SolverEntry)
        sched = entry.make(dict(solver_table.BASE_CONFIGS[entry.family]))
        sched.set_timesteps(8)
        assert float(sched.sigmas[-1]) == 0.0, entry.name  # the same end as the diffusers rows
        if entry.family == "flow":
            assert sched.config.prediction_type == "flow_prediction", entry.name


@pytest.mark.parametrize("name", ["plms", "f_pndm", "ghvb", "hb"])
@pytest.mark.parametrize("zero_snr", [False, True])
def test_prediction_types_are_converted_per_call(name, zero_snr):
    """The same denoiser given as ε, v or x0 gives the same trajectory: each output is converted to the slope
    at its own call (diffusers' PNDM instead mixes raw v outputs). Zero terminal SNR runs in the flow-like
    space, where ε carries no information at ᾱ = 0, so there only v and x0 are compared."""
    extra = dict(rescale_betas_zero_snr=True, timestep_spacing="trailing", steps_offset=0) if zero_snr else {}
    types = ["v_prediction", "sample"] if zero_snr else ["epsilon", "v_prediction", "sample"]
    finals = []
    for pred in types:
        s = _make(name, prediction_type=pred, **extra)
        ac = s.alphas_cumprod.double()

        def model(x, t, pred=pred, ac=ac):
            a, sg = ac[int(t)].sqrt(), (1 - ac[int(t)]).sqrt()
            var = a * a * 0.25 + sg * sg  # exact posterior of N(0, 0.25): x̂0 and ε̂, finite at ᾱ = 0
            x0, eps = a * 0.25 * x.double() / var, sg * x.double() / var
            out = {"epsilon": eps, "sample": x0, "v_prediction": a * eps - sg * x0}[pred]
            return out.float()

        finals.append(sample_loop(s, model, X0, num_inference_steps=8))
    for other in finals[1:]:
        assert (other - finals[0]).abs().max() <= 2e-5


def test_default_grid_is_karras_for_vp_and_the_shifted_spacing_for_flow():
    """grid="auto": the Karras σ̄ grid for VP; for flow the schedule's own shifted spacing (a Karras grid in s
    ignores FlowMatch's shift: 15 dB against 30 dB paired PSNR on the embedded flow DiT at 10 steps)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    from fastsample.zoo.solver_table import SD3_SCHEDULER_CONFIG, SD15_SCHEDULER_CONFIG

    def sigmas(config, **overrides):
        s = GHVBScheduler.from_config(config, **overrides)
        s.set_timesteps(10)
        return s.sigmas

    flow = dict(SD3_SCHEDULER_CONFIG)
    assert torch.equal(sigmas(flow), sigmas(flow, grid="spacing"))
    assert not torch.allclose(sigmas(flow), sigmas(flow, grid="karras"))
    euler = FlowMatchEulerDiscreteScheduler.from_config(flow)
    euler.set_timesteps(10)
    torch.testing.assert_close(sigmas(flow)[:-1].double(), euler.sigmas[:-1].double(), atol=1e-6, rtol=0)
    vp = dict(SD15_SCHEDULER_CONFIG)
    assert torch.equal(sigmas(vp), sigmas(vp, grid="karras"))
