"""Colour-blind shape accuracy and hue accuracy (fastsample.eval.shape) on real procedural images."""

from __future__ import annotations

import pytest
import torch

from fastsample.eval.shape import (
    background_colour,
    class_accuracy,
    colour_blind_view,
    hue_accuracy,
    predict_hues,
    predict_shapes,
    rotate_hue,
    shape_accuracy,
)
from fastsample.zoo import default
from fastsample.zoo.data import CLASS_HUES_DEG, NUM_CLASSES, generate_batch


@pytest.fixture(scope="module")
def real():
    images, labels = generate_batch(1000, seed=777)
    return (images + 1) / 2, labels  # pipeline convention: [0, 1]


@pytest.fixture(scope="module")
def shape_net():
    return default.load_shape_net()


def test_real_data_accuracies(real, shape_net):
    images, labels = real
    assert shape_accuracy(images, labels, shape_net) >= 0.95
    assert hue_accuracy(images, labels) >= 0.95
    assert class_accuracy(images, labels) >= 0.95
    # the same images given in [-1, 1]
    signed = images * 2 - 1
    assert torch.equal(
        predict_shapes(signed, shape_net, value_range=(-1, 1)), predict_shapes(images, shape_net)
    )
    assert torch.equal(predict_hues(signed, value_range=(-1, 1)), predict_hues(images))


def test_hue_rotation_keeps_the_shape_and_moves_the_hue(real, shape_net):
    images, labels = real
    signed = images[:300] * 2 - 1
    labels = labels[:300]
    steps = 3
    rotated = rotate_hue(signed, 36.0 * steps)  # every class takes the hue of class + 3
    assert shape_accuracy(rotated, labels, shape_net, value_range=(-1, 1)) >= 0.95
    assert hue_accuracy(rotated, (labels + steps) % NUM_CLASSES, value_range=(-1, 1)) >= 0.95
    assert hue_accuracy(rotated, labels, value_range=(-1, 1)) <= 0.05
    # the view itself is (nearly) hue-free: a grey background is on the rotation axis
    difference = colour_blind_view(rotated, value_range=(-1, 1)) - colour_blind_view(
        signed, value_range=(-1, 1)
    )
    assert difference.abs().mean() < 0.02


def test_right_hue_wrong_shape_gets_the_shape_label(shape_net):
    rings, _ = generate_batch(50, seed=5, labels=torch.full((50,), 3))  # lime rings
    red_rings = rotate_hue(rings, CLASS_HUES_DEG[0] - CLASS_HUES_DEG[3])  # class 0's hue, class 3's shape
    assert (predict_hues(red_rings, value_range=(-1, 1)) == 0).float().mean() >= 0.95
    assert (predict_shapes(red_rings, shape_net, value_range=(-1, 1)) == 3).float().mean() >= 0.95
    # a disc in the ring's hue is a disc
    discs, _ = generate_batch(50, seed=6, labels=torch.zeros(50, dtype=torch.int64))
    lime_discs = rotate_hue(discs, CLASS_HUES_DEG[3] - CLASS_HUES_DEG[0])
    assert (predict_shapes(lime_discs, shape_net, value_range=(-1, 1)) == 0).float().mean() >= 0.95
    assert (predict_hues(lime_discs, value_range=(-1, 1)) == 3).float().mean() >= 0.95


def test_background_is_the_border_median_and_inputs_are_not_mutated():
    images = torch.full((2, 3, 8, 8), 0.2)
    images[:, :, 0, :3] = 0.9  # a shape touching the top edge: the median ignores it
    images[1] += 0.1
    expected = torch.tensor([[0.2] * 3, [0.3] * 3])
    torch.testing.assert_close(background_colour(images), expected)
    unit = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    before = unit.clone()
    view = colour_blind_view(unit)
    assert view.shape == (2, 1, 32, 32) and view.min() >= 0 and view.max() <= 1
    rotate_hue(unit * 2 - 1, 90.0)
    assert torch.equal(unit, before)


def test_bad_input_is_refused(real, shape_net):
    images, labels = real
    with pytest.raises(ValueError, match="value_range"):
        colour_blind_view(images, value_range=(0, 255))
    with pytest.raises(ValueError, match="labels"):
        shape_accuracy(images[:4], labels[:3], shape_net)
    with pytest.raises(ValueError, match="labels"):
        hue_accuracy(images[:2], torch.tensor([0, NUM_CLASSES]))
    with pytest.raises(ValueError, match="degrees"):
        rotate_hue(images[:2] * 2 - 1, torch.tensor([1.0, 2.0, 3.0]))
    with pytest.raises(ValueError, match=r"value_range=\(-1, 1\)"):
        shape_accuracy(images[:2] * 2 - 1, labels[:2], shape_net)  # [-1, 1] values without saying so


def test_missing_shape_net_names_the_file(tmp_path, monkeypatch):
    monkeypatch.setattr(default, "_weights_root", lambda: tmp_path)
    with pytest.raises(FileNotFoundError, match=r"shapenet\.safetensors.*train_shape_net\.py"):
        default.load_shape_net()


def test_train_shape_net_runs_on_the_colour_blind_view(monkeypatch):
    from fastsample.eval import shape

    seen = []
    original = shape.shape_net_input

    def spy(images, value_range=(0, 1)):
        out = original(images, value_range)
        seen.append(out)
        return out

    monkeypatch.setattr(shape, "shape_net_input", spy)
    net, summary = shape.train_shape_net(steps=2, batch_size=8, progress=False)
    assert net.config["channels"] == [16, 24, 32, 48] and net.feature_dim == 64 and not net.training
    assert summary["steps"] == 2 and summary["final_loss"] > 0
    assert len(seen) == 2 and all(x.shape == (8, 3, 32, 32) for x in seen)
    # the network sees the view: three equal channels
    assert all(torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 1], x[:, 2]) for x in seen)
