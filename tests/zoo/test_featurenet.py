"""FeatureNet: shapes, `features` is the penultimate layer, serialisation, the training CLI, and the shipped
weights classify fresh procedural samples (a seed never used in training)."""

from __future__ import annotations

import pytest
import torch

from fastsample.zoo.data import NUM_CLASSES, generate_batch
from fastsample.zoo.featurenet import (
    FeatureNet,
    evaluate_accuracy,
    load_feature_net_file,
    save_feature_net,
    to_greyscale,
    train_feature_net,
)


def random_net(seed: int = 0) -> FeatureNet:
    torch.manual_seed(seed)
    return FeatureNet().eval()


def test_shapes():
    net = random_net()
    x, _ = generate_batch(6, seed=1)
    assert net.feature_dim == 128
    assert net(x).shape == (6, NUM_CLASSES)
    assert net.features(x).shape == (6, net.feature_dim)


def test_features_are_the_input_of_the_last_layer():
    """What the final linear layer receives inside ``forward`` is exactly ``features(x)``."""
    net = random_net()
    x, _ = generate_batch(5, seed=2)
    seen = []
    handle = net.head.register_forward_pre_hook(lambda module, args: seen.append(args[0].clone()))
    with torch.no_grad():
        logits = net(x)
        features = net.features(x)
    handle.remove()
    assert len(seen) == 1
    torch.testing.assert_close(seen[0], features, atol=0, rtol=0)
    torch.testing.assert_close(logits, features @ net.head.weight.T + net.head.bias)


def test_features_do_not_depend_on_the_batch():
    """No batch statistics (GroupNorm, not BatchNorm): features are the same alone or in a batch."""
    net = random_net()
    x, _ = generate_batch(4, seed=3)
    with torch.no_grad():
        batch = net.features(x)
        single = torch.cat([net.features(x[i : i + 1]) for i in range(4)])
    torch.testing.assert_close(batch, single, atol=1e-5, rtol=1e-5)


def test_bad_inputs_refused():
    net = random_net()
    with pytest.raises(ValueError, match=r"\[N, 3, H, W\]"):
        net(torch.zeros(2, 1, 32, 32))
    with pytest.raises(ValueError, match=r"\[N, 3, H, W\]"):
        net(torch.zeros(3, 32, 32))
    with pytest.raises(TypeError, match="float"):
        net(torch.zeros(2, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match="channels"):
        FeatureNet(channels=(8, 8, 8))


def test_greyscale_is_bt601_luma():
    x, _ = generate_batch(2, seed=4)
    grey = to_greyscale(x)
    expected = 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]
    for c in range(3):
        torch.testing.assert_close(grey[:, c], expected)


def test_save_load_round_trip(tmp_path):
    net = random_net(5)
    path = tmp_path / "net.safetensors"
    save_feature_net(net, path, metadata={"note": "test"})
    loaded = load_feature_net_file(path)
    assert not loaded.training and loaded.config == net.config
    x, _ = generate_batch(3, seed=6)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), net(x), atol=0, rtol=0)
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="a fastsample feature net file"):
        load_feature_net_file(tmp_path / "other.safetensors")
    with pytest.raises(FileNotFoundError, match="train-featurenet"):
        load_feature_net_file(tmp_path / "missing.safetensors")


def test_training_runs_and_cli_writes_loadable_weights(tmp_path, capsys):
    net, summary = train_feature_net(steps=3, batch_size=16, progress=False)
    assert not net.training and summary["steps"] == 3 and summary["final_loss"] > 0
    with pytest.raises(ValueError, match="grey_fraction"):
        train_feature_net(steps=1, grey_fraction=1.5)

    from fastsample.cli import main

    out = tmp_path / "fn.safetensors"
    argv = ["train-featurenet", "--train-steps", "2", "--batch-size", "8", "--eval-samples", "20"]
    assert main([*argv, "--out", str(out), "--quiet"]) == 0
    assert "accuracy" in capsys.readouterr().out
    assert isinstance(load_feature_net_file(out), FeatureNet)


def test_shipped_weights_classify_fresh_samples():
    """≥ 95 % on 1,000 fresh samples from a seed never used in training (training used seed 0's stream)."""
    from fastsample.zoo.default import load_feature_net

    net = load_feature_net()
    assert not net.training and net.feature_dim == 128
    accuracy = evaluate_accuracy(net, n=1000, seed=987_654)
    assert accuracy >= 0.95, accuracy
    grey_accuracy = evaluate_accuracy(net, n=1000, seed=987_654, greyscale=True)
    assert grey_accuracy >= 0.90, f"shape cue not learned: greyscale accuracy {grey_accuracy}"


def test_shipped_features_separate_real_from_corrupted_images():
    """In-domain FD (fastsample.eval.frechet) ranks an independent real set far below blurred, patch-averaged
    and greyscale copies: the features see shape and colour, not just the class."""
    from fastsample.eval.frechet import frechet_distance
    from fastsample.zoo.default import load_feature_net

    net = load_feature_net()

    def stats(images):
        with torch.no_grad():
            features = net.features(images).double()
        centred = features - features.mean(0)
        return features.mean(0), centred.T @ centred / (len(features) - 1)

    real, _ = generate_batch(500, seed=101)
    other, _ = generate_batch(500, seed=202)
    reference = stats(real)
    blurred = torch.nn.functional.avg_pool2d(other, 5, stride=1, padding=2, count_include_pad=False)
    patches = torch.nn.functional.interpolate(torch.nn.functional.avg_pool2d(other, 4), scale_factor=4)
    fd_real = frechet_distance(*reference, *stats(other))
    for corrupted in (blurred, patches, to_greyscale(other)):
        assert frechet_distance(*reference, *stats(corrupted)) > 3 * fd_real
