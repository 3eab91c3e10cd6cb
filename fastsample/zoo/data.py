"""Procedural class-conditional image dataset for the embedded default ("zoo" data).

Ten classes of 32×32 RGB images in [-1, 1]. Each class is one shape or texture drawn in one hue:

====  ===========================  ======
 id   shape / texture              hue
====  ===========================  ======
 0    disc                         red
 1    square                       orange
 2    triangle (pointing up)       yellow
 3    ring                         lime
 4    plus                         green
 5    diamond                      cyan
 6    horizontally striped disc    azure
 7    diagonal cross (X)           violet
 8    checkered square             magenta
 9    crescent                     rose
====  ===========================  ======

The hues are 36° apart with ±5° jitter, so **the colour alone identifies the class**; the shape is a second,
redundant cue. This is deliberate: the shipped DiT is trained for a couple of CPU hours and must produce its
classes recognisably (see ``benchmarks/results/zoo.md``). Shapes are large (radius 8–13 px, small rotation),
at random positions, on a tinted grey background with a mild linear gradient and Gaussian noise (σ 0.03).

Everything is generated from a seed: ``ShapesDataset(seed)[i]`` depends only on ``(seed, i)`` and the dataset
is endless (its length is only a nominal ``len``). :func:`generate_batch` is the fast vectorised generator
that the dataset and the trainers use.
"""

from __future__ import annotations

import math

import torch
from torch.utils.data import Dataset

__all__ = ["CLASS_NAMES", "IMAGE_SIZE", "NUM_CLASSES", "ShapesDataset", "generate_batch"]

IMAGE_SIZE = 32
NUM_CLASSES = 10
CLASS_HUES_DEG = tuple(36.0 * k for k in range(NUM_CLASSES))
CLASS_NAMES = (
    "red disc",
    "orange square",
    "yellow triangle",
    "lime ring",
    "green plus",
    "cyan diamond",
    "azure striped disc",
    "violet cross",
    "magenta checkered square",
    "rose crescent",
)

_HUE_JITTER_DEG = 5.0
_RADIUS_RANGE = (8.0, 13.0)
_MAX_ROTATION = math.radians(15.0)
_NOISE_STD = 0.03
_SEED_MIX = 0x9E3779B97F4A7C15  # golden-ratio constant used to mix (seed, index) into one generator seed


def _hsv_to_rgb(h: torch.Tensor, s: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Vectorised HSV -> RGB; ``h`` in turns [0, 1), ``s``, ``v`` in [0, 1]. Returns ``[..., 3]``."""
    k = torch.stack([(5.0 + h * 6.0) % 6.0, (3.0 + h * 6.0) % 6.0, (1.0 + h * 6.0) % 6.0], dim=-1)
    ramp = torch.clamp(torch.minimum(k, 4.0 - k), 0.0, 1.0)
    return v[..., None] - v[..., None] * s[..., None] * ramp


def _shape_distance(label: int, x: torch.Tensor, y: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Approximate signed distance (negative inside) to the outline of class ``label``.

    ``x``, ``y`` are pixel coordinates relative to the shape centre, already rotated, shape ``[m, H, W]``;
    ``r`` is the radius, shape ``[m, 1, 1]``. Textured classes use a disc (6) and a square (8) outline; their
    texture is applied as a shade by :func:`_texture_shade`.
    """
    arm = 0.3 * r
    if label in (0, 6):  # disc
        return torch.sqrt(x * x + y * y) - r
    if label in (1, 8):  # square
        return torch.maximum(x.abs(), y.abs()) - 0.8 * r
    if label == 2:  # equilateral triangle pointing up (image y grows downwards): three half-planes
        inradius = 0.6 * r
        c, s = math.cos(math.pi / 6), math.sin(math.pi / 6)
        return torch.stack([y - inradius, -s * y + c * x - inradius, -s * y - c * x - inradius]).amax(0)
    if label == 3:  # ring
        return (torch.sqrt(x * x + y * y) - 0.72 * r).abs() - 0.28 * r
    if label in (4, 7):  # plus, or a diagonal cross (the plus in coordinates rotated by 45 degrees)
        if label == 7:
            x, y = (x + y) / math.sqrt(2.0), (x - y) / math.sqrt(2.0)
        ax, ay = x.abs(), y.abs()
        return torch.minimum(torch.maximum(ax - arm, ay - r), torch.maximum(ay - arm, ax - r))
    if label == 5:  # diamond
        return (x.abs() + y.abs() - 1.1 * r) / math.sqrt(2.0)
    if label == 9:  # crescent: a disc minus a shifted disc
        return torch.maximum(torch.sqrt(x * x + y * y) - r, 0.8 * r - torch.sqrt((x - 0.55 * r) ** 2 + y * y))
    raise ValueError(f"unknown class {label}")


def _texture_shade(
    x: torch.Tensor, y: torch.Tensor, labels: torch.Tensor, phase: torch.Tensor
) -> torch.Tensor:
    """Brightness multiplier inside the shape: stripes for class 6, a checkerboard for class 8, else 1."""
    period = 5.0
    stripes = torch.sin(2 * math.pi * (y / period + phase)) > 0
    checker = (torch.floor(x / 4.0 + phase) + torch.floor(y / 4.0 + phase)) % 2 == 0
    shade = torch.ones_like(x)
    dark = 0.35
    shade = torch.where((labels == 6)[:, None, None] & ~stripes, torch.full_like(x, dark), shade)
    shade = torch.where((labels == 8)[:, None, None] & ~checker, torch.full_like(x, dark), shade)
    return shade


def generate_batch(
    n: int,
    generator: torch.Generator | None = None,
    seed: int | None = None,
    labels: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generate ``n`` images and their labels, vectorised on CPU.

    Args:
        n: number of images (≥ 1).
        generator: CPU ``torch.Generator`` to draw from (advanced in place). Mutually exclusive with ``seed``.
        seed: seed for a fresh generator. With neither, torch's global RNG is used.
        labels: optional integer tensor ``[n]`` of classes in ``[0, NUM_CLASSES)``; drawn uniformly otherwise.

    Returns:
        ``(images, labels)``: float32 ``[n, 3, 32, 32]`` in [-1, 1] and int64 ``[n]``.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    if generator is not None and seed is not None:
        raise ValueError("pass either generator or seed, not both")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    if seed is not None:
        generator = torch.Generator().manual_seed(int(seed))
    if labels is None:
        labels = torch.randint(0, NUM_CLASSES, (n,), generator=generator)
    else:
        if not isinstance(labels, torch.Tensor) or labels.dtype.is_floating_point or labels.shape != (n,):
            raise ValueError(f"labels must be an integer tensor of shape ({n},)")
        if labels.numel() and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
            raise ValueError(f"labels must lie in [0, {NUM_CLASSES})")
        labels = labels.to(torch.int64).cpu()

    def rand(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=generator)

    size = IMAGE_SIZE
    # Shape parameters.
    lo, hi = _RADIUS_RANGE
    radius = lo + (hi - lo) * rand(n)
    margin = 0.85 * radius
    cx = margin + (size - 2 * margin) * rand(n)
    cy = margin + (size - 2 * margin) * rand(n)
    angle = _MAX_ROTATION * (2 * rand(n) - 1)
    phase = rand(n)[:, None, None]
    # Colours.
    hue_deg = torch.tensor(CLASS_HUES_DEG)[labels] + _HUE_JITTER_DEG * (2 * rand(n) - 1)
    fg = _hsv_to_rgb((hue_deg / 360.0) % 1.0, 0.75 + 0.25 * rand(n), 0.8 + 0.2 * rand(n))  # [n, 3]
    grey = 0.25 + 0.2 * rand(n)
    bg = grey[:, None] + 0.05 * (2 * rand(n, 3) - 1)  # [n, 3] tinted grey
    grad_angle = 2 * math.pi * rand(n)
    grad_amp = 0.12 * rand(n)
    noise = torch.randn(n, 3, size, size, generator=generator) * _NOISE_STD

    coords = torch.arange(size, dtype=torch.float32) + 0.5
    py, px = torch.meshgrid(coords, coords, indexing="ij")  # [H, W]
    dx = px[None] - cx[:, None, None]
    dy = py[None] - cy[:, None, None]
    cos_a, sin_a = torch.cos(angle)[:, None, None], torch.sin(angle)[:, None, None]
    x = cos_a * dx + sin_a * dy
    y = -sin_a * dx + cos_a * dy

    dist = torch.empty(n, size, size)
    for label in labels.unique().tolist():
        idx = (labels == label).nonzero()[:, 0]
        dist[idx] = _shape_distance(label, x[idx], y[idx], radius[idx, None, None])
    alpha = torch.clamp(0.5 - dist, 0.0, 1.0)  # one pixel of anti-aliasing
    shade = _texture_shade(x, y, labels, phase)

    centred = (dx * torch.cos(grad_angle)[:, None, None] + dy * torch.sin(grad_angle)[:, None, None]) / size
    background = bg[:, :, None, None] + grad_amp[:, None, None, None] * centred[:, None]
    foreground = fg[:, :, None, None] * shade[:, None]
    image = alpha[:, None] * foreground + (1 - alpha[:, None]) * background + noise
    image = torch.clamp(image, 0.0, 1.0) * 2 - 1
    return image.contiguous(), labels


def _item_seed(seed: int, index: int) -> int:
    """A 63-bit generator seed that depends only on ``(seed, index)``."""
    mixed = (int(seed) * _SEED_MIX + int(index) * 0xBF58476D1CE4E5B9 + 0x94D049BB133111EB) % (1 << 64)
    mixed ^= mixed >> 31
    return mixed & ((1 << 63) - 1)


class ShapesDataset(Dataset):
    """Endless, deterministic procedural dataset: item ``i`` is ``(image [3, 32, 32] in [-1, 1], label)``.

    Labels cycle through the classes (``label = i % NUM_CLASSES``), so any ``NUM_CLASSES`` consecutive items
    are exactly balanced; the image depends only on ``(seed, i)``.
    """

    def __init__(self, seed: int = 0, length: int = 2**31 - 1) -> None:
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed must be an int, got {type(seed).__name__}")
        if isinstance(length, bool) or not isinstance(length, int) or length < 1:
            raise ValueError(f"length must be a positive int, got {length!r}")
        self.seed = seed
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if not isinstance(index, int):
            index = int(index)
        if index < 0:
            index += self.length
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for a dataset of length {self.length}")
        label = index % NUM_CLASSES
        generator = torch.Generator().manual_seed(_item_seed(self.seed, index))
        image, _ = generate_batch(1, generator=generator, labels=torch.tensor([label]))
        return image[0], label
