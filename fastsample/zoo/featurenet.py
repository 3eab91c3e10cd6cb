"""A small CNN classifier of the procedural zoo images, and its penultimate features for Fréchet distance.

In-domain Fréchet distance (Heusel et al., "GANs trained by a two time-scale update rule converge to a local
Nash equilibrium", 2017) replaces Inception-v3 by a network trained on the data being generated: here the
ten classes of :mod:`fastsample.zoo.data`. :class:`FeatureNet` maps images ``[N, 3, 32, 32]`` in [-1, 1] to
class logits (for class accuracy of generated samples) and, through :meth:`FeatureNet.features`, to the
``feature_dim``-dimensional penultimate activations (global-average-pooled, non-negative like Inception's
pool3) whose Gaussian statistics give the Fréchet distance.

In the zoo data the hue alone identifies the class. A classifier trained on the images as they are would
look at colour only, and its features would not tell a square from a blob of the right colour. Training
therefore shows half of the images in greyscale (same label), which forces shape and texture features too;
the network still classifies colour images from either cue.

``fastsample train-featurenet`` (:mod:`fastsample.cli.train_featurenet`) retrains the shipped weights from
scratch: fresh procedural samples every step, one CPU thread, a few minutes.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from fastsample.integration.measure import Stopwatch
from fastsample.zoo.data import NUM_CLASSES, generate_batch

logger = logging.getLogger(__name__)

__all__ = [
    "FeatureNet",
    "evaluate_accuracy",
    "load_feature_net_file",
    "save_feature_net",
    "train_feature_net",
]

_METADATA_KEY = "fastsample_featurenet_config"
# ITU-R BT.601 luma weights, used for the greyscale augmentation.
_LUMA = (0.299, 0.587, 0.114)


class FeatureNet(nn.Module):
    """Five 3×3 convolutions (SiLU, GroupNorm) → global average pool (features) → linear head (logits).

    Spatial size 32 → 32 → 16 → 16 → 8 → 4 with stride-2 convolutions; ``features(x)`` is the pooled output of
    the last convolution (``feature_dim`` channels) and ``forward(x) = head(features(x))``.

    Args:
        channels: output channels of the first four convolutions.
        feature_dim: channels of the last convolution = dimension of :meth:`features`.
        num_classes: number of logits.
    """

    def __init__(
        self,
        channels: tuple[int, int, int, int] = (16, 32, 32, 64),
        feature_dim: int = 128,
        num_classes: int = NUM_CLASSES,
    ) -> None:
        super().__init__()
        channels = tuple(int(c) for c in channels)
        if len(channels) != 4 or min(channels) < 1:
            raise ValueError(f"channels: expected 4 positive ints, got {channels}")
        if feature_dim < 1 or num_classes < 2:
            raise ValueError(f"feature_dim must be ≥ 1 and num_classes ≥ 2, got {feature_dim}, {num_classes}")
        self.config = {
            "channels": list(channels),
            "feature_dim": int(feature_dim),
            "num_classes": int(num_classes),
        }
        self.feature_dim = int(feature_dim)
        self.num_classes = int(num_classes)
        widths = (3, *channels, feature_dim)
        strides = (1, 2, 1, 2, 2)
        layers: list[nn.Module] = []
        for c_in, c_out, stride in zip(widths[:-1], widths[1:], strides):
            layers += [nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1), nn.GroupNorm(8, c_out), nn.SiLU()]
        self.trunk = nn.Sequential(*layers)
        self.head = nn.Linear(feature_dim, num_classes)

    @staticmethod
    def _check_input(x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != 3:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"x: expected images of shape [N, 3, H, W] with values in [-1, 1], got {got}")
        if not x.dtype.is_floating_point:
            raise TypeError(f"x: expected a float tensor in [-1, 1], got dtype {x.dtype}")

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features ``[N, feature_dim]`` of images ``x`` ``[N, 3, 32, 32]`` in [-1, 1]."""
        self._check_input(x)
        x = x.to(self.head.weight.dtype)
        return self.trunk(x).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits ``[N, num_classes]`` = ``head(features(x))``."""
        return self.head(self.features(x))


def to_greyscale(images: torch.Tensor) -> torch.Tensor:
    """Luma (BT.601) of images in [-1, 1], repeated on the three channels."""
    weights = images.new_tensor(_LUMA).view(1, 3, 1, 1)
    return (images * weights).sum(dim=1, keepdim=True).expand_as(images)


def _training_batch(
    batch_size: int, generator: torch.Generator, grey_fraction: float
) -> tuple[torch.Tensor, ...]:
    images, labels = generate_batch(batch_size, generator=generator)
    grey = torch.rand(batch_size, generator=generator) < grey_fraction
    images = torch.where(grey[:, None, None, None], to_greyscale(images), images)
    return images, labels


def train_feature_net(
    steps: int = 1500,
    batch_size: int = 128,
    lr: float = 2e-3,
    grey_fraction: float = 0.5,
    seed: int = 0,
    progress: bool = True,
    net: FeatureNet | None = None,
    transform: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
) -> tuple[FeatureNet, dict[str, float]]:
    """Train a :class:`FeatureNet` on fresh procedural samples (a new batch every step).

    AdamW with a short linear warm-up and a cosine learning-rate decay, cross-entropy on labels; a
    ``grey_fraction`` of every batch is shown in greyscale. Returns the network in eval mode and a summary
    (final loss, seconds, steps).

    ``net`` (default: a fresh ``FeatureNet()``) is trained in place; ``transform(images, generator)``, when
    given, maps every batch (after the greyscale step) to what the network sees, drawing any randomness from
    ``generator`` (the colour-blind shape classifier of :mod:`fastsample.eval.shape` is trained this way).
    """
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be ≥ 1, got {steps}, {batch_size}")
    if not 0.0 <= grey_fraction <= 1.0:
        raise ValueError(f"grey_fraction must lie in [0, 1], got {grey_fraction}")
    torch.manual_seed(seed)
    if net is None:
        net = FeatureNet()
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    warmup = max(1, steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda i: min(1.0, (i + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(i, steps) / steps)),
    )
    net.train()
    watch = Stopwatch().start()
    running = None
    bar = tqdm(range(steps), desc="train feature net", disable=not progress)
    for step in bar:
        images, labels = _training_batch(batch_size, generator, grey_fraction)
        if transform is not None:
            images = transform(images, generator)
        loss = F.cross_entropy(net(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        running = loss.item() if running is None else 0.95 * running + 0.05 * loss.item()
        if step % 50 == 0:
            bar.set_postfix(loss=f"{running:.4f}")
    net.eval()
    summary = {
        "steps": steps,
        "batch_size": batch_size,
        "final_loss": running,
        "seconds": watch.elapsed(),
    }
    return net, summary


@torch.no_grad()
def evaluate_accuracy(
    net: FeatureNet,
    n: int = 2000,
    seed: int = 12345,
    greyscale: bool = False,
    batch_size: int = 500,
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> float:
    """Accuracy of ``net`` on ``n`` fresh procedural samples drawn with ``seed`` (optionally in greyscale;
    ``transform`` maps each batch of images in [-1, 1] to the network's input)."""
    generator = torch.Generator().manual_seed(seed)
    correct = 0
    for start in range(0, n, batch_size):
        images, labels = generate_batch(min(batch_size, n - start), generator=generator)
        if greyscale:
            images = to_greyscale(images)
        if transform is not None:
            images = transform(images)
        correct += (net(images).argmax(dim=1) == labels).sum().item()
    return correct / n


def save_feature_net(net: FeatureNet, path: str | Path, metadata: dict | None = None) -> None:
    """Write the weights as safetensors; the architecture config travels in the file's metadata."""
    from safetensors.torch import save_file

    header = {_METADATA_KEY: json.dumps(net.config)}
    if metadata:
        header["training"] = json.dumps(metadata)
    tensors = {k: v.detach().contiguous().cpu() for k, v in net.state_dict().items()}
    save_file(tensors, str(path), metadata=header)


def load_feature_net_file(path: str | Path, device: str | torch.device | None = None) -> FeatureNet:
    """Build a :class:`FeatureNet` from a file written by :func:`save_feature_net`; returned in eval mode."""
    from fastsample.errors import ArtifactError, read_safetensors, read_safetensors_metadata, reading

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"feature net weights not found: {path} (run `fastsample train-featurenet`)")
    expected = f"a fastsample feature net file (safetensors with {_METADATA_KEY!r} metadata)"
    metadata = read_safetensors_metadata(path, expected)
    if _METADATA_KEY not in metadata:
        raise ArtifactError(path, expected, f"metadata keys {sorted(metadata)}")
    with reading(path, expected):
        config = json.loads(metadata[_METADATA_KEY])
        net = FeatureNet(tuple(config["channels"]), config["feature_dim"], config["num_classes"])
    state = read_safetensors(path, expected)
    with reading(path, expected):
        net.load_state_dict(state, strict=True)
    return net.to(device).eval() if device is not None else net.eval()
