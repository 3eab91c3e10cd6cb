"""Paired fidelity: how close each accelerated sample is to the model's own converged sample.

An acceleration (fewer solver steps, a cache, skipped guidance) should leave the *same* image: for the same
initial noise and label, a candidate batch ``x̂`` is compared sample by sample with a reference batch ``x``
(e.g. DPM-Solver++ 2M at 100 steps, full CFG). Per sample i, with images of value range [lo, hi] and
dynamic range L = hi − lo. Every metric first maps both batches to [0, 1] by (x − lo)/L, so its value does
not depend on the representation (SSIM's luminance term is not shift-invariant: computing it on [-1, 1]
pixels with C's scaled by L = 2 gives a different number than on [0, 1]); the ``value_range`` argument is
required for that reason.

* **PSNR** = 10 log₁₀(L² / MSEᵢ), MSEᵢ the mean of (x̂ − x)² over channels and pixels (∞ for an exact copy);
* **SSIM** (Wang, Bovik, Sheikh & Simoncelli, IEEE TIP 2004): with a Gaussian window (σ = 1.5, 11×11,
  weights summing to 1), local means μ, variances σ² and covariance σ_x̂x (population moments under the
  window), C₁ = (0.01 L)², C₂ = (0.03 L)²,

      SSIM(p) = (2 μ_x̂ μ_x + C₁)(2 σ_x̂x + C₂) / ((μ_x̂² + μ_x² + C₁)(σ_x̂² + σ_x² + C₂)),

  averaged over the window positions fully inside the image and over the RGB channels. This is
  ``skimage.metrics.structural_similarity(..., gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
  channel_axis=0, data_range=1)`` on the images mapped to [0, 1];
* **feature distance** in the in-domain feature space of the shipped feature net (LPIPS's form, Zhang et al.,
  CVPR 2018, eq. 1, with uniform layer weights): for each of the net's five convolution stages l,
  unit-normalise the activations over channels at each position, then

      dᵢ = Σ_l mean_{h,w} ‖ φ̂_l(x̂ᵢ)_{hw} − φ̂_l(xᵢ)_{hw} ‖²,

  0 for identical images, ≤ 4 per stage.

Summaries are medians with percentile-bootstrap intervals (:mod:`fastsample.eval.bootstrap`);
:func:`compare_fidelity` gives the interval of the difference of medians between two candidates against the
same reference, resampling the samples jointly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from fastsample.eval.bootstrap import Interval, bootstrap_interval, paired_difference_interval

__all__ = [
    "FidelityReport",
    "compare_fidelity",
    "feature_distance",
    "paired_fidelity",
    "psnr",
    "ssim",
]

METRICS = ("psnr", "ssim", "feature_distance")
# PSNR of an exact copy is +inf; paired differences cap it here (dB), far above any lossy sample.
PSNR_CAP_DB = 100.0


def _check_pair(candidate: Any, reference: Any) -> tuple[torch.Tensor, torch.Tensor]:
    for name, value in (("candidate", candidate), ("reference", reference)):
        if not isinstance(value, torch.Tensor) or value.dim() != 4:
            got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise ValueError(f"`{name}` must be a float tensor [N, C, H, W], got {got}.")
        if not value.dtype.is_floating_point:
            raise TypeError(f"`{name}` must be a float tensor, got dtype {value.dtype}.")
    if candidate.shape != reference.shape:
        raise ValueError(
            f"`candidate` {tuple(candidate.shape)} and `reference` {tuple(reference.shape)} must have "
            "the same shape (sample i of each from the same noise and label)."
        )
    return candidate.detach().to("cpu", torch.float64), reference.detach().to("cpu", torch.float64)


def _unit_pair(
    candidate: Any, reference: Any, value_range: tuple[float, float]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Both batches (float64 copies) mapped from ``value_range`` to [0, 1]: (x − lo) / L."""
    x, y = _check_pair(candidate, reference)
    low, peak = float(value_range[0]), _dynamic_range(value_range)
    return (x - low) / peak, (y - low) / peak


def _dynamic_range(value_range: tuple[float, float]) -> float:
    try:
        low, high = (float(v) for v in value_range)
    except (TypeError, ValueError):
        raise ValueError(
            f"`value_range` must be (low, high), e.g. (0, 1) or (-1, 1), got {value_range!r}."
        ) from None
    if not (math.isfinite(low) and math.isfinite(high) and high > low):
        raise ValueError(f"`value_range` must be finite with high > low, got {value_range!r}.")
    return high - low


def psnr(
    candidate: torch.Tensor, reference: torch.Tensor, *, value_range: tuple[float, float]
) -> torch.Tensor:
    """Per-sample PSNR ``[N]`` (dB, float64) = 10 log₁₀(L² / MSE), L = ``value_range[1] − value_range[0]``
    (L = 1 for pipeline outputs in [0, 1], 2 for images in [-1, 1]); +inf for identical samples."""
    x, y = _unit_pair(candidate, reference, value_range)
    mse = (x - y).square().flatten(1).mean(dim=1)
    return -10.0 * torch.log10(mse)  # L = 1 after mapping to [0, 1]; mse = 0 gives +inf


def _gaussian_window(sigma: float = 1.5, truncate: float = 3.5) -> torch.Tensor:
    """1-D Gaussian weights of radius int(truncate·σ + 0.5) (11 taps at σ = 1.5), normalised to sum 1."""
    radius = int(truncate * sigma + 0.5)
    grid = torch.arange(-radius, radius + 1, dtype=torch.float64)
    window = torch.exp(-0.5 * (grid / sigma) ** 2)
    return window / window.sum()


def ssim(
    candidate: torch.Tensor, reference: torch.Tensor, *, value_range: tuple[float, float]
) -> torch.Tensor:
    """Per-sample SSIM ``[N]`` (float64) with the Gaussian window of Wang et al. 2004 (module docstring),
    averaged over valid window positions and channels; images need H, W ≥ 11."""
    x, y = _unit_pair(candidate, reference, value_range)
    window = _gaussian_window()
    size = window.numel()
    if x.shape[-1] < size or x.shape[-2] < size:
        raise ValueError(f"SSIM needs images of at least {size}×{size} pixels, got {tuple(x.shape[-2:])}.")
    channels = x.shape[1]
    kernel_h = window.view(1, 1, 1, size).expand(channels, 1, 1, size)
    kernel_v = window.view(1, 1, size, 1).expand(channels, 1, size, 1)

    def blur(t: torch.Tensor) -> torch.Tensor:  # separable, 'valid' positions only
        return F.conv2d(F.conv2d(t, kernel_h, groups=channels), kernel_v, groups=channels)

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = 0.01**2, 0.03**2  # (K L)² with L = 1 after mapping to [0, 1]
    index = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return index.flatten(1).mean(dim=1)


def _stage_activations(net: Any, x: torch.Tensor) -> list[torch.Tensor]:
    """Outputs of each activation (one per convolution stage) of a FeatureNet's trunk."""
    outputs = []
    for layer in net.trunk:
        x = layer(x)
        if isinstance(layer, torch.nn.SiLU):
            outputs.append(x)
    return outputs


@torch.no_grad()
def feature_distance(
    candidate: torch.Tensor,
    reference: torch.Tensor,
    *,
    value_range: tuple[float, float],
    feature_net: Any = None,
    batch_size: int = 256,
) -> torch.Tensor:
    """Per-sample in-domain perceptual distance ``[N]`` (float64; module docstring) with the shipped feature
    net (:func:`fastsample.zoo.default.load_feature_net`) or ``feature_net`` (a FeatureNet)."""
    x, y = _unit_pair(candidate, reference, value_range)
    if feature_net is None:
        from fastsample.zoo.default import load_feature_net

        feature_net = load_feature_net()
    if not isinstance(getattr(feature_net, "trunk", None), torch.nn.Sequential):
        raise TypeError(
            f"`feature_net` must be a fastsample FeatureNet (with a `trunk` of conv stages), got "
            f"{type(feature_net).__name__}."
        )
    parameter = next(feature_net.parameters())
    distances = []
    for chunk_x, chunk_y in zip(x.split(batch_size), y.split(batch_size)):
        pair = torch.cat([chunk_x, chunk_y])
        pair = (pair * 2.0 - 1.0).to(parameter.device, parameter.dtype)  # the net's [-1, 1]
        total = torch.zeros(chunk_x.shape[0], dtype=torch.float64)
        for stage in _stage_activations(feature_net, pair):
            unit = F.normalize(stage.double(), dim=1, eps=1e-10)
            a, b = unit.split(chunk_x.shape[0])
            total += (a - b).square().sum(dim=1).flatten(1).mean(dim=1).cpu()
        distances.append(total)
    return torch.cat(distances)


@dataclass(frozen=True)
class FidelityReport:
    """Per-sample values (``psnr``, ``ssim``, ``feature_distance``: float64 arrays ``[N]``) and their medians
    with bootstrap intervals (``summary[metric]``)."""

    values: dict[str, np.ndarray]
    summary: dict[str, Interval]

    def __getitem__(self, metric: str) -> Interval:
        return self.summary[metric]


def paired_fidelity(
    candidate: torch.Tensor,
    reference: torch.Tensor,
    *,
    value_range: tuple[float, float],
    feature_net: Any = None,
    metrics: tuple[str, ...] = METRICS,
    n_boot: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
    strata: Any | None = None,
) -> FidelityReport:
    """PSNR, SSIM and feature distance of ``candidate`` to ``reference`` (``[N, 3, H, W]``, sample i of both
    from the same noise and label, values in ``value_range``), each summarised by its median and a
    percentile-bootstrap interval (``n_boot`` resamples, ``numpy.random.default_rng(seed)``; ``strata``,
    e.g. the class labels, resamples within each class, see :func:`~fastsample.eval.bootstrap_interval`)."""
    unknown = [m for m in metrics if m not in METRICS]
    if unknown or not metrics:
        raise ValueError(f"`metrics` must be a non-empty subset of {METRICS}, got {metrics!r}.")
    functions = {"psnr": psnr, "ssim": ssim}
    values: dict[str, np.ndarray] = {}
    for metric in metrics:
        if metric == "feature_distance":
            result = feature_distance(candidate, reference, value_range=value_range, feature_net=feature_net)
        else:
            result = functions[metric](candidate, reference, value_range=value_range)
        values[metric] = result.numpy()
    summary = {
        metric: bootstrap_interval(
            array, np.median, n_boot=n_boot, confidence=confidence, seed=seed, strata=strata
        )
        for metric, array in values.items()
    }
    return FidelityReport(values, summary)


def compare_fidelity(
    first: FidelityReport,
    second: FidelityReport,
    metric: str = "psnr",
    n_boot: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
    strata: Any | None = None,
) -> Interval:
    """Interval of median(first) − median(second) of ``metric`` for two candidates measured against the same
    reference on the same samples (joint resampling; PSNR capped at :data:`PSNR_CAP_DB` so that exact copies
    stay comparable). The candidates differ at ``confidence`` when the interval excludes 0."""
    if metric not in first.values or metric not in second.values:
        raise ValueError(f"`metric` {metric!r} is not in both reports (they have {sorted(first.values)}).")
    a, b = first.values[metric], second.values[metric]
    if metric == "psnr":
        a, b = np.minimum(a, PSNR_CAP_DB), np.minimum(b, PSNR_CAP_DB)
    return paired_difference_interval(
        a, b, np.median, n_boot=n_boot, confidence=confidence, seed=seed, strata=strata
    )
