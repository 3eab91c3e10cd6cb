"""The Inception network: pytorch-fid's state-dict layout, safe loading only, and pool3 features."""

import os
import pickle

import pytest
import torch
from safetensors.torch import save_file

from fastsample.eval import InceptionExtractor, InceptionV3Pool3, load_inception, preprocess_for_inception
from fastsample.eval.inception import INCEPTION_WEIGHTS_ENV, INCEPTION_WEIGHTS_FILENAME

# Parameter count of torchvision's inception_v3 with aux logits and 1000 classes (torchvision docs:
# 27,161,264) minus AuxLogits (conv0 98,304 + bn 256; conv1 2,457,600 + bn 1,536; fc 769,000) plus the 8
# extra classes of the FID graph (8 × 2049): the size of pytorch-fid's FID Inception.
EXPECTED_PARAMETERS = 27_161_264 - (98_304 + 256 + 2_457_600 + 1_536 + 769_000) + 8 * 2049

# A few entries of pt_inception-2015-12-05-6726825d.pth, by torchvision's naming: (key, shape).
KNOWN_KEYS = {
    "Conv2d_1a_3x3.conv.weight": (32, 3, 3, 3),
    "Conv2d_4a_3x3.bn.running_var": (192,),
    "Mixed_5b.branch_pool.conv.weight": (32, 192, 1, 1),
    "Mixed_6e.branch7x7dbl_5.conv.weight": (192, 192, 1, 7),
    "Mixed_7a.branch3x3_2.conv.weight": (320, 192, 3, 3),
    "Mixed_7c.branch3x3dbl_3b.bn.weight": (384,),
    "fc.weight": (1008, 2048),
}


@pytest.fixture(scope="module")
def random_state_dict():
    torch.manual_seed(0)
    model = InceptionV3Pool3()
    for module in model.modules():  # non-trivial batch-norm statistics
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    # Saved without num_batches_tracked, like the original (pre-1.0 torch) weights file.
    return {k: v.clone() for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}


def test_layout_matches_pytorch_fid(random_state_dict):
    model = InceptionV3Pool3()
    assert sum(p.numel() for p in model.parameters()) == EXPECTED_PARAMETERS
    for key, shape in KNOWN_KEYS.items():
        assert tuple(random_state_dict[key].shape) == shape, key
    assert not any(k.startswith("AuxLogits") for k in random_state_dict)


def test_loads_pth_and_gives_2048_features(tmp_path, random_state_dict):
    path = tmp_path / INCEPTION_WEIGHTS_FILENAME
    torch.save(random_state_dict, path)
    model = load_inception(path)
    for key, value in random_state_dict.items():
        torch.testing.assert_close(model.state_dict()[key], value, rtol=0, atol=0)
    assert not model.training
    x = torch.rand(1, 3, 75, 75) * 2 - 1  # fully convolutional; 75×75 is the smallest valid input (fast)
    with torch.inference_mode():
        features = model(x)
    assert features.shape == (1, 2048)
    assert torch.isfinite(features).all() and (features >= 0).all()  # average of ReLU outputs


def test_loads_pytorch_fid_wrapper_layout_and_safetensors(tmp_path, random_state_dict):
    # pytorch-fid's InceptionV3 module names its layers blocks.<i>.<j> and has no fc layer.
    order = [
        ["Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3"],
        ["Conv2d_3b_1x1", "Conv2d_4a_3x3"],
        ["Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e"],
        ["Mixed_7a", "Mixed_7b", "Mixed_7c"],
    ]
    wrapper = {}
    for key, value in random_state_dict.items():
        layer, rest = key.split(".", 1)
        for i, names in enumerate(order):
            if layer in names:
                wrapper[f"blocks.{i}.{names.index(layer)}.{rest}"] = value
    assert len(wrapper) == len(random_state_dict) - 2  # all but fc.weight / fc.bias
    save_file(wrapper, str(tmp_path / "inception.safetensors"))
    model = load_inception(tmp_path / "inception.safetensors")
    torch.testing.assert_close(
        model.Mixed_6c.branch7x7_2.conv.weight,
        random_state_dict["Mixed_6c.branch7x7_2.conv.weight"],
        rtol=0,
        atol=0,
    )


def test_missing_weights_give_instructions(tmp_path, monkeypatch):
    monkeypatch.delenv(INCEPTION_WEIGHTS_ENV, raising=False)
    with pytest.raises(FileNotFoundError, match=INCEPTION_WEIGHTS_FILENAME) as info:
        load_inception()
    assert INCEPTION_WEIGHTS_ENV in str(info.value) and "never downloads" in str(info.value)
    monkeypatch.setenv(INCEPTION_WEIGHTS_ENV, str(tmp_path / "nope.pth"))
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        InceptionExtractor()


class _Payload:
    def __reduce__(self):
        return (os.system, ("echo should-never-run",))


def test_refuses_pickles_with_arbitrary_objects(tmp_path):
    path = tmp_path / "evil.pth"
    with open(path, "wb") as handle:
        pickle.dump({"Conv2d_1a_3x3.conv.weight": _Payload()}, handle, protocol=2)
    with pytest.raises(ValueError, match="weights_only=True"):
        load_inception(path)


def test_refuses_wrong_layout(tmp_path):
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="layout"):
        load_inception(tmp_path / "other.pth")


class _PooledStandIn(torch.nn.Module):
    """Cheap stand-in for the network: records its input, returns 2048 features."""

    def forward(self, x):
        self.seen = x
        return torch.nn.functional.adaptive_avg_pool2d(x, 4).flatten(1).repeat(1, 43)[:, :2048]


def test_extractor_applies_its_preprocessing_mode():
    model = _PooledStandIn()
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    for mode in ("pytorch-fid", "clean-fid"):
        features = InceptionExtractor(model=model, preprocessing=mode)(images)
        assert features.shape == (2, 2048)
        torch.testing.assert_close(model.seen, preprocess_for_inception(images, mode), rtol=0, atol=0)
    with pytest.raises(ValueError, match="preprocessing"):
        InceptionExtractor(model=model, preprocessing="tf1")
