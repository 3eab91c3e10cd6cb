"""Loaders for the embedded default: the shipped pixel-space DiT pipeline and the in-domain feature network.

The files live in ``fastsample/zoo/weights/`` inside the installed package (found with
``importlib.resources``), so nothing is ever downloaded:

- ``featurenet.safetensors``: :class:`~fastsample.zoo.featurenet.FeatureNet`
  (reproduced by ``fastsample train-featurenet``);
- ``shapenet.safetensors``: the colour-blind shape classifier of :mod:`fastsample.eval.shape`
  (reproduced by ``benchmarks/train_shape_net.py``);
- ``dit.safetensors`` + ``dit_config.json``: the ``DiTTransformer2DModel`` trained on
  :mod:`fastsample.zoo.data`;
- ``scheduler_config.json``: the noise schedule it was trained with (a diffusers scheduler config).
"""

from __future__ import annotations

import contextlib
import importlib.resources
import logging
import math
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fastsample.zoo.featurenet import FeatureNet, load_feature_net_file

logger = logging.getLogger(__name__)

__all__ = [
    "DIT_CONFIG_FILE",
    "DIT_WEIGHTS_FILE",
    "FEATURE_NET_FILE",
    "MODELS",
    "SCHEDULER_CONFIG_FILE",
    "SHAPE_NET_FILE",
    "classify",
    "images_to_tensor",
    "load_default_pipeline",
    "load_default_scheduler",
    "load_default_transformer",
    "load_dit",
    "load_feature_net",
    "load_shape_net",
]

FEATURE_NET_FILE = "featurenet.safetensors"
SHAPE_NET_FILE = "shapenet.safetensors"
DIT_WEIGHTS_FILE = "dit.safetensors"
DIT_CONFIG_FILE = "dit_config.json"
SCHEDULER_CONFIG_FILE = "scheduler_config.json"
MODELS = ("vp", "flow")
FLOW_SUBFOLDER = "flow"

_HOW_TO_PRODUCE = {
    FEATURE_NET_FILE: "run `fastsample train-featurenet` (see benchmarks/results/zoo.md)",
    SHAPE_NET_FILE: "run `python benchmarks/train_shape_net.py` (see benchmarks/results/eval.md)",
    DIT_WEIGHTS_FILE: "train the default DiT with the zoo DiT trainer (see benchmarks/results/zoo.md)",
    DIT_CONFIG_FILE: "the zoo DiT trainer writes it next to dit.safetensors (see benchmarks/results/zoo.md)",
    SCHEDULER_CONFIG_FILE: "it is written by the zoo DiT trainer (see benchmarks/results/zoo.md)",
}
_HOW_TO_PRODUCE_FLOW = (
    "train the flow-matching DiT with `fastsample train --prediction-type flow --export "
    "fastsample/zoo/weights/flow` (see benchmarks/results/zoo.md)"
)


def _weights_root() -> Any:
    """The package's ``weights`` folder (an ``importlib.resources`` Traversable)."""
    return importlib.resources.files("fastsample.zoo").joinpath("weights")


def _check_model(model: str) -> str:
    if model not in MODELS:
        raise ValueError(f"model must be one of {MODELS}, got {model!r}")
    return model


@contextlib.contextmanager
def _weights_file(name: str, model: str = "vp") -> Iterator[Path]:
    """Path of a shipped weights file of ``model`` (``"flow"`` files live in ``weights/flow/``); a clear
    FileNotFoundError naming the file when it is not in the package."""
    root = _weights_root()
    if _check_model(model) == "flow" and name != FEATURE_NET_FILE and name != SHAPE_NET_FILE:
        root, shown, how = root.joinpath(FLOW_SUBFOLDER), f"{FLOW_SUBFOLDER}/{name}", _HOW_TO_PRODUCE_FLOW
    else:
        shown, how = name, _HOW_TO_PRODUCE[name]
    resource = root.joinpath(name)
    if not resource.is_file():
        raise FileNotFoundError(
            f"fastsample/zoo/weights/{shown} is missing from the installed package; to produce it, {how}."
        )
    with importlib.resources.as_file(resource) as path:
        yield path


def _read_json(name: str, model: str = "vp", directory: str | os.PathLike | None = None) -> dict[str, Any]:
    from fastsample.errors import read_json

    if directory is not None:
        return read_json(_folder_file(directory, name), f"{name} (a JSON object)")
    with _weights_file(name, model) as path:
        return read_json(path, f"the shipped {name} (a JSON object)")


def _folder_file(directory: str | os.PathLike, name: str) -> Path:
    """``directory/name``; a FileNotFoundError naming it when it is absent."""
    path = Path(directory) / name
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing: a model folder needs {DIT_WEIGHTS_FILE}, {DIT_CONFIG_FILE} and "
            f"{SCHEDULER_CONFIG_FILE} (as `fastsample train --export DIR` writes them)"
        )
    return path


def load_feature_net(device: str | torch.device | None = None) -> FeatureNet:
    """The shipped :class:`FeatureNet` in eval mode (on ``device``, CPU by default)."""
    with _weights_file(FEATURE_NET_FILE) as path:
        return load_feature_net_file(path, device=device)


def load_shape_net(device: str | torch.device | None = None) -> FeatureNet:
    """The shipped colour-blind shape classifier (a small :class:`FeatureNet` on the view of
    :func:`fastsample.eval.shape.colour_blind_view`), in eval mode."""
    with _weights_file(SHAPE_NET_FILE) as path:
        return load_feature_net_file(path, device=device)


def load_dit(
    directory: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    *,
    model: str = "vp",
) -> Any:
    """A ``DiTTransformer2DModel`` in eval mode, cast to ``dtype`` (float32 by default), from ``directory`` (a
    folder laid out like the shipped weights: ``dit_config.json`` + ``dit.safetensors``, as
    ``fastsample train --export`` writes them) or, with ``directory=None``, the shipped weights of ``model``
    (``"vp"``: ``weights/``, ``"flow"``: ``weights/flow/``)."""
    from diffusers import DiTTransformer2DModel

    from fastsample.errors import ArtifactError, read_json, read_safetensors, reading

    if directory is None:
        with _weights_file(DIT_CONFIG_FILE, model), _weights_file(DIT_WEIGHTS_FILE, model) as path:
            return load_dit(path.parent, device=device, dtype=dtype)
    _check_model(model)
    config_file = _folder_file(directory, DIT_CONFIG_FILE)
    weights_file = _folder_file(directory, DIT_WEIGHTS_FILE)
    expected = "a DiTTransformer2DModel config (JSON)"
    config = read_json(config_file, expected)
    class_name = config.get("_class_name", "DiTTransformer2DModel")
    if class_name not in ("DiTTransformer2DModel", "Transformer2DModel"):
        raise ArtifactError(config_file, expected, f"_class_name {class_name!r}")
    with reading(config_file, expected):
        transformer = DiTTransformer2DModel.from_config(config)
    state = read_safetensors(weights_file, f"the weights of the DiT described by {DIT_CONFIG_FILE}")
    with reading(weights_file, f"the weights of the DiT described by {DIT_CONFIG_FILE}"):
        transformer.load_state_dict(state, strict=True)
    if (dtype or torch.float32) != transformer.dtype:  # diffusers warns on every dtype cast, even a no-op
        transformer = transformer.to(dtype=dtype)
    if device is not None:
        transformer = transformer.to(device)
    return transformer.eval()


def load_default_transformer(
    device: str | torch.device | None = None, dtype: torch.dtype | None = None, *, model: str = "vp"
) -> Any:
    """The shipped ``DiTTransformer2DModel`` of ``model`` (eval mode), cast to ``dtype`` (float32 default)."""
    return load_dit(None, device=device, dtype=dtype, model=model)


def load_default_scheduler(
    scheduler: Any = None,
    *,
    model: str = "vp",
    directory: str | os.PathLike | None = None,
    shift: float | None = None,
) -> Any:
    """The scheduler of the default pipeline of ``model`` (or of the model folder ``directory``).

    ``scheduler`` may be ``None`` (the stored config's own class), a scheduler class (built with
    ``from_config`` from the stored config, so it keeps the training noise schedule), or a scheduler instance
    (returned as is). For ``model="flow"`` the stored config must be a FlowMatch scheduler's; ``shift``
    replaces its SD3 time shift σ ← sσ / (1 + (s − 1)σ) (``None``: the stored value).
    """
    _check_model(model)
    if shift is not None:
        if model != "flow":
            raise ValueError("shift: only flow-matching models (model='flow') have a time shift")
        if (
            isinstance(shift, bool)
            or not isinstance(shift, (int, float))
            or not math.isfinite(shift)
            or shift <= 0
        ):
            raise ValueError(f"shift: expected a finite number > 0, got {shift!r}")
    if scheduler is not None and not isinstance(scheduler, type):
        if not (hasattr(scheduler, "set_timesteps") and hasattr(scheduler, "step")):
            raise TypeError(f"scheduler: expected a diffusers scheduler class or instance, got {scheduler!r}")
        if shift is not None:
            raise ValueError("shift: cannot be combined with a scheduler instance (set it on the instance)")
        return scheduler
    config = _read_json(SCHEDULER_CONFIG_FILE, model, directory)
    class_name = config.get("_class_name")
    if model == "flow":
        if not str(class_name).startswith("FlowMatch"):
            where = (
                Path(directory) / SCHEDULER_CONFIG_FILE if directory is not None else SCHEDULER_CONFIG_FILE
            )
            raise ValueError(
                f"{where}: model='flow' needs a FlowMatch scheduler config "
                f"(FlowMatchEulerDiscreteScheduler), "
                f"got _class_name {class_name!r}"
            )
        if shift is not None:
            config = {**config, "shift": float(shift)}
    if scheduler is None:
        import diffusers

        scheduler = getattr(diffusers, class_name, None) if class_name else None
        if scheduler is None:
            raise ValueError(
                f"{SCHEDULER_CONFIG_FILE}: _class_name {class_name!r} is not a diffusers scheduler; "
                "pass scheduler=<a scheduler class> explicitly"
            )
    if not hasattr(scheduler, "from_config"):
        raise TypeError(f"scheduler: a scheduler class must provide from_config, got {scheduler!r}")
    return scheduler.from_config(config)


def load_default_pipeline(
    scheduler: Any = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    *,
    model: str = "vp",
    directory: str | os.PathLike | None = None,
    shift: float | None = None,
) -> Any:
    """The embedded default: a :class:`~fastsample.pipelines.pixel_dit.PixelDiTPipeline` with a shipped DiT.

    Args:
        scheduler: ``None`` (the stored scheduler), a scheduler class (built from the stored config) or an
            instance.
        device: where to put the transformer (CPU by default).
        dtype: transformer dtype (float32 by default).
        model: ``"vp"`` (the DDPM-linear ε-prediction DiT in ``weights/``) or ``"flow"`` (the rectified-flow
            DiT in ``weights/flow/``, sampled with its ``FlowMatchEulerDiscreteScheduler`` config).
        directory: load from this model folder instead of the shipped weights (``dit.safetensors``,
            ``dit_config.json``, ``scheduler_config.json``: what ``fastsample train --export DIR`` writes; for
            ``model="flow"``, of a ``--prediction-type flow`` run).
        shift: flow only: the sampling time shift (``None``: the stored config's; see
            :func:`load_default_scheduler`).
    """
    from fastsample.pipelines.pixel_dit import PixelDiTPipeline
    from fastsample.zoo.data import CLASS_NAMES

    transformer = load_dit(directory, device=device, dtype=dtype, model=model)
    noise_scheduler = load_default_scheduler(scheduler, model=model, directory=directory, shift=shift)
    return PixelDiTPipeline(transformer=transformer, scheduler=noise_scheduler, class_names=list(CLASS_NAMES))


def images_to_tensor(images: Any) -> torch.Tensor:
    """Pipeline outputs → float tensor ``[N, 3, H, W]`` in [-1, 1], the input :class:`FeatureNet` expects.

    Accepts what :class:`~fastsample.pipelines.pixel_dit.PixelDiTPipeline` returns, all with values in [0, 1]:
    a list of PIL images, a NumPy array ``[N, H, W, 3]`` (float in [0, 1] or uint8), or a torch tensor
    ``[N, 3, H, W]`` (float in [0, 1] or uint8).
    """
    if isinstance(images, Sequence) and images and hasattr(images[0], "convert"):
        array = np.stack([np.asarray(image.convert("RGB")) for image in images])
        return images_to_tensor(array)
    if isinstance(images, np.ndarray):
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"images: expected a NumPy array [N, H, W, 3], got shape {images.shape}")
        images = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
    if not isinstance(images, torch.Tensor):
        raise TypeError(
            f"images: expected PIL images, a NumPy array or a torch tensor, got {type(images).__name__}"
        )
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images: expected a tensor [N, 3, H, W], got shape {tuple(images.shape)}")
    if images.dtype == torch.uint8:
        return images.float() / 127.5 - 1.0
    if not images.dtype.is_floating_point:
        raise TypeError(f"images: expected float values in [0, 1] or uint8, got dtype {images.dtype}")
    if images.numel() and (images.min() < 0 or images.max() > 1):
        raise ValueError(
            "images: float values must lie in [0, 1] (pipeline output); for images already in [-1, 1] "
            "call the FeatureNet directly"
        )
    return images.float() * 2.0 - 1.0


@torch.no_grad()
def classify(images: Any, feature_net: FeatureNet | None = None, batch_size: int = 512) -> torch.Tensor:
    """Predicted class ids ``[N]`` (int64, CPU) of pipeline outputs (see :func:`images_to_tensor`)."""
    net = feature_net if feature_net is not None else load_feature_net()
    device = next(net.parameters()).device
    x = images_to_tensor(images)
    predictions = [net(chunk.to(device)).argmax(dim=1).cpu() for chunk in x.split(batch_size)]
    return torch.cat(predictions)
