"""A class-conditional DiT pipeline that denoises directly in pixel space (no VAE).

It follows diffusers' ``DiTPipeline`` (Peebles & Xie, "Scalable Diffusion Models with Transformers", 2023)
with the VAE removed, so a tiny ``DiTTransformer2DModel`` trained on 32×32 RGB images (the embedded default in
``fastsample.zoo``) becomes a complete diffusers pipeline: any scheduler, ``save_pretrained`` /
``from_pretrained``, ``generator``, ``output_type``, ``return_dict`` and ``callback_on_step_end``.

Classifier-free guidance (Ho & Salimans, 2022) uses DiTPipeline's batch layout: the model input is
``[x; x]`` with class labels ``[y; ∅]`` (the null class id is ``transformer.config.num_embeds_ada_norm``),
and the prediction is split and combined as ``ε = ε_∅ + w·(ε_y − ε_∅)``. With ``guidance_scale ≤ 1``
only the conditional half is evaluated. Each denoising step makes exactly one call
``self.transformer(latent_model_input, timestep=..., class_labels=..., return_dict=False)[0]``, so
guidance and caching hooks on ``pipe.transformer`` see the whole batched input.
"""

from __future__ import annotations

import inspect
import logging
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from diffusers import DiffusionPipeline, DiTTransformer2DModel, ImagePipelineOutput
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.utils.torch_utils import randn_tensor

logger = logging.getLogger(__name__)

__all__ = ["PixelDiTPipeline"]

_OUTPUT_TYPES = ("pil", "np", "pt", "latent")
_LEARNED_VARIANCE_TYPES = ("learned", "learned_range")


class PixelDiTPipeline(DiffusionPipeline):
    r"""Class-conditional image generation with a ``DiTTransformer2DModel`` that works on pixels.

    Args:
        transformer: a ``DiTTransformer2DModel`` with ``in_channels=3`` and ``out_channels`` 3 (ε only) or 6
            (ε and a learned variance, as in the original DiT). Its ``num_embeds_ada_norm`` is the number of
            classes; the id ``num_embeds_ada_norm`` is the null ("unconditional") class.
        scheduler: any diffusers-compatible scheduler (``set_timesteps``, ``step``; ``scale_model_input`` and
            ``init_noise_sigma`` where it has them, as VP schedulers do and FlowMatch schedulers do not).
        class_names: optional human-readable names, one per class id (saved in ``model_index.json``).
    """

    model_cpu_offload_seq = "transformer"
    _callback_tensor_inputs = ["latents"]

    def __init__(
        self, transformer: DiTTransformer2DModel, scheduler: Any, class_names: list[str] | None = None
    ):
        super().__init__()
        config = transformer.config
        if config.in_channels != 3:
            raise ValueError(
                "transformer: a pixel-space DiT needs in_channels=3 (RGB), "
                f"got in_channels={config.in_channels}"
            )
        out_channels = config.out_channels or config.in_channels
        if out_channels not in (config.in_channels, 2 * config.in_channels):
            raise ValueError(
                f"transformer: out_channels must be {config.in_channels} (ε) or {2 * config.in_channels} "
                f"(ε and learned variance), got {out_channels}"
            )
        if class_names is not None:
            class_names = [str(name) for name in class_names]
            if len(class_names) != config.num_embeds_ada_norm:
                raise ValueError(
                    f"class_names: expected {config.num_embeds_ada_norm} names (one per class), "
                    f"got {len(class_names)}"
                )
        self.register_modules(transformer=transformer, scheduler=scheduler)
        self.register_to_config(class_names=class_names)

    # ------------------------------------------------------------------------------------------------------
    # Class facts
    @property
    def num_classes(self) -> int:
        """Number of real classes; the null (unconditional) class id equals this number."""
        return int(self.transformer.config.num_embeds_ada_norm)

    @property
    def null_class_id(self) -> int:
        return self.num_classes

    @property
    def class_names(self) -> tuple[str, ...] | None:
        names = self.config.get("class_names")
        return tuple(names) if names is not None else None

    @property
    def id2label(self) -> dict[int, str]:
        """``{class id: name}`` (empty when the pipeline was built without ``class_names``)."""
        return dict(enumerate(self.class_names or ()))

    def get_label_ids(self, names: str | Sequence[str]) -> list[int]:
        """Map class names (as in ``class_names``) to class ids."""
        if isinstance(names, str):
            names = [names]
        lookup = {name: i for i, name in self.id2label.items()}
        missing = [name for name in names if name not in lookup]
        if missing:
            raise ValueError(f"unknown class name(s) {missing}; known names: {list(lookup)}")
        return [lookup[name] for name in names]

    # ------------------------------------------------------------------------------------------------------
    # State exposed during a call (same names as diffusers' text-to-image pipelines)
    @property
    def guidance_scale(self) -> float:
        return self._guidance_scale

    @property
    def do_classifier_free_guidance(self) -> bool:
        return self._guidance_scale > 1

    @property
    def num_timesteps(self) -> int:
        return self._num_timesteps

    @property
    def interrupt(self) -> bool:
        return self._interrupt

    # ------------------------------------------------------------------------------------------------------
    def _class_label_tensor(self, class_labels: int | list[int] | torch.Tensor) -> torch.Tensor:
        """Validate ``class_labels`` and return them as a 1-D int64 CPU tensor."""
        if isinstance(class_labels, torch.Tensor):
            if (
                class_labels.dtype.is_floating_point
                or class_labels.dtype.is_complex
                or class_labels.dtype == torch.bool
            ):
                raise TypeError(f"class_labels: expected an integer tensor, got dtype {class_labels.dtype}")
            if class_labels.dim() > 1:
                raise ValueError(
                    f"class_labels: expected a 0-d or 1-d tensor, got shape {tuple(class_labels.shape)}"
                )
            labels = class_labels.detach().to("cpu", torch.int64).reshape(-1)
        else:
            items = [class_labels] if not isinstance(class_labels, (list, tuple)) else list(class_labels)
            for item in items:
                if isinstance(item, bool) or not isinstance(item, int):
                    raise TypeError(
                        f"class_labels: expected an int, a list of ints or an integer tensor, got {item!r}; "
                        "use pipe.get_label_ids(names) to map class names to ids"
                    )
            labels = torch.tensor(items, dtype=torch.int64)
        if labels.numel() == 0:
            raise ValueError("class_labels: at least one class label is needed")
        if labels.min() < 0 or labels.max() >= self.num_classes:
            raise ValueError(
                f"class_labels: ids must lie in [0, {self.num_classes - 1}] "
                f"(the null class {self.null_class_id} is "
                f"used internally for guidance), got {labels.tolist()}"
            )
        return labels

    def check_inputs(
        self,
        guidance_scale: float,
        num_inference_steps: int,
        num_images_per_label: int,
        output_type: str,
        callback_on_step_end_tensor_inputs: Sequence[str] | None,
    ) -> None:
        if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, (int, float)):
            raise TypeError(f"guidance_scale: expected a number, got {guidance_scale!r}")
        if not math.isfinite(guidance_scale) or guidance_scale < 0:
            raise ValueError(
                "guidance_scale: expected a finite number ≥ 0 (values ≤ 1 disable guidance), "
                f"got {guidance_scale}"
            )
        for name, value in (
            ("num_inference_steps", num_inference_steps),
            ("num_images_per_label", num_images_per_label),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: expected an int ≥ 1, got {value!r}")
        variance_type = getattr(self.scheduler.config, "variance_type", None)
        out_channels = self.transformer.config.out_channels or self.transformer.config.in_channels
        if variance_type in _LEARNED_VARIANCE_TYPES and out_channels == self.transformer.config.in_channels:
            raise ValueError(
                f"scheduler: variance_type={variance_type!r} needs a transformer that predicts the variance "
                f"(out_channels={2 * self.transformer.config.in_channels}), got out_channels={out_channels}"
            )
        if output_type not in _OUTPUT_TYPES:
            raise ValueError(f"output_type: expected one of {_OUTPUT_TYPES}, got {output_type!r}")
        if callback_on_step_end_tensor_inputs is not None:
            unknown = [k for k in callback_on_step_end_tensor_inputs if k not in self._callback_tensor_inputs]
            if unknown:
                raise ValueError(
                    f"callback_on_step_end_tensor_inputs: allowed {self._callback_tensor_inputs}, "
                    f"got unknown {unknown}"
                )

    def prepare_latents(
        self,
        batch_size: int,
        dtype: torch.dtype,
        device: torch.device,
        generator: torch.Generator | list[torch.Generator] | None,
        latents: torch.Tensor | None,
    ) -> torch.Tensor:
        """Initial noise ``x_T ~ N(0, init_noise_sigma²)`` of shape ``[batch, 3, size, size]``."""
        size = self.transformer.config.sample_size
        shape = (batch_size, self.transformer.config.in_channels, size, size)
        if isinstance(generator, list) and len(generator) != batch_size:
            raise ValueError(
                f"generator: a list of {len(generator)} generators was passed, "
                f"but the batch has {batch_size} images"
            )
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
        else:
            if not isinstance(latents, torch.Tensor) or tuple(latents.shape) != shape:
                got = tuple(latents.shape) if isinstance(latents, torch.Tensor) else type(latents).__name__
                raise ValueError(f"latents: expected a tensor of shape {shape}, got {got}")
            latents = latents.to(device=device, dtype=dtype)
        # flow-matching schedulers (FlowMatchEulerDiscreteScheduler) start at unit variance and have no
        # init_noise_sigma; a new tensor either way: the caller's latents are never mutated
        return latents * getattr(self.scheduler, "init_noise_sigma", 1.0)

    def _extra_step_kwargs(self, generator: torch.Generator | list[torch.Generator] | None) -> dict[str, Any]:
        """Pass ``generator`` to stochastic schedulers whose ``step`` accepts it."""
        if "generator" in inspect.signature(self.scheduler.step).parameters:
            return {"generator": generator}
        return {}

    def _set_timesteps(self, num_inference_steps: int, device: torch.device) -> None:
        if "device" in inspect.signature(self.scheduler.set_timesteps).parameters:
            self.scheduler.set_timesteps(num_inference_steps, device=device)
        else:
            self.scheduler.set_timesteps(num_inference_steps)

    def _model_output(self, noise_pred: torch.Tensor, guidance_scale: float) -> torch.Tensor:
        """Split a learned variance off, combine the CFG halves and return what ``scheduler.step`` expects.

        ``ε = ε_∅ + w·(ε_y − ε_∅)`` on the ε channels; the conditional half's variance channels are kept
        only for schedulers with ``variance_type`` ``learned``/``learned_range`` (DDPM), dropped otherwise.
        """
        channels = self.transformer.config.in_channels
        eps, variance = noise_pred[:, :channels], noise_pred[:, channels:]
        if guidance_scale > 1:
            eps_cond, eps_uncond = eps.chunk(2)
            eps = eps_uncond + guidance_scale * (eps_cond - eps_uncond)
            variance = variance.chunk(2)[0]
        if (
            variance.shape[1]
            and getattr(self.scheduler.config, "variance_type", None) in _LEARNED_VARIANCE_TYPES
        ):
            return torch.cat([eps, variance], dim=1)
        return eps

    # ------------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(
        self,
        class_labels: int | list[int] | torch.Tensor,
        guidance_scale: float = 4.0,
        num_inference_steps: int = 20,
        generator: torch.Generator | list[torch.Generator] | None = None,
        num_images_per_label: int = 1,
        latents: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable[..., dict[str, Any]]
        | PipelineCallback
        | MultiPipelineCallbacks
        | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ["latents"],  # noqa: B006 (diffusers' signature)
    ) -> ImagePipelineOutput | tuple:
        r"""Generate images of the given classes.

        Args:
            class_labels: one class id, a list of ids or an integer tensor of ids in ``[0, num_classes)``.
            guidance_scale: classifier-free guidance weight ``w``; ``w ≤ 1`` runs the conditional model only.
            num_inference_steps: number of denoising steps (≥ 1).
            generator: ``torch.Generator`` (or one per image) for reproducible noise.
            num_images_per_label: images per class label; each label's images are contiguous in the output.
            latents: optional initial noise ``[batch, 3, size, size]``, scaled by
                ``scheduler.init_noise_sigma``; never modified in place.
            output_type: ``"pil"``, ``"np"`` (``[N, H, W, 3]`` floats in [0, 1]), ``"pt"``
                (``[N, 3, H, W]`` in [0, 1]) or ``"latent"`` (the final sample ``x_0`` unclipped, in the
                model's [-1, 1] scale).
            return_dict: return an ``ImagePipelineOutput`` (default) or a tuple ``(images,)``.
            callback_on_step_end: ``fn(pipe, step_index, timestep, callback_kwargs) -> dict`` called after
                each step; returning ``{"latents": ...}`` replaces the latents.
            callback_on_step_end_tensor_inputs: tensors passed in ``callback_kwargs`` (only ``"latents"``).
        """
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs
        self.check_inputs(
            guidance_scale,
            num_inference_steps,
            num_images_per_label,
            output_type,
            callback_on_step_end_tensor_inputs,
        )
        labels = self._class_label_tensor(class_labels).repeat_interleave(num_images_per_label)
        self._guidance_scale = float(guidance_scale)
        self._interrupt = False
        device = self._execution_device
        dtype = self.transformer.dtype

        labels = labels.to(device)
        batch_size = labels.shape[0]
        latents = self.prepare_latents(batch_size, dtype, device, generator, latents)
        if self.do_classifier_free_guidance:
            null = torch.full_like(labels, self.null_class_id)
            class_labels_input = torch.cat([labels, null])
        else:
            class_labels_input = labels

        self._set_timesteps(num_inference_steps, device)
        timesteps = self.scheduler.timesteps
        self._num_timesteps = len(timesteps)
        extra_step_kwargs = self._extra_step_kwargs(generator)

        for i, t in enumerate(self.progress_bar(timesteps)):
            if self.interrupt:
                continue
            latent_model_input = (
                torch.cat([latents, latents]) if self.do_classifier_free_guidance else latents
            )
            if hasattr(self.scheduler, "scale_model_input"):  # flow-matching schedulers have none
                latent_model_input = self.scheduler.scale_model_input(latent_model_input, t)
            timestep = t if torch.is_tensor(t) else torch.tensor(t, device=device)
            timestep = timestep.reshape(1).to(device).expand(latent_model_input.shape[0])

            noise_pred = self.transformer(
                latent_model_input, timestep=timestep, class_labels=class_labels_input, return_dict=False
            )[0]
            model_output = self._model_output(noise_pred, self._guidance_scale)
            latents = self.scheduler.step(model_output, t, latents, **extra_step_kwargs).prev_sample

            if callback_on_step_end is not None:
                available = {"latents": latents}
                callback_kwargs = {name: available[name] for name in callback_on_step_end_tensor_inputs}
                callback_outputs = callback_on_step_end(self, i, t, callback_kwargs)
                latents = callback_outputs.pop("latents", latents)

        if output_type == "latent":
            images = latents
        else:
            images = (latents / 2 + 0.5).clamp(0, 1)
            if output_type != "pt":
                images = images.cpu().permute(0, 2, 3, 1).float().numpy()
                if output_type == "pil":
                    images = self.numpy_to_pil(images)

        self.maybe_free_model_hooks()
        if not return_dict:
            return (images,)
        return ImagePipelineOutput(images=images)
