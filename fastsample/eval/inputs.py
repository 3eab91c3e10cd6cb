"""Image sources for evaluation: folders of image files, in-memory tensors, and pipelines that generate.

Each source yields batches of canonical images (``[B, 3, H, W]`` uint8 or float in [0, 1]). Under
``accelerate launch`` every process takes a strided shard (items ``rank, rank + world, ...``); the statistics
are merged exactly afterwards (:meth:`FeatureStatistics.all_reduce`), so the result does not depend on the
number of processes. Pipeline generation seeds one ``torch.Generator`` per image (``seed + index``), so an
image is the same whichever process or batch produces it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fastsample.eval.preprocess import to_canonical_images

__all__ = ["IMAGE_EXTENSIONS", "ImageFolder", "generate_image_batches", "shard_indices", "tensor_batches"]

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".ppm")


def shard_indices(num_items: int, accelerator: Any | None = None) -> range:
    """The indices this process handles: ``range(rank, num_items, world_size)``."""
    if accelerator is None:
        return range(num_items)
    return range(accelerator.process_index, num_items, accelerator.num_processes)


class ImageFolder:
    """The image files under ``root`` (recursive, sorted), read as RGB uint8.

    Raises ``NotADirectoryError`` for a missing folder and ``ValueError`` for one without images. Unless
    ``allow_mixed_sizes`` is true, all images must share one size; this is checked from the file headers at
    construction, and the error names two files that differ.
    """

    def __init__(self, root: str | os.PathLike, allow_mixed_sizes: bool = False) -> None:
        from PIL import Image

        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise NotADirectoryError(f"Image folder not found: {str(self.root)!r}.")
        self.files = sorted(
            p for p in self.root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
        )
        if not self.files:
            raise ValueError(f"No image files ({', '.join(IMAGE_EXTENSIONS)}) found in {str(self.root)!r}.")
        self.allow_mixed_sizes = allow_mixed_sizes
        self.size: tuple[int, int] | None = None
        if not allow_mixed_sizes:
            first_size = None
            for path in self.files:
                with Image.open(path) as image:
                    if first_size is None:
                        first_size = image.size
                    elif image.size != first_size:
                        (w0, h0), (w1, h1) = first_size, image.size
                        raise ValueError(
                            f"Images in {str(self.root)!r} have different sizes: {self.files[0].name} is "
                            f"{w0}×{h0}, {path.name} is {w1}×{h1}. Resize them to one size, or allow mixed "
                            "sizes (each image is then processed on its own)."
                        )
            self.size = first_size

    def __len__(self) -> int:
        return len(self.files)

    def load(self, index: int) -> torch.Tensor:
        """Image ``index`` as a uint8 ``[3, H, W]`` tensor."""
        from PIL import Image

        with Image.open(self.files[index]) as image:
            array = np.asarray(image.convert("RGB"), dtype=np.uint8)
        return torch.from_numpy(array.copy()).permute(2, 0, 1)

    def batches(self, batch_size: int, accelerator: Any | None = None) -> Iterator[torch.Tensor]:
        """Yield uint8 batches of this process's shard (single images when sizes are mixed)."""
        _check_batch_size(batch_size)
        indices = list(shard_indices(len(self), accelerator))
        step = 1 if self.allow_mixed_sizes else batch_size
        for start in range(0, len(indices), step):
            yield torch.stack([self.load(i) for i in indices[start : start + step]])


def tensor_batches(images, batch_size: int, accelerator: Any | None = None) -> Iterator[torch.Tensor]:
    """Yield canonical batches of this process's shard of an in-memory image array/tensor."""
    _check_batch_size(batch_size)
    canonical = to_canonical_images(images)
    if canonical.shape[0] == 0:
        raise ValueError("`images` is empty.")
    indices = torch.as_tensor(list(shard_indices(canonical.shape[0], accelerator)), dtype=torch.long)
    for start in range(0, len(indices), batch_size):
        yield canonical[indices[start : start + batch_size]]


def _check_batch_size(batch_size: int) -> None:
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"`batch_size` must be a positive int, got {batch_size!r}.")


def _cycle(values: Sequence | None, indices: list[int]) -> list | None:
    if values is None:
        return None
    return [values[i % len(values)] for i in indices]


def _per_batch(call_kwargs: dict[str, Any], chunk: list[int]) -> dict[str, Any]:
    """diffusers wants a negative prompt of the prompts' type: a string becomes one per image of the batch."""
    return {
        key: [value] * len(chunk) if key.startswith("negative_prompt") and isinstance(value, str) else value
        for key, value in call_kwargs.items()
    }


def generate_image_batches(
    pipe: Any,
    num_images: int,
    prompts: Sequence[str] | None = None,
    class_labels: Sequence[int] | None = None,
    batch_size: int = 8,
    seed: int = 0,
    accelerator: Any | None = None,
    quantize: bool = True,
    generator_device: str | torch.device = "cpu",
    progress: bool = True,
    **call_kwargs: Any,
) -> Iterator[torch.Tensor]:
    """Generate ``num_images`` images with a diffusers pipeline and yield canonical batches.

    Image ``i`` uses ``prompts[i % len(prompts)]`` (or ``class_labels[i % len]``) and its own generator seeded
    ``seed + i``; each process generates its shard. ``call_kwargs`` go to ``pipe(...)`` (e.g.
    ``num_inference_steps``, ``guidance_scale``; a string ``negative_prompt`` is repeated per image);
    ``output_type="np"`` is always used. ``quantize=True`` rounds to uint8 as saving PNGs would, so
    statistics match those of the saved images.
    """
    from tqdm.auto import tqdm

    if not isinstance(num_images, int) or num_images < 1:
        raise ValueError(f"`num_images` must be a positive int, got {num_images!r}.")
    _check_batch_size(batch_size)
    if (prompts is None) == (class_labels is None):
        raise ValueError(
            "Pass exactly one of `prompts` (text-to-image) or `class_labels` (class-conditional)."
        )
    conditions = prompts if prompts is not None else class_labels
    if isinstance(conditions, str | int) or len(conditions) == 0:
        raise ValueError("`prompts` / `class_labels` must be a non-empty list.")
    for key in ("generator", "output_type", "prompt", "class_labels", "num_images_per_prompt"):
        if key in call_kwargs:
            raise ValueError(f"`{key}` is set by generate_image_batches; do not pass it in call kwargs.")
    indices = list(shard_indices(num_images, accelerator))
    is_main = accelerator is None or accelerator.is_local_main_process
    with tqdm(total=len(indices), desc="generating", unit="img", disable=not (progress and is_main)) as bar:
        for start in range(0, len(indices), batch_size):
            chunk = indices[start : start + batch_size]
            generators = [torch.Generator(device=generator_device).manual_seed(seed + i) for i in chunk]
            if prompts is not None:
                condition = {"prompt": _cycle(prompts, chunk)}
            else:
                condition = {"class_labels": _cycle(class_labels, chunk)}
            batch_kwargs = _per_batch(call_kwargs, chunk)
            output = pipe(**condition, generator=generators, output_type="np", **batch_kwargs)
            images = output.images if hasattr(output, "images") else output[0]
            yield to_canonical_images(np.asarray(images), quantize=quantize)
            bar.update(len(chunk))
