"""Calibration of the dynamic cache (issue 18, item 3): fit, artifact, loading, refusals."""

import json

import numpy as np
import pytest
import torch

import fastsample as fs
from fastsample.cache import enable_cache, load_calibration
from fastsample.cache.calibration import FORMAT, _Recorder, model_weights_hash, simulate_skips
from fastsample.errors import ArtifactError
from fastsample.testing import call_kwargs, tiny_pipeline

STEPS = 6


def _call(**extra):
    kwargs = call_kwargs("dit", num_inference_steps=STEPS, output_type="latent")
    kwargs.pop("generator")
    return {**kwargs, **extra}


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    pipe = tiny_pipeline("dit")
    path = tmp_path_factory.mktemp("calibration") / "dit.json"
    calibration = fs.calibrate_cache(pipe, path, max_change=0.1, calls=2, **_call())
    return pipe, path, calibration


def test_artifact_holds_the_fit_the_model_hash_and_the_provenance(calibrated):
    pipe, path, calibration = calibrated
    data = json.loads(path.read_text())
    assert data["format"] == FORMAT
    assert data["model_class"] == "DiTTransformer2DModel"
    assert data["model_hash"] == model_weights_hash(pipe.transformer)
    assert len(data["coefficients"]) == 3 and data["max_change"] == 0.1
    fit = data["provenance"]["fit"]
    # pairs: every (j, k) with 0 < k − j ≤ 3 over STEPS forwards, per call
    per_call = sum(min(k, 3) for k in range(1, STEPS))
    assert fit["pairs"] == 2 * per_call and fit["dtype"] == "float32"
    for key in ("created", "fastsample", "torch", "diffusers", "pipeline", "scheduler", "call", "seed"):
        assert key in data["provenance"]
    assert load_calibration(path) == calibration


def test_fit_is_the_least_squares_polynomial_of_the_recorded_pairs():
    """Reference: numpy.polyfit on the (indicator, output change) pairs recorded independently."""
    pipe = tiny_pipeline("dit")
    recorder = _Recorder(pipe.transformer)
    with torch.no_grad():
        pipe(**_call(generator=torch.Generator().manual_seed(0)))
    recorder.close()
    d, e = recorder.pairs(3)
    calibration = fs.calibrate_cache(pipe, None, calls=1, degree=1, **_call())
    np.testing.assert_allclose(calibration.coefficients, np.polyfit(d, e, 1), rtol=1e-10)
    # the recorded statistics are relative L1 changes, so p maps 0 change of the indicator near 0
    assert all(x >= 0 for x in d + e)


def test_enable_cache_loads_the_calibration_and_skips_by_the_predicted_change(calibrated):
    pipe, path, calibration = calibrated
    handle = enable_cache(pipe, "dynamic", calibration=path)
    assert handle.policy.rescale == calibration.coefficients
    assert handle.policy.threshold == calibration.max_change
    assert handle.policy.max_consecutive == calibration.max_consecutive == 3
    assert "calibrated" in handle.policy.describe()
    pipe(**_call(generator=torch.Generator().manual_seed(5)))
    stats = handle.stats()
    handle.disable()
    assert stats.computed["default"].shape[0] == STEPS
    # the policy's decision is p(d) < max_change on the indicator d
    policy = handle.policy
    d = np.linspace(0.0, 1.0, 11)
    expected = np.polyval(calibration.coefficients, d) < calibration.max_change
    assert [policy.skip_tail(5, x, 0) for x in d] == expected.tolist()
    with enable_cache(pipe, "dynamic", calibration=path, threshold=0.0) as override:  # knobs override
        assert override.policy.threshold == 0.0 and override.policy.rescale == calibration.coefficients
    assert "_diffusers_hook" not in pipe.transformer.__dict__


def test_a_calibration_of_another_model_is_refused_naming_the_file(calibrated, tmp_path):
    _, path, _ = calibrated
    other = tiny_pipeline("dit", seed=1)
    with pytest.raises(ArtifactError, match=str(path.name)) as info:
        enable_cache(other, "dynamic", calibration=path)
    assert "weights hash" in str(info.value)
    assert "_diffusers_hook" not in other.transformer.__dict__


def test_corrupt_foreign_and_missing_files_are_refused(calibrated, tmp_path):
    pipe, path, _ = calibrated
    data = json.loads(path.read_text())
    cases = {
        "truncated.json": path.read_text()[:40],
        "foreign.json": json.dumps({"format": "something-else"}),
        "bad_coefficients.json": json.dumps({**data, "coefficients": ["a"]}),
        "bad_change.json": json.dumps({**data, "max_change": -1}),
        "bad_cap.json": json.dumps({**data, "max_consecutive": 0}),
        "extra_field.json": json.dumps({**data, "thresholds": [1]}),
        "missing_field.json": json.dumps({k: v for k, v in data.items() if k != "model_hash"}),
    }
    for name, text in cases.items():
        bad = tmp_path / name
        bad.write_text(text)
        with pytest.raises(ArtifactError, match=name):
            enable_cache(pipe, "dynamic", calibration=bad)
    with pytest.raises(FileNotFoundError):
        enable_cache(pipe, "dynamic", calibration=tmp_path / "absent.json")
    with pytest.raises(ValueError, match="method='dynamic'"):
        enable_cache(pipe, "fora", calibration=path)


def test_bad_arguments_and_separate_cfg_pipelines_are_refused():
    pipe = tiny_pipeline("dit")
    with pytest.raises(ValueError, match="max_change"):
        fs.calibrate_cache(pipe, max_change=0, **_call())
    with pytest.raises(ValueError, match="degree"):
        fs.calibrate_cache(pipe, degree=7, **_call())
    with pytest.raises(ValueError, match="too few"):
        fs.calibrate_cache(pipe, calls=1, degree=2, **{**_call(), "num_inference_steps": 2})
    flux = tiny_pipeline("flux")
    with pytest.raises(ValueError, match="separate"):
        fs.calibrate_cache(flux, **call_kwargs("flux"))


def test_simulated_skips_follow_the_policy_rule():
    """Reference: the rule walked by hand. p(d) = d, max_change 0.5, warm-up 1, pairs up to span 2."""
    d = {(0, 1): 0.1, (0, 2): 0.6, (1, 2): 0.2, (2, 3): 0.3, (2, 4): 0.4, (3, 4): 0.1, (4, 5): 0.9}
    changes = {pair: (value, 0.0) for pair, value in d.items()}
    # k=1: (0,1) 0.1 skip; k=2: (0,2) 0.6 compute; k=3: (2,3) skip; k=4: (2,4) 0.4 skip; k=5: (2,5) absent
    assert simulate_skips(changes, 6, [1.0, 0.0], 0.5, 1) == 3 / 6
    assert simulate_skips(changes, 6, [1.0, 0.0], 0.5, 2) == 2 / 6  # step 1 is in the warm-up
    assert simulate_skips(changes, 6, [1.0, 0.0], 0.05, 1) == 0.0


def test_target_skip_picks_the_smallest_threshold_that_reaches_it():
    pipe = tiny_pipeline("dit")
    steps = 10
    call = _call(num_inference_steps=steps)
    calibration = fs.calibrate_cache(pipe, None, target_skip=0.3, calls=1, **call)
    assert calibration.provenance["simulated_skip"] >= 0.3
    assert calibration.max_consecutive == 3  # the fitted span
    recorder = _Recorder(pipe.transformer)
    with torch.no_grad():
        pipe(**_call(num_inference_steps=steps, generator=torch.Generator().manual_seed(0)))
    recorder.close()
    changes = recorder.changes(3)
    at = simulate_skips(changes, steps, calibration.coefficients, calibration.max_change, 1)
    below = simulate_skips(
        changes, steps, calibration.coefficients, float(np.nextafter(calibration.max_change, 0)), 1
    )
    assert at >= 0.3 > below
    with pytest.raises(ValueError, match="not both"):
        fs.calibrate_cache(pipe, None, max_change=0.1, target_skip=0.3, **call)
    with pytest.raises(ValueError, match="target_skip"):
        fs.calibrate_cache(pipe, None, target_skip=1.5, **call)


def test_weights_hash_ignores_the_submodule_order_but_not_the_weights():
    """A tool that swaps ``transformer_blocks`` out and back (cache-dit's disable) re-registers it last: the
    same weights in another state_dict order keep their hash; one changed weight does not."""
    model = tiny_pipeline("dit").transformer
    before = model_weights_hash(model)
    blocks = model.transformer_blocks
    del model.transformer_blocks
    model.transformer_blocks = blocks  # now registered last
    assert list(model.state_dict())[-1].startswith("transformer_blocks.")
    assert model_weights_hash(model) == before
    with torch.no_grad():
        next(model.parameters()).view(-1)[0] += 1.0
    assert model_weights_hash(model) != before
