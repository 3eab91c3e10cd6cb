"""fastsample's guidance math as diffusers ``guiders`` (``BaseGuidance`` subclasses) for modular pipelines.

Usage: ``pipe.update_components(guider=APGGuider(guidance_scale=15.0))`` on a diffusers modular pipeline.

The guider API hands a guider only the conditional and unconditional predictions (no x_t, no scheduler), so
these guiders work in the model's own output space; the hook (:func:`fastsample.guidance.guide`) is the way to
get the x0-space versions on classic pipelines. Differences from diffusers' own guiders:

- :class:`APGGuider` uses the paper's combination D_c + (w − 1)(Δ⊥ + η Δ∥) with the paper's defaults (η = 0,
  β = −0.5) and a resolution-independent (per-element) norm threshold; diffusers'
  ``AdaptiveProjectedGuidance``
  defaults to u + w·U, η = 1 and no momentum (docs/design/guidance.md#relation-to-diffusers-guiders).
- :class:`AdaptiveGuider` is Adaptive Guidance: once every sample's cos(c, u) passes the threshold it reports
  ``num_conditions == 1`` so the modular loop runs the conditional pass only for the rest of the generation.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers.configuration_utils import register_to_config
from diffusers.guiders.guider_utils import BaseGuidance, GuiderOutput

from .context import GuidanceContext
from .methods import APG, AdaptiveGuidance, GuidanceMethod


def _native_context(pred: torch.Tensor, w: float, step: int) -> GuidanceContext:
    # "sample" parameterisation with α = 1, σ = 0: to_x0/from_x0 are the identity (native output space)
    return GuidanceContext(
        x=pred, alpha=1.0, sigma=0.0, parameterization="sample", guidance_scale=w, step=step or 0
    )


class _MethodGuider(BaseGuidance):
    """Shared plumbing: two predictions (cond, uncond), per-generation reset at step 0, start/stop window."""

    _input_predictions = ["pred_cond", "pred_uncond"]
    method: GuidanceMethod

    def _reset_if_new_generation(self) -> None:
        if self._step == 0:
            self.method.reset()

    def prepare_inputs(self, data: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> list[Any]:
        self._reset_if_new_generation()
        indices = [0] if self.num_conditions == 1 else [0, 1]
        return [self._prepare_batch(data, i, name) for i, name in zip(indices, self._input_predictions)]

    def prepare_inputs_from_block_state(self, data: Any, input_fields: dict[str, Any]) -> list[Any]:
        self._reset_if_new_generation()
        indices = [0] if self.num_conditions == 1 else [0, 1]
        return [
            self._prepare_batch_from_block_state(input_fields, data, i, name)
            for i, name in zip(indices, self._input_predictions)
        ]

    def _in_window(self) -> bool:
        if not self._enabled:
            return False
        if self._num_inference_steps is None:
            return True
        return (
            int(self._start * self._num_inference_steps)
            <= self._step
            < int(self._stop * self._num_inference_steps)
        )

    def _guidance_on(self) -> bool:
        return self._in_window() and self.method.guidance_scale != 1.0

    @property
    def is_conditional(self) -> bool:
        return self._count_prepared == 1

    @property
    def num_conditions(self) -> int:
        return 2 if self._guidance_on() else 1

    def forward(self, pred_cond: torch.Tensor, pred_uncond: torch.Tensor | None = None) -> GuiderOutput:
        if pred_uncond is None or not self._guidance_on():
            return GuiderOutput(pred=pred_cond, pred_cond=pred_cond, pred_uncond=pred_uncond)
        ctx = _native_context(pred_cond, self.method.guidance_scale, self._step)
        return GuiderOutput(
            pred=self.method(pred_cond, pred_uncond, ctx), pred_cond=pred_cond, pred_uncond=pred_uncond
        )


class APGGuider(_MethodGuider):
    """Adaptive Projected Guidance (arXiv 2410.02416) as a diffusers guider; see
    :class:`~fastsample.guidance.APG`."""

    @register_to_config
    def __init__(
        self,
        guidance_scale: float = 7.5,
        eta: float = 0.0,
        momentum: float = -0.5,
        norm_threshold: float | None = APG.SDXL_NORM_THRESHOLD,
        start: float = 0.0,
        stop: float = 1.0,
        enabled: bool = True,
    ) -> None:
        super().__init__(start, stop, enabled)
        self.method = APG(guidance_scale, eta=eta, momentum=momentum, norm_threshold=norm_threshold)


class AdaptiveGuider(_MethodGuider):
    """Adaptive Guidance (arXiv 2312.12487) as a diffusers guider: CFG until cos(c, u) ≥ ``threshold``
    for every
    sample, then conditional passes only (``num_conditions`` drops to 1)."""

    @register_to_config
    def __init__(
        self,
        guidance_scale: float = 7.5,
        threshold: float = 0.99,
        start: float = 0.0,
        stop: float = 1.0,
        enabled: bool = True,
    ) -> None:
        super().__init__(start, stop, enabled)
        self.method = AdaptiveGuidance(guidance_scale, threshold=threshold)

    def _guidance_on(self) -> bool:
        switched = self.method._switched is not None and bool(self.method._switched.all())
        return super()._guidance_on() and not switched


__all__ = ["APGGuider", "AdaptiveGuider"]
