"""Streaming statistics against one-shot NumPy statistics, exact merging, and pytorch-fid .npz files."""

import numpy as np
import pytest
import torch

from fastsample.eval import (
    FeatureStatistics,
    Statistics,
    fid_from_statistics,
    load_statistics,
    save_statistics,
)


@pytest.fixture
def features():
    rng = np.random.default_rng(0)
    # Non-centred, correlated float32 features (like post-ReLU network features).
    x = rng.gamma(2.0, 1.0, (61, 9)) @ rng.standard_normal((9, 9)) + 50.0
    return x.astype(np.float32)


def _streamed(x, batch_size, chunk_rows=1024):
    acc = FeatureStatistics(x.shape[1], chunk_rows=chunk_rows)
    for start in range(0, len(x), batch_size):
        acc.update(torch.from_numpy(x[start : start + batch_size]))
    return acc


@pytest.mark.parametrize("chunk_rows", [1, 10, 1024])
@pytest.mark.parametrize("batch_size", [1, 7, 61])
def test_streaming_equals_numpy(features, batch_size, chunk_rows):
    acc = _streamed(features, batch_size, chunk_rows)
    reference = features.astype(np.float64)
    assert acc.num_samples == 61
    np.testing.assert_allclose(acc.mean, reference.mean(0), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(acc.covariance, np.cov(reference, rowvar=False), rtol=1e-11, atol=1e-11)


def test_merge_is_order_invariant(features):
    parts = [features[:5], features[5:30], features[30:31], features[31:]]
    accumulators = [FeatureStatistics(9, chunk_rows=3).update(p) for p in parts]
    forward = FeatureStatistics(9)
    for acc in accumulators:
        forward.merge(acc)
    backward = FeatureStatistics(9)
    for acc in reversed(accumulators):
        backward.merge(acc)
    tree = (
        FeatureStatistics(9)
        .merge(accumulators[2])
        .merge(FeatureStatistics(9).merge(accumulators[3]).merge(accumulators[0]))
    )
    tree.merge(accumulators[1])
    reference = np.cov(features.astype(np.float64), rowvar=False)
    for acc in (forward, backward, tree):
        assert acc.num_samples == 61
        np.testing.assert_allclose(acc.mean, features.astype(np.float64).mean(0), rtol=1e-12)
        np.testing.assert_allclose(acc.covariance, reference, rtol=1e-11, atol=1e-11)
    # Merging an empty accumulator changes nothing; merging does not touch the merged-in accumulator.
    before = accumulators[0].covariance.copy()
    forward.merge(FeatureStatistics(9))
    assert forward.num_samples == 61
    np.testing.assert_array_equal(accumulators[0].covariance, before)


def test_inference_mode_then_normal_mode(features):
    acc = FeatureStatistics(9, chunk_rows=5)
    with torch.inference_mode():
        acc.update(torch.from_numpy(features[:20]))
    acc.update(torch.from_numpy(features[20:]))
    other = FeatureStatistics(9)
    with torch.inference_mode():
        other.update(torch.from_numpy(features))
        other.merge(FeatureStatistics(9).update(features[:3]))
    reference = np.cov(features.astype(np.float64), rowvar=False)
    np.testing.assert_allclose(acc.covariance, reference, rtol=1e-11, atol=1e-11)
    assert other.num_samples == 64


def test_update_keeps_its_own_copy():
    x = torch.ones(4, 2, dtype=torch.float64)
    x[:, 0] = torch.arange(4.0)
    acc = FeatureStatistics(2).update(x)  # buffered, not yet folded in
    x.zero_()
    np.testing.assert_allclose(acc.mean, [1.5, 1.0])


def test_update_validates(features):
    acc = FeatureStatistics(9)
    with pytest.raises(ValueError, match=r"\[batch, 9\]"):
        acc.update(features[:, :4])
    with pytest.raises(ValueError, match="NaN"):
        acc.update(np.full((2, 9), np.nan))
    with pytest.raises(TypeError):
        acc.update([[0.0] * 9])
    with pytest.raises(ValueError, match="at least 2"):
        acc.update(features[:1]).result()


def test_fewer_samples_than_dimensions_warns_or_raises():
    acc = FeatureStatistics(16).update(np.random.default_rng(0).standard_normal((8, 16)))
    with pytest.warns(UserWarning, match="8 samples for 16-dimensional"):
        acc.result()
    with pytest.raises(ValueError, match="rank-deficient"):
        acc.result(strict=True)


def test_npz_round_trip_with_pytorch_fid_keys(tmp_path, features):
    stats = _streamed(features, 7).result({"extractor": "tiny", "preprocessing": "none"})
    path = tmp_path / "stats.npz"
    save_statistics(path, stats)
    with np.load(path, allow_pickle=False) as raw:  # what pytorch-fid reads: f['mu'], f['sigma']
        np.testing.assert_array_equal(raw["mu"], stats.mu)
        np.testing.assert_array_equal(raw["sigma"], stats.sigma)
        assert raw["mu"].dtype == np.float64
    loaded = load_statistics(path)
    np.testing.assert_array_equal(loaded.mu, stats.mu)
    np.testing.assert_array_equal(loaded.sigma, stats.sigma)
    assert loaded.num_samples == 61 and loaded.metadata == {"extractor": "tiny", "preprocessing": "none"}


def test_reads_a_file_written_like_pytorch_fid(tmp_path):
    mu, sigma = np.arange(3.0), np.diag([1.0, 2.0, 3.0])
    np.savez_compressed(tmp_path / "ref.npz", mu=mu, sigma=sigma)  # pytorch-fid's save_fid_stats
    loaded = load_statistics(tmp_path / "ref.npz")
    np.testing.assert_array_equal(loaded.mu, mu)
    assert loaded.num_samples is None and loaded.metadata == {}


def test_bad_statistics_files(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_statistics(tmp_path / "missing.npz")
    np.savez(tmp_path / "no_sigma.npz", mu=np.zeros(3))
    with pytest.raises(ValueError, match="sigma"):
        load_statistics(tmp_path / "no_sigma.npz")
    np.savez(tmp_path / "pickled.npz", mu=np.array([object()], dtype=object), sigma=np.eye(1))
    with pytest.raises(ValueError, match="pickle"):
        load_statistics(tmp_path / "pickled.npz")


def test_fid_from_statistics_refuses_mismatched_preprocessing():
    a = Statistics(
        np.zeros(2), np.eye(2), 10, {"extractor": "inception-v3-pool3", "preprocessing": "pytorch-fid"}
    )
    b = Statistics(
        np.ones(2), np.eye(2), 10, {"extractor": "inception-v3-pool3", "preprocessing": "clean-fid"}
    )
    with pytest.raises(ValueError, match="preprocessing"):
        fid_from_statistics(a, b)
    assert fid_from_statistics(a, b, strict_metadata=False) == pytest.approx(2.0)
    assert fid_from_statistics(a, Statistics(np.ones(2), np.eye(2))) == pytest.approx(2.0)
