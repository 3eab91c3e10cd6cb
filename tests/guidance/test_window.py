"""Guidance windows (issue 18, item 4): guidance only inside an interval of the trajectory, the unconditional
pass skipped outright outside it; exactness at both extremes, samples counted inside the model, composition
with Adaptive Guidance's switch, refusals and exact restore."""

import math

import numpy as np
import pytest
import torch

from fastsample.guidance import CFG, AdaptiveGuidance, AnnealingHead, GuidanceMethod, GuidanceWindow, guide
from fastsample.guidance.context import GuidanceContext
from fastsample.guidance.methods import METHODS
from fastsample.integration.measure import NFECounter
from fastsample.testing import call_kwargs, tiny_pipeline

_PIPES: dict[str, object] = {}
STEPS = 6


def _pipe(name):
    if name not in _PIPES:
        _PIPES[name] = tiny_pipeline(name)
    return _PIPES[name]


def _run(pipe, name, **overrides):
    overrides.setdefault("output_type", "latent")
    overrides.setdefault("num_inference_steps", STEPS)
    out = pipe(**call_kwargs(name, **overrides)).images
    return out.clone() if isinstance(out, torch.Tensor) else torch.from_numpy(np.array(out))


def _entry(pipe):
    """The module that receives the denoiser's real (possibly sliced) batch."""
    from fastsample.integration.adapters import denoiser_entry

    return denoiser_entry(pipe)


class _Probe(GuidanceMethod):
    """Plain CFG that records each step's progress 1 − τ and ρ."""

    def __init__(self):
        super().__init__()
        self.progress, self.rho = [], []

    def reset(self):
        self.progress, self.rho = [], []

    def __call__(self, cond, uncond, ctx):
        self.progress.append(1.0 - float(torch.as_tensor(ctx.noise_fraction).reshape(-1)[0]))
        self.rho.append(float(ctx.rho[0]))
        return super().__call__(cond, uncond, ctx)


def _progress(pipe, name):
    probe = _Probe()
    with guide(pipe, probe):
        _run(pipe, name)
    assert len(probe.progress) == STEPS
    return probe.progress, probe.rho


@pytest.mark.parametrize("name", ["dit", "sd3", "flux"])
def test_a_window_covering_everything_is_plain_cfg_bitwise(name):
    pipe = _pipe(name)
    with guide(pipe, CFG()):
        ref = _run(pipe, name)
    with guide(pipe, GuidanceWindow(0.0, 1.0)):
        out = _run(pipe, name)
    assert torch.equal(out, ref)
    with guide(pipe, GuidanceWindow(0.0, math.inf, over="sigma")):
        assert torch.equal(_run(pipe, name), ref)


@pytest.mark.parametrize("name", ["dit", "sd3"])
def test_an_empty_window_is_the_conditional_model_only(name):
    pipe = _pipe(name)
    b = 1  # call_kwargs: one sample
    cond_only = _run(pipe, name, guidance_scale=1.0)  # the pipeline's own no-CFG path
    counter = NFECounter(_entry(pipe))
    try:
        with guide(pipe, GuidanceWindow(1e6, 1e7, over="sigma")) as handle:
            out = _run(pipe, name)
    finally:
        counter.remove()
    assert counter.count == STEPS and counter.samples == STEPS * b  # no unconditional row at all
    assert handle.last_stats["model_samples"] == STEPS * b
    torch.testing.assert_close(out, cond_only, rtol=1e-5, atol=1e-5 * float(cond_only.abs().max()))


def test_rows_outside_the_window_are_never_built():
    name = "dit"
    pipe = _pipe(name)
    progress, _ = _progress(pipe, name)
    # a window holding steps 1..3 exactly: edges half-way between neighbouring steps' progress
    start, end = (progress[0] + progress[1]) / 2, (progress[3] + progress[4]) / 2
    method = GuidanceWindow(start, end)
    counter = NFECounter(_entry(pipe))
    try:
        with guide(pipe, method):
            out = _run(pipe, name, class_labels=[1, 2])
    finally:
        counter.remove()
    b, inside = 2, 3
    assert counter.count == STEPS
    assert counter.samples == STEPS * b + inside * b
    with guide(pipe, CFG()):
        full = _run(pipe, name, class_labels=[1, 2])
    assert not torch.equal(out, full)


def test_window_composes_with_adaptive_guidance_switch():
    name = "dit"
    pipe = _pipe(name)
    progress, _ = _progress(pipe, name)
    labels = [1, 2, 3]
    # AG alone inside a window that covers everything is AG alone, bitwise
    probe = AdaptiveGuidance(threshold=1.0)  # never switches; records γ
    with guide(pipe, probe):
        _run(pipe, name, class_labels=labels)
    gammas = torch.stack(probe.gammas)  # (steps, B)
    threshold = float(gammas[2].min()) - 1e-9  # every sample switches at step 2 at the latest
    with guide(pipe, AdaptiveGuidance(threshold=threshold)):
        ag_alone = _run(pipe, name, class_labels=labels)
    with guide(pipe, GuidanceWindow(0.0, 1.0, inner=AdaptiveGuidance(threshold=threshold))):
        assert torch.equal(_run(pipe, name, class_labels=labels), ag_alone)

    # a window that opens at step 1: AG sees steps 1.. only; outside, conditional rows only
    start = (progress[0] + progress[1]) / 2
    inner = AdaptiveGuidance(threshold=threshold)
    counter = NFECounter(_entry(pipe))
    try:
        with guide(pipe, GuidanceWindow(start, 1.0, inner=inner)) as handle:
            _run(pipe, name, class_labels=labels)
    finally:
        counter.remove()
    b = len(labels)
    switch = inner.switch_steps.clone()  # step each sample switched at (−1: never)
    assert bool((switch != 0).all())  # step 0 lies outside the window: AG never saw it
    never = torch.where(switch < 0, STEPS, switch)
    expected = b  # step 0: outside the window, conditional rows only
    for s in range(1, STEPS):
        expected += b + int((never >= s).sum())  # re-packed: the not-yet-switched samples' uncond rows
    assert counter.samples == expected == handle.last_stats["model_samples"]
    assert expected < b * (2 * STEPS - 1)
    # γ recorded on the window's CFG steps only: steps 1 .. the last switch
    assert len(inner.gammas) == min(int(never.max()), STEPS - 1)


def test_learned_window_from_an_annealing_head():
    # w_θ(τ) = 1 + τ exactly: one hidden unit reading the raw τ feature
    head = AnnealingHead(hidden_dim=1, depth=0, w_bias=1.0)
    with torch.no_grad():
        for p in head.parameters():
            p.zero_()
        head.mlp[0].weight[0, 0] = 1.0
        head.mlp[2].weight[0, 0] = 1.0
    window = head.window(fraction=0.5, inner=AdaptiveGuidance())
    # w − 1 = τ ≥ 0.5 · 1 ⇔ τ ∈ [0.5, 1] ⇔ progress ∈ [0, 0.5]
    assert window.over == "time" and window.start == 0.0 and window.end == pytest.approx(0.5)
    assert isinstance(window.inner, AdaptiveGuidance)
    with torch.no_grad():
        head.mlp[2].weight.zero_()  # w ≡ 1: no guidance anywhere
    with pytest.raises(ValueError, match="no guidance"):
        head.window()
    with pytest.raises(ValueError, match="fraction"):
        AnnealingHead().window(fraction=0.0)
    with pytest.raises(ValueError, match="lam"):
        AnnealingHead().window(lam=2.0)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"start": 0.7, "end": 0.2}, ValueError, "start <= end"),
        ({"start": -0.1, "end": 0.5}, ValueError, "start <= end"),
        ({"start": 0.0, "end": 1.5}, ValueError, "<= 1"),
        ({"start": 2.0, "end": 1.0, "over": "sigma"}, ValueError, "start < end"),
        ({"start": 0.0, "end": 1.0, "over": "steps"}, ValueError, "over must be one of"),
        ({"start": "0", "end": 1.0}, TypeError, "start must be a real number"),
        ({"start": 0.0, "end": float("nan")}, TypeError, "end must be a real number"),
        ({"start": 0.0, "end": 1.0, "inner": "ag"}, TypeError, "inner must be"),
    ],
)
def test_bad_arguments_are_refused(kwargs, error, match):
    with pytest.raises(error, match=match):
        GuidanceWindow(**kwargs)


def test_a_batch_straddling_the_edge_is_refused():
    x = torch.zeros(2, 3, 4, 4)
    ctx = GuidanceContext(
        x=x, alpha=1.0, sigma=0.5, parameterization="epsilon", guidance_scale=4.0,
        noise_fraction=torch.tensor([0.9, 0.1]),
    )  # fmt: skip
    with pytest.raises(ValueError, match="different noise levels"):
        GuidanceWindow(0.0, 0.5).plan(ctx)


def test_window_is_in_the_methods_table_and_forwards_the_inner_settings():
    assert METHODS["window"] is GuidanceWindow
    window = METHODS["window"]()
    assert isinstance(window.inner, CFG) and window.guidance_scale is None
    ag = AdaptiveGuidance(guidance_scale=6.0)
    window = GuidanceWindow(0.1, 0.9, inner=ag)
    assert window.guidance_scale == 6.0 and window.space == ag.space and not window.needs_next_sigma
    assert "GuidanceWindow" in repr(window) and window.describe_window() == "progress in [0.1, 0.9]"


def test_disable_restores_the_pipeline_exactly():
    name = "dit"
    pipe = _pipe(name)
    denoiser = pipe.transformer
    forward_in_dict = "forward" in denoiser.__dict__
    ref = _run(pipe, name)
    method = GuidanceWindow(0.0, 0.5, inner=AdaptiveGuidance())
    settings = (method.start, method.end, method.over, method.inner.threshold)
    handle = guide(pipe, method)
    windowed = _run(pipe, name)
    assert not torch.equal(windowed, ref)
    handle.disable()
    assert torch.equal(_run(pipe, name), ref)
    assert ("forward" in denoiser.__dict__) == forward_in_dict
    assert (method.start, method.end, method.over, method.inner.threshold) == settings


@pytest.mark.slow
def test_window_with_regionally_compiled_blocks_has_no_graph_break():
    """The window's decision and the CFG slicing run in eager code around the compiled blocks: fullgraph
    compilation of each block sees no graph break, the images equal the eager ones, and a second call
    compiles nothing (one graph per batch size: the CFG batch inside the window, the conditional one
    outside)."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    pipe = tiny_pipeline("dit")

    def run(seed: int = 0):
        with guide(pipe, GuidanceWindow(0.0, 0.5, inner=AdaptiveGuidance())):
            return pipe(**call_kwargs("dit", num_inference_steps=4, seed=seed)).images

    eager = run()
    for block in pipe.transformer.transformer_blocks:
        block.compile(backend="eager", fullgraph=True)  # fullgraph: a graph break would raise
    counters.clear()
    compiled = run()
    assert dict(counters["graph_break"]) == {} and counters["stats"]["unique_graphs"] > 0
    torch.testing.assert_close(torch.as_tensor(compiled), torch.as_tensor(eager), rtol=1e-5, atol=1e-5)
    counters.clear()
    run(seed=1)
    assert dict(counters["graph_break"]) == {} and counters["stats"]["unique_graphs"] == 0
    torch._dynamo.reset()
