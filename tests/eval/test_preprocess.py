"""Preprocessing modes against independent reference resizes."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fastsample.eval import preprocess_for_inception, to_canonical_images


@pytest.fixture
def uint8_images():
    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (2, 3, 40, 24), dtype=torch.uint8, generator=generator)


def test_pytorch_fid_mode_is_torch_bilinear_then_2x_minus_1(uint8_images):
    # pytorch-fid: ToTensor (/255), F.interpolate bilinear align_corners=False (no antialias), 2x - 1.
    reference = (
        2 * F.interpolate(uint8_images.float() / 255, size=(299, 299), mode="bilinear", align_corners=False)
        - 1
    )
    out = preprocess_for_inception(uint8_images, "pytorch-fid")
    assert out.shape == (2, 3, 299, 299) and out.dtype == torch.float32
    torch.testing.assert_close(out, reference, rtol=0, atol=1e-6)
    # Downsampling too, and without antialiasing (an antialiased resize differs noticeably).
    big = torch.randint(0, 256, (1, 3, 512, 512), dtype=torch.uint8)
    reference_big = (
        2 * F.interpolate(big.float() / 255, size=(299, 299), mode="bilinear", align_corners=False) - 1
    )
    torch.testing.assert_close(preprocess_for_inception(big, "pytorch-fid"), reference_big, rtol=0, atol=1e-6)
    antialiased = 2 * F.interpolate(big.float() / 255, size=(299, 299), mode="bilinear", antialias=True) - 1
    assert (preprocess_for_inception(big, "pytorch-fid") - antialiased).abs().max() > 0.05


def test_pytorch_fid_mode_identity_at_299():
    x = torch.randint(0, 256, (1, 3, 299, 299), dtype=torch.uint8)
    torch.testing.assert_close(
        preprocess_for_inception(x, "pytorch-fid"), x.float() / 255 * 2 - 1, rtol=0, atol=1e-6
    )


@pytest.mark.parametrize("size", [(40, 24), (512, 400)])
def test_clean_fid_mode_matches_antialiased_bicubic(size):
    # clean-fid resizes with PIL bicubic (mode "F", per channel); torch's antialiased bicubic implements
    # the same a = -0.5 kernel with PIL's support scaling: an independent implementation to compare with.
    x = torch.randint(0, 256, (2, 3, *size), dtype=torch.uint8)
    reference = F.interpolate(x.float(), size=(299, 299), mode="bicubic", align_corners=False, antialias=True)
    reference = (reference.clamp(0, 255) - 128) / 128
    out = preprocess_for_inception(x, "clean-fid")
    assert out.shape == (2, 3, 299, 299)
    torch.testing.assert_close(out, reference, rtol=0, atol=5e-3 / 128)


def test_clean_fid_mode_normalisation_and_float_path():
    x = torch.randint(0, 256, (1, 3, 299, 299), dtype=torch.uint8)
    torch.testing.assert_close(
        preprocess_for_inception(x, "clean-fid"), (x.float() - 128) / 128, rtol=0, atol=0
    )
    # Float inputs are scaled by 255 and not re-quantised (clean-fid's generator path).
    half = torch.full((1, 3, 299, 299), 0.5)
    torch.testing.assert_close(preprocess_for_inception(half, "clean-fid"), torch.full_like(half, -0.5 / 128))


def test_unknown_mode():
    with pytest.raises(ValueError, match="pytorch-fid"):
        preprocess_for_inception(torch.zeros(1, 3, 8, 8, dtype=torch.uint8), "tf1")


def test_to_canonical_images_layouts_and_quantisation():
    rng = np.random.default_rng(0)
    nhwc = rng.uniform(0, 1, (2, 8, 6, 3)).astype(np.float32)  # diffusers output_type="np"
    original = nhwc.copy()
    canonical = to_canonical_images(nhwc)
    assert canonical.shape == (2, 3, 8, 6) and canonical.dtype == torch.float32
    quantised = to_canonical_images(nhwc, quantize=True)
    expected = (nhwc * 255).round().astype(np.uint8).transpose(0, 3, 1, 2)  # diffusers numpy_to_pil
    np.testing.assert_array_equal(quantised.numpy(), expected)
    np.testing.assert_array_equal(nhwc, original)  # input untouched
    gray = to_canonical_images(torch.zeros(2, 1, 4, 4, dtype=torch.uint8))
    assert gray.shape == (2, 3, 4, 4)
    with pytest.raises(ValueError, match=r"\(x \+ 1\) / 2"):
        to_canonical_images(torch.full((1, 3, 4, 4), -1.0))
    with pytest.raises(ValueError, match="channels first"):
        to_canonical_images(torch.zeros(1, 4, 4, 3))
    with pytest.raises(TypeError):
        to_canonical_images([[0.0]])
