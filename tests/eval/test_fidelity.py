"""Paired fidelity (fastsample.eval.fidelity): PSNR and SSIM against closed forms and scikit-image, the
in-domain feature distance, and bootstrap summaries / paired comparisons."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fastsample.eval.fidelity import (
    PSNR_CAP_DB,
    compare_fidelity,
    feature_distance,
    paired_fidelity,
    psnr,
    ssim,
)
from fastsample.zoo.data import generate_batch
from fastsample.zoo.featurenet import FeatureNet


def noisy_pair(n: int = 6, std: float = 0.1, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    reference = torch.rand(n, 3, 32, 32, generator=generator, dtype=torch.float64)
    noise = std * torch.randn(n, 3, 32, 32, generator=generator, dtype=torch.float64)
    return (reference + noise).clamp(0, 1), reference


def test_psnr_closed_form_and_value_range():
    reference = torch.full((2, 3, 16, 16), 0.25)
    candidate = reference + torch.tensor([0.1, 0.2]).view(2, 1, 1, 1)  # MSE = c²
    expected = torch.tensor([-20 * math.log10(0.1), -20 * math.log10(0.2)], dtype=torch.float64)
    torch.testing.assert_close(psnr(candidate, reference, value_range=(0, 1)), expected)
    # the same images stored in [-1, 1]: same PSNR when the range is said
    signed = psnr(candidate * 2 - 1, reference * 2 - 1, value_range=(-1, 1))
    torch.testing.assert_close(signed, expected)
    assert torch.isinf(psnr(reference, reference.clone(), value_range=(0, 1))).all()


def test_psnr_and_ssim_match_scikit_image():
    metrics = pytest.importorskip("skimage.metrics")
    candidate, reference = noisy_pair()
    ours_psnr = psnr(candidate, reference, value_range=(0, 1))
    ours_ssim = ssim(candidate, reference, value_range=(0, 1))
    signed_ssim = ssim(candidate * 2 - 1, reference * 2 - 1, value_range=(-1, 1))
    for i in range(candidate.shape[0]):
        x, y = candidate[i].numpy(), reference[i].numpy()
        expected = metrics.structural_similarity(
            x,
            y,
            channel_axis=0,
            data_range=1.0,
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
        )
        assert ours_ssim[i].item() == pytest.approx(expected, abs=1e-10)
        assert signed_ssim[i].item() == pytest.approx(expected, abs=1e-10)
        assert ours_psnr[i].item() == pytest.approx(
            metrics.peak_signal_noise_ratio(y, x, data_range=1.0), abs=1e-10
        )


def test_ssim_closed_form_constant_images():
    # Constant images a and b: σ = 0, so SSIM = (2ab + C₁)/(a² + b² + C₁) · C₂/C₂ at every position.
    a, b = 0.3, 0.6
    c1 = 0.01**2
    candidate = torch.full((1, 3, 16, 16), a, dtype=torch.float64)
    reference = torch.full((1, 3, 16, 16), b, dtype=torch.float64)
    expected = (2 * a * b + c1) / (a * a + b * b + c1)
    assert ssim(candidate, reference, value_range=(0, 1)).item() == pytest.approx(expected, rel=1e-10)
    assert ssim(reference, reference.clone(), value_range=(0, 1)).item() == pytest.approx(1.0)


def test_metrics_refuse_bad_input_and_do_not_mutate():
    candidate, reference = noisy_pair(n=2)
    before = candidate.clone()
    with pytest.raises(ValueError, match="same shape"):
        psnr(candidate, reference[:1], value_range=(0, 1))
    with pytest.raises(ValueError, match="value_range"):
        ssim(candidate, reference, value_range=(1, 0))
    with pytest.raises(TypeError, match="value_range"):
        psnr(candidate, reference)  # the range must be said
    with pytest.raises(ValueError, match="at least 11"):
        ssim(candidate[..., :8, :8], reference[..., :8, :8], value_range=(0, 1))
    with pytest.raises(TypeError, match="float"):
        psnr((candidate * 255).to(torch.uint8), reference, value_range=(0, 1))
    ssim(candidate, reference, value_range=(0, 1))
    assert torch.equal(candidate, before)


def test_feature_distance_properties():
    net = FeatureNet().eval()
    torch.manual_seed(0)
    images, _ = generate_batch(8, seed=3)
    unit = (images + 1) / 2
    shifted = torch.roll(unit, shifts=3, dims=-1)
    same = feature_distance(unit, unit.clone(), value_range=(0, 1), feature_net=net)
    assert torch.equal(same, torch.zeros(8, dtype=torch.float64))
    forward = feature_distance(shifted, unit, value_range=(0, 1), feature_net=net)
    backward = feature_distance(unit, shifted, value_range=(0, 1), feature_net=net)
    torch.testing.assert_close(forward, backward)
    assert (forward > 0).all() and (forward <= 4 * 5).all()  # ≤ 4 per stage, 5 stages
    signed = feature_distance(shifted * 2 - 1, images, value_range=(-1, 1), feature_net=net)
    torch.testing.assert_close(signed, forward, atol=1e-5, rtol=1e-5)
    with pytest.raises(TypeError, match="FeatureNet"):
        feature_distance(unit, unit, value_range=(0, 1), feature_net=torch.nn.Linear(2, 2))
    closer = feature_distance((unit + 0.02).clamp(0, 1), unit, value_range=(0, 1), feature_net=net)
    assert closer.median() < forward.median()


def test_paired_fidelity_summaries_and_comparison():
    net = FeatureNet().eval()
    slight, reference = noisy_pair(n=40, std=0.02, seed=1)
    strong, _ = noisy_pair(n=40, std=0.08, seed=1)
    first = paired_fidelity(slight, reference, value_range=(0, 1), feature_net=net, n_boot=300)
    second = paired_fidelity(strong, reference, value_range=(0, 1), feature_net=net, n_boot=300)
    for report in (first, second):
        for metric, interval in report.summary.items():
            assert interval.estimate == pytest.approx(float(np.median(report.values[metric])))
            assert interval.low <= interval.estimate <= interval.high
            assert interval.num_samples == 40 and interval.n_boot == 300
    assert first["psnr"].low > second["psnr"].high  # std 0.02 vs 0.08: ~12 dB apart
    again = paired_fidelity(slight, reference, value_range=(0, 1), feature_net=net, n_boot=300)
    assert again.summary == first.summary  # seeded

    difference = compare_fidelity(first, second, "psnr", n_boot=300)
    expected = np.median(first.values["psnr"]) - np.median(second.values["psnr"])
    assert difference.estimate == pytest.approx(expected)
    assert difference.low > 0 and not difference.contains(0.0)
    assert compare_fidelity(first, second, "feature_distance", n_boot=300).high < 0
    itself = compare_fidelity(first, first, "ssim", n_boot=300)
    assert itself.estimate == itself.low == itself.high == 0.0

    exact = paired_fidelity(reference, reference, value_range=(0, 1), metrics=("psnr",), n_boot=50)
    assert math.isinf(exact["psnr"].estimate)  # an exact copy: +inf, never NaN
    capped = compare_fidelity(exact, first, "psnr", n_boot=50)
    assert capped.estimate == pytest.approx(PSNR_CAP_DB - np.median(first.values["psnr"]))
    with pytest.raises(ValueError, match="metrics"):
        paired_fidelity(slight, reference, value_range=(0, 1), metrics=("lpips",))
    with pytest.raises(ValueError, match="not in both"):
        compare_fidelity(exact, first, "ssim")
