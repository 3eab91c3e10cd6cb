"""Adaptive Guidance with batch re-packing on the tiny fixture pipelines.

Once some samples of a batch have switched to their conditional prediction, the hook runs the model on all
conditional rows plus the unconditional rows of the samples that have not switched yet. Checked against an
independent reference, each sample generated alone (batch 1, where re-packing never happens) with the same
noise and threshold: same switch step, same output; and against counted model rows."""

import numpy as np
import pytest
import torch

from fastsample.guidance import AdaptiveGuidance, GuidanceMethod, guide
from fastsample.guidance.methods import cfg_combine
from fastsample.testing import call_kwargs, tiny_pipeline

_PIPES: dict[str, object] = {}
_ENTRY = {"sd": "conv_in", "sdxl": "conv_in", "dit": "pos_embed", "pixart": "pos_embed", "sd3": "pos_embed"}
STEPS = 5
SEEDS = (11, 12, 13, 14)
PROMPTS = ("a cat", "a dog")
NEGATIVE = ("blurry", "ugly")


def _pipe(name):
    if name not in _PIPES:
        _PIPES[name] = tiny_pipeline(name)
    return _PIPES[name]


def _batch_kwargs(name, seeds):
    """A call for ``len(seeds)`` samples whose initial noise comes from one generator per sample (fresh
    generators on every call).

    Text pipelines: two prompts with ``num_images_per_prompt = len(seeds) // 2``; DiT: one label per sample.
    """
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    if name == "dit":
        return call_kwargs(
            name, num_inference_steps=STEPS, class_labels=[1, 2, 2, 3][: len(seeds)], generator=gens
        )
    per = len(seeds) // 2
    return call_kwargs(
        name,
        num_inference_steps=STEPS,
        prompt=list(PROMPTS),
        negative_prompt=list(NEGATIVE),
        num_images_per_prompt=per,
        generator=gens,
    )


def _alone_kwargs(name, i):
    """Sample ``i`` of :func:`_batch_kwargs` generated on its own."""
    gens = [torch.Generator().manual_seed(SEEDS[i])]
    if name == "dit":
        return call_kwargs(name, num_inference_steps=STEPS, class_labels=[[1, 2, 2, 3][i]], generator=gens)
    return call_kwargs(
        name,
        num_inference_steps=STEPS,
        prompt=[PROMPTS[i // 2]],
        negative_prompt=[NEGATIVE[i // 2]],
        num_images_per_prompt=1,
        generator=gens,
    )


def _run(pipe, kw):
    out = pipe(**{**kw, "output_type": "latent"}).images
    return out.clone() if isinstance(out, torch.Tensor) else torch.from_numpy(np.array(out))


class _RowCounter:
    """Rows entering the denoiser's first layer, per model call (measured inside the model)."""

    def __init__(self, pipe, name):
        denoiser = pipe.unet if name in ("sd", "sdxl") else pipe.transformer
        self.rows = []
        self.handle = getattr(denoiser, _ENTRY[name]).register_forward_pre_hook(
            lambda m, args: self.rows.append(args[0].shape[0])
        )

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def _staggered_threshold(gammas: torch.Tensor, margin: float = 1e-5) -> float | None:
    """A γ̄ at least ``margin`` away from every recorded γ (steps × B) at which the samples switch at
    different steps, some before the last step and some later (or never)."""
    values = torch.sort(gammas.flatten()).values
    candidates = [
        (a + b) / 2 for a, b in zip(values[:-1].tolist(), values[1:].tolist()) if b - a > 2 * margin
    ]
    best = None
    for t in candidates:
        passed = (gammas >= t).cummax(dim=0).values
        first = torch.where(passed.any(0), passed.int().argmax(0), torch.tensor(gammas.shape[0]))
        distinct = len(set(first.tolist()))
        if distinct >= 2 and int(first.min()) < gammas.shape[0] - 1 and (best is None or distinct > best[0]):
            best = (distinct, t)
    return None if best is None else best[1]


class _ScriptedSwitch(GuidanceMethod):
    """CFG for sample i before step ``switch[i]``, its conditional prediction from then on (−1: never);
    asks the hook for the unconditional rows of the samples still guided, and records what it receives."""

    def __init__(self, switch):
        super().__init__()
        self.switch = torch.tensor(switch)
        self.received = []

    def reset(self):
        self.received = []

    def _guided(self, step):
        return (self.switch < 0) | (step < self.switch)

    def plan(self, ctx):
        return "full" if bool(self._guided(ctx.step).any()) else "cond"

    def uncond_mask(self, ctx):
        return self._guided(ctx.step)

    def __call__(self, cond, uncond, ctx):
        self.received.append((cond.clone(), None if uncond is None else uncond.clone()))
        if uncond is None:
            return cond
        mask = self._guided(ctx.step).reshape(-1, *([1] * (cond.ndim - 1)))
        return torch.where(mask, cfg_combine(cond, uncond, ctx.guidance_scale), cond)


PIPES = ["dit", "sd", "pixart", "sdxl", "sd3"]


@pytest.mark.parametrize("name", PIPES)
def test_repacking_with_scripted_switch_steps_equals_each_sample_alone(name):
    """Switch steps 0, 2, 3 and never: several re-packed steps where a still-guided sample needs its real
    unconditional row (a wrong row selection, order or scatter changes its output)."""
    pipe = _pipe(name)
    switch = [0, 2, 3, -1]
    b = len(switch)
    method = _ScriptedSwitch(switch)
    with _RowCounter(pipe, name) as counter, guide(pipe, method) as handle:
        out = _run(pipe, _batch_kwargs(name, SEEDS))
    steps = handle.last_stats["forward_calls"]
    expected = [b + int(method._guided(s).sum()) for s in range(steps)]
    assert counter.rows == expected and expected[0] < 2 * b
    for s, (cond, uncond) in enumerate(method.received):  # switched samples receive u = c
        off = ~method._guided(s)
        if uncond is not None and bool(off.any()):
            assert torch.equal(uncond[off], cond[off])
    for i in range(b):
        alone = _ScriptedSwitch([switch[i]])
        with guide(pipe, alone):
            ref = _run(pipe, _alone_kwargs(name, i))
        torch.testing.assert_close(out[i : i + 1], ref, rtol=1e-4, atol=2e-6 * float(ref.abs().max()))


@pytest.mark.parametrize("name", PIPES)
def test_repacked_adaptive_guidance_equals_each_sample_alone_and_counts_rows(name):
    pipe = _pipe(name)
    b = len(SEEDS)
    probe = AdaptiveGuidance(threshold=1.0)  # full CFG; records γ per sample and step
    with guide(pipe, probe):
        _run(pipe, _batch_kwargs(name, SEEDS))
    threshold = _staggered_threshold(torch.stack(probe.gammas))
    assert threshold is not None, "fixture gives no threshold with staggered switch steps"

    method = AdaptiveGuidance(threshold=threshold)
    with _RowCounter(pipe, name) as counter, guide(pipe, method) as handle:
        out = _run(pipe, _batch_kwargs(name, SEEDS))
    switch = method.switch_steps.clone()  # step each sample switched at (−1: never)
    assert len(set(switch.tolist())) >= 2  # the batch really is mixed, so re-packing happened

    # (b) rows per step: all B conditional rows + one unconditional row per sample that has not switched
    # before this step; a step after every sample switched has B rows
    steps = handle.last_stats["forward_calls"]
    never = torch.where(switch < 0, steps, switch)
    expected = [b + int((never >= s).sum()) for s in range(steps)]
    assert counter.rows == expected
    assert handle.last_stats["model_samples"] == sum(expected)
    assert sum(expected) < 2 * b * steps

    # (a) the same as every sample generated alone (its own switch step, no re-packing possible at batch 1)
    for i in range(b):
        alone = AdaptiveGuidance(threshold=threshold)
        with guide(pipe, alone):
            ref = _run(pipe, _alone_kwargs(name, i))
        assert int(alone.switch_steps[0]) == int(switch[i])
        # tolerance: float32 rounding of a different batch size, relative to the output's scale (the random
        # fixtures produce latents up to several hundred)
        torch.testing.assert_close(out[i : i + 1], ref, rtol=1e-4, atol=2e-6 * float(ref.abs().max()))

    # and the same as the batch without re-packing (2B rows until the last sample switches)
    plain = AdaptiveGuidance(threshold=threshold, repack=False)
    with _RowCounter(pipe, name) as counter, guide(pipe, plain):
        unpacked = _run(pipe, _batch_kwargs(name, SEEDS))
    torch.testing.assert_close(out, unpacked, rtol=1e-4, atol=2e-6 * float(unpacked.abs().max()))
    assert torch.equal(plain.switch_steps, switch)
    assert sum(counter.rows) > sum(expected)

    # (c) state resets between calls: a second identical call re-packs from the start again
    with _RowCounter(pipe, name) as counter, guide(pipe, method):
        again = _run(pipe, _batch_kwargs(name, SEEDS))
        _run(pipe, {**_alone_kwargs(name, 0)})  # a call with another batch size in between
        third = _run(pipe, _batch_kwargs(name, SEEDS))
    assert counter.rows[:steps] == expected and counter.rows[-steps:] == expected
    assert torch.equal(again, out) and torch.equal(third, out)
    assert torch.equal(method.switch_steps, switch)


def test_a_mask_of_the_wrong_length_is_refused():
    class _BadMask(GuidanceMethod):
        def uncond_mask(self, ctx):
            return torch.ones(ctx.batch_size + 1, dtype=torch.bool)

    pipe = _pipe("dit")
    with guide(pipe, _BadMask()), pytest.raises(ValueError, match="uncond_mask"):
        _run(pipe, _batch_kwargs("dit", SEEDS[:2]))
