"""Feature extractors: the protocol, FID's Inception, the in-domain feature net, and any user module.

An extractor maps canonical images (``[N, 3, H, W]`` uint8, or float in [0, 1]; see
:mod:`fastsample.eval.preprocess`) to float features ``[N, feature_dim]``. ``name`` and ``preprocessing`` are
written into statistics files, so that statistics made by different extractors or preprocessing are never
compared by accident.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Protocol, runtime_checkable

import torch
from torch import nn

from fastsample.eval.inception import load_inception
from fastsample.eval.preprocess import PREPROCESSING_MODES, preprocess_for_inception, to_unit_float

__all__ = [
    "EXTRACTOR_NAMES",
    "FeatureExtractor",
    "InDomainExtractor",
    "InceptionExtractor",
    "ModuleExtractor",
    "get_extractor",
]


@runtime_checkable
class FeatureExtractor(Protocol):
    """What the FID machinery needs from a feature extractor."""

    name: str
    feature_dim: int
    preprocessing: str
    device: torch.device

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Canonical images ``[N, 3, H, W]`` → features ``[N, feature_dim]``."""
        ...


class InceptionExtractor:
    """FID's InceptionV3 pool3 features (2048-d) with an explicit preprocessing mode.

    ``weights``: local path to ``pt_inception-2015-12-05-6726825d.pth`` (or a safetensors conversion), else
    ``$FASTSAMPLE_INCEPTION_WEIGHTS``; ``preprocessing``: ``"pytorch-fid"`` or ``"clean-fid"``. A ready
    :class:`~fastsample.eval.inception.InceptionV3Pool3` can be passed as ``model`` instead of ``weights``.
    """

    feature_dim = 2048

    def __init__(
        self,
        weights: str | os.PathLike | None = None,
        preprocessing: str = "pytorch-fid",
        device: torch.device | str | None = None,
        model: nn.Module | None = None,
    ) -> None:
        if preprocessing not in PREPROCESSING_MODES:
            raise ValueError(f"`preprocessing` must be one of {PREPROCESSING_MODES}, got {preprocessing!r}.")
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.preprocessing = preprocessing
        self.name = "inception-v3-pool3"
        self.model = (model if model is not None else load_inception(weights)).to(self.device).eval()

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = preprocess_for_inception(images, self.preprocessing).to(self.device)
        return self.model(x)


class ModuleExtractor:
    """Wrap any ``module(x) -> [N, D]`` (or a callable) as an extractor.

    ``transform`` maps canonical images to the module's input; the default gives float [-1, 1], i.e.
    2·(uint8/255) − 1. ``preprocessing`` names that transform in statistics files.
    """

    def __init__(
        self,
        module: Callable[[torch.Tensor], torch.Tensor],
        feature_dim: int,
        name: str,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        preprocessing: str = "unit-to-[-1,1]",
        device: torch.device | str | None = None,
    ) -> None:
        if not callable(module):
            raise TypeError("`module` must be callable (an nn.Module or a function).")
        if not isinstance(feature_dim, int) or feature_dim < 1:
            raise ValueError(f"`feature_dim` must be a positive int, got {feature_dim!r}.")
        self.module = module
        self.feature_dim = feature_dim
        self.name = name
        self.transform = (
            transform if transform is not None else (lambda images: 2.0 * to_unit_float(images) - 1.0)
        )
        self.preprocessing = preprocessing
        self.device = torch.device(device) if device is not None else torch.device("cpu")

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        features = self.module(self.transform(images).to(self.device))
        if features.ndim != 2 or features.shape[1] != self.feature_dim:
            raise ValueError(
                f"Extractor {self.name!r} returned shape {tuple(features.shape)}, "
                f"expected [N, {self.feature_dim}]."
            )
        return features


class InDomainExtractor(ModuleExtractor):
    """The embedded feature network trained on the zoo's procedural 32×32 images (in-domain Fréchet distance).

    ``net`` defaults to ``fastsample.zoo.default.load_feature_net(device)`` (imported on first use); any
    module with ``.features(x) -> [N, feature_dim]`` for float ``[N, 3, 32, 32]`` images in [-1, 1] and a
    ``feature_dim`` attribute works. Images of another size are refused, not resized.
    """

    image_size = 32

    def __init__(self, net: nn.Module | None = None, device: torch.device | str | None = None) -> None:
        if net is None:
            try:
                from fastsample.zoo.default import load_feature_net
            except ImportError as error:
                raise ImportError(
                    "The in-domain extractor needs fastsample.zoo.default.load_feature_net, which is not "
                    "available in this installation."
                ) from error
            net = load_feature_net(device=device)
        if not hasattr(net, "features") or not hasattr(net, "feature_dim"):
            raise TypeError("`net` must have a `.features(x)` method and a `feature_dim` attribute.")
        if isinstance(net, nn.Module):
            net.eval()
        super().__init__(
            net.features,
            int(net.feature_dim),
            name="fastsample-featurenet",
            transform=self._to_net_input,
            preprocessing="32x32-[-1,1]",
            device=device,
        )

    def _to_net_input(self, images: torch.Tensor) -> torch.Tensor:
        if tuple(images.shape[-2:]) != (self.image_size, self.image_size):
            raise ValueError(
                f"The in-domain feature net takes {self.image_size}×{self.image_size} images, got "
                f"{tuple(images.shape[-2:])}; use the Inception extractor for other sizes."
            )
        return 2.0 * to_unit_float(images) - 1.0


EXTRACTOR_NAMES = ("inception", "in-domain")


def get_extractor(
    name: str,
    weights: str | os.PathLike | None = None,
    preprocessing: str = "pytorch-fid",
    device: torch.device | str | None = None,
) -> FeatureExtractor:
    """Build a named extractor: ``"inception"`` (FID) or ``"in-domain"`` (the zoo's feature net).

    ``weights``: for ``"inception"`` a local Inception file (else ``$FASTSAMPLE_INCEPTION_WEIGHTS``); for
    ``"in-domain"`` a feature net file written by ``fastsample train-featurenet`` (else the shipped one).
    """
    if name == "inception":
        return InceptionExtractor(weights=weights, preprocessing=preprocessing, device=device)
    if name == "in-domain":
        if weights is None:
            return InDomainExtractor(device=device)
        from fastsample.zoo.featurenet import load_feature_net_file

        return InDomainExtractor(load_feature_net_file(weights, device=device), device=device)
    raise ValueError(f"Unknown extractor {name!r}; choose one of {EXTRACTOR_NAMES}.")
