"""InceptionV3 as used for FID (pytorch-fid's "FID Inception"), returning the 2048-d pool3 features.

Architecture: Szegedy et al., "Rethinking the Inception Architecture for Computer Vision" (CVPR 2016), in the
variant of the TF ``inception-2015-12-05`` graph that FID is defined on (Heusel et al. 2017). It differs from
torchvision's ImageNet Inception in three places, which pytorch-fid patches and this module writes directly:
the average pools inside the A, C and E blocks exclude the zero padding (``count_include_pad=False``), the
last E block (``Mixed_7c``) pools with a 3×3 **max** pool, and the classifier has 1008 classes.

Module names follow torchvision's ``Inception3`` (``Conv2d_1a_3x3.conv.weight``, ``Mixed_5b.branch1x1.bn.
running_mean``, ..., ``fc.weight``), which is the layout of pytorch-fid's weights file
``pt_inception-2015-12-05-6726825d.pth``; state dicts saved from pytorch-fid's ``InceptionV3`` wrapper
(``blocks.<i>.<j>.…``) are accepted too. Weights are only ever read from a local file: nothing downloads.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "INCEPTION_WEIGHTS_ENV",
    "INCEPTION_WEIGHTS_FILENAME",
    "InceptionV3Pool3",
    "load_inception",
    "resolve_inception_weights",
]

logger = logging.getLogger(__name__)

INCEPTION_WEIGHTS_ENV = "FASTSAMPLE_INCEPTION_WEIGHTS"
INCEPTION_WEIGHTS_FILENAME = "pt_inception-2015-12-05-6726825d.pth"
INCEPTION_WEIGHTS_URL = (
    "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/" + INCEPTION_WEIGHTS_FILENAME
)


class BasicConv2d(nn.Module):
    """Convolution without bias, batch norm (eps 1e-3), ReLU."""

    def __init__(self, in_channels: int, out_channels: int, **conv_kwargs) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, bias=False, **conv_kwargs)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _avg_pool_3x3_no_pad_count(x: torch.Tensor) -> torch.Tensor:
    # TF's average pool divides by the number of real (unpadded) pixels.
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    def __init__(self, in_channels: int, pool_features: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch5x5_1 = BasicConv2d(in_channels, 48, kernel_size=1)
        self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
        self.branch_pool = BasicConv2d(in_channels, pool_features, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch5x5 = self.branch5x5_2(self.branch5x5_1(x))
        branch3x3dbl = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        branch_pool = self.branch_pool(_avg_pool_3x3_no_pad_count(x))
        return torch.cat([self.branch1x1(x), branch5x5, branch3x3dbl, branch_pool], 1)


class InceptionB(nn.Module):
    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.branch3x3 = BasicConv2d(in_channels, 384, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch3x3dbl = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch3x3(x), branch3x3dbl, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class InceptionC(nn.Module):
    def __init__(self, in_channels: int, channels_7x7: int) -> None:
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch7x7_1 = BasicConv2d(in_channels, c7, kernel_size=1)
        self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(in_channels, c7, kernel_size=1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(in_channels, 192, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch7x7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        branch7x7dbl = x
        for layer in (
            self.branch7x7dbl_1,
            self.branch7x7dbl_2,
            self.branch7x7dbl_3,
            self.branch7x7dbl_4,
            self.branch7x7dbl_5,
        ):
            branch7x7dbl = layer(branch7x7dbl)
        branch_pool = self.branch_pool(_avg_pool_3x3_no_pad_count(x))
        return torch.cat([self.branch1x1(x), branch7x7, branch7x7dbl, branch_pool], 1)


class InceptionD(nn.Module):
    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.branch3x3_1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch3x3 = self.branch3x3_2(self.branch3x3_1(x))
        branch7x7x3 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([branch3x3, branch7x7x3, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class InceptionE(nn.Module):
    """Expanded-filter-bank block; ``max_pool=True`` is the TF graph's last block (``Mixed_7c``)."""

    def __init__(self, in_channels: int, max_pool: bool = False) -> None:
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = BasicConv2d(in_channels, 320, kernel_size=1)
        self.branch3x3_1 = BasicConv2d(in_channels, 384, kernel_size=1)
        self.branch3x3_2a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 448, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(in_channels, 192, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch3x3 = self.branch3x3_1(x)
        branch3x3 = torch.cat([self.branch3x3_2a(branch3x3), self.branch3x3_2b(branch3x3)], 1)
        branch3x3dbl = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        branch3x3dbl = torch.cat([self.branch3x3dbl_3a(branch3x3dbl), self.branch3x3dbl_3b(branch3x3dbl)], 1)
        if self.max_pool:
            pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
        else:
            pooled = _avg_pool_3x3_no_pad_count(x)
        return torch.cat([self.branch1x1(x), branch3x3, branch3x3dbl, self.branch_pool(pooled)], 1)


# Order of the feature layers; pytorch-fid's wrapper puts them in ``blocks.<i>.<j>`` (max pools in between).
# "maxpool" is a parameter-free 3×3/2 max pool; the final global average pool closes block 3.
_BLOCK_LAYOUT: tuple[tuple[str, ...], ...] = (
    ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool"),
    ("Conv2d_3b_1x1", "Conv2d_4a_3x3", "maxpool"),
    ("Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e"),
    ("Mixed_7a", "Mixed_7b", "Mixed_7c", "avgpool"),
)
_PARAMETER_FREE = ("maxpool", "avgpool")


class InceptionV3Pool3(nn.Module):
    """FID InceptionV3: ``[N, 3, 299, 299]`` inputs in [-1, 1] → ``[N, 2048]`` pool3 features.

    Inputs must already be preprocessed (:func:`fastsample.eval.preprocess.preprocess_for_inception`). The
    1008-way ``fc`` layer exists only so that the original weights file loads strictly; it is not run.
    """

    feature_dim = 2048

    def __init__(self) -> None:
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, channels_7x7=128)
        self.Mixed_6c = InceptionC(768, channels_7x7=160)
        self.Mixed_6d = InceptionC(768, channels_7x7=160)
        self.Mixed_6e = InceptionC(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280)
        self.Mixed_7c = InceptionE(2048, max_pool=True)
        self.fc = nn.Linear(2048, 1008)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"InceptionV3Pool3 expects [N, 3, H, W] inputs, got {tuple(x.shape)}.")
        for block in _BLOCK_LAYOUT:
            for name in block:
                if name == "maxpool":
                    x = F.max_pool2d(x, kernel_size=3, stride=2)
                elif name == "avgpool":
                    x = F.adaptive_avg_pool2d(x, (1, 1))
                else:
                    x = getattr(self, name)(x)
        return torch.flatten(x, 1)

    def load_pytorch_fid_state_dict(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Load a torchvision-layout (the weights file) or pytorch-fid-wrapper-layout state dict, strictly."""
        state_dict = _rename_wrapper_keys(state_dict)
        if "fc.weight" not in state_dict:  # the wrapper drops the classifier; keep ours so loading is strict
            state_dict = {
                **state_dict,
                "fc.weight": self.fc.weight.detach(),
                "fc.bias": self.fc.bias.detach(),
            }
        missing, unexpected = self.load_state_dict(state_dict, strict=False)
        missing = [key for key in missing if not key.endswith("num_batches_tracked")]
        unexpected = [key for key in unexpected if not key.startswith("AuxLogits.")]
        if missing or unexpected:
            raise ValueError(
                "The state dict does not have pytorch-fid's InceptionV3 layout: "
                f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
                f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}."
            )


def _rename_wrapper_keys(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``blocks.<i>.<j>.rest`` (pytorch-fid's ``InceptionV3`` module) → ``<layer name>.rest``."""
    renamed = {}
    for key, value in state_dict.items():
        parts = key.split(".", 3)
        if parts[0] == "blocks" and len(parts) == 4 and parts[1].isdigit() and parts[2].isdigit():
            block, position = int(parts[1]), int(parts[2])
            if block < len(_BLOCK_LAYOUT) and position < len(_BLOCK_LAYOUT[block]):
                name = _BLOCK_LAYOUT[block][position]
                if name not in _PARAMETER_FREE:
                    renamed[f"{name}.{parts[3]}"] = value
                    continue
        renamed[key] = value
    return renamed


def resolve_inception_weights(weights: str | os.PathLike | None = None) -> Path:
    """The local weights path: the argument, else ``$FASTSAMPLE_INCEPTION_WEIGHTS``; never downloads."""
    source = "argument `weights`"
    if weights is None:
        weights = os.environ.get(INCEPTION_WEIGHTS_ENV)
        source = f"environment variable {INCEPTION_WEIGHTS_ENV}"
    instructions = (
        f"FID needs the Inception weights ported by pytorch-fid, the file {INCEPTION_WEIGHTS_FILENAME} "
        f"(from {INCEPTION_WEIGHTS_URL}; pytorch-fid caches it in ~/.cache/torch/hub/checkpoints/). "
        "fastsample never downloads it: place it on disk and pass its path as `weights=` / --weights, or set "
        f"{INCEPTION_WEIGHTS_ENV}. A .safetensors conversion of the same state dict works too."
    )
    if weights is None:
        raise FileNotFoundError(f"No Inception weights given. {instructions}")
    path = Path(weights).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"Inception weights file not found: {str(path)!r} (from {source}). {instructions}"
        )
    return path


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    from fastsample.errors import ArtifactError, read_safetensors, read_torch_tensors

    expected = "Inception weights: a state dict (a mapping of names to tensors) in .safetensors or .pth"
    if path.suffix == ".safetensors":
        return read_safetensors(path, expected)
    # weights_only=True: a pickle holding objects other than tensors (code) is refused, naming the file
    state_dict = read_torch_tensors(path, expected)
    if (
        isinstance(state_dict, dict)
        and "state_dict" in state_dict
        and isinstance(state_dict["state_dict"], dict)
    ):
        state_dict = state_dict["state_dict"]
    if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise ArtifactError(path, expected, f"a {type(state_dict).__name__} that is not a state dict")
    return state_dict


def load_inception(
    weights: str | os.PathLike | None = None, device: torch.device | str | None = None
) -> InceptionV3Pool3:
    """Build :class:`InceptionV3Pool3` and load local weights (argument or ``$FASTSAMPLE_INCEPTION_WEIGHTS``).

    ``.pth``/``.pt`` files are read with ``torch.load(weights_only=True)``; ``.safetensors`` with safetensors.
    Returns the network in eval mode with gradients off.
    """
    from fastsample.errors import reading

    path = resolve_inception_weights(weights)
    model = InceptionV3Pool3()
    state_dict = _read_state_dict(path)
    with reading(path, "pytorch-fid's InceptionV3 weights"):
        model.load_pytorch_fid_state_dict(state_dict)
    logger.info("Loaded Inception weights from %s", path)
    model.eval().requires_grad_(False)
    return model.to(device) if device is not None else model
