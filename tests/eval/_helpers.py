"""Small deterministic extractors and a stand-in pipeline shared by the eval tests."""

import numpy as np
import torch
import torch.nn.functional as F

from fastsample.eval import ModuleExtractor


def pooled_features(x: torch.Tensor) -> torch.Tensor:
    """Analytic features: 2×2 average-pooled pixels (12) and per-channel standard deviations (3)."""
    pooled = F.adaptive_avg_pool2d(x, 2).flatten(1)
    return torch.cat([pooled, x.flatten(2).std(dim=2)], dim=1)


def tiny_extractor() -> ModuleExtractor:
    return ModuleExtractor(pooled_features, feature_dim=15, name="pooled-15")


def random_images(num: int, size: int = 16, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    base = torch.rand(num, 3, 1, 1, generator=generator)
    noise = torch.rand(num, 3, size, size, generator=generator)
    return ((0.6 * base + 0.4 * noise) * 255).round().to(torch.uint8)


class StandInPipeline:
    """Mimics a class-conditional diffusers pipeline: one image per label from its own generator."""

    def __init__(self, size: int = 8):
        self.size = size
        self.calls = 0

    def __call__(self, class_labels=None, prompt=None, generator=None, output_type="pil", **kwargs):
        self.calls += 1
        conditions = class_labels if class_labels is not None else prompt
        assert isinstance(generator, list) and len(generator) == len(conditions) and output_type == "np"
        images = []
        for condition, gen in zip(conditions, generator):
            offset = (hash(condition) % 7) / 10 if isinstance(condition, str) else condition / 10
            images.append(torch.rand(self.size, self.size, 3, generator=gen).numpy() * 0.3 + offset)
        return type("Output", (), {"images": np.clip(np.stack(images), 0, 1)})()
