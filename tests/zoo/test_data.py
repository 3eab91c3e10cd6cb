import colorsys

import pytest
import torch

from fastsample.zoo.data import (
    CLASS_HUES_DEG,
    CLASS_NAMES,
    IMAGE_SIZE,
    NUM_CLASSES,
    ShapesDataset,
    _hsv_to_rgb,
    generate_batch,
)


def test_constants():
    assert NUM_CLASSES == 10
    assert len(CLASS_NAMES) == NUM_CLASSES == len(set(CLASS_NAMES))
    assert IMAGE_SIZE == 32


def test_dataset_item_shape_range_and_determinism():
    ds = ShapesDataset(seed=3)
    image, label = ds[17]
    assert image.shape == (3, IMAGE_SIZE, IMAGE_SIZE) and image.dtype == torch.float32
    assert isinstance(label, int) and label == 17 % NUM_CLASSES
    assert image.min() >= -1 and image.max() <= 1
    again, _ = ShapesDataset(seed=3)[17]
    assert torch.equal(image, again)
    # Depends on the index and on the seed.
    assert not torch.equal(image, ds[27][0])
    assert not torch.equal(image, ShapesDataset(seed=4)[17][0])
    # Endless in practice: a huge index works and negative indices wrap.
    big = ShapesDataset(seed=3)[2**31 - 2]
    assert big[0].shape == (3, 32, 32)
    assert torch.equal(ShapesDataset(seed=0, length=20)[-1][0], ShapesDataset(seed=0, length=20)[19][0])
    with pytest.raises(IndexError):
        ShapesDataset(seed=0, length=20)[20]


def test_class_balance():
    ds = ShapesDataset(seed=0)
    labels = torch.tensor([ds[i][1] for i in range(200)])
    assert torch.equal(torch.bincount(labels, minlength=NUM_CLASSES), torch.full((NUM_CLASSES,), 20))
    _, drawn = generate_batch(5000, seed=0)
    counts = torch.bincount(drawn, minlength=NUM_CLASSES).float()
    # Multinomial(5000, 1/10): std of a count is 21; 6 std is a loose but failing-when-broken bound.
    assert (counts - 500).abs().max() < 130


def test_generate_batch_determinism_and_range():
    a, la = generate_batch(64, seed=5)
    b, lb = generate_batch(64, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and torch.equal(la, lb)
    assert a.shape == (64, 3, 32, 32) and a.dtype == torch.float32 and la.dtype == torch.int64
    assert a.min() >= -1 and a.max() <= 1
    assert a.std() > 0.2  # not a constant image
    c, _ = generate_batch(64, seed=6)
    assert not torch.equal(a, c)
    labels = torch.arange(10)
    _, out = generate_batch(10, seed=0, labels=labels)
    assert torch.equal(out, labels)


def test_hsv_matches_colorsys():
    h = torch.linspace(0, 0.999, 37)
    s = torch.full_like(h, 0.8)
    v = torch.full_like(h, 0.9)
    ours = _hsv_to_rgb(h, s, v)
    ref = torch.tensor([colorsys.hsv_to_rgb(float(a), 0.8, 0.9) for a in h])
    assert torch.allclose(ours, ref, atol=1e-6)


def test_classes_are_distinct_by_colour():
    """The mean foreground colour of each class has the intended hue and the classes are well separated."""
    n_per = 40
    labels = torch.arange(NUM_CLASSES).repeat_interleave(n_per)
    images, _ = generate_batch(len(labels), seed=11, labels=labels)
    rgb = (images + 1) / 2
    # Foreground = saturated pixels (the background is a lightly tinted grey).
    sat = rgb.amax(1) - rgb.amin(1)
    mask = (sat > 0.35).float()[:, None]
    assert mask.mean(dim=(1, 2, 3)).min() > 0.03  # every image shows its shape
    mean_fg = (rgb * mask).sum(dim=(2, 3)) / mask.sum(dim=(2, 3))
    per_class = mean_fg.view(NUM_CLASSES, n_per, 3).mean(1)
    hues = torch.tensor([colorsys.rgb_to_hsv(*c.tolist())[0] * 360 for c in per_class])
    expected = torch.tensor(CLASS_HUES_DEG)
    diff = (hues - expected + 180) % 360 - 180
    assert diff.abs().max() < 10, diff
    dists = torch.cdist(per_class, per_class) + torch.eye(NUM_CLASSES) * 10
    assert dists.min() > 0.15, dists.min()
    # A nearest-mean colour classifier on individual images is almost always right.
    nearest = torch.cdist(mean_fg, per_class).argmin(1)
    assert (nearest == labels).float().mean() > 0.95


def test_shapes_differ_within_colour_channel():
    """Shape is a second cue: the binary foreground masks of different classes differ on average."""
    labels = torch.arange(NUM_CLASSES).repeat_interleave(30)
    images, _ = generate_batch(len(labels), seed=2, labels=labels)
    rgb = (images + 1) / 2
    area = ((rgb.amax(1) - rgb.amin(1)) > 0.35).float().mean(dim=(1, 2)).view(NUM_CLASSES, 30).mean(1)
    # Ring, plus, cross and crescent cover much less than the solid disc/square.
    assert area[3] < area[0] and area[4] < area[1] and area[7] < area[0] and area[9] < area[0]


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"n": 0}, ValueError),
        ({"n": 4, "seed": 1, "generator": torch.Generator()}, ValueError),
        ({"n": 2, "labels": torch.tensor([0, 10])}, ValueError),
        ({"n": 2, "labels": torch.tensor([0.0, 1.0])}, ValueError),
        ({"n": 2, "labels": torch.tensor([0, 1, 2])}, ValueError),
        ({"n": 2, "generator": 3}, TypeError),
    ],
)
def test_bad_input_refused(kwargs, error):
    with pytest.raises(error):
        generate_batch(**kwargs)


def test_dataset_bad_args():
    with pytest.raises(ValueError):
        ShapesDataset(length=0)
    with pytest.raises(TypeError):
        ShapesDataset(seed=1.5)
