"""Apply a guidance method to a classic diffusers pipeline through a call-scoped hook on its denoiser.

The hook (a diffusers ``ModelHook`` with ``new_forward``, docs/design/guidance.md#the-guidance-hook) sees the
denoiser's batched CFG forward, splits the output into the conditional and unconditional halves (order from
the adapter table), computes the guided prediction g with the method and writes it back so that the pipeline's
own ``u + w (c − u)`` yields g:

- ``write_back="both"`` (A1, default for batched pipelines): both halves = g. Exact for any w.
- ``write_back="keep_cond"`` (A2, always used for Flux's separate calls): keep c and set
  u' = (w c − g)/(w − 1) (float32), so code that reads the conditional half (SD's ``guidance_rescale``,
  SD3 SLG)
  still sees the true c. Needs the pipeline's w ≠ 1; exact to floating-point tolerance.

When the method plans ``"cond"`` the model runs on the conditional half only (every tensor argument whose
leading dimension is the full batch is sliced) and when it plans ``"none"`` the model is not called at all.
When it plans ``"full"`` but its :meth:`~fastsample.guidance.methods.GuidanceMethod.uncond_mask` leaves some
samples out (Adaptive Guidance after some samples switched), the batch is re-packed: the model runs on all
conditional rows plus the unconditional rows of the masked samples only, with every batched argument
selected the same way, and the unmasked samples get u = c. A re-packed or conditional-only forward declares
the canonical rows it carries (:func:`fastsample.integration.rows.carrying_rows`), so per-row state below the
hook (the feature cache) follows the batch.
Per-generation state is reset at the start of each ``pipe(...)`` through
:mod:`fastsample.integration.call_scope`, which also hands the hook the call's bound arguments: the pipeline's
guidance scale and CFG switch come from them (or from an attribute such as ``pipe._guidance_scale``) as the
adapter says. A denoiser called outside a pipeline call runs unguided.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any, Literal

import torch
from diffusers.hooks.hooks import ModelHook

from fastsample.integration.adapters import (
    PipelineAdapter,
    get_adapter,
    pipeline_signature,
    resolve_denoiser,
    rho_to_alpha_sigma,
)
from fastsample.integration.call_scope import has_call_hook, on_call, remove_call_hook
from fastsample.integration.handles import Handle
from fastsample.integration.hooks import (
    HookedModules,
    cache_context_manager,
    context_name,
    invalidate_registry_cache,
)
from fastsample.integration.rows import carrying_rows

from .context import GuidanceContext
from .methods import GuidanceMethod

logger = logging.getLogger(__name__)

HOOK_NAME = "fastsample_guidance"
_CALL_KEY = "fastsample.guidance"
WriteBack = Literal["auto", "both", "keep_cond"]


def _slice_batch(value: Any, full: int, index: slice | torch.Tensor) -> Any:
    """Select the rows ``index`` (a slice or a 1-D index tensor) of every tensor whose leading dimension is
    ``full``, recursing into dicts, lists and tuples (hidden states, timesteps, class labels, text embeddings,
    ``added_cond_kwargs``, pooled projections, attention masks); everything else passes through."""
    if isinstance(value, torch.Tensor):
        if value.ndim == 0 or value.shape[0] != full:
            return value
        return value[index] if isinstance(index, slice) else value.index_select(0, index.to(value.device))
    if isinstance(value, dict):
        return {k: _slice_batch(v, full, index) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_slice_batch(v, full, index) for v in value)
    return value


def _prediction(out: Any) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, tuple):
        return out[0]
    return out["sample"]


def _with_prediction(out: Any, pred: torch.Tensor) -> Any:
    if isinstance(out, torch.Tensor):
        return pred
    if isinstance(out, tuple):
        return (pred, *out[1:])
    return type(out)(**{**out, "sample": pred})


def _new_output(module: torch.nn.Module, pred: torch.Tensor, kwargs: dict[str, Any]) -> Any:
    """Wrap a prediction the way ``module.forward`` would have returned it (used when the model is
    skipped)."""
    if not kwargs.get("return_dict", True):
        return (pred,)
    from diffusers import UNet2DConditionModel

    if isinstance(module, UNet2DConditionModel):
        from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

        return UNet2DConditionOutput(sample=pred)
    from diffusers.models.modeling_outputs import Transformer2DModelOutput

    return Transformer2DModelOutput(sample=pred)


def _next_sigma_schedulers() -> tuple[type, ...]:
    from diffusers import DDIMScheduler, EulerDiscreteScheduler, FlowMatchEulerDiscreteScheduler

    return (DDIMScheduler, EulerDiscreteScheduler, FlowMatchEulerDiscreteScheduler)


def check_next_sigma_scheduler(scheduler: Any) -> None:
    """Refuse a scheduler whose next noise level :func:`next_alpha_sigma` cannot compute (methods with
    ``needs_next_sigma``: CFG++, the learned annealing head)."""
    if not isinstance(scheduler, _next_sigma_schedulers()):
        raise ValueError(
            f"{type(scheduler).__name__} is not supported by a method that needs the next noise level "
            "(CFG++, the learned annealing head): use DDIMScheduler, EulerDiscreteScheduler or "
            "FlowMatchEulerDiscreteScheduler."
        )


def next_alpha_sigma(
    scheduler: Any, timestep: Any, parameterization: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """(α', σ') of the sample a first-order scheduler step will produce from ``timestep`` (CFG++,
    annealing)."""
    from diffusers import DDIMScheduler

    check_next_sigma_scheduler(scheduler)
    t0 = torch.as_tensor(timestep).reshape(-1)[0]
    if not isinstance(scheduler, DDIMScheduler):  # Euler, FlowMatch Euler
        index = scheduler.step_index
        if index is None:
            index = scheduler.begin_index
        if index is None:
            index = scheduler.index_for_timestep(t0.to(scheduler.timesteps.device))
        sig = scheduler.sigmas[index + 1].to(torch.float64).cpu()
        if parameterization == "flow":
            return 1.0 - sig, sig
        return rho_to_alpha_sigma(sig)
    prev = int(t0) - scheduler.config.num_train_timesteps // scheduler.num_inference_steps
    a = scheduler.alphas_cumprod[prev] if prev >= 0 else scheduler.final_alpha_cumprod
    a = torch.as_tensor(a, dtype=torch.float64).cpu()
    return a.sqrt(), (1.0 - a).sqrt()


def _check_method(pipe: Any, adapter: PipelineAdapter, method: GuidanceMethod) -> None:
    """Refuse, before any work, a method that this pipeline's model or scheduler cannot serve (at enable time
    and at the start of every call, so a scheduler swapped in later is caught before text encoding)."""
    method.check_parameterization(adapter.prediction_type(pipe))
    if method.needs_next_sigma:
        check_next_sigma_scheduler(pipe.scheduler)


class GuidanceHook(ModelHook):
    """The ``ModelHook`` that applies ``method`` to ``pipe``'s denoiser (see the module docstring)."""

    _is_stateful = True

    def __init__(self, pipe: Any, adapter: PipelineAdapter, method: GuidanceMethod, write_back: str) -> None:
        super().__init__()
        self.pipe = pipe
        self.adapter = adapter
        self.method = method
        self.write_back = write_back
        self.cache_state = cache_context_manager()  # receives diffusers' cache_context name (Flux)
        self._signature: inspect.Signature | None = None
        self.last_stats: dict[str, int] = {}
        self._warned_inactive = False
        self.reset_call()

    # ------------------------------------------------------------------ per-call state
    def reset_call(self, call_args: dict[str, Any] | None = None) -> None:
        """Start of a pipeline call (``call_args``: its bound arguments) or, without arguments, idle."""
        if call_args is not None:
            _check_method(self.pipe, self.adapter, self.method)
        self.method.reset()
        self._call_args = call_args
        self._full_batch: int | None = None
        self._pending: dict[str, Any] | None = None
        self.step = 0
        self.stats = {"forward_calls": 0, "model_calls": 0, "model_samples": 0}

    def end_call(self) -> None:
        self.last_stats = dict(self.stats)
        self._call_args = None
        self._pending = None

    def reset_state(self, module: torch.nn.Module) -> torch.nn.Module:
        return module

    def initialize_hook(self, module: torch.nn.Module) -> torch.nn.Module:
        self._module = module  # the denoiser, on which forwards declare the rows they carry
        return module

    # ------------------------------------------------------------------ helpers
    def _run(self, args: tuple, kwargs: dict, rows: Any = None, full: int | None = None) -> Any:
        """Call the model; with ``rows`` (a slice or index tensor of the canonical batch of ``full`` rows) the
        forward declares which rows it carries (:mod:`fastsample.integration.rows`), so that per-row state
        below it (the feature cache) follows a re-packed batch."""
        if rows is None:
            out = self.fn_ref.original_forward(*args, **kwargs)
        else:
            with carrying_rows(self._module, rows, full):
                out = self.fn_ref.original_forward(*args, **kwargs)
        self.stats["model_calls"] += 1
        self.stats["model_samples"] += int(self._hidden_and_timestep(args, kwargs)[0].shape[0])
        return out

    def _hidden_and_timestep(self, args: tuple, kwargs: dict) -> tuple[torch.Tensor, Any]:
        if self._signature is None:
            self._signature = inspect.signature(self.fn_ref.original_forward)
        bound = self._signature.bind_partial(*args, **kwargs).arguments
        first = next(iter(self._signature.parameters))
        return bound[first], bound.get("timestep")

    def _pipeline_scale(self) -> float:
        scale = self.adapter.guidance_scale(self.pipe, self._call_args)
        if scale is None:
            raise RuntimeError(
                f"fastsample guidance: cannot find the guidance scale of {type(self.pipe).__name__}."
            )
        return scale

    def _context(self, x: torch.Tensor, timestep: Any) -> GuidanceContext:
        t = torch.as_tensor(timestep if timestep is not None else 0.0).reshape(-1)
        if t.numel() not in (1, x.shape[0]):
            t = t[: x.shape[0]]
        alpha, sigma = self.adapter.alpha_sigma(self.pipe, t)
        kind = self.adapter.prediction_type(self.pipe)
        if kind == "flow":
            noise_fraction = sigma
        else:
            noise_fraction = t.to(torch.float64) / getattr(
                self.pipe.scheduler.config, "num_train_timesteps", 1000
            )
        w = self.method.guidance_scale if self.method.guidance_scale is not None else self._pipeline_scale()
        nxt = next_alpha_sigma(self.pipe.scheduler, t, kind) if self.method.needs_next_sigma else None
        extra = {}
        if getattr(self.method, "needs_signature", False) and self.step == 0:
            extra["signature"] = pipeline_signature(self.pipe)
        return GuidanceContext(
            x=x,
            alpha=alpha,
            sigma=sigma,
            parameterization=kind,
            guidance_scale=w,
            step=self.step,
            noise_fraction=noise_fraction,
            next_alpha_sigma=nxt,
            extra=extra,
        )

    def _split_channels(self, pred: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        channels = self.adapter.guided_channels(self.pipe)
        if channels is None:
            return pred, None
        return pred[:, :channels], pred[:, channels:]

    @staticmethod
    def _join_channels(guided: torch.Tensor, rest: torch.Tensor | None) -> torch.Tensor:
        return guided if rest is None else torch.cat([guided, rest], dim=1)

    def _solve_uncond(self, cond: torch.Tensor, guided: torch.Tensor) -> torch.Tensor:
        """A2: u' with u' + w (c − u') = g, i.e. u' = (w c − g)/(w − 1), in float32."""
        if guided is cond:
            return cond
        w = self._pipeline_scale()
        if abs(w - 1.0) < 1e-6:
            raise ValueError("write_back='keep_cond' needs the pipeline's guidance scale != 1.")
        dtype = torch.float64 if cond.dtype == torch.float64 else torch.float32
        return ((w * cond.to(dtype) - guided.to(dtype)) / (w - 1.0)).to(cond.dtype)

    # ------------------------------------------------------------------ the forward
    def new_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        self.stats["forward_calls"] += 1
        if self._call_args is None:
            return self._run(args, kwargs)
        if not self.adapter.cfg_active(self.pipe, self._call_args):
            self._warn_inactive()
            return self._run(args, kwargs)
        if self.adapter.cfg_layout == "separate_calls":
            return self._separate_calls(module, args, kwargs)
        return self._batched(module, args, kwargs)

    def _warn_inactive(self) -> None:
        """Once per handle: the user enabled a method but this call runs no CFG, so the method is skipped."""
        if self._warned_inactive:
            return
        self._warned_inactive = True
        logger.warning(
            "fastsample guidance: %s is enabled, but this %s call runs no classifier-free guidance, so it is "
            "skipped (the pipeline's own rule); %s. This warning is shown once.",
            type(self.method).__name__,
            type(self.pipe).__name__,
            self.adapter.cfg_requirement(self.pipe, self._call_args),
        )

    def _batched(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> Any:
        x, timestep = self._hidden_and_timestep(args, kwargs)
        n = x.shape[0]
        if self._full_batch is None:
            self._full_batch = n
        if n != self._full_batch or n % 2:
            return self._run(args, kwargs)  # e.g. SD3's skip-layer forward, or a callback that turned CFG off
        b = n // 2
        cond_first = self.adapter.cfg_layout == "cond_first"
        c_idx, u_idx = (slice(0, b), slice(b, n)) if cond_first else (slice(b, n), slice(0, b))
        t = torch.as_tensor(timestep) if timestep is not None else None
        t_cond = t[c_idx] if t is not None and t.ndim > 0 and t.shape[0] == n else t
        ctx = self._context(x[c_idx], t_cond)
        plan = self.method.plan(ctx)
        self.step += 1
        mask = self.method.uncond_mask(ctx) if plan == "full" else None
        if mask is not None:
            mask = torch.as_tensor(mask, dtype=torch.bool).reshape(-1).cpu()
            if mask.shape[0] != b:
                raise ValueError(
                    f"{type(self.method).__name__}.uncond_mask returned {mask.shape[0]} entries for a batch "
                    f"of {b} samples."
                )
            if bool(mask.all()):
                mask = None
            elif not bool(mask.any()):
                plan, mask = "cond", None
        if plan == "full" and mask is not None:
            out, c, c_rest, u, u_rest = self._repacked(args, kwargs, n, cond_first, mask)
            guided = self.method(c, u, ctx)
        elif plan == "full":
            out = self._run(args, kwargs)
            pred = _prediction(out)
            (c, c_rest), (u, u_rest) = self._split_channels(pred[c_idx]), self._split_channels(pred[u_idx])
            guided = self.method(c, u, ctx)
        elif plan == "cond":
            out = self._run(_slice_batch(args, n, c_idx), _slice_batch(kwargs, n, c_idx), c_idx, n)
            c, c_rest = self._split_channels(_prediction(out))
            u_rest = c_rest
            guided = self.method(c, None, ctx)
        elif plan == "none":
            guided = self.method(None, None, ctx)
            c, c_rest, u_rest, out = guided, None, None, None
        else:
            raise ValueError(
                f"{type(self.method).__name__}.plan returned {plan!r}; expected 'full', 'cond' or 'none'."
            )
        guided = guided.to(c.dtype)
        new_u = guided if self.write_back == "both" else self._solve_uncond(c, guided)
        new_c = guided if self.write_back == "both" else c
        halves = [self._join_channels(new_c, c_rest), self._join_channels(new_u, u_rest)]
        full = torch.cat(halves if cond_first else halves[::-1], dim=0)
        return _new_output(module, full, kwargs) if out is None else _with_prediction(out, full)

    def _repacked(self, args: tuple, kwargs: dict, n: int, cond_first: bool, mask: torch.Tensor) -> tuple:
        """Run the model on every conditional row and only the unconditional rows of the samples in ``mask``
        (kept in the adapter's half order), then scatter the result back to B samples.

        Returns ``(out, c, c_rest, u, u_rest)``: ``u`` (and the variance channels ``u_rest``) of a sample
        outside the mask is its conditional prediction."""
        b = n // 2
        active = torch.nonzero(mask).reshape(-1)
        m = active.numel()
        cond_rows = torch.arange(b) if cond_first else torch.arange(b, n)
        uncond_rows = (b if cond_first else 0) + active
        rows = torch.cat([cond_rows, uncond_rows] if cond_first else [uncond_rows, cond_rows])
        out = self._run(_slice_batch(args, n, rows), _slice_batch(kwargs, n, rows), rows, n)
        pred = _prediction(out)
        c_part, u_part = (pred[:b], pred[b:]) if cond_first else (pred[m:], pred[:m])
        c, c_rest = self._split_channels(c_part)
        u_active, u_rest_active = self._split_channels(u_part)
        index = active.to(c.device)
        u = c.index_copy(0, index, u_active)
        u_rest = None if c_rest is None else c_rest.index_copy(0, index, u_rest_active)
        return out, c, c_rest, u, u_rest

    def _separate_calls(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> Any:
        name = context_name(self.cache_state)
        if name == "cond":
            x, timestep = self._hidden_and_timestep(args, kwargs)
            ctx = self._context(x, timestep)
            plan = self.method.plan(ctx)
            if plan == "none":
                guided = self.method(None, None, ctx).to(x.dtype)
                self._pending = {"ctx": ctx, "plan": plan, "cond": guided, "guided": guided}
                return _new_output(module, guided, kwargs)
            out = self._run(args, kwargs)
            cond = _prediction(out)
            guided = self.method(cond, None, ctx) if plan == "cond" else None
            self._pending = {"ctx": ctx, "plan": plan, "cond": cond, "guided": guided}
            return out
        if name == "uncond" and self._pending is not None:
            pending, self._pending = self._pending, None
            self.step += 1
            cond = pending["cond"]
            if pending["plan"] in ("cond", "none"):
                return _new_output(module, self._solve_uncond(cond, pending["guided"].to(cond.dtype)), kwargs)
            out = self._run(args, kwargs)
            guided = self.method(cond, _prediction(out), pending["ctx"]).to(cond.dtype)
            return _with_prediction(out, self._solve_uncond(cond, guided))
        return self._run(args, kwargs)


class GuidanceHandle(Handle):
    """Returned by :func:`enable_guidance`; ``disable()`` removes the hook and restores the pipeline
    exactly (the :class:`~fastsample.integration.handles.Handle` verbs)."""

    def __init__(self, pipe: Any, hook: GuidanceHook, module: torch.nn.Module, hooked: HookedModules):
        self.pipe = pipe
        self.hook = hook
        self._module = module
        self._hooked = hooked
        self.active = True

    @property
    def method(self) -> GuidanceMethod:
        return self.hook.method

    @property
    def last_stats(self) -> dict[str, int]:
        """Denoiser forwards, real model calls and samples evaluated during the last completed pipeline
        call."""
        return dict(self.hook.last_stats)

    def describe(self) -> str:
        state = self.hook.write_back if self.active else "off"
        return f"guidance {type(self.method).__name__} on {type(self.pipe).__name__} ({state})"

    def _undo(self) -> None:
        self._hooked.remove_all()
        invalidate_registry_cache(self._module)
        remove_call_hook(self.pipe, _CALL_KEY)


def enable_guidance(pipe: Any, method: GuidanceMethod, write_back: WriteBack = "auto") -> GuidanceHandle:
    """Guide every later ``pipe(...)`` call with ``method`` until ``handle.disable()``.

    Args:
        pipe: a supported diffusers (or fastsample) pipeline; see
            :func:`fastsample.integration.adapters.supported_pipelines`.
        method: a :class:`~fastsample.guidance.methods.GuidanceMethod` instance.
        write_back: ``"auto"`` (A1 for batched pipelines, A2 for separate calls), ``"both"`` (A1) or
            ``"keep_cond"`` (A2); see the module docstring.
    """
    if not isinstance(method, GuidanceMethod):
        raise TypeError(f"method must be a fastsample.guidance method instance, got {type(method).__name__}.")
    if write_back not in ("auto", "both", "keep_cond"):
        raise ValueError(f"write_back must be 'auto', 'both' or 'keep_cond', got {write_back!r}.")
    adapter = get_adapter(pipe)
    if adapter.cfg_layout == "separate_calls":
        if write_back == "both":
            raise ValueError(
                f"{type(pipe).__name__} runs cond and uncond as separate calls: use write_back='keep_cond'."
            )
        write_back = "keep_cond"
    elif write_back == "auto":
        write_back = "both"
    if has_call_hook(pipe, _CALL_KEY):
        raise ValueError("guidance is already enabled on this pipeline; disable the existing handle first.")
    module = resolve_denoiser(pipe, "enable_guidance", require_adapter=True)
    registry = module.__dict__.get("_diffusers_hook")
    existing = registry.get_hook(HOOK_NAME) if registry is not None else None
    if existing is not None:
        owner = getattr(existing, "pipe", None)
        raise ValueError(
            f"guidance is already enabled on this {type(pipe).__name__}'s {adapter.denoiser_attr}, through "
            f"another pipeline ({type(owner).__name__}) that shares it (from_pipe, or Pipeline(**other."
            "components)). One denoiser carries one guidance method: disable() the other pipeline's handle "
            f"first, or give this pipeline its own copy of the {adapter.denoiser_attr}."
        )
    _check_method(pipe, adapter, method)
    hook = GuidanceHook(pipe, adapter, method, write_back)
    hooked = HookedModules()
    hooked.add(module, hook, HOOK_NAME)
    invalidate_registry_cache(module)
    on_call(pipe, _CALL_KEY, hook.reset_call, hook.end_call, with_arguments=True)
    return GuidanceHandle(pipe, hook, module, hooked)


def guide(pipe: Any, method: GuidanceMethod, write_back: WriteBack = "auto") -> GuidanceHandle:
    """Alias of :func:`enable_guidance`, the primary spelling, kept for ``with guide(pipe, APG()):``.

    The returned handle is a context manager, so ``with guide(...)`` and ``with enable_guidance(...)`` are
    the same: guidance for the calls inside the block only. (Called without ``with``, guidance stays on
    until ``handle.disable()``.)"""
    return enable_guidance(pipe, method, write_back)


__all__ = [
    "GuidanceHandle",
    "GuidanceHook",
    "check_next_sigma_scheduler",
    "enable_guidance",
    "guide",
    "next_alpha_sigma",
]
