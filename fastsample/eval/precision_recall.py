"""Improved precision and recall with k-NN manifolds (Kynkäänniemi et al., NeurIPS 2019).

Each feature vector φ of a set gets a ball of radius r_k(φ) = distance to its k-th nearest neighbour in its
own set (k = 3 by default, the paper's and ADM's choice). The manifold of a set is the union of its balls.

    precision = fraction of generated features inside the real manifold:  ∃ r: ‖g − r‖ ≤ r_k(r)
    recall    = fraction of real features inside the generated manifold:  ∃ g: ‖r − g‖ ≤ r_k(g)

Distances are Euclidean, computed in float64 in row blocks to bound memory.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["PrecisionRecall", "knn_radii", "precision_recall"]


@dataclass(frozen=True)
class PrecisionRecall:
    precision: float
    recall: float
    k: int


def _as_features(name: str, features) -> torch.Tensor:
    if isinstance(features, np.ndarray):
        features = torch.from_numpy(features)
    if not isinstance(features, torch.Tensor) or features.ndim != 2:
        raise ValueError(f"`{name}` must be a [N, D] tensor or array.")
    return features.detach().cpu().double()


def knn_radii(features: torch.Tensor, k: int = 3, block_size: int = 1024) -> torch.Tensor:
    """Distance of every row to its k-th nearest *other* row of the same set, shape ``[N]``."""
    num = features.shape[0]
    if num <= k:
        raise ValueError(f"k-NN radii with k={k} need more than {k} samples, got {num}.")
    radii = torch.empty(num, dtype=torch.float64)
    for start in range(0, num, block_size):
        distances = torch.cdist(features[start : start + block_size], features)
        # Column 0 of the sorted row is the point itself (distance 0); the k-th neighbour is column k.
        radii[start : start + block_size] = distances.kthvalue(k + 1, dim=1).values
    return radii


def _fraction_inside(
    queries: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor, block_size: int
) -> float:
    inside = 0
    for start in range(0, queries.shape[0], block_size):
        distances = torch.cdist(queries[start : start + block_size], centres)
        inside += int((distances <= radii[None, :]).any(dim=1).sum())
    return inside / queries.shape[0]


def precision_recall(real_features, fake_features, k: int = 3, block_size: int = 1024) -> PrecisionRecall:
    """Improved precision and recall of ``fake_features`` against ``real_features`` (both ``[N, D]``)."""
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"`k` must be a positive int, got {k!r}.")
    real = _as_features("real_features", real_features)
    fake = _as_features("fake_features", fake_features)
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"Feature dimensions differ: real {real.shape[1]} vs fake {fake.shape[1]}.")
    real_radii = knn_radii(real, k, block_size)
    fake_radii = knn_radii(fake, k, block_size)
    precision = _fraction_inside(fake, real, real_radii, block_size)
    recall = _fraction_inside(real, fake, fake_radii, block_size)
    return PrecisionRecall(precision=precision, recall=recall, k=k)
