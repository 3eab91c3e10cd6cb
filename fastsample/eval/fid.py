"""Statistics of image sets and the Fréchet distance between them (FID with the Inception extractor).

``compute_statistics(source, extractor)`` accepts an image folder, a ``.npz`` statistics file, an image
tensor/array, or any iterable of canonical image batches (e.g. :func:`generate_image_batches`); under
``accelerate launch`` pass the ``Accelerator``: each process extracts features of its shard and the float64
accumulators are merged exactly, so every process returns the statistics of the whole set.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fastsample.eval.extractors import FeatureExtractor
from fastsample.eval.inputs import ImageFolder, generate_image_batches, tensor_batches
from fastsample.eval.stats import FeatureStatistics, Statistics, fid_from_statistics, load_statistics

__all__ = ["compute_fid", "compute_statistics", "extract_features", "pipeline_statistics"]

logger = logging.getLogger(__name__)


def _metadata(extractor: FeatureExtractor) -> dict[str, str]:
    from fastsample import __version__

    return {"extractor": extractor.name, "preprocessing": extractor.preprocessing, "fastsample": __version__}


def _batches(source: Any, batch_size: int, accelerator: Any | None, allow_mixed_sizes: bool) -> Iterable:
    if isinstance(source, str | os.PathLike):
        return ImageFolder(source, allow_mixed_sizes=allow_mixed_sizes).batches(batch_size, accelerator)
    if isinstance(source, torch.Tensor | np.ndarray):
        return tensor_batches(source, batch_size, accelerator)
    if isinstance(source, Iterable):
        return source  # already sharded by whoever made it
    raise TypeError(
        "`source` must be an image folder path, a .npz statistics path, an image tensor/array, or an "
        f"iterable of image batches; got {type(source).__name__}."
    )


def _run_extractor(
    batches: Iterable,
    extractor: FeatureExtractor,
    accelerator: Any | None,
    progress: bool,
    keep_features: bool,
) -> tuple[FeatureStatistics, list[torch.Tensor]]:
    from tqdm.auto import tqdm

    if not isinstance(extractor, FeatureExtractor):
        raise TypeError("`extractor` must implement the FeatureExtractor protocol (name, feature_dim, ...).")
    accumulator = FeatureStatistics(extractor.feature_dim, device=extractor.device)
    kept: list[torch.Tensor] = []
    is_main = accelerator is None or accelerator.is_local_main_process
    with torch.inference_mode():
        for batch in tqdm(batches, desc="features", unit="batch", disable=not (progress and is_main)):
            features = extractor(batch)
            accumulator.update(features)
            if keep_features:
                kept.append(features.detach().cpu())
    return accumulator, kept


def compute_statistics(
    source: Any,
    extractor: FeatureExtractor | None = None,
    batch_size: int = 50,
    accelerator: Any | None = None,
    allow_mixed_sizes: bool = False,
    strict: bool = False,
    progress: bool = True,
) -> Statistics:
    """Float64 mean and covariance of ``extractor`` features over ``source`` (see the module docstring).

    A ``.npz`` path is read with :func:`load_statistics` (no extractor needed). ``strict=True`` raises
    instead of warning when there are fewer samples than feature dimensions.
    """
    if isinstance(source, str | os.PathLike) and Path(source).suffix == ".npz":
        return load_statistics(source)
    if extractor is None:
        raise ValueError("`extractor` is required to compute statistics from images.")
    batches = _batches(source, batch_size, accelerator, allow_mixed_sizes)
    accumulator, _ = _run_extractor(batches, extractor, accelerator, progress, keep_features=False)
    accumulator.all_reduce(accelerator)
    return accumulator.result(_metadata(extractor), strict=strict)


def extract_features(
    source: Any,
    extractor: FeatureExtractor,
    batch_size: int = 50,
    accelerator: Any | None = None,
    allow_mixed_sizes: bool = False,
    progress: bool = True,
) -> torch.Tensor:
    """All features of ``source`` as a float32 CPU tensor ``[N, D]`` (gathered from every process).

    Needed by precision/recall, which works on the features themselves rather than their statistics. With
    several processes, rows come in process order, not in the source's order.
    """
    batches = _batches(source, batch_size, accelerator, allow_mixed_sizes)
    _, kept = _run_extractor(batches, extractor, accelerator, progress, keep_features=True)
    local = torch.cat(kept) if kept else torch.empty(0, extractor.feature_dim)
    if accelerator is None or accelerator.num_processes == 1:
        return local.float()
    from accelerate.utils import gather_object

    parts = gather_object([local.float().numpy()])
    return torch.from_numpy(np.concatenate(parts))


def pipeline_statistics(
    pipe: Any,
    extractor: FeatureExtractor,
    num_images: int,
    prompts: list[str] | None = None,
    class_labels: list[int] | None = None,
    batch_size: int = 8,
    seed: int = 0,
    accelerator: Any | None = None,
    strict: bool = False,
    progress: bool = True,
    **call_kwargs: Any,
) -> Statistics:
    """Generate ``num_images`` with ``pipe`` (sharded over processes) and return their feature statistics."""
    batches = generate_image_batches(
        pipe,
        num_images,
        prompts=prompts,
        class_labels=class_labels,
        batch_size=batch_size,
        seed=seed,
        accelerator=accelerator,
        progress=progress,
        **call_kwargs,
    )
    return compute_statistics(batches, extractor, accelerator=accelerator, strict=strict, progress=progress)


def compute_fid(
    a: Any,
    b: Any,
    extractor: FeatureExtractor | None = None,
    batch_size: int = 50,
    accelerator: Any | None = None,
    allow_mixed_sizes: bool = False,
    progress: bool = True,
) -> float:
    """Fréchet distance between two sources (folders, ``.npz`` files, tensors, batch iterables, Statistics).

    With the Inception extractor this is FID. Statistics that record different extractors or preprocessing
    are refused.
    """
    sides = []
    for source in (a, b):
        if isinstance(source, Statistics):
            sides.append(source)
        else:
            sides.append(
                compute_statistics(
                    source, extractor, batch_size, accelerator, allow_mixed_sizes, progress=progress
                )
            )
    return fid_from_statistics(sides[0], sides[1])
