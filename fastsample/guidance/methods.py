"""Classifier-free guidance methods as pure tensor math.

Every method is called per guided denoiser evaluation as ``method(cond, uncond, ctx)`` with the
conditional and
unconditional predictions in the model's own output space (ε, v, x0 or flow velocity; only the guided
channels) and a :class:`~fastsample.guidance.context.GuidanceContext`; it returns the guided prediction in the
same space. ``uncond`` is ``None`` on steps where :meth:`GuidanceMethod.plan` asked to skip the unconditional
pass. Methods that carry state across steps (APG momentum, the AG switch) reset it in :meth:`reset`, which the
pipeline hook calls at the start of every pipeline call.

Convention (diffusers / Imagen): g = u + w (c − u); w = 1 is no guidance.
"""

from __future__ import annotations

import math
from typing import Literal

import torch

from .context import GuidanceContext, compute_dtype

Plan = Literal["full", "cond", "none"]


def _dims(t: torch.Tensor) -> list[int]:
    return list(range(1, t.ndim))


def check_scale(value: float | None, name: str = "guidance_scale", minimum: float = 1.0) -> float | None:
    """``None`` (use the pipeline's scale) or a finite real ≥ ``minimum``."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a real number or None, got {type(value).__name__}.")
    if not math.isfinite(value) or value < minimum:
        raise ValueError(f"{name} must be a finite number >= {minimum} (w=1 means no guidance), got {value}.")
    return float(value)


def cfg_combine(cond: torch.Tensor, uncond: torch.Tensor, w: float | torch.Tensor) -> torch.Tensor:
    """g = u + w (c − u), in the inputs' dtype and in the same operation order as the diffusers pipelines."""
    return uncond + w * (cond - uncond)


class GuidanceMethod:
    """Base class: plain classifier-free guidance with the hooks a stateful method overrides.

    Args:
        guidance_scale: w. ``None`` uses the scale the pipeline was called with.
    """

    #: Whether the method needs ``ctx.rho_next`` (the scheduler's next noise level).
    needs_next_sigma: bool = False
    #: The space the method's formula works in ("any": affine, identical in every space).
    space: str = "any"
    _min_scale: float = 1.0

    def __init__(self, guidance_scale: float | None = None) -> None:
        self.guidance_scale = check_scale(guidance_scale, minimum=self._min_scale)

    def reset(self) -> None:
        """Forget all per-generation state (called at the start of every pipeline call)."""

    def check_parameterization(self, parameterization: str) -> None:
        """Raise ``ValueError`` if the method cannot guide a model that predicts ``parameterization``
        (``"epsilon"``, ``"v_prediction"``, ``"sample"`` or ``"flow"``). The hook calls this when guidance is
        enabled and at the start of every pipeline call, before any text encoding or denoising."""

    def plan(self, ctx: GuidanceContext) -> Plan:
        """Which passes this step needs: ``"full"`` (cond and uncond), ``"cond"`` or ``"none"`` (no
        model call)."""
        return "full"

    def uncond_mask(self, ctx: GuidanceContext) -> torch.Tensor | None:
        """On a ``"full"`` step: a boolean (B,) mask of the samples that need their unconditional prediction,
        or ``None`` for all of them.

        When some are ``False`` the hook re-packs the batch (the model runs on every conditional row and only
        the masked unconditional rows) and passes the method an ``uncond`` whose unmasked rows hold the
        conditional prediction, so ``u + w (c − u)`` is exactly c there.
        """
        return None

    def __call__(
        self, cond: torch.Tensor | None, uncond: torch.Tensor | None, ctx: GuidanceContext
    ) -> torch.Tensor:
        if uncond is None:
            return cond
        return cfg_combine(cond, uncond, ctx.guidance_scale)

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({fields})"


class CFG(GuidanceMethod):
    """Classifier-free guidance (Ho & Salimans 2022): g = u + w (c − u). Space-invariant."""

    _min_scale = 0.0


class CFGRescale(GuidanceMethod):
    """CFG with rescale (Lin et al. 2023, "Common Diffusion Noise Schedules and Sample Steps are
    Flawed", §3.4).

    g = u + w (c − u); g_r = g · std(c)/std(g) (per sample over all non-batch dims); out = φ g_r + (1 − φ) g.
    Works in the model's own output space (the paper applies it to the v prediction). φ = 0.7 as suggested.
    """

    space = "model"

    def __init__(self, guidance_scale: float | None = None, guidance_rescale: float = 0.7) -> None:
        super().__init__(guidance_scale)
        if not 0.0 <= guidance_rescale <= 1.0:
            raise ValueError(f"guidance_rescale (φ) must be in [0, 1], got {guidance_rescale}.")
        self.guidance_rescale = float(guidance_rescale)

    def __call__(self, cond, uncond, ctx):
        if uncond is None:
            return cond
        g = cfg_combine(cond, uncond, ctx.guidance_scale)
        dims = _dims(g)
        rescaled = g * (cond.std(dim=dims, keepdim=True) / g.std(dim=dims, keepdim=True))
        return self.guidance_rescale * rescaled + (1.0 - self.guidance_rescale) * g


class APG(GuidanceMethod):
    """Adaptive Projected Guidance (Sadat, Hilliges, Weber, ICLR 2025, arXiv 2410.02416, Algorithm 1),
    in x0 space.

    With D_c, D_u the x̂0 predictions and Δ = D_c − D_u (norms and inner products per sample over all
    non-batch dims, in float64):
      1. momentum  m ← Δ + β m (m = 0 at the start of each generation), Δ ← m;
      2. rescale   Δ ← Δ · min(1, r/‖Δ‖);
      3. project   Δ∥ = (⟨Δ, D_c⟩/‖D_c‖²) D_c, Δ⊥ = Δ − Δ∥;
      4. combine   D̂ = D_c + (w − 1)(Δ⊥ + η Δ∥), converted back to the model's parameterisation.

    Args:
        guidance_scale: w ≥ 1 (``None``: the pipeline's).
        eta: weight η ≥ 0 of the parallel component (paper: 0).
        momentum: β ∈ (−1, 0]; the paper's reverse momentum is negative (default −0.5); 0 disables it.
        norm_threshold: r expressed per element (RMS): the update is clamped at ‖Δ‖ ≤ r·√N for N elements per
            sample, so one value works at every resolution. The default 15/256 ≈ 0.0586 is the paper's SDXL
            r = 15 (Table 10, as quoted in diffusers PR #9626) for a 4×128×128 latent; the space that r was
            tuned in is not verified. ``None`` disables the clamp.
    """

    space = "x0"
    SDXL_NORM_THRESHOLD = 15.0 / math.sqrt(4 * 128 * 128)

    def __init__(
        self,
        guidance_scale: float | None = None,
        eta: float = 0.0,
        momentum: float = -0.5,
        norm_threshold: float | None = SDXL_NORM_THRESHOLD,
    ) -> None:
        super().__init__(guidance_scale)
        if not math.isfinite(eta) or eta < 0:
            raise ValueError(f"eta must be a finite number >= 0, got {eta}.")
        if not -1.0 < momentum <= 0.0:
            raise ValueError(
                f"momentum (β) must be in (-1, 0] (APG uses reverse momentum, β < 0), got {momentum}."
            )
        if norm_threshold is not None and not (math.isfinite(norm_threshold) and norm_threshold > 0):
            raise ValueError(f"norm_threshold (r) must be a finite number > 0 or None, got {norm_threshold}.")
        self.eta = float(eta)
        self.momentum = float(momentum)
        self.norm_threshold = None if norm_threshold is None else float(norm_threshold)
        self._running: torch.Tensor | None = None

    def reset(self) -> None:
        self._running = None

    def update_x0(self, d_cond: torch.Tensor, d_uncond: torch.Tensor, w: float) -> torch.Tensor:
        """Steps 1–4 on x̂0 tensors (float64); returns D̂ and advances the momentum state."""
        d_cond, d_uncond = d_cond.double(), d_uncond.double()
        dims = _dims(d_cond)
        delta = d_cond - d_uncond
        if self.momentum != 0.0:
            if self._running is not None and self._running.shape != delta.shape:
                raise ValueError(
                    "APG: the batch changed shape mid-generation; call reset() between generations."
                )
            self._running = delta if self._running is None else delta + self.momentum * self._running
            delta = self._running
        if self.norm_threshold is not None:
            r = self.norm_threshold * math.sqrt(delta[0].numel())
            norm = delta.norm(p=2, dim=dims, keepdim=True)
            delta = delta * torch.clamp(r / norm, max=1.0)
        unit = torch.nn.functional.normalize(d_cond, dim=dims)
        parallel = (delta * unit).sum(dim=dims, keepdim=True) * unit
        orthogonal = delta - parallel
        return d_cond + (w - 1.0) * (orthogonal + self.eta * parallel)

    def __call__(self, cond, uncond, ctx):
        if uncond is None:
            return cond
        guided = self.update_x0(ctx.to_x0(cond), ctx.to_x0(uncond), ctx.guidance_scale)
        return ctx.from_x0(guided.to(compute_dtype(cond))).to(cond.dtype)


class AdaptiveGuidance(GuidanceMethod):
    """Adaptive Guidance (Castillo et al. 2023, arXiv 2312.12487).

    Per sample, γ = cos(x̂0_c, x̂0_u) over all non-batch dims (computed on x̂0 because in ε space c ≈ u ≈ x_t at
    the first step; docs/design/guidance.md#adaptive-guidance-and-linearag). A sample whose γ ≥ ``threshold``
    switches permanently to the conditional prediction: from that step on its output is c. On batched
    pipelines the switched samples' unconditional rows are dropped from the forward (``repack=True``, see
    :meth:`GuidanceMethod.uncond_mask`), so a batch of B samples costs B + #(not yet switched) rows per step;
    once every sample has switched the model runs on the conditional half only. With ``repack=False`` the
    batch keeps its 2B rows until the last sample switches (same outputs, more rows).

    Args:
        guidance_scale: w ≥ 1 for the CFG steps (``None``: the pipeline's).
        threshold: γ̄ ∈ (0, 1] (default 0.99, the range the public ComfyUI port advises; the paper's own value
            is not verified).
        repack: drop the unconditional rows of switched samples from the forward (default ``True``).
    """

    space = "x0"

    def __init__(
        self, guidance_scale: float | None = None, threshold: float = 0.99, repack: bool = True
    ) -> None:
        super().__init__(guidance_scale)
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
            raise TypeError(
                f"threshold (γ̄) must be a number in (0, 1], got {type(threshold).__name__} {threshold!r}."
            )
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"threshold (γ̄) must be in (0, 1], got {threshold}.")
        if not isinstance(repack, bool):
            raise TypeError(f"repack must be a bool, got {type(repack).__name__}.")
        self.threshold = float(threshold)
        self.repack = repack
        self._switched: torch.Tensor | None = None
        self.switch_step: int | None = None  # step at which the last sample switched (this generation)
        self.switch_steps: torch.Tensor | None = None  # per sample, the step it switched at (−1: not yet)
        self.gammas: list[torch.Tensor] = []  # γ per sample for every CFG step of this generation

    def reset(self) -> None:
        self._switched = None
        self.switch_step = None
        self.switch_steps = None
        self.gammas = []

    def plan(self, ctx):
        if self._switched is not None and bool(self._switched.all()):
            return "cond"
        return "full"

    def uncond_mask(self, ctx):
        if not self.repack or self._switched is None or not bool(self._switched.any()):
            return None
        return ~self._switched

    def __call__(self, cond, uncond, ctx):
        if uncond is None:
            return cond
        d_c, d_u = ctx.to_x0(cond).flatten(1), ctx.to_x0(uncond).flatten(1)
        gamma = torch.nn.functional.cosine_similarity(d_c, d_u, dim=1).detach().double().cpu()
        if self._switched is None or self._switched.shape != gamma.shape:
            self._switched = torch.zeros(gamma.shape, dtype=torch.bool)
            self.switch_steps = torch.full(gamma.shape, -1, dtype=torch.long)
        # samples that switched earlier carry uncond = cond under re-packing: record their γ as NaN
        self.gammas.append(torch.where(self._switched, torch.nan, gamma))
        newly = (gamma >= self.threshold) & ~self._switched
        self.switch_steps[newly] = ctx.step
        self._switched |= newly
        if self.switch_step is None and bool(self._switched.all()):
            self.switch_step = ctx.step
        guided = cfg_combine(cond, uncond, ctx.guidance_scale)
        mask = self._switched.to(cond.device).reshape(-1, *([1] * (cond.ndim - 1)))
        return torch.where(mask, cond, guided)


class CFGZeroStar(GuidanceMethod):
    """CFG-Zero* (Fan et al. 2025, arXiv 2503.18886), in flow-velocity space.

    s* = ⟨v_c, v_u⟩ / (‖v_u‖² + 1e-8) per sample; v̂ = s* v_u + w (v_c − s* v_u). The first ``zero_init_steps``
    steps return v̂ = 0 ("do not move") WITHOUT calling the model. Zero-init is only meaningful for flow models
    (zero ε is not a no-op), so it is refused for other parameterisations.
    """

    space = "flow"

    def __init__(self, guidance_scale: float | None = None, zero_init_steps: int = 1) -> None:
        super().__init__(guidance_scale)
        if isinstance(zero_init_steps, bool) or not isinstance(zero_init_steps, int) or zero_init_steps < 0:
            raise ValueError(f"zero_init_steps must be an int >= 0, got {zero_init_steps!r}.")
        self.zero_init_steps = zero_init_steps

    def check_parameterization(self, parameterization: str) -> None:
        if self.zero_init_steps > 0 and parameterization != "flow":
            raise ValueError(
                "CFGZeroStar zero-init steps need a flow-matching model (zero velocity = stay); "
                "this model predicts "
                f"{parameterization!r}. Use zero_init_steps=0."
            )

    def plan(self, ctx):
        self.check_parameterization(ctx.parameterization)
        return "none" if ctx.step < self.zero_init_steps else "full"

    def __call__(self, cond, uncond, ctx):
        if ctx.step < self.zero_init_steps:
            self.check_parameterization(ctx.parameterization)
            return torch.zeros_like(ctx.x if cond is None else cond)
        if uncond is None:
            return cond
        dtype = compute_dtype(cond)
        c, u = cond.to(dtype), uncond.to(dtype)
        dims = _dims(c)
        scale = (c * u).sum(dim=dims, keepdim=True) / (u.pow(2).sum(dim=dims, keepdim=True) + 1e-8)
        u = scale * u
        return (u + ctx.guidance_scale * (c - u)).to(cond.dtype)


class CFGPlusPlus(GuidanceMethod):
    """CFG++ (Chung et al., ICLR 2025, arXiv 2406.08070) for first-order deterministic samplers.

    CFG++ takes x̂0 from ε_λ = ε_u + λ(ε_c − ε_u) but renoises with ε_u: x' = α' x̂0 + σ' ε_u (flow:
    x' = (1 − s') x̂0 + s' ε̂_u). For one DDIM (η = 0) / Euler step from (α, σ) to (α', σ') this is
    exactly CFG with
    w_eff = λ σ α' / (σ α' − σ' α) = λ ρ / (ρ − ρ') (ρ = σ/α), which is what is applied here; the first form
    stays finite at pure noise (flow s = 1). Needs the scheduler's next noise level
    (``ctx.next_alpha_sigma``):
    use DDIM or (flow-match) Euler. Multistep solvers are not covered.

    Args:
        guidance_scale: λ ∈ (0, 1] (paper range roughly 0.2–1.0; default 0.6). Unlike CFG this is not w.
    """

    needs_next_sigma = True

    def __init__(self, guidance_scale: float = 0.6) -> None:
        if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, (int, float)):
            raise TypeError("guidance_scale (λ) must be a real number.")
        if not 0.0 < guidance_scale <= 1.0:
            raise ValueError(f"CFG++ guidance_scale (λ) must be in (0, 1], got {guidance_scale}.")
        self.guidance_scale = float(guidance_scale)

    @staticmethod
    def effective_scale(lam: float | torch.Tensor, ctx: GuidanceContext) -> torch.Tensor:
        """w_eff = λ σ α' / (σ α' − σ' α) per sample (float64, shape (B,))."""
        if ctx.next_alpha_sigma is None:
            raise ValueError(
                "CFG++ needs the next noise level (ctx.next_alpha_sigma); use a DDIM or Euler scheduler."
            )
        f64 = {"dtype": torch.float64}
        a = torch.as_tensor(ctx.alpha, **f64).reshape(-1)
        s = torch.as_tensor(ctx.sigma, **f64).reshape(-1)
        a_next, s_next = (torch.as_tensor(v, **f64).reshape(-1) for v in ctx.next_alpha_sigma)
        denom = s * a_next - s_next * a
        # a step that does not lower the noise level (DDIM's last step with set_alpha_to_one=False) leaves the
        # sample unchanged whatever the prediction: use w = λ there instead of dividing by zero
        stalled = denom <= 1e-12 * s * a_next
        safe = torch.where(stalled, 1.0, denom)
        w = torch.where(stalled, torch.as_tensor(lam, **f64), lam * s * a_next / safe)
        return w.expand(ctx.batch_size) if w.numel() == 1 else w

    def _combine(self, lam, cond, uncond, ctx) -> torch.Tensor:
        dtype = compute_dtype(cond)
        w = self.effective_scale(lam, ctx).to(cond.device, dtype).reshape(-1, *([1] * (cond.ndim - 1)))
        return cfg_combine(cond.to(dtype), uncond.to(dtype), w).to(cond.dtype)

    def __call__(self, cond, uncond, ctx):
        if uncond is None:
            return cond
        return self._combine(self.guidance_scale, cond, uncond, ctx)


WINDOW_AXES = ("time", "sigma")


class GuidanceWindow(GuidanceMethod):
    """Guidance inside a window of the trajectory only; outside it the unconditional pass is not run at all.

    Where a step lies (from the hook's :class:`~fastsample.guidance.context.GuidanceContext`):

    - ``over="time"`` (default): trajectory progress p = 1 − τ ∈ [0, 1], with τ = ``ctx.noise_fraction``
      (t/T_train for VP models, the flow time s for flow models), so p = 0 at pure noise and p = 1 at the
      clean sample, whatever the scheduler, step count or shift. The window is ``start ≤ p ≤ end``.
    - ``over="sigma"``: ρ = σ/α (the EDM / k-diffusion sigma); the window is ``start < ρ ≤ end`` as in
      guidance in a limited interval (Kynkäänniemi et al., NeurIPS 2024, arXiv 2404.07724: SDXL's
      (0.28, 5.42]). ``end`` may be ``math.inf``, which includes a flow model's pure-noise step
      (s = 1, ρ = ∞).

    Inside the window the ``inner`` method (default :class:`CFG`) decides everything: its plan, its
    unconditional mask and its combination; ``GuidanceWindow(0.0, 0.6, inner=AdaptiveGuidance())`` applies
    AG's switch inside the window. Outside, the step plans ``"cond"``: the hook runs the model on the
    conditional rows only (the CFG half is sliced off before the forward) and the output is c, i.e. w = 1.
    With N steps of which k lie inside, the unconditional work falls from N·B to at most k·B samples.

    The window is tested on the step's noise level; a batch whose samples sit on different sides of an edge
    (per-sample timesteps) is refused. Inner methods that carry history across steps (APG momentum, LinearAG)
    only see the window's steps. :meth:`AnnealingHead.window
    <fastsample.guidance.annealing.AnnealingHead.window>` reads a window off a learned annealing head's scale
    schedule.

    Args:
        start: the window's lower edge (progress for ``"time"``, ρ for ``"sigma"``); see above. The default
            window [0, 0.8] skips the last fifth of the trajectory's guidance: on the embedded DiTs (20 steps,
            CFG 4) 15 % (VP) / 10 % (flow) of the unconditional work at 26.6 / 35.5 dB paired PSNR to full CFG
            (benchmarks/results/guidance.md, section D).
        end: the window's upper edge, in the same unit.
        over: ``"time"`` or ``"sigma"``.
        inner: the guidance method applied inside the window (``None``: plain :class:`CFG`).
    """

    def __init__(
        self,
        start: float = 0.0,
        end: float = 0.8,
        *,
        over: str = "time",
        inner: GuidanceMethod | None = None,
    ) -> None:
        if over not in WINDOW_AXES:
            raise ValueError(f"over must be one of {WINDOW_AXES}, got {over!r}.")
        for name, value in (("start", start), ("end", end)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
                raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}.")
        if over == "time" and not 0.0 <= start <= end <= 1.0:
            raise ValueError(
                f"a time window needs 0 <= start <= end <= 1 (progress: 0 = pure noise, 1 = clean), got "
                f"start={start}, end={end}."
            )
        if over == "sigma" and not 0.0 <= start < end:
            raise ValueError(f"a sigma window needs 0 <= start < end (end may be inf), got ({start}, {end}].")
        if inner is None:
            inner = CFG()
        if not isinstance(inner, GuidanceMethod):
            raise TypeError(f"inner must be a fastsample guidance method, got {type(inner).__name__}.")
        self.start, self.end, self.over, self.inner = float(start), float(end), over, inner

    # the hook reads these on the method it was given: they are the inner method's
    @property
    def guidance_scale(self) -> float | None:
        return self.inner.guidance_scale

    @property
    def needs_next_sigma(self) -> bool:
        return self.inner.needs_next_sigma

    @property
    def needs_signature(self) -> bool:
        return getattr(self.inner, "needs_signature", False)

    @property
    def space(self) -> str:
        return self.inner.space

    def reset(self) -> None:
        self.inner.reset()

    def check_parameterization(self, parameterization: str) -> None:
        self.inner.check_parameterization(parameterization)

    def inside(self, ctx: GuidanceContext) -> torch.Tensor:
        """Per sample, whether this step lies inside the window (bool, shape (B,))."""
        if self.over == "sigma":
            rho = ctx.rho
            return (rho > self.start) & (rho <= self.end)
        if ctx.noise_fraction is None:
            raise ValueError("a time window needs ctx.noise_fraction (t/T or s); use it through guide().")
        tau = torch.as_tensor(ctx.noise_fraction, dtype=torch.float64).reshape(-1).cpu()
        progress = 1.0 - (tau.expand(ctx.batch_size) if tau.numel() == 1 else tau)
        return (progress >= self.start) & (progress <= self.end)

    def _step_inside(self, ctx: GuidanceContext) -> bool:
        inside = self.inside(ctx)
        if bool(inside.all()):
            return True
        if not bool(inside.any()):
            return False
        raise ValueError(
            "GuidanceWindow: the samples of this batch are at different noise levels on both sides of the "
            f"window's edge ({self.describe_window()}); use one timestep for the whole batch."
        )

    def describe_window(self) -> str:
        """The window as text, e.g. ``progress in [0, 0.6]`` or ``rho in (0.28, 5.42]``."""
        if self.over == "sigma":
            return f"rho in ({self.start:g}, {self.end:g}]"
        return f"progress in [{self.start:g}, {self.end:g}]"

    def plan(self, ctx):
        return self.inner.plan(ctx) if self._step_inside(ctx) else "cond"

    def uncond_mask(self, ctx):
        # only asked on steps planned "full", i.e. inside the window
        return self.inner.uncond_mask(ctx)

    def __call__(self, cond, uncond, ctx):
        if uncond is None and not self._step_inside(ctx):
            return cond
        return self.inner(cond, uncond, ctx)


# The one name table of guidance methods (optimize, the benchmark recipes and the CLI read it).
METHODS: dict[str, type[GuidanceMethod]] = {
    "cfg": CFG,
    "cfg-rescale": CFGRescale,
    "apg": APG,
    "ag": AdaptiveGuidance,
    "cfg-zero-star": CFGZeroStar,
    "cfg++": CFGPlusPlus,
    "window": GuidanceWindow,
}

__all__ = [
    "METHODS",
    "APG",
    "CFG",
    "AdaptiveGuidance",
    "CFGPlusPlus",
    "CFGRescale",
    "CFGZeroStar",
    "GuidanceMethod",
    "GuidanceWindow",
    "Plan",
    "WINDOW_AXES",
    "cfg_combine",
    "check_scale",
]
