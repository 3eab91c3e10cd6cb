"""Float64 streaming mean / covariance of features, exact merging, and pytorch-fid ``.npz`` files.

The accumulator keeps ``n``, the running mean μ and the centred scatter M2 = Σᵢ (fᵢ − μ)(fᵢ − μ)ᵀ in float64.
Two partial results (nₐ, μₐ, M2ₐ) and (n_b, μ_b, M2_b) merge exactly (Chan, Golub & LeVeque 1979):

    n = nₐ + n_b,   δ = μ_b − μₐ,   μ = μₐ + δ·n_b/n,   M2 = M2ₐ + M2_b + δδᵀ·nₐn_b/n,

so the result does not depend on the batch split, the order of batches or the number of processes, and
Σ = M2/(n − 1) equals ``np.cov(features, rowvar=False)`` (ddof = 1, as pytorch-fid) up to round-off.
Each chunk of rows is centred on its own mean before its scatter is formed, which avoids the cancellation of
the Σffᵀ − nμμᵀ formula.

Statistics files use pytorch-fid's layout: ``np.savez_compressed(path, mu=..., sigma=...)``; fastsample adds
``num_samples`` and string metadata keys, which pytorch-fid, clean-fid and EDM ignore.
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from fastsample.eval.frechet import frechet_distance

__all__ = ["FeatureStatistics", "Statistics", "fid_from_statistics", "load_statistics", "save_statistics"]

logger = logging.getLogger(__name__)

_METADATA_PREFIX = "meta_"


@dataclass(frozen=True)
class Statistics:
    """Gaussian summary of a feature set: mean ``mu`` (D,), covariance ``sigma`` (D, D), both float64."""

    mu: np.ndarray
    sigma: np.ndarray
    num_samples: int | None = None
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def feature_dim(self) -> int:
        return int(self.mu.shape[0])


class FeatureStatistics:
    """Streaming float64 mean and covariance of ``[N, D]`` feature batches, mergeable across processes.

    ``update(features)`` accepts a torch tensor or NumPy array; torch inputs are accumulated on their own
    device (features are cast to float64 there, the EDM pattern), so no per-batch host copy is needed.
    Rows are copied into a float64 buffer of ``chunk_rows`` rows (default max(1024, 2·D): 64 MiB at
    D = 2048, where pytorch-fid keeps all N×D activations); each full chunk is folded in with one
    centred scatter product and a Chan merge, so the cost is that of ``np.cov`` on all rows at once, not a
    D×D update per small batch. The buffer is folded in before any result is read. State tensors are made
    outside inference mode, so an accumulator fed inside ``torch.inference_mode()`` can be used anywhere.
    """

    def __init__(
        self, feature_dim: int, device: torch.device | str | None = None, chunk_rows: int | None = None
    ) -> None:
        if not isinstance(feature_dim, int) or feature_dim < 1:
            raise ValueError(f"`feature_dim` must be a positive int, got {feature_dim!r}.")
        if chunk_rows is None:
            chunk_rows = max(1024, 2 * feature_dim)
        if not isinstance(chunk_rows, int) or chunk_rows < 1:
            raise ValueError(f"`chunk_rows` must be a positive int, got {chunk_rows!r}.")
        self.feature_dim = feature_dim
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.chunk_rows = chunk_rows
        self._count = 0
        self._mean: torch.Tensor | None = None
        self._m2: torch.Tensor | None = None
        self._buffer: torch.Tensor | None = None
        self._buffered = 0

    @property
    def num_samples(self) -> int:
        return self._count + self._buffered

    # -- accumulation ---------------------------------------------------------------------------------------
    def _absorb(self, count: int, mean: torch.Tensor, m2: torch.Tensor, owned: bool) -> None:
        """Chan et al. pairwise merge of (count, mean, m2) into the folded state (call outside inference)."""
        if count == 0:
            return
        if self._count == 0:
            self._count = count
            self._mean, self._m2 = (mean, m2) if owned else (mean.clone(), m2.clone())
            return
        total = self._count + count
        delta = mean - self._mean
        self._m2.add_(m2).addr_(delta, delta, alpha=self._count * count / total)
        self._mean.add_(delta, alpha=count / total)
        self._count = total

    def _flush(self) -> None:
        if self._buffered == 0:
            return
        with torch.inference_mode(False):
            chunk = self._buffer[: self._buffered]
            mean = chunk.mean(dim=0)
            chunk.sub_(mean)
            if chunk.device.type == "cpu":
                # NumPy computes A.T @ A with a symmetric rank-k update (BLAS syrk): half the work of
                # torch's general matrix product, and what np.cov itself relies on.
                array = chunk.numpy()
                scatter = torch.from_numpy(array.T @ array)
            else:
                scatter = chunk.T @ chunk
            count, self._buffered = self._buffered, 0
            self._absorb(count, mean, scatter, owned=True)

    @torch.no_grad()
    def update(self, features: torch.Tensor | np.ndarray) -> FeatureStatistics:
        """Add a batch of features of shape ``[B, D]``; returns ``self``."""
        if isinstance(features, np.ndarray):
            features = torch.from_numpy(features)
        if not isinstance(features, torch.Tensor):
            raise TypeError(
                f"`features` must be a torch.Tensor or numpy array, got {type(features).__name__}."
            )
        if features.ndim != 2 or features.shape[1] != self.feature_dim:
            raise ValueError(
                f"`features` must have shape [batch, {self.feature_dim}], got {tuple(features.shape)}."
            )
        # A float64 sum of finite float32/float64-range values cannot overflow, so it is finite exactly
        # when every entry is (one reduction pass, no boolean temporary).
        if not torch.isfinite(features.sum(dtype=torch.float64)):
            raise ValueError("`features` contains NaN or infinite values.")
        features = features.detach().to(self.device)
        with torch.inference_mode(False):
            if self._buffer is None:
                self._buffer = torch.empty(
                    self.chunk_rows, self.feature_dim, dtype=torch.float64, device=self.device
                )
            offset = 0
            while offset < features.shape[0]:
                take = min(features.shape[0] - offset, self.chunk_rows - self._buffered)
                self._buffer[self._buffered : self._buffered + take].copy_(features[offset : offset + take])
                self._buffered += take
                offset += take
                if self._buffered == self.chunk_rows:
                    self._flush()
        return self

    def merge(self, other: FeatureStatistics) -> FeatureStatistics:
        """Merge another accumulator into this one exactly (Chan et al.); returns ``self``."""
        if not isinstance(other, FeatureStatistics):
            raise TypeError(f"`other` must be a FeatureStatistics, got {type(other).__name__}.")
        if other.feature_dim != self.feature_dim:
            raise ValueError(
                f"Cannot merge feature_dim {other.feature_dim} into feature_dim {self.feature_dim}."
            )
        self._flush()
        other._flush()
        if other._count:
            with torch.inference_mode(False):
                self._absorb(
                    other._count, other._mean.to(self.device), other._m2.to(self.device), owned=False
                )
        return self

    def all_reduce(self, accelerator: Any | None = None) -> FeatureStatistics:
        """Merge the accumulators of all processes; every process ends with the same global result.

        Each process's (n, μ, M2) is gathered with ``accelerator.gather`` and merged in rank order, so the
        result equals a single-process run over the union of the shards (up to round-off). With no
        accelerator, or a single process, this is a no-op.
        """
        self._flush()
        if accelerator is None or getattr(accelerator, "num_processes", 1) == 1:
            return self
        device = accelerator.device
        dim = self.feature_dim
        with torch.inference_mode(False):
            mean, m2 = self._folded()
            packed = torch.cat(
                [
                    torch.tensor([float(self._count)], dtype=torch.float64, device=device),
                    mean.to(device),
                    m2.to(device).reshape(-1),
                ]
            )
            gathered = accelerator.gather(packed[None]).reshape(accelerator.num_processes, -1).to(self.device)
            self._count, self._mean, self._m2 = 0, None, None
            for row in gathered:
                count = int(round(row[0].item()))
                self._absorb(
                    count, row[1 : dim + 1].clone(), row[dim + 1 :].reshape(dim, dim).clone(), owned=True
                )
        return self

    def _folded(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, M2) of everything folded in; zeros before any data."""
        if self._count == 0:
            zeros = torch.zeros(self.feature_dim, dtype=torch.float64, device=self.device)
            return zeros, torch.zeros(
                self.feature_dim, self.feature_dim, dtype=torch.float64, device=self.device
            )
        return self._mean, self._m2

    # -- results --------------------------------------------------------------------------------------------
    @property
    def mean(self) -> np.ndarray:
        self._flush()
        return self._folded()[0].cpu().numpy().copy()

    @property
    def covariance(self) -> np.ndarray:
        """Unbiased covariance M2/(n − 1) (ddof = 1, like ``np.cov``)."""
        self._flush()
        if self._count < 2:
            raise ValueError(f"A covariance needs at least 2 samples, got {self._count}.")
        return (self._m2 / (self._count - 1)).cpu().numpy()

    def result(self, metadata: dict[str, str] | None = None, strict: bool = False) -> Statistics:
        """The :class:`Statistics` of everything seen so far.

        With fewer samples than feature dimensions the covariance is rank-deficient (pytorch-fid #13, TTUR #4)
        and the distance is biased: this warns, or raises ``ValueError`` when ``strict=True``.
        """
        check_sample_count(self.num_samples, self.feature_dim, strict=strict)
        return Statistics(self.mean, self.covariance, self.num_samples, dict(metadata or {}))


def check_sample_count(num_samples: int, feature_dim: int, strict: bool = False) -> None:
    """Refuse < 2 samples; warn (or raise with ``strict``) when there are fewer samples than dimensions."""
    if num_samples < 2:
        raise ValueError(f"Statistics need at least 2 samples, got {num_samples}.")
    if num_samples < feature_dim:
        message = (
            f"Only {num_samples} samples for {feature_dim}-dimensional features: the covariance is "
            "rank-deficient and the Fréchet distance is biased upwards (use at least as many samples as "
            "dimensions; FID is usually reported on 10k-50k samples)."
        )
        if strict:
            raise ValueError(message)
        warnings.warn(message, UserWarning, stacklevel=3)


# -- .npz files ---------------------------------------------------------------------------------------------
def save_statistics(path: str | os.PathLike, stats: Statistics) -> None:
    """Write ``stats`` as pytorch-fid's ``.npz`` (keys ``mu``, ``sigma``) plus fastsample metadata keys."""
    if not isinstance(stats, Statistics):
        raise TypeError(f"`stats` must be a Statistics, got {type(stats).__name__}.")
    extra: dict[str, np.ndarray] = {
        f"{_METADATA_PREFIX}{key}": np.array(str(value)) for key, value in stats.metadata.items()
    }
    if stats.num_samples is not None:
        extra["num_samples"] = np.array(stats.num_samples, dtype=np.int64)
    np.savez_compressed(
        path,
        mu=np.asarray(stats.mu, dtype=np.float64),
        sigma=np.asarray(stats.sigma, dtype=np.float64),
        **extra,
    )


def load_statistics(path: str | os.PathLike) -> Statistics:
    """Read a statistics ``.npz`` with keys ``mu`` and ``sigma`` (pytorch-fid, clean-fid, EDM, ADM, ours).

    Never unpickles: object arrays are refused.
    """
    from fastsample.errors import ArtifactError, read_npz, reading

    if not os.path.isfile(path):
        raise FileNotFoundError(f"Statistics file not found: {os.fspath(path)!r}.")
    expected = (
        "a statistics .npz with 'mu' (D,) and 'sigma' (D, D) (pytorch-fid's --save-stats format, or "
        "fastsample's)"
    )
    data = read_npz(path, ("mu", "sigma"), expected)
    with reading(path, expected):
        mu = np.asarray(data["mu"], dtype=np.float64)
        sigma = np.asarray(data["sigma"], dtype=np.float64)
        num_samples = int(data["num_samples"]) if "num_samples" in data else None
        metadata = {
            key[len(_METADATA_PREFIX) :]: str(data[key]) for key in data if key.startswith(_METADATA_PREFIX)
        }
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise ArtifactError(path, expected, f"'mu' of shape {mu.shape} and 'sigma' of shape {sigma.shape}")
    return Statistics(mu, sigma, num_samples, metadata)


def fid_from_statistics(a: Statistics, b: Statistics, strict_metadata: bool = True) -> float:
    """Fréchet distance between two :class:`Statistics`, refusing mismatched extractors or preprocessing.

    Statistics are only comparable when the same feature extractor and preprocessing produced both; when
    both sides record them and they differ this raises ``ValueError`` (``strict_metadata=False`` only warns).
    """
    if a.feature_dim != b.feature_dim:
        raise ValueError(f"Feature dimensions differ: {a.feature_dim} vs {b.feature_dim}.")
    for key in ("extractor", "preprocessing"):
        left, right = a.metadata.get(key), b.metadata.get(key)
        if left is not None and right is not None and left != right:
            message = f"The two statistics were computed with different {key}: {left!r} vs {right!r}."
            if strict_metadata:
                raise ValueError(message + " Recompute one side, or pass strict_metadata=False.")
            logger.warning(message)
    return frechet_distance(a.mu, a.sigma, b.mu, b.sigma)
