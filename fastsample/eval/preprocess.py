"""Image conventions and the Inception preprocessing modes of pytorch-fid and clean-fid.

Images move through the evaluation module as ``[N, 3, H, W]`` tensors that are either **uint8** in
[0, 255] (what image files hold) or **floating point in [0, 1]** (what a diffusers pipeline returns with
``output_type="np"``/``"pt"``). :func:`to_canonical_images` turns other layouts into that form.

Preprocessing modes (both give ``[N, 3, 299, 299]`` float32 network inputs in [-1, 1]):

``"pytorch-fid"`` (pytorch-fid 0.3.0, ``InceptionV3.forward``)
    x = uint8 / 255 (float inputs are used as they are, unquantised); ``F.interpolate(x, (299, 299),
    mode="bilinear", align_corners=False)`` with **no antialiasing** (at 299×299 this is the identity);
    then 2x − 1.

``"clean-fid"`` (clean-fid 0.1.35, ``mode="clean"``)
    x = uint8 as float in [0, 255] (float inputs are scaled by 255 and **not** re-quantised: clean-fid's
    float path for generator outputs); each channel of each image is resized on its own with PIL in mode
    ``"F"`` (float32) with ``Image.BICUBIC`` to 299×299 (PIL's bicubic is antialiased when shrinking, and
    PIL returns an unchanged copy at 299×299), clipped to [0, 255]; then (x − 128)/128, the normalisation
    inside the TF graph that clean-fid's TorchScript model applies.

Remaining difference to clean-fid: it runs NVIDIA's TorchScript port of the same TF graph, this module runs
the pytorch-fid port (weights with the same SHA-256 prefix 6726825d).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "PREPROCESSING_MODES",
    "INCEPTION_SIZE",
    "preprocess_for_inception",
    "to_canonical_images",
    "to_unit_float",
]

INCEPTION_SIZE = 299
PREPROCESSING_MODES = ("pytorch-fid", "clean-fid")


def to_canonical_images(images, quantize: bool = False) -> torch.Tensor:
    """Convert images to the canonical ``[N, 3, H, W]`` uint8 or float-in-[0, 1] tensor.

    Accepts torch tensors ``[N, 3, H, W]``/``[3, H, W]`` or NumPy arrays ``[N, H, W, 3]``/``[H, W, 3]`` (the
    layout of ``output_type="np"``), uint8 or float in [0, 1]; grayscale (1 channel) is repeated to RGB.
    ``quantize=True`` rounds float images to uint8 the way diffusers' ``numpy_to_pil`` does (what a saved PNG
    holds). Nothing passed in is modified.
    """
    if isinstance(images, np.ndarray):
        array = images
        if array.ndim == 3:
            array = array[None]
        if array.ndim != 4 or array.shape[-1] not in (1, 3):
            raise ValueError(f"NumPy images must be [N, H, W, 3] (channels last), got shape {images.shape}.")
        tensor = torch.from_numpy(np.ascontiguousarray(array)).permute(0, 3, 1, 2)
    elif isinstance(images, torch.Tensor):
        tensor = images.detach()
        if tensor.ndim == 3:
            tensor = tensor[None]
        if tensor.ndim != 4 or tensor.shape[1] not in (1, 3):
            raise ValueError(
                f"Image tensors must be [N, 3, H, W] (channels first), got shape {tuple(images.shape)}."
            )
    else:
        raise TypeError(f"`images` must be a torch.Tensor or numpy array, got {type(images).__name__}.")
    if tensor.shape[1] == 1:
        tensor = tensor.expand(-1, 3, -1, -1)
    if tensor.dtype == torch.uint8:
        return tensor.contiguous()
    if not tensor.is_floating_point():
        raise TypeError(f"Images must be uint8 or floating point, got {tensor.dtype}.")
    if tensor.numel() and (tensor.min() < -1e-3 or tensor.max() > 1 + 1e-3):
        raise ValueError(
            f"Float images must lie in [0, 1], got values in "
            f"[{tensor.min().item():.3f}, {tensor.max().item():.3f}]; "
            "convert [-1, 1] images with (x + 1) / 2."
        )
    tensor = tensor.float().clamp(0.0, 1.0)
    if quantize:
        return (tensor * 255.0).round().to(torch.uint8)
    return tensor.contiguous()


def to_unit_float(images: torch.Tensor) -> torch.Tensor:
    """Canonical images as float32 in [0, 1] (uint8 / 255)."""
    if images.dtype == torch.uint8:
        return images.float() / 255.0
    return images.float()


def _pil_bicubic_per_channel(images_0_255: torch.Tensor, size: int) -> torch.Tensor:
    from PIL import Image

    array = images_0_255.cpu().numpy().astype(np.float32)
    out = np.empty((array.shape[0], 3, size, size), dtype=np.float32)
    for i in range(array.shape[0]):
        for c in range(3):
            channel = Image.fromarray(array[i, c], mode="F").resize((size, size), resample=Image.BICUBIC)
            out[i, c] = np.asarray(channel)
    return torch.from_numpy(np.clip(out, 0.0, 255.0))


def preprocess_for_inception(images: torch.Tensor, mode: str = "pytorch-fid") -> torch.Tensor:
    """Canonical images → float32 ``[N, 3, 299, 299]`` Inception inputs in [-1, 1] (see module docstring)."""
    if mode not in PREPROCESSING_MODES:
        raise ValueError(f"`mode` must be one of {PREPROCESSING_MODES}, got {mode!r}.")
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
        raise ValueError("`images` must be a canonical [N, 3, H, W] tensor (see to_canonical_images).")
    if mode == "pytorch-fid":
        x = to_unit_float(images)
        x = F.interpolate(x, size=(INCEPTION_SIZE, INCEPTION_SIZE), mode="bilinear", align_corners=False)
        return 2.0 * x - 1.0
    x = images.float() if images.dtype == torch.uint8 else images.float() * 255.0
    x = _pil_bicubic_per_channel(x, INCEPTION_SIZE).to(images.device)
    return (x - 128.0) / 128.0
