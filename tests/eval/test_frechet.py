"""Fréchet distance against closed forms and a SciPy sqrtm reference (training_eval.md §6, T1–T5, T10)."""

import numpy as np
import pytest
import scipy.linalg
import torch

from fastsample.eval import frechet_distance


def _random_orthogonal(rng, dim):
    q, r = np.linalg.qr(rng.standard_normal((dim, dim)))
    return q * np.sign(np.diag(r))


def _scipy_reference(mu1, sigma1, mu2, sigma2):
    """pytorch-fid's formula with scipy.linalg.sqrtm of the non-symmetric product (no `disp`)."""
    covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
    covmean = np.real(covmean)
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


@pytest.mark.parametrize("dim", [1, 8, 64])
def test_commuting_covariances_closed_form(dim):
    # Σᵢ = Q diag(aᵢ) Qᵀ share eigenvectors: FD = ‖Δμ‖² + Σ(√a − √b)².
    rng = np.random.default_rng(dim)
    q = _random_orthogonal(rng, dim)
    a, b = rng.uniform(0.1, 3.0, dim), rng.uniform(0.1, 3.0, dim)
    mu1, mu2 = rng.standard_normal(dim), rng.standard_normal(dim)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    got = frechet_distance(mu1, (q * a) @ q.T, mu2, (q * b) @ q.T)
    assert got == pytest.approx(expected, rel=1e-10, abs=1e-12)


def test_diagonal_gaussians_closed_form():
    rng = np.random.default_rng(1)
    a, b = rng.uniform(0.0, 2.0, 16), rng.uniform(0.0, 2.0, 16)
    mu1, mu2 = rng.standard_normal(16), rng.standard_normal(16)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("c", [0.0, 0.5, 1.0, 2.5])
def test_scaled_covariance_closed_form(c):
    # Σ₂ = c²Σ₁ → FD = ‖Δμ‖² + Tr Σ₁ (1 − c)².
    rng = np.random.default_rng(2)
    x = rng.standard_normal((40, 12))
    sigma = x.T @ x / 40
    mu1, mu2 = rng.standard_normal(12), rng.standard_normal(12)
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(sigma) * (1 - c) ** 2
    assert frechet_distance(mu1, sigma, mu2, c**2 * sigma) == pytest.approx(expected, rel=1e-10, abs=1e-12)


def test_non_commuting_2x2_closed_form():
    # Tr √(Σ₁Σ₂) = √(Tr(Σ₁Σ₂) + 2√(det Σ₁ det Σ₂)) for 2×2 PSD matrices.
    s1 = np.array([[2.0, 0.7], [0.7, 1.0]])
    s2 = np.array([[0.5, -0.3], [-0.3, 1.5]])
    tr_sqrt = np.sqrt(np.trace(s1 @ s2) + 2 * np.sqrt(np.linalg.det(s1) * np.linalg.det(s2)))
    expected = np.trace(s1) + np.trace(s2) - 2 * tr_sqrt
    assert frechet_distance(np.zeros(2), s1, np.zeros(2), s2) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize(("num", "dim"), [(500, 64), (300, 128), (50, 64)])
def test_matches_scipy_sqrtm_on_identical_features(num, dim):
    # Same random features through both formulas; (50, 64) is rank-deficient (n < d).
    rng = np.random.default_rng(num + dim)
    f1 = rng.standard_normal((num, dim)) @ rng.standard_normal((dim, dim)) * 0.3
    f2 = rng.gamma(2.0, 1.0, (num, dim)) + 0.1 * f1
    mu1, s1 = f1.mean(0), np.cov(f1, rowvar=False)
    mu2, s2 = f2.mean(0), np.cov(f2, rowvar=False)
    ours = frechet_distance(mu1, s1, mu2, s2)
    reference = _scipy_reference(mu1, s1, mu2, s2)
    assert np.isfinite(ours)
    assert abs(ours - reference) <= 1e-6 * abs(reference)


def test_identity_symmetry_and_torch_inputs():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((100, 10))
    y = rng.standard_normal((100, 10)) * 2 + 1
    mx, sx, my, sy = x.mean(0), np.cov(x, rowvar=False), y.mean(0), np.cov(y, rowvar=False)
    assert abs(frechet_distance(mx, sx, mx, sx)) <= 1e-9 * np.trace(sx)
    assert frechet_distance(mx, sx, my, sy) == pytest.approx(frechet_distance(my, sy, mx, sx), rel=1e-12)
    as_torch = frechet_distance(*(torch.from_numpy(v).float() for v in (mx, sx, my, sy)))
    assert as_torch == pytest.approx(frechet_distance(mx, sx, my, sy), rel=1e-5)
    assert isinstance(as_torch, float)


def test_mean_shift_only():
    sigma = np.diag([1.0, 2.0, 3.0])
    assert frechet_distance([0, 0, 0], sigma, [1, 2, 2], sigma) == pytest.approx(9.0, rel=1e-12)


def test_bad_inputs():
    eye = np.eye(3)
    with pytest.raises(ValueError, match="mu2"):
        frechet_distance(np.zeros(3), eye, np.zeros(4), eye)
    with pytest.raises(ValueError, match="sigma1"):
        frechet_distance(np.zeros(3), np.eye(2), np.zeros(3), eye)
    with pytest.raises(ValueError, match="NaN"):
        frechet_distance(np.array([0, np.nan, 0]), eye, np.zeros(3), eye)
    with pytest.raises(ValueError, match="positive semi-definite"):
        frechet_distance(np.zeros(3), -eye, np.zeros(3), eye)
