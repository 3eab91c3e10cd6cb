"""The one table of per-pipeline facts that guidance and caching both need.

Every capability that hooks a pipeline's denoiser asks :func:`get_adapter` for the facts below instead of
hard-coding them (docs/design/architecture.md#adapters, docs/design/guidance.md#pipeline-layouts):

- ``denoiser_attr``: the pipeline attribute holding the denoiser (``"unet"`` or ``"transformer"``).
- ``cfg_layout``: how the two classifier-free-guidance passes reach the denoiser:
  ``"uncond_first"`` (one forward on ``[uncond; cond]``, SD/SDXL/PixArt/SD3), ``"cond_first"`` (one forward
  on ``[cond; uncond]`` with the null class, DiT and fastsample's PixelDiT) or ``"separate_calls"`` (two
  forwards per step, cond then uncond, Flux with true CFG only).
- ``parameterization``: ``"scheduler"`` (ε, v or x0 as ``scheduler.config.prediction_type`` says; VP noise
  schedule) or ``"flow"`` (rectified-flow velocity v = ε − x0 with x_t = (1 − s) x0 + s ε).
- ``learned_sigma``: whether the denoiser may output 2C channels (ε and a variance); only the first C are
  guided. Whether a given model actually does is read from its config (``out_channels == 2 * in_channels``).
- ``flow_time_scale``: for flow pipelines, the factor between the timestep passed to the denoiser and s
  (SD3 passes ``1000 s``, Flux passes ``s``).
- ``guidance_scale_attr`` / ``guidance_scale_arg``: where the pipeline keeps its guidance scale: an attribute
  set during ``__call__`` (``pipe._guidance_scale``) or only the ``__call__`` argument (DiT, PixArt,
  Flux ``true_cfg_scale``), read from the call's bound arguments
  (:func:`fastsample.integration.call_scope.on_call` with ``with_arguments=True``).
- ``true_cfg_rule``: for ``"separate_calls"`` pipelines, whether a call with these arguments runs the
  unconditional pass (the pipeline's own rule, restated: Flux needs ``true_cfg_scale > 1`` and a negative
  prompt or negative embeddings); ``true_cfg_hint`` says so in words, for warnings.
- ``opens_cache_context``: whether the pipeline wraps its denoiser calls in ``denoiser.cache_context(name)``.

Pipelines are keyed by class *name* and looked up along the MRO, so a pipeline defined elsewhere
(``fastsample.pipelines.pixel_dit.PixelDiTPipeline``) is registered without importing it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch

CfgLayout = Literal["uncond_first", "cond_first", "separate_calls"]
Parameterization = Literal["epsilon", "v_prediction", "sample", "flow"]

_VP_PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


@dataclass(frozen=True)
class PipelineAdapter:
    """Facts about one pipeline class (see the module docstring for each field)."""

    pipeline: str
    denoiser_attr: str
    cfg_layout: CfgLayout
    parameterization: Literal["scheduler", "flow"]
    learned_sigma: bool = False
    flow_time_scale: float | None = None
    guidance_scale_attr: str | None = None
    guidance_scale_arg: str = "guidance_scale"
    opens_cache_context: bool = False
    true_cfg_rule: Callable[[dict[str, Any]], bool] | None = None
    true_cfg_hint: str | None = None

    # ------------------------------------------------------------------ pipeline-level facts
    def denoiser(self, pipe: Any) -> torch.nn.Module:
        """The pipeline's denoiser module (``pipe.unet`` or ``pipe.transformer``)."""
        module = getattr(pipe, self.denoiser_attr, None)
        if module is None:
            raise ValueError(f"{type(pipe).__name__} has no `{self.denoiser_attr}` component loaded.")
        return module

    def prediction_type(self, pipe: Any) -> Parameterization:
        """What the denoiser's (first C) output channels are: ``epsilon``, ``v_prediction``, ``sample``
        or ``flow``."""
        if self.parameterization == "flow":
            return "flow"
        config = pipe.scheduler.config
        kind = getattr(config, "prediction_type", None) or "epsilon"
        # a flow-matching schedule: FlowMatch* (no betas, a `shift`) or DPM-Solver/UniPC in flow mode, whose
        # "flow_prediction" is the same velocity the model outputs
        if kind == "flow_prediction" or "FlowMatch" in type(pipe.scheduler).__name__:
            return "flow"
        if kind not in _VP_PREDICTION_TYPES:
            raise ValueError(
                f"{type(pipe).__name__}: scheduler prediction_type={kind!r} is not supported; "
                f"expected one of {_VP_PREDICTION_TYPES}."
            )
        return kind

    def guided_channels(self, pipe: Any) -> int | None:
        """Number of leading output channels to guide when the model outputs a learned variance, else
        ``None``."""
        if not self.learned_sigma:
            return None
        config = self.denoiser(pipe).config
        in_channels = config.in_channels
        out_channels = getattr(config, "out_channels", None) or in_channels
        return in_channels if out_channels == 2 * in_channels else None

    def guidance_scale(self, pipe: Any, call_args: dict[str, Any] | None) -> float | None:
        """The scale the running pipeline call combines with, from the pipeline's attribute or the call's
        bound arguments ``call_args`` (``None`` when it cannot be found)."""
        if self.guidance_scale_attr is not None and hasattr(pipe, self.guidance_scale_attr):
            return float(getattr(pipe, self.guidance_scale_attr))
        if call_args is not None and call_args.get(self.guidance_scale_arg) is not None:
            return float(call_args[self.guidance_scale_arg])
        return None

    def cfg_active(self, pipe: Any, call_args: dict[str, Any] | None) -> bool:
        """Whether the running call (bound arguments ``call_args``) evaluates both the conditional and the
        unconditional pass."""
        if self.cfg_layout == "separate_calls":
            rule = self.true_cfg_rule
            return bool(call_args is not None and rule is not None and rule(call_args))
        flag = getattr(pipe, "do_classifier_free_guidance", None)
        if isinstance(flag, bool):
            return flag
        scale = self.guidance_scale(pipe, call_args)
        return scale is not None and scale > 1.0

    def cfg_requirement(self, pipe: Any, call_args: dict[str, Any] | None) -> str:
        """In words, for a warning: what makes a call of this pipeline run CFG, naming the call argument
        (and the value this call has)."""
        if self.cfg_layout == "separate_calls":
            return self.true_cfg_hint or f"pass {self.guidance_scale_arg} > 1"
        value = self.guidance_scale(pipe, call_args)
        return (
            f"it runs CFG only with {self.guidance_scale_arg} > 1, and this call has "
            f"{self.guidance_scale_arg}={value}"
        )

    def cfg_stack(self, cond: torch.Tensor, uncond: torch.Tensor) -> torch.Tensor:
        """The one batched CFG input of this layout: ``[cond; uncond]`` (``cond_first``) or
        ``[uncond; cond]`` (``uncond_first``)."""
        if self.cfg_layout == "separate_calls":
            raise ValueError(f"{self.pipeline} runs cond and uncond as separate calls, not one batch.")
        return torch.cat([cond, uncond] if self.cfg_layout == "cond_first" else [uncond, cond])

    def cfg_halves(self, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(cond, uncond) halves of a batched CFG output (the inverse of :meth:`cfg_stack`)."""
        if self.cfg_layout == "separate_calls":
            raise ValueError(f"{self.pipeline} runs cond and uncond as separate calls, not one batch.")
        first, second = out.chunk(2)
        return (first, second) if self.cfg_layout == "cond_first" else (second, first)

    # ------------------------------------------------------------------ noise-level facts
    def alpha_sigma(self, pipe: Any, timestep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(α, σ) of x_t = α x0 + σ ε for the timestep the denoiser receives (per sample, float64).

        VP pipelines: α = √ᾱ(t), σ = √(1 − ᾱ(t)) from the model's training noise schedule, log-linearly
        interpolated in ρ = σ/α for fractional t (the inverse of diffusers' ``_sigma_to_t``). Flow pipelines:
        s = t / ``flow_time_scale`` (a scheduler-parameterized pipeline on a flow schedule: t /
        ``num_train_timesteps``), α = 1 − s, σ = s.
        """
        t = torch.as_tensor(timestep).detach().to("cpu", torch.float64).reshape(-1)
        if self.parameterization == "flow":
            s = t / float(self.flow_time_scale)
            return 1.0 - s, s
        if self.prediction_type(pipe) == "flow":  # e.g. PixelDiT on a FlowMatch schedule: t = s · T_train
            s = t / float(getattr(pipe.scheduler.config, "num_train_timesteps", 1000))
            return 1.0 - s, s
        log_rho = training_log_rho(pipe.scheduler)
        n = log_rho.numel()
        t = t.clamp(0, n - 1)
        lo = t.floor().long()
        hi = (lo + 1).clamp(max=n - 1)
        frac = t - lo.to(torch.float64)
        lr = (1 - frac) * log_rho[lo] + frac * log_rho[hi]
        rho = lr.exp()
        alpha = 1.0 / torch.sqrt(1.0 + rho**2)
        return alpha, rho * alpha


def _flux_true_cfg(args: dict[str, Any]) -> bool:
    """diffusers ``FluxPipeline.__call__``: ``do_true_cfg = true_cfg_scale > 1 and has_neg_prompt``."""
    has_negative = args.get("negative_prompt") is not None or (
        args.get("negative_prompt_embeds") is not None
        and args.get("negative_pooled_prompt_embeds") is not None
    )
    return float(args.get("true_cfg_scale", 1.0)) > 1.0 and has_negative


def training_log_rho(scheduler: Any) -> torch.Tensor:
    """log(σ/α) for every training timestep of a VP scheduler (from ``alphas_cumprod`` or rebuilt from
    config)."""
    alphas_cumprod = getattr(scheduler, "alphas_cumprod", None)
    if alphas_cumprod is None:
        from diffusers import DDPMScheduler

        alphas_cumprod = DDPMScheduler.from_config(scheduler.config).alphas_cumprod
    ac = torch.as_tensor(alphas_cumprod, dtype=torch.float64).cpu()
    return 0.5 * torch.log((1.0 - ac) / ac)


_VP_UNCOND_FIRST = {"cfg_layout": "uncond_first", "parameterization": "scheduler"}

ADAPTERS: dict[str, PipelineAdapter] = {
    a.pipeline: a
    for a in (
        PipelineAdapter(
            "StableDiffusionPipeline", "unet", guidance_scale_attr="_guidance_scale", **_VP_UNCOND_FIRST
        ),
        PipelineAdapter(
            "StableDiffusionImg2ImgPipeline",
            "unet",
            guidance_scale_attr="_guidance_scale",
            **_VP_UNCOND_FIRST,
        ),
        PipelineAdapter(
            "StableDiffusionXLPipeline", "unet", guidance_scale_attr="_guidance_scale", **_VP_UNCOND_FIRST
        ),
        PipelineAdapter(
            "StableDiffusionXLImg2ImgPipeline",
            "unet",
            guidance_scale_attr="_guidance_scale",
            **_VP_UNCOND_FIRST,
        ),
        PipelineAdapter("PixArtAlphaPipeline", "transformer", learned_sigma=True, **_VP_UNCOND_FIRST),
        PipelineAdapter("PixArtSigmaPipeline", "transformer", learned_sigma=True, **_VP_UNCOND_FIRST),
        PipelineAdapter(
            "DiTPipeline",
            "transformer",
            cfg_layout="cond_first",
            parameterization="scheduler",
            learned_sigma=True,
        ),
        PipelineAdapter(
            "PixelDiTPipeline",
            "transformer",
            cfg_layout="cond_first",
            parameterization="scheduler",
            learned_sigma=True,
            guidance_scale_attr="_guidance_scale",
        ),
        PipelineAdapter(
            "StableDiffusion3Pipeline",
            "transformer",
            cfg_layout="uncond_first",
            parameterization="flow",
            flow_time_scale=1000.0,
            guidance_scale_attr="_guidance_scale",
        ),
        PipelineAdapter(
            "FluxPipeline",
            "transformer",
            cfg_layout="separate_calls",
            parameterization="flow",
            flow_time_scale=1.0,
            guidance_scale_arg="true_cfg_scale",
            opens_cache_context=True,
            true_cfg_rule=_flux_true_cfg,
            true_cfg_hint=(
                "FluxPipeline runs CFG only with true_cfg_scale > 1 and a negative_prompt (or "
                "negative_prompt_embeds with negative_pooled_prompt_embeds); its guidance_scale is the "
                "distilled guidance embedding, not CFG"
            ),
        ),
    )
}


#: the denoiser's input layer, by attribute name (DiT/PixArt/SD3, Flux, UNets)
_ENTRY_ATTRS = ("pos_embed", "x_embedder", "conv_in")


def denoiser_entry(pipe_or_model: Any) -> torch.nn.Module:
    """The first layer of the denoiser (its patch/input embedding), called once per forward on the batch the
    model really runs: guidance hooks that slice the CFG batch inside the denoiser's forward (guidance
    windows, Adaptive Guidance) are seen here and not by a hook on the denoiser itself. The denoiser when it
    has none of the known input layers."""
    model = resolve_denoiser(pipe_or_model)
    for attr in _ENTRY_ATTRS:
        module = getattr(model, attr, None)
        if isinstance(module, torch.nn.Module):
            return module
    return model


def resolve_denoiser(
    pipe_or_model: Any, what: str = "fastsample", *, allow_model: bool = True, require_adapter: bool = False
) -> torch.nn.Module:
    """The denoiser a capability works on: the one place that finds it.

    - a ``torch.nn.Module`` is the denoiser itself (refused with a ``TypeError`` unless ``allow_model``);
    - a pipeline with an adapter: its ``adapter.denoiser_attr`` component (``ValueError`` when it is not
      loaded and ``require_adapter``);
    - any other pipeline: its ``transformer`` or ``unet``, unless ``require_adapter`` (then the
      ``ValueError`` of :func:`get_adapter` naming the supported pipelines).

    Anything else is a ``TypeError`` naming ``what`` (the function the user called).
    """
    if isinstance(pipe_or_model, torch.nn.Module):
        if allow_model:
            return pipe_or_model
        raise TypeError(f"{what} expects a diffusers pipeline, got the model {type(pipe_or_model).__name__}.")
    adapter = _lookup(type(pipe_or_model))
    if require_adapter:
        return get_adapter(pipe_or_model).denoiser(pipe_or_model)
    attrs = ("transformer", "unet") if adapter is None else (adapter.denoiser_attr,)
    for attr in attrs:
        model = getattr(pipe_or_model, attr, None)
        if isinstance(model, torch.nn.Module):
            return model
    expected = "a diffusers pipeline (with .transformer or .unet)" + (" or a model" if allow_model else "")
    raise TypeError(f"{what} expects {expected}, got {type(pipe_or_model).__name__}.")


find_denoiser = resolve_denoiser  # the former name (fastsample.eval.latency re-exports it)


def supported_pipelines() -> list[str]:
    """Names of the pipeline classes with an adapter."""
    return sorted(ADAPTERS)


def _lookup(cls: type) -> PipelineAdapter | None:
    for klass in cls.__mro__:
        adapter = ADAPTERS.get(klass.__name__)
        if adapter is not None:
            return adapter
    return None


def get_adapter(pipe: Any) -> PipelineAdapter:
    """The adapter for a pipeline instance (or class); a ``ValueError`` naming the supported ones
    otherwise."""
    cls = pipe if isinstance(pipe, type) else type(pipe)
    adapter = _lookup(cls)
    if adapter is not None:
        return adapter
    supported = ", ".join(supported_pipelines())
    raise ValueError(f"fastsample has no adapter for {cls.__name__}; supported pipelines: {supported}.")


def pipeline_signature(pipe: Any) -> dict[str, Any]:
    """What a fit to one pipeline (LinearAG coefficients) is valid for: the denoiser (class, name, config
    and a weight fingerprint), the scheduler (class and config) and the number of scheduler timesteps."""
    denoiser = resolve_denoiser(pipe, "pipeline_signature", require_adapter=True)
    params = list(denoiser.parameters())
    digest = hashlib.sha1(json.dumps(dict(denoiser.config), sort_keys=True, default=str).encode())
    for p in (params[0], params[-1]):
        digest.update(p.detach().flatten()[:64].to("cpu", torch.float64).numpy().tobytes())
    sched_config = {k: v for k, v in dict(pipe.scheduler.config).items() if not k.startswith("_")}
    return {
        "model": f"{type(denoiser).__name__}:{getattr(denoiser.config, '_name_or_path', '') or ''}:"
        f"{digest.hexdigest()[:16]}",
        "scheduler": f"{type(pipe.scheduler).__name__}:"
        f"{hashlib.sha1(json.dumps(sched_config, sort_keys=True, default=str).encode()).hexdigest()[:16]}",
        "num_steps": len(pipe.scheduler.timesteps),
    }


def rho_to_alpha_sigma(rho: torch.Tensor | float) -> tuple[torch.Tensor, torch.Tensor]:
    """VP (α, σ) for an EDM/k-diffusion sigma ρ = σ/α."""
    rho = torch.as_tensor(rho, dtype=torch.float64)
    alpha = 1.0 / torch.sqrt(1.0 + rho**2)
    return alpha, rho * alpha


__all__ = [
    "ADAPTERS",
    "PipelineAdapter",
    "denoiser_entry",
    "get_adapter",
    "pipeline_signature",
    "resolve_denoiser",
    "rho_to_alpha_sigma",
    "supported_pipelines",
    "training_log_rho",
]
