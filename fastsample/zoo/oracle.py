"""Run any diffusers-compatible scheduler against the exact Gaussian-mixture denoiser, and score it.

The pieces (docs/design/solvers.md#exact-mixture-oracle):

- :class:`OracleProblem` fixes the mixture, the initial noise (float64) and one class label per sample
  (uniform over classes by default, or drawn from p(y)).
- :func:`run_scheduler` is the pipeline loop (``set_timesteps``, ``init_noise_sigma``, ``scale_model_input``,
  ``step(...).prev_sample``) with the exact denoiser as the "network" and classifier-free guidance
  out = u + w·(c − u) combined in the scheduler's own ``prediction_type``. One batched cond+uncond
  evaluation counts as one NFE. The oracle runs in float64, the scheduler in float32.
- :func:`reference_solution` integrates the probability-flow ODE with the same guided denoiser, from the
  scheduler's own start to its own end, with scipy DOP853 (rtol = atol = 1e-10):
  VP: dx̄/dσ̄ = ε̂_w(x̄/√(1+σ̄²), σ̄) in x̄ = x/α; flow: dx/ds = v̂_w(x, s).
- :func:`compare` gives the metrics: per-sample error e_i = ‖x̄_i − x̄_ref,i‖/√d (x for flow), its median,
  the blow-up rate (e_i > 0.5), the magnitude ratio max|x̄|/max|x̄_ref| and the mode-flip rate.

Noise levels, generically. A "vp" scheduler exposes ``alphas_cumprod``; the model sees a timestep t and a
perfect network answers at the noise level it was trained with at t:

- integer t (DDIM, PNDM, DPM-Solver, UniPC, DEIS, also DPM's rounded Karras timesteps): σ̄ = √((1−ᾱ_t)/ᾱ_t);
- fractional t (Euler): diffusers has two conventions, linear in σ̄ (default grids) and linear in log σ̄
  (``_sigma_to_t`` for Karras/exponential/beta grids). The scheduler's own ``sigmas[i]`` is used when it
  lies between the table values at ⌊t⌋ and ⌈t⌉ (exact for both); otherwise σ̄ is interpolated linearly.

The oracle always answers at the level the timestep labels, as a network would, even where a scheduler's
state has drifted from it (DDIM with "trailing" spacing and T/N not an integer steps to t − T//N but labels
the next call differently); that mismatch then counts as the scheduler's error.

A "flow" scheduler (FlowMatchEuler, or DPM/UniPC/DEIS with ``use_flow_sigmas``) holds s in ``sigmas``;
call i uses s = ``sigmas[i]``, checked against the timestep (t ≈ s·T; DPM and UniPC floor t to an integer).

The end level is ``sigmas[-1]`` when the scheduler keeps a per-step ``sigmas`` table (Euler, DPM, UniPC,
DEIS, flow), otherwise the DDIM/PNDM rule: ᾱ at t_last − T//N, or ``final_alpha_cumprod`` when negative.
Latents are x (DDIM, PNDM, DPM, ...) or x̄ (Euler, whose ``scale_model_input`` divides by √(1+σ̄²)); the
convention is read from the first ``scale_model_input`` call.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from fastsample.zoo.gmm import FAMILIES, GaussianMixture, vp_alpha_sigma

logger = logging.getLogger(__name__)

BLOWUP_THRESHOLD = 0.5
LABEL_MODES = ("uniform", "prior")


@dataclass
class OracleProblem:
    """What every scheduler is run on: a mixture, standard-normal noise (n, d) in float64 and labels (n,)."""

    mixture: GaussianMixture
    noise: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self) -> None:
        if self.noise.ndim != 2 or self.noise.shape[1] != self.mixture.dim:
            raise ValueError(
                f"`noise` must have shape (n, {self.mixture.dim}), got {tuple(self.noise.shape)}"
            )
        self.noise = self.noise.detach().to("cpu", torch.float64)
        self.labels = self.mixture._check_labels(self.labels, self.noise.shape[0])

    @classmethod
    def create(
        cls, mixture: GaussianMixture, num_samples: int = 1000, seed: int = 0, labels: str = "uniform"
    ) -> OracleProblem:
        """Seeded standard-normal noise and one random label per sample.

        ``labels="uniform"``: every class equally often (what docs/design/solvers.md#reading-the-table used);
        ``"prior"``: drawn from p(y), the mixture's class weights.
        """
        if num_samples < 1:
            raise ValueError(f"`num_samples` must be >= 1, got {num_samples}")
        if labels not in LABEL_MODES:
            raise ValueError(f"`labels` must be one of {LABEL_MODES}, got {labels!r}")
        gen = torch.Generator().manual_seed(seed)
        noise = torch.randn(num_samples, mixture.dim, generator=gen, dtype=torch.float64)
        if labels == "uniform":
            y = torch.randint(0, mixture.num_classes, (num_samples,), generator=gen)
        else:
            y = mixture.sample_labels(num_samples, gen)
        return cls(mixture, noise, y)

    @property
    def num_samples(self) -> int:
        return self.noise.shape[0]


def guided_prediction(
    mixture: GaussianMixture,
    x: torch.Tensor,
    level: float,
    prediction_type: str,
    family: str,
    labels: torch.Tensor,
    guidance_scale: float,
) -> torch.Tensor:
    """Classifier-free guidance u + w·(c − u) of the exact outputs in ``prediction_type`` (float64).

    Every parameterisation is the same affine function of (x̂0, ε̂) for c and u, so combining in any one
    of them equals combining in any other (:meth:`GaussianMixture.predict` does it in one pass).
    """
    return mixture.predict(
        x, level, prediction_type, family=family, labels=labels, guidance_scale=guidance_scale
    )


# ---------------------------------------------------------------------------------------------- levels
def _check_family(scheduler, family: str) -> None:
    if family not in FAMILIES:
        raise ValueError(f"`family` must be one of {FAMILIES}, got {family!r}")
    config = getattr(scheduler, "config", {})
    uses_flow = bool(config.get("use_flow_sigmas", False)) or not hasattr(scheduler, "alphas_cumprod")
    if family == "vp" and uses_flow:
        raise ValueError(
            f"{type(scheduler).__name__} is a flow schedule (no `alphas_cumprod`, or use_flow_sigmas);"
            " run it with family='flow'"
        )
    if family == "flow" and not hasattr(scheduler, "sigmas"):
        raise ValueError(f"{type(scheduler).__name__} has no `sigmas`; cannot run it as family='flow'")


def sigma_bar_table(scheduler) -> np.ndarray:
    """σ̄_t = √((1−ᾱ_t)/ᾱ_t) for t = 0..T−1 from the scheduler's ``alphas_cumprod`` (float64)."""
    ac = torch.as_tensor(scheduler.alphas_cumprod).double().cpu().numpy()
    return np.sqrt((1.0 - ac) / ac)


def _has_step_sigmas(scheduler) -> bool:
    sigmas = getattr(scheduler, "sigmas", None)
    return torch.is_tensor(sigmas) and sigmas.ndim == 1 and len(sigmas) == len(scheduler.timesteps) + 1


def noise_level(scheduler, family: str, timestep, index: int) -> float:
    """The noise level (σ̄ for "vp", s for "flow") the model is asked about at call ``index`` (``timestep``).

    See the module docstring for the rules; raises ValueError where the scheduler's tables are inconsistent.
    """
    t = float(torch.as_tensor(timestep).reshape(-1)[0])
    if family == "flow":
        sigmas = scheduler.sigmas
        if index >= len(sigmas):
            raise ValueError(
                f"call {index} has no entry in {type(scheduler).__name__}.sigmas (len {len(sigmas)})"
            )
        s = float(sigmas[index])
        num_train = float(scheduler.config.get("num_train_timesteps", 1000))
        if abs(s * num_train - t) > 1.0 + 1e-3:
            raise ValueError(
                f"{type(scheduler).__name__}: timestep {t} does not match sigmas[{index}] = {s} "
                f"(expected t ≈ s·{num_train})"
            )
        return s
    table = sigma_bar_table(scheduler)
    if not 0.0 <= t <= len(table) - 1:
        raise ValueError(f"timestep {t} lies outside the training range [0, {len(table) - 1}]")
    lo, hi = math.floor(t), math.ceil(t)
    if lo == hi:
        return float(table[lo])
    if _has_step_sigmas(scheduler) and index < len(scheduler.sigmas):
        own = float(scheduler.sigmas[index])
        if table[lo] * (1 - 1e-6) <= own <= table[hi] * (1 + 1e-6):
            return own
    return float(np.interp(t, np.arange(len(table)), table))


def final_noise_level(scheduler, family: str) -> float:
    """Where the scheduler's last step lands (after ``set_timesteps``): σ̄_end ("vp") or s_end ("flow")."""
    if family == "flow" or _has_step_sigmas(scheduler):
        return float(scheduler.sigmas[-1])
    if hasattr(scheduler, "final_alpha_cumprod") and getattr(scheduler, "num_inference_steps", None):
        # DDIM / PNDM: prev_t = t − T//N, ᾱ_prev = alphas_cumprod[prev_t] or final_alpha_cumprod if prev_t < 0
        prev = (
            int(scheduler.timesteps[-1])
            - scheduler.config.num_train_timesteps // scheduler.num_inference_steps
        )
        ac = float(scheduler.alphas_cumprod[prev]) if prev >= 0 else float(scheduler.final_alpha_cumprod)
        return math.sqrt((1.0 - ac) / ac)
    raise ValueError(
        f"cannot tell where {type(scheduler).__name__} ends: it has neither a per-step `sigmas` table "
        "(len(timesteps)+1 entries) nor DDIM/PNDM's `final_alpha_cumprod`"
    )


# ---------------------------------------------------------------------------------------------- driver
@dataclass
class SchedulerRun:
    """Result of :func:`run_scheduler`: the final state (x̄ for VP, x for flow; float64) and bookkeeping."""

    final: torch.Tensor
    nfe: int
    num_inference_steps: int
    start_level: float
    end_level: float
    start_scale: float  # the start state is problem.noise · start_scale (in x̄ for VP, x for flow)
    latents_are_xbar: bool


def run_scheduler(
    scheduler,
    problem: OracleProblem,
    *,
    family: str,
    num_inference_steps: int,
    guidance_scale: float = 1.0,
) -> SchedulerRun:
    """Sample with ``scheduler`` (a deep copy; the argument is not modified) and the exact guided denoiser."""
    _check_family(scheduler, family)
    if num_inference_steps < 1:
        raise ValueError(f"`num_inference_steps` must be >= 1, got {num_inference_steps}")
    scheduler = copy.deepcopy(scheduler)
    prediction_type = scheduler.config.get("prediction_type", None)
    if family == "flow" and prediction_type is None:
        prediction_type = "flow_prediction"  # FlowMatch schedulers: the model output is the velocity
    if prediction_type is None:
        raise ValueError(f"{type(scheduler).__name__} has no `prediction_type` in its config")
    scheduler.set_timesteps(num_inference_steps)
    init_sigma = float(getattr(scheduler, "init_noise_sigma", 1.0))
    latents = (problem.noise * init_sigma).to(torch.float32)
    mixture, labels = problem.mixture, problem.labels
    start_level = start_scale = None
    xbar_latents = False
    nfe = 0
    for i, t in enumerate(scheduler.timesteps):
        model_input = (
            scheduler.scale_model_input(latents, t) if hasattr(scheduler, "scale_model_input") else latents
        )
        level = noise_level(scheduler, family, t, i)
        if i == 0:
            start_level = level
            xbar_latents = _latents_are_xbar(latents, model_input, level, family)
            start_scale = (
                init_sigma
                if (family == "flow" or xbar_latents)
                else init_sigma / float(vp_alpha_sigma(level)[0])
            )
        out = guided_prediction(
            mixture, model_input.double(), level, prediction_type, family, labels, guidance_scale
        )
        latents = scheduler.step(out.to(torch.float32), t, latents).prev_sample
        nfe += 1
    if nfe == 0:
        raise ValueError(f"{type(scheduler).__name__} produced no timesteps")
    end_level = final_noise_level(scheduler, family)
    final = latents.double()
    if family == "vp" and not xbar_latents:
        final = final / float(vp_alpha_sigma(end_level)[0])
    return SchedulerRun(final, nfe, num_inference_steps, start_level, end_level, start_scale, xbar_latents)


def _latents_are_xbar(latents: torch.Tensor, model_input: torch.Tensor, level: float, family: str) -> bool:
    """Read the latent convention from the first ``scale_model_input``: identity → x, 1/√(1+σ̄²) → x̄."""
    lat, inp = latents.double(), model_input.double()
    c = float((lat * inp).sum() / (lat * lat).sum().clamp_min(1e-300))
    if not torch.allclose(inp, c * lat, rtol=1e-5, atol=1e-6):
        raise ValueError("scale_model_input is not a uniform scaling of the latents; unsupported scheduler")
    if abs(c - 1.0) <= 1e-5:
        return False
    if family == "vp" and abs(c - float(vp_alpha_sigma(level)[0])) <= 1e-5:
        return True
    raise ValueError(f"scale_model_input scales by {c:.6g}, which matches neither x (1) nor x̄ (α) latents")


def steps_for_nfe(scheduler, nfe: int) -> int:
    """The ``num_inference_steps`` whose ``set_timesteps`` yields exactly ``nfe`` model calls.

    For most schedulers that is nfe itself; PNDM with ``skip_prk_steps`` (PLMS) needs nfe − 1.
    """
    if nfe < 1:
        raise ValueError(f"`nfe` must be >= 1, got {nfe}")
    probe = copy.deepcopy(scheduler)
    for n in range(nfe, 0, -1):
        probe.set_timesteps(n)
        if len(probe.timesteps) == nfe:
            return n
    raise ValueError(f"no num_inference_steps gives exactly {nfe} model calls for {type(scheduler).__name__}")


# ---------------------------------------------------------------------------------------------- reference
def reference_solution(
    problem: OracleProblem,
    *,
    family: str,
    start_level: float,
    end_level: float,
    start_scale: float = 1.0,
    guidance_scale: float = 1.0,
    rtol: float = 1e-10,
    atol: float = 1e-10,
) -> torch.Tensor:
    """Probability-flow ODE solution from ``problem.noise·start_scale`` at ``start_level`` to ``end_level``.

    VP: dx̄/dσ̄ = ε̂_w(x̄/√(1+σ̄²), σ̄); flow: dx/ds = v̂_w(x, s). scipy ``solve_ivp(method="DOP853")``,
    vectorised over all samples. Returns x̄ (VP) or x (flow) at the end, float64 (n, d).
    """
    from scipy.integrate import solve_ivp

    if family not in FAMILIES:
        raise ValueError(f"`family` must be one of {FAMILIES}, got {family!r}")
    if family == "vp" and not (math.isfinite(start_level) and start_level >= 0 and end_level >= 0):
        raise ValueError(f"VP levels must be finite σ̄ >= 0, got start={start_level}, end={end_level}")
    mixture, labels = problem.mixture, problem.labels
    n, d = problem.noise.shape
    y0 = (problem.noise * start_scale).numpy().reshape(-1)
    if start_level == end_level:
        return torch.from_numpy(y0.reshape(n, d).copy())
    pred = "epsilon" if family == "vp" else "flow_prediction"

    def rhs(level: float, y: np.ndarray) -> np.ndarray:
        state = torch.from_numpy(y.reshape(n, d))
        x = state / math.sqrt(1.0 + level * level) if family == "vp" else state
        slope = guided_prediction(mixture, x, level, pred, family, labels, guidance_scale)
        return slope.numpy().reshape(-1)

    sol = solve_ivp(rhs, (start_level, end_level), y0, method="DOP853", rtol=rtol, atol=atol)
    if not sol.success:
        raise RuntimeError(f"reference ODE solve failed: {sol.message}")
    logger.debug(
        "reference %s %.4g -> %.4g (w=%g): %d RHS evaluations",
        family,
        start_level,
        end_level,
        guidance_scale,
        sol.nfev,
    )
    return torch.from_numpy(sol.y[:, -1].reshape(n, d).copy())


@dataclass
class ReferenceCache:
    """Reference solutions of one :class:`OracleProblem`, computed once per (family, start, end, scale, w)."""

    problem: OracleProblem
    solutions: dict = field(default_factory=dict)

    def get(self, run: SchedulerRun, family: str, guidance_scale: float) -> torch.Tensor:
        key = (
            family,
            float(guidance_scale),
            *(float(f"{v:.7g}") for v in (run.start_level, run.end_level, run.start_scale)),
        )
        if key not in self.solutions:
            self.solutions[key] = reference_solution(
                self.problem,
                family=family,
                start_level=run.start_level,
                end_level=run.end_level,
                start_scale=run.start_scale,
                guidance_scale=guidance_scale,
            )
        return self.solutions[key]


# ---------------------------------------------------------------------------------------------- metrics
@dataclass
class OracleMetrics:
    """Scores of one run against its reference (docs/design/solvers.md#exact-mixture-oracle)."""

    median_error: float
    blowup_rate: float
    magnitude_ratio: float
    mode_flip_rate: float
    errors: np.ndarray  # per-sample e_i = ‖x̄_i − x̄_ref,i‖/√d (inf where the sample is not finite)
    nfe: int = 0


def compare(
    final: torch.Tensor, reference: torch.Tensor, mixture: GaussianMixture, nfe: int = 0
) -> OracleMetrics:
    """Per-sample error, its median, blow-up rate (e_i > 0.5), magnitude ratio and mode-flip rate."""
    if final.shape != reference.shape:
        raise ValueError(f"shapes differ: {tuple(final.shape)} vs {tuple(reference.shape)}")
    final, reference = final.double(), reference.double()
    finite = torch.isfinite(final).all(dim=1)
    err = torch.linalg.vector_norm(final - reference, dim=1) / math.sqrt(final.shape[1])
    err = torch.where(finite, err, torch.full_like(err, math.inf)).numpy()
    mag = float(final.abs().max() / reference.abs().max()) if finite.all() else math.inf
    flips = mixture.nearest_component(torch.nan_to_num(final)) != mixture.nearest_component(reference)
    flips = flips | ~finite
    return OracleMetrics(
        median_error=float(np.median(err)),
        blowup_rate=float(np.mean(err > BLOWUP_THRESHOLD)),
        magnitude_ratio=mag,
        mode_flip_rate=float(flips.double().mean()),
        errors=err,
        nfe=nfe,
    )


def evaluate(
    scheduler,
    problem: OracleProblem,
    *,
    family: str,
    nfe: int,
    guidance_scale: float = 1.0,
    cache: ReferenceCache | None = None,
) -> OracleMetrics:
    """Run ``scheduler`` at exactly ``nfe`` model calls and score it against its own reference."""
    steps = steps_for_nfe(scheduler, nfe)
    run = run_scheduler(
        scheduler, problem, family=family, num_inference_steps=steps, guidance_scale=guidance_scale
    )
    if run.nfe != nfe:
        raise AssertionError(f"{type(scheduler).__name__} made {run.nfe} model calls, expected {nfe}")
    cache = cache if cache is not None else ReferenceCache(problem)
    if cache.problem is not problem:
        raise ValueError("`cache` belongs to a different OracleProblem")
    reference = cache.get(run, family, guidance_scale)
    return compare(run.final, reference, problem.mixture, nfe=run.nfe)


def oracle_model(mixture, labels: torch.Tensor, scheduler, guidance_scale: float) -> Callable:
    """The exact guided Gaussian-mixture denoiser as a ``fastsample.solvers.grid_fit.ModelFn`` for
    ``scheduler``'s prediction type (to fit grids and coefficients on): answers at the call's public level
    (σ̄ or s)."""
    family = "flow" if scheduler.is_flow else "vp"
    prediction = scheduler.config.prediction_type

    def model(x: torch.Tensor, timestep, level: float) -> torch.Tensor:
        out = mixture.predict(
            x.double(), level, prediction, family=family, labels=labels, guidance_scale=guidance_scale
        )
        return out.to(torch.float32)

    return model


def oracle_reference_states(
    mixture, labels, noise, scheduler, nfe: int, guidance_scale: float, *, every_step: bool = True
) -> list[torch.Tensor]:
    """The exact ODE states (scipy DOP853) from ``noise`` after each step of the scheduler's default
    ``nfe``-step grid (``every_step=False``: only the final one), in the latents' coordinates (x)."""
    from fastsample.solvers.grid_fit import default_levels

    family = "flow" if scheduler.is_flow else "vp"
    levels = default_levels(scheduler, nfe)
    problem = OracleProblem(mixture, noise.double(), labels)
    start_scale = 1.0 if family == "flow" else 1.0 / float(vp_alpha_sigma(float(levels[0]))[0])
    states = []
    for level in levels[1:] if every_step else levels[-1:]:
        ref = reference_solution(
            problem,
            family=family,
            start_level=float(levels[0]),
            end_level=float(level),
            start_scale=start_scale,
            guidance_scale=guidance_scale,
        )
        states.append(ref * float(vp_alpha_sigma(float(level))[0]) if family == "vp" else ref)  # x̄ → x
    return states


def oracle_reference(mixture, labels, noise, scheduler, nfe: int, guidance_scale: float) -> torch.Tensor:
    """The exact ODE solution (scipy DOP853) from ``noise`` over the scheduler's ``nfe``-step noise range, in
    the latents' coordinates (x at the end level)."""
    return oracle_reference_states(mixture, labels, noise, scheduler, nfe, guidance_scale, every_step=False)[
        0
    ]
