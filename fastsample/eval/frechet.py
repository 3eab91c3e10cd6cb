"""Fréchet distance between two Gaussians, computed by symmetric eigendecomposition.

FD(N(μ₁, Σ₁), N(μ₂, Σ₂)) = ‖μ₁ − μ₂‖² + Tr Σ₁ + Tr Σ₂ − 2 Tr (Σ₁ Σ₂)^{½}        (Dowson & Landau 1982;
FID: Heusel et al., NeurIPS 2017).

pytorch-fid, clean-fid, ADM and EDM take ``scipy.linalg.sqrtm`` of the non-symmetric product Σ₁Σ₂; that Schur
based route can return spurious complex parts (pytorch-fid #100, torch-fidelity #54) and its ``disp=``
argument disappears in SciPy 1.18. The eigenvalues of Σ₁Σ₂ equal those of the symmetric PSD matrix
M = Σ₁^{½} Σ₂ Σ₁^{½} (the two are similar), so Tr (Σ₁Σ₂)^{½} = Σᵢ √λᵢ(M), computed here with ``eigh`` /
``eigvalsh`` in float64, with round-off negative eigenvalues clamped to 0.
"""

from __future__ import annotations

import numpy as np

__all__ = ["frechet_distance", "trace_sqrt_product"]

# Eigenvalues below -_PSD_TOLERANCE * (largest |eigenvalue|) mean the matrix is not a covariance.
_PSD_TOLERANCE = 1e-6
# A negative distance above -_NEGATIVE_TOLERANCE * (Tr Σ₁ + Tr Σ₂) is round-off and returned as 0.
_NEGATIVE_TOLERANCE = 1e-8


def _as_float64(name: str, value, ndim: int) -> np.ndarray:
    if hasattr(value, "detach"):  # torch.Tensor without importing torch
        value = value.detach().cpu().double().numpy()
    array = np.asarray(value, dtype=np.float64)
    if array.ndim != ndim:
        raise ValueError(f"`{name}` must have {ndim} dimension(s), got shape {array.shape}.")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"`{name}` contains NaN or infinite values.")
    return array


def _psd_eigh(name: str, sigma: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigendecomposition of a symmetric PSD matrix with round-off negatives clamped to 0."""
    eigenvalues, eigenvectors = np.linalg.eigh(sigma)
    scale = max(float(np.abs(eigenvalues).max(initial=0.0)), np.finfo(np.float64).tiny)
    if eigenvalues.min(initial=0.0) < -_PSD_TOLERANCE * scale:
        raise ValueError(
            f"`{name}` is not positive semi-definite (smallest eigenvalue {eigenvalues.min():.3e}, "
            f"largest {scale:.3e}); pass a covariance matrix."
        )
    return np.clip(eigenvalues, 0.0, None), eigenvectors


def trace_sqrt_product(sigma1, sigma2) -> float:
    """Tr (Σ₁Σ₂)^{½} = Σᵢ √λᵢ(Σ₁^{½} Σ₂ Σ₁^{½}) for symmetric PSD Σ₁, Σ₂ (float64)."""
    s1 = _as_float64("sigma1", sigma1, 2)
    s2 = _as_float64("sigma2", sigma2, 2)
    s1, s2 = 0.5 * (s1 + s1.T), 0.5 * (s2 + s2.T)
    eigenvalues, eigenvectors = _psd_eigh("sigma1", s1)
    _psd_eigh("sigma2", s2)  # validation only
    sqrt_s1 = (eigenvectors * np.sqrt(eigenvalues)) @ eigenvectors.T
    middle = sqrt_s1 @ s2 @ sqrt_s1
    middle = 0.5 * (middle + middle.T)
    return float(np.sqrt(np.clip(np.linalg.eigvalsh(middle), 0.0, None)).sum())


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Fréchet distance ‖μ₁−μ₂‖² + Tr(Σ₁ + Σ₂ − 2(Σ₁Σ₂)^{½}) between N(μ₁, Σ₁) and N(μ₂, Σ₂).

    Accepts NumPy arrays or torch tensors (means of shape ``(D,)``, covariances ``(D, D)``), computes in
    float64 and returns a Python float. FID is this distance on Inception pool3 statistics.
    """
    m1 = _as_float64("mu1", mu1, 1)
    m2 = _as_float64("mu2", mu2, 1)
    s1 = _as_float64("sigma1", sigma1, 2)
    s2 = _as_float64("sigma2", sigma2, 2)
    dim = m1.shape[0]
    for name, shape in (("mu2", m2.shape), ("sigma1", s1.shape), ("sigma2", s2.shape)):
        expected = (dim,) if name == "mu2" else (dim, dim)
        if shape != expected:
            raise ValueError(
                f"`{name}` has shape {shape}, expected {expected} to match `mu1` of shape {(dim,)}."
            )
    diff = m1 - m2
    trace_sum = float(np.trace(s1) + np.trace(s2))
    distance = float(diff @ diff) + trace_sum - 2.0 * trace_sqrt_product(s1, s2)
    if distance < 0.0:
        if distance < -_NEGATIVE_TOLERANCE * max(trace_sum, np.finfo(np.float64).tiny):
            raise ValueError(
                f"Fréchet distance came out negative ({distance:.3e}): the inputs are inconsistent."
            )
        distance = 0.0
    return distance
