"""Statistics of folders, tensors and generated images; FID end to end; extractors; precision/recall."""

import numpy as np
import pytest
import torch
from PIL import Image

from fastsample.eval import (
    ImageFolder,
    InDomainExtractor,
    compute_fid,
    compute_statistics,
    extract_features,
    frechet_distance,
    generate_image_batches,
    pipeline_statistics,
    precision_recall,
    save_statistics,
)

from ._helpers import StandInPipeline, pooled_features, random_images, tiny_extractor


def _write_folder(path, images):
    path.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(path / f"{i:04d}.png")
    return path


def _numpy_stats(images):
    features = pooled_features(images.float() / 255 * 2 - 1).double().numpy()
    return features.mean(0), np.cov(features, rowvar=False)


def test_folder_and_tensor_statistics_match_numpy(tmp_path):
    images = random_images(40)
    folder = _write_folder(tmp_path / "a", images)
    extractor = tiny_extractor()
    from_folder = compute_statistics(folder, extractor, batch_size=7, progress=False)
    from_tensor = compute_statistics(images, extractor, batch_size=40, progress=False)
    mu, sigma = _numpy_stats(images)
    for stats in (from_folder, from_tensor):
        assert stats.num_samples == 40
        np.testing.assert_allclose(stats.mu, mu, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(stats.sigma, sigma, rtol=1e-5, atol=1e-7)
    assert from_folder.metadata["extractor"] == "pooled-15"


def test_fid_between_folders_and_npz(tmp_path):
    a, b = random_images(40, seed=1), random_images(40, seed=2)
    folder_a, folder_b = _write_folder(tmp_path / "a", a), _write_folder(tmp_path / "b", b)
    extractor = tiny_extractor()
    value = compute_fid(folder_a, folder_b, extractor, progress=False)
    mu_a, sigma_a = _numpy_stats(a)
    mu_b, sigma_b = _numpy_stats(b)
    assert value == pytest.approx(frechet_distance(mu_a, sigma_a, mu_b, sigma_b), rel=1e-5)
    save_statistics(tmp_path / "a.npz", compute_statistics(folder_a, extractor, progress=False))
    assert compute_fid(tmp_path / "a.npz", folder_b, extractor, progress=False) == pytest.approx(
        value, rel=1e-9
    )
    assert compute_fid(folder_a, folder_a, extractor, progress=False) == pytest.approx(0.0, abs=1e-9)


def test_fid_grows_with_noise():
    images = random_images(60, seed=3)
    extractor = tiny_extractor()
    reference = compute_statistics(images, extractor, progress=False)
    generator = torch.Generator().manual_seed(0)
    noise = torch.randn(images.shape, generator=generator)
    values = []
    for level in (0.0, 10.0, 30.0, 60.0):
        noisy = (images.float() + level * noise).clamp(0, 255).round().to(torch.uint8)
        values.append(compute_fid(reference, noisy, extractor, progress=False))
    assert values[0] == pytest.approx(0.0, abs=1e-9)
    assert all(later > earlier for earlier, later in zip(values, values[1:]))


def test_bad_folders(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    with pytest.raises(ValueError, match="No image files"):
        ImageFolder(tmp_path / "empty")
    with pytest.raises(NotADirectoryError):
        ImageFolder(tmp_path / "missing")
    mixed = _write_folder(tmp_path / "mixed", random_images(3, size=16))
    Image.fromarray(np.zeros((20, 12, 3), np.uint8)).save(mixed / "odd.png")
    with pytest.raises(ValueError, match=r"different sizes: 0000.png is 16×16, odd.png is 12×20"):
        compute_statistics(mixed, tiny_extractor(), progress=False)
    # Allowed explicitly: each image goes through the extractor on its own.
    with pytest.warns(UserWarning, match="4 samples for 15-dimensional"):
        stats = compute_statistics(mixed, tiny_extractor(), allow_mixed_sizes=True, progress=False)
    assert stats.num_samples == 4


def test_fewer_samples_than_dimensions(tmp_path):
    with pytest.warns(UserWarning, match="rank-deficient"):
        compute_statistics(random_images(5), tiny_extractor(), progress=False)
    with pytest.raises(ValueError, match="rank-deficient"):
        compute_statistics(random_images(5), tiny_extractor(), strict=True, progress=False)
    with pytest.raises(ValueError, match="at least 2 samples"):
        compute_statistics(random_images(1), tiny_extractor(), progress=False)
    with pytest.raises(ValueError, match="extractor"):
        compute_statistics(random_images(5), None)


def test_generation_is_independent_of_batching():
    pipe = StandInPipeline()
    extractor = tiny_extractor()
    kwargs = {"class_labels": [0, 3, 5], "seed": 11, "progress": False}
    by_three = pipeline_statistics(pipe, extractor, num_images=20, batch_size=3, **kwargs)
    by_eight = pipeline_statistics(pipe, extractor, num_images=20, batch_size=8, **kwargs)
    np.testing.assert_allclose(by_three.sigma, by_eight.sigma, rtol=1e-10, atol=1e-12)
    batches = list(generate_image_batches(pipe, 5, prompts=["a", "b"], batch_size=2, progress=False))
    assert [b.shape[0] for b in batches] == [2, 2, 1] and batches[0].dtype == torch.uint8
    with pytest.raises(ValueError, match="exactly one"):
        next(generate_image_batches(pipe, 5, prompts=["a"], class_labels=[1]))
    with pytest.raises(ValueError, match="generator"):
        next(generate_image_batches(pipe, 5, class_labels=[1], generator=None))


class _StandInFeatureNet(torch.nn.Module):
    """Same interface as fastsample.zoo's feature net: .features(x) on [N, 3, 32, 32] in [-1, 1]."""

    feature_dim = 6

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Conv2d(3, 6, 4, stride=4)
        self.seen = None

    def features(self, x):
        self.seen = x
        return self.proj(x).mean(dim=(2, 3))


def test_in_domain_extractor_adapter():
    net = _StandInFeatureNet()
    extractor = InDomainExtractor(net=net)
    images = random_images(4, size=32)
    features = extractor(images)
    assert features.shape == (4, 6) and extractor.feature_dim == 6
    torch.testing.assert_close(net.seen, images.float() / 255 * 2 - 1)
    with pytest.raises(ValueError, match="32×32"):
        extractor(random_images(2, size=16))
    with pytest.raises(TypeError, match="features"):
        InDomainExtractor(net=torch.nn.Linear(2, 2))


def test_in_domain_extractor_with_the_zoo_feature_net():
    featurenet = pytest.importorskip("fastsample.zoo.featurenet")
    net = featurenet.FeatureNet()  # the real architecture, random weights
    extractor = InDomainExtractor(net=net)
    images = random_images(3, size=32)
    features = extractor(images)
    assert features.shape == (3, net.feature_dim)
    torch.testing.assert_close(features, net.features(images.float() / 255 * 2 - 1))


def test_in_domain_extractor_default_weights():
    default = pytest.importorskip("fastsample.zoo.default")
    try:
        default.load_feature_net()
    except FileNotFoundError as error:
        pytest.skip(f"shipped feature-net weights not present yet: {error}")
    extractor = InDomainExtractor()
    assert extractor(random_images(3, size=32)).shape == (3, extractor.feature_dim)


def _brute_force_precision_recall(real, fake, k):
    def radii(x):
        d = np.linalg.norm(x[:, None] - x[None], axis=-1)
        return np.sort(d, axis=1)[:, k]

    def inside(queries, centres, r):
        d = np.linalg.norm(queries[:, None] - centres[None], axis=-1)
        return np.mean([(d[i] <= r).any() for i in range(len(queries))])

    return inside(fake, real, radii(real)), inside(real, fake, radii(fake))


def test_precision_recall_against_brute_force():
    rng = np.random.default_rng(0)
    real = rng.standard_normal((80, 5))
    fake = rng.standard_normal((60, 5)) * 0.7 + 0.8
    result = precision_recall(real, fake, k=3, block_size=16)
    precision, recall = _brute_force_precision_recall(real, fake, 3)
    assert (result.precision, result.recall) == (pytest.approx(precision), pytest.approx(recall))
    assert 0 < result.precision < 1 and 0 < result.recall < 1
    same = precision_recall(real, real)
    assert same.precision == same.recall == 1.0
    far = precision_recall(real, fake + 100.0)
    assert far.precision == far.recall == 0.0
    with pytest.raises(ValueError, match="more than 3"):
        precision_recall(real[:3], fake)


def test_extract_features_feeds_precision_recall():
    extractor = tiny_extractor()
    features = extract_features(random_images(12), extractor, batch_size=5, progress=False)
    assert features.shape == (12, 15)
    torch.testing.assert_close(features, pooled_features(random_images(12).float() / 255 * 2 - 1))


def test_generation_with_a_real_tiny_dit_pipeline():
    testing = pytest.importorskip("fastsample.testing")
    pipe = testing.tiny_pipeline("dit")
    pipe.set_progress_bar_config(disable=True)
    extractor = tiny_extractor()
    kwargs = {"class_labels": [1, 2, 3], "seed": 3, "num_inference_steps": 1, "guidance_scale": 2.0}
    batches = list(generate_image_batches(pipe, 4, batch_size=2, progress=False, **kwargs))
    assert [tuple(b.shape) for b in batches] == [(2, 3, 16, 16), (2, 3, 16, 16)]
    assert batches[0].dtype == torch.uint8
    # One generator per image: the images do not depend on how they are batched.
    together = next(generate_image_batches(pipe, 4, batch_size=4, progress=False, **kwargs))
    torch.testing.assert_close(torch.cat(batches), together, rtol=0, atol=1)
    with pytest.warns(UserWarning, match="rank-deficient"):
        stats = pipeline_statistics(pipe, extractor, num_images=4, batch_size=2, progress=False, **kwargs)
    assert stats.num_samples == 4


def test_generation_repeats_a_string_negative_prompt_per_image():
    """diffusers refuses a string negative prompt beside a list of prompts; each batch gets one per image."""
    pytest.importorskip("transformers")
    from fastsample.testing import tiny_pipeline

    pipe = tiny_pipeline("sd")
    batches = generate_image_batches(
        pipe,
        3,
        prompts=["a cat"],
        batch_size=2,
        progress=False,
        negative_prompt="blurry",
        num_inference_steps=2,
        guidance_scale=7.5,
    )
    assert [b.shape[0] for b in batches] == [2, 1]
