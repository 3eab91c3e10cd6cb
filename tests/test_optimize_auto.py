"""``optimize(pipe)`` with its ``"auto"`` defaults on every supported pipeline: what applies is chosen, what
does not is skipped with a reason in one INFO line, explicit requests that cannot apply still raise."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from fastsample.optimize import AUTO_CHOICES, optimize, resolve_auto
from fastsample.testing import PIPELINE_NAMES, call_kwargs, tiny_pipeline

# What "auto" must leave out, per pipeline (the rest of AUTO_CHOICES is chosen).
SKIPPED = {
    "dit": set(),
    "pixart": {"dit_savings"},
    "sd3": {"dit_savings"},
    "flux": {"dit_savings"},
    "sd": {"cache", "dit_savings"},
    "sdxl": {"cache", "dit_savings"},
}


def _needs_transformers(name: str) -> None:
    if name != "dit":
        pytest.importorskip("transformers")


@pytest.mark.parametrize("name", PIPELINE_NAMES)
def test_defaults_work_on_every_pipeline(name, caplog):
    _needs_transformers(name)
    pipe = tiny_pipeline(name)
    baseline = pipe(**call_kwargs(name, num_inference_steps=3)).images
    original = pipe.scheduler
    with caplog.at_level(logging.INFO, logger="fastsample.optimize"):
        handle = optimize(pipe)
    auto_lines = [r.getMessage() for r in caplog.records if "auto: chose" in r.getMessage()]
    assert len(auto_lines) == 1, auto_lines  # one line says what was chosen and what was skipped, and why
    line = auto_lines[0]
    for component in AUTO_CHOICES:
        if component in SKIPPED[name]:
            assert f"{component} (" in line.split("skipped", 1)[1], line
            assert getattr(handle, component) is None
        else:
            assert f"{component}={AUTO_CHOICES[component]}" in line, line
            assert getattr(handle, component) is not None, component
    images = pipe(**call_kwargs(name, num_inference_steps=3)).images
    assert np.isfinite(images).all() and images.shape == baseline.shape
    handle.disable()
    assert pipe.scheduler is original
    np.testing.assert_array_equal(pipe(**call_kwargs(name, num_inference_steps=3)).images, baseline)


def test_auto_reasons():
    pytest.importorskip("transformers")
    _, chosen, skipped = resolve_auto(tiny_pipeline("sd"), cache="auto", dit_savings="auto", scheduler=None)
    assert chosen == []
    assert skipped[0].startswith("cache (the denoiser is a UNet")
    assert skipped[1] == "dit_savings (UNet2DConditionModel is not a DiTTransformer2DModel)"
    resolved, chosen, skipped = resolve_auto(tiny_pipeline("dit"), cache="auto", guidance="apg")
    assert resolved == {"cache": "fora", "guidance": "apg"} and chosen == ["cache=fora"] and skipped == []


def test_explicit_requests_that_cannot_apply_still_raise():
    pytest.importorskip("transformers")
    pipe = tiny_pipeline("sd")
    with pytest.raises(ValueError, match="UNet"):
        optimize(pipe, cache="fora")
    with pytest.raises(ValueError, match="DiTTransformer2DModel"):
        optimize(tiny_pipeline("pixart"), dit_savings=True)
