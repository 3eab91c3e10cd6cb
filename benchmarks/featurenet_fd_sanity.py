"""Sanity check of the shipped feature net as a Fréchet-distance extractor and classifier.

Prints held-out accuracy (colour and greyscale) on fresh procedural samples, and the in-domain Fréchet
distance between real samples and (a) an independent real set, (b) corrupted copies that mimic failure
modes of a small DiT: blur ("blobs"), 4×4 patch averaging (patch artefacts), noise, greyscale.

    nice -n 10 python benchmarks/featurenet_fd_sanity.py --samples 2000
"""

from __future__ import annotations

import argparse
import platform

import numpy as np
import torch
import torch.nn.functional as F

from fastsample.eval.frechet import frechet_distance
from fastsample.zoo.data import generate_batch
from fastsample.zoo.default import load_feature_net
from fastsample.zoo.featurenet import evaluate_accuracy, to_greyscale


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = int(3 * sigma + 0.5)
    grid = torch.arange(-radius, radius + 1, dtype=x.dtype)
    kernel = torch.exp(-(grid**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    x = F.conv2d(
        F.pad(x, (radius, radius, 0, 0), mode="reflect"),
        kernel.view(1, 1, 1, -1).repeat(3, 1, 1, 1),
        groups=3,
    )
    return F.conv2d(
        F.pad(x, (0, 0, radius, radius), mode="reflect"),
        kernel.view(1, 1, -1, 1).repeat(3, 1, 1, 1),
        groups=3,
    )


def patch_average(x: torch.Tensor, patch: int = 4) -> torch.Tensor:
    return F.interpolate(F.avg_pool2d(x, patch), scale_factor=patch, mode="nearest")


@torch.no_grad()
def statistics(net, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    features = torch.cat([net.features(chunk) for chunk in images.split(500)]).double().numpy()
    return features.mean(axis=0), np.cov(features, rowvar=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    net = load_feature_net()
    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}")
    for seed in (2024, 987_654):
        colour = evaluate_accuracy(net, n=args.samples, seed=seed)
        grey = evaluate_accuracy(net, n=args.samples, seed=seed, greyscale=True)
        print(f"held-out accuracy, seed {seed}, n={args.samples}: colour {colour:.4f}, greyscale {grey:.4f}")

    real, _ = generate_batch(args.samples, seed=101)
    other, _ = generate_batch(args.samples, seed=202)
    reference = statistics(net, real)
    cases = {
        "independent real set": other,
        "Gaussian blur σ=1": gaussian_blur(other, 1.0),
        "Gaussian blur σ=2 (blobs)": gaussian_blur(other, 2.0),
        "4×4 patch average": patch_average(other),
        "noise σ=0.1": (
            other + 0.1 * torch.randn(other.shape, generator=torch.Generator().manual_seed(0))
        ).clamp(-1, 1),
        "greyscale": to_greyscale(other),
    }
    print(f"\nin-domain Fréchet distance to {args.samples} real samples (feature_dim {net.feature_dim}):")
    print("| compared set | FD |\n|---|---|")
    for name, images in cases.items():
        print(f"| {name} | {frechet_distance(*reference, *statistics(net, images)):.4f} |")


if __name__ == "__main__":
    main()
