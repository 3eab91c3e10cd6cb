"""Optimized step grids: fit the N noise levels of a few-step solver to a fine reference, store them as JSON.

The idea of Align Your Steps (Sabour et al. 2024) and GITS (Chen et al. 2024), written for our schedulers:
for a model (a few trajectories of the user's model, or the exact Gaussian-mixture oracle), a scheduler and
an NFE, find the grid whose N-step solution is closest to a fine reference solution from the same noise.

Parametrisation (monotone by construction). The first level is the scheduler's own start (σ̄_max for VP,
s_max for flow) and the end is its own end, so the fitted grid covers the same noise range as the default
one and its error is measured against the same reference. The N − 1 interior levels live in
ρ = log σ̄ (VP) or ρ = log s (flow; s_max = 1 stays finite): with the N interval weights z = softmax(θ),

    ρ_i = ρ_max − (ρ_max − ρ_min)·(z_1 + … + z_i),   i = 1 .. N − 1,

where ρ_min is the scheduler's smallest non-zero default level (the last interval, from ρ_{N−1} to ρ_min,
is slack: the solver's last step goes from level N − 1 straight to the end). θ starts at the scheduler's
default grid and is optimized with Nelder–Mead (scipy) on the mean per-sample RMS error, each sample's
error capped at ``error_cap`` so that a few diverging samples steer without dominating.

The result is a :class:`GridArtifact`: the levels plus provenance (model hash, NFE, guidance scale, the
schedule keys, the scheduler class and its solver keys, training and held-out errors). Any fastsample
scheduler takes it through :meth:`GridArtifact.set_timesteps` (``set_timesteps(sigmas=...)``), diffusers'
flow schedulers and ``EulerDiscreteScheduler`` through :meth:`GridArtifact.diffusers_sigmas`.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import hashlib
import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch

from fastsample.errors import ArtifactError, read_json, require_fields

logger = logging.getLogger(__name__)

ARTIFACT_KIND = "fastsample.step_grid"
ARTIFACT_VERSION = 1
FAMILIES = ("vp", "flow")
# scheduler config keys that fix the noise schedule; an artifact only applies where they match
SCHEDULE_KEYS = (
    "num_train_timesteps",
    "beta_start",
    "beta_end",
    "beta_schedule",
    "rescale_betas_zero_snr",
    "prediction_type",
    "shift",
    "use_dynamic_shifting",
    "flow_shift",
    "use_flow_sigmas",
)
# solver keys recorded for provenance (the grid was fitted for this solver)
SOLVER_KEYS = ("ghvb_order", "plms_order", "momentum", "nesterov", "method", "variable_step")

#: model(x, timestep, level) -> model output in the scheduler's prediction type; ``level`` is the
#: scheduler's public noise level of the call (σ̄ for VP, s for flow), for models that want it.
ModelFn = Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]


class GridMismatchError(ValueError):
    """A grid artifact was applied to a model, schedule or NFE it was not fitted for."""


def model_hash(model: torch.nn.Module | None = None, *, name: str | None = None) -> str:
    """sha256 (first 16 hex digits) of a module's parameters and buffers (names, shapes, bytes), or of
    ``name`` for a model without weights (e.g. ``"oracle:gmm-seed-0"``)."""
    h = hashlib.sha256()
    if model is None:
        if not name:
            raise ValueError("pass a torch module or a `name`")
        h.update(name.encode())
        return h.hexdigest()[:16]
    for key, tensor in sorted(model.state_dict().items()):
        h.update(key.encode())
        h.update(str(tuple(tensor.shape)).encode())
        h.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def _schedule(config) -> dict:
    config = dict(config)
    return {k: _jsonable(config[k]) for k in SCHEDULE_KEYS if k in config}


def _jsonable(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


class JsonArtifact:
    """JSON file I/O of a fitted solver artifact (a dataclass): a ``kind``/``version`` header before the
    fields; loading refuses another kind or version and missing ``REQUIRED`` fields with an
    :class:`~fastsample.errors.ArtifactError` (a ``ValueError``) naming the file."""

    KIND: ClassVar[str]
    VERSION: ClassVar[int]
    DESCRIPTION: ClassVar[str]  # e.g. "step-grid"
    REQUIRED: ClassVar[tuple[str, ...]]

    def to_dict(self) -> dict:
        return {"kind": self.KIND, "version": self.VERSION, **dataclasses.asdict(self)}

    def save(self, path: str) -> None:
        with open(path, "w") as f:
            json.dump(self.to_dict(), f, indent=2)
            f.write("\n")

    @classmethod
    def from_dict(cls, data: dict, source: str = "artifact"):
        expected = f"a {cls.DESCRIPTION} artifact (kind {cls.KIND!r}, version {cls.VERSION})"
        if not isinstance(data, dict) or data.get("kind") != cls.KIND:
            kind = data.get("kind") if isinstance(data, dict) else type(data).__name__
            raise ArtifactError(source, expected, f"not a {cls.DESCRIPTION} artifact (kind {kind!r})")
        if data.get("version") != cls.VERSION:
            raise ArtifactError(
                source, expected, f"{cls.DESCRIPTION} artifact version {data.get('version')!r}"
            )
        require_fields(source, data, cls.REQUIRED, expected)
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    @classmethod
    def load(cls, path: str):
        return cls.from_dict(read_json(path, f"a JSON {cls.DESCRIPTION} artifact"), source=path)


@dataclass
class GridArtifact(JsonArtifact):
    """A fitted step grid with provenance. ``levels``: N + 1 decreasing noise levels, the end last
    (σ̄ for "vp", s for "flow")."""

    KIND: ClassVar[str] = ARTIFACT_KIND
    VERSION: ClassVar[int] = ARTIFACT_VERSION
    DESCRIPTION: ClassVar[str] = "step-grid"
    REQUIRED: ClassVar[tuple[str, ...]] = (
        "levels",
        "family",
        "nfe",
        "schedule",
        "model_hash",
        "scheduler_class",
    )

    levels: list[float]
    family: str
    nfe: int
    guidance_scale: float | None
    schedule: dict
    model_hash: str
    scheduler_class: str
    solver: dict = field(default_factory=dict)
    train_error: float | None = None
    default_error: float | None = None
    created: str = ""
    num_trajectories: int = 0

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"`family` must be one of {FAMILIES}, got {self.family!r}")
        levels = np.asarray(self.levels, dtype=np.float64)
        if levels.ndim != 1 or len(levels) < 2 or not np.all(np.isfinite(levels)):
            raise ValueError("`levels` must be at least two finite noise levels (the end last)")
        if np.any(np.diff(levels) >= 0) or levels[-1] < 0:
            raise ValueError("`levels` must be strictly decreasing and end at a level >= 0")
        if isinstance(self.nfe, bool) or not isinstance(self.nfe, int) or self.nfe < 1:
            raise ValueError(f"`nfe` must be a positive integer, got {self.nfe!r}")
        self.levels = [float(v) for v in levels]

    @property
    def num_inference_steps(self) -> int:
        return len(self.levels) - 1

    # ------------------------------------------------------------------------------ checks and use
    def check(self, scheduler=None, *, model_hash: str | None = None, nfe: int | None = None) -> None:
        """Raise :class:`GridMismatchError` if the artifact was fitted for another model, schedule or NFE."""
        if nfe is not None and nfe != self.nfe:
            raise GridMismatchError(f"this grid was fitted for NFE {self.nfe}, not {nfe}")
        check_provenance("grid", self.model_hash, self.schedule, scheduler, model_hash)

    def set_timesteps(self, scheduler, *, model_hash: str | None = None, device=None) -> None:
        """``scheduler.set_timesteps`` on this grid (a fastsample scheduler), after :meth:`check`."""
        self.check(scheduler, model_hash=model_hash)
        scheduler.set_timesteps(sigmas=self.scheduler_sigmas(scheduler), device=device)

    def scheduler_sigmas(self, scheduler) -> list[float]:
        """The ``sigmas=`` argument that gives these levels on ``scheduler`` (fastsample or diffusers).

        VP: σ̄ with the end last (as ``EulerDiscreteScheduler``); flow: the N levels before the static
        ``shift`` that ``set_timesteps`` applies to custom sigmas (as ``FlowMatchEulerDiscreteScheduler``).
        """
        if self.family == "vp":
            return list(self.levels)
        config = dict(scheduler.config)
        if config.get("use_dynamic_shifting"):
            raise GridMismatchError("flow grids apply to static-shift schedules (use_dynamic_shifting=False)")
        shift = float(config.get("shift", 1.0))
        s = np.asarray(self.levels[:-1])
        return [float(v) for v in s / (shift - (shift - 1.0) * s)]  # inverse of shift·u/(1 + (shift−1)u)

    def diffusers_sigmas(self, scheduler) -> list[float]:
        """``sigmas=`` for diffusers' ``FlowMatchEulerDiscreteScheduler`` (flow) or ``EulerDiscreteScheduler``
        (VP, σ̄ with the end last); pass it to the pipeline call (``pipe(..., sigmas=...)``)."""
        self.check(scheduler)
        return self.scheduler_sigmas(scheduler)


def check_provenance(what: str, fitted_hash: str, fitted_schedule: dict, scheduler, model_hash) -> None:
    """Raise :class:`GridMismatchError` when ``model_hash`` or ``scheduler``'s noise schedule differ from
    what an artifact (``what``: "grid", "coefficient") was fitted for; ``None`` skips that check."""
    if model_hash is not None and model_hash != fitted_hash:
        raise GridMismatchError(
            f"the {what} artifact was fitted for model {fitted_hash}, not {model_hash}; fit one for it"
        )
    if scheduler is not None:
        ours = _schedule(scheduler.config)
        diff = {k: (v, ours[k]) for k, v in fitted_schedule.items() if k in ours and not _close(v, ours[k])}
        if diff:
            raise GridMismatchError(
                f"the scheduler's noise schedule differs from the fitted one (fitted, given): {diff}"
            )


def _close(a, b) -> bool:
    if isinstance(a, int | float) and isinstance(b, int | float) and not isinstance(a, bool):
        return math.isclose(float(a), float(b), rel_tol=1e-6, abs_tol=1e-12)
    return a == b


# ---------------------------------------------------------------------------------------------- sampling
def sample(scheduler, model: ModelFn, noise: torch.Tensor, *, sigmas=None, num_inference_steps=None):
    """The pipeline loop on a copy of ``scheduler``: returns the final latents (float64).

    ``noise`` is the standard-normal start; it is scaled by ``init_noise_sigma`` as pipelines do.
    """
    scheduler = copy.deepcopy(scheduler)
    if sigmas is not None:
        scheduler.set_timesteps(sigmas=sigmas)
    else:
        scheduler.set_timesteps(num_inference_steps)
    x = noise.to(torch.float32) * float(getattr(scheduler, "init_noise_sigma", 1.0))
    for i, t in enumerate(scheduler.timesteps):
        level = float(scheduler.sigmas[i])
        out = model(scheduler.scale_model_input(x, t), t, level)
        x = scheduler.step(out.to(torch.float32), t, x).prev_sample
    return x.double()


def _errors(final: torch.Tensor, reference: torch.Tensor) -> np.ndarray:
    diff = (final - reference).reshape(final.shape[0], -1)
    err = torch.linalg.vector_norm(diff, dim=1) / math.sqrt(diff.shape[1])
    return torch.nan_to_num(err, nan=math.inf).numpy()


def default_levels(scheduler, n: int) -> np.ndarray:
    """The noise levels (σ̄ or s) of ``scheduler``'s default ``n``-call grid; an error if it makes another
    number of calls."""
    probe = copy.deepcopy(scheduler)
    probe.set_timesteps(n)
    if len(probe.timesteps) != n:
        raise ValueError(f"{type(scheduler).__name__} makes {len(probe.timesteps)} calls for {n} steps")
    return probe.sigmas.double().numpy()


def fit_grid(
    scheduler,
    model: ModelFn,
    noise: torch.Tensor,
    nfe: int,
    *,
    reference: torch.Tensor | None = None,
    reference_steps: int = 200,
    model_id: str,
    guidance_scale: float | None = None,
    error_cap: float = 1.0,
    max_evaluations: int = 300,
) -> GridArtifact:
    """Fit the ``nfe``-step grid of ``scheduler`` (a fastsample scheduler, one model call per step) for
    ``model`` on the trajectories that start from ``noise`` (a batch, e.g. 8–64 samples).

    ``reference``: the exact final latents from ``noise`` if known (the oracle's ODE solution), else the
    scheduler's own ``reference_steps``-step solution on its default grid (same start and end).
    ``model_id``: the model's hash (:func:`model_hash`), recorded and checked when the grid is applied.
    Returns a :class:`GridArtifact` (``train_error`` / ``default_error``: mean capped error of the fitted and
    the default grid on these trajectories). Cost: ``max_evaluations`` × ``nfe`` model calls on the batch.
    """
    from scipy.optimize import minimize

    from fastsample.solvers.core import MultistepCore

    if not isinstance(scheduler, MultistepCore):
        raise TypeError(f"`scheduler` must be a fastsample scheduler, got {type(scheduler).__name__}")
    if isinstance(nfe, bool) or not isinstance(nfe, int) or nfe < 2:
        raise ValueError(f"`nfe` must be an integer >= 2, got {nfe!r}")
    if not torch.is_tensor(noise) or noise.ndim < 2 or noise.shape[0] < 1:
        raise ValueError("`noise` must be a tensor of shape (batch, ...)")
    if error_cap <= 0 or max_evaluations < 1:
        raise ValueError("`error_cap` and `max_evaluations` must be positive")
    if dict(scheduler.config).get("use_dynamic_shifting"):
        raise ValueError("grid fitting needs a static schedule (use_dynamic_shifting=False)")
    family = "flow" if scheduler.is_flow else "vp"
    default = default_levels(scheduler, nfe)
    if reference is None:
        fine = default_levels(scheduler, reference_steps)
        if not (math.isclose(fine[0], default[0], rel_tol=1e-6) and fine[-1] == default[-1]):
            raise ValueError("the reference grid does not span the fitted grid's noise range")
        reference = sample(scheduler, model, noise, num_inference_steps=reference_steps)
    reference = reference.double()
    start, end = float(default[0]), float(default[-1])
    floor = float(default[-2])  # the smallest non-zero default level
    rho_max, rho_min = math.log(start), math.log(floor)
    span = rho_max - rho_min

    def levels_of(theta: np.ndarray) -> np.ndarray:
        z = np.exp(theta - theta.max())
        z = z / z.sum()
        rho = rho_max - span * np.cumsum(z)[: nfe - 1]
        return np.concatenate([[start], np.exp(rho), [end]])

    def sigmas_arg(levels: np.ndarray) -> list[float]:
        art = GridArtifact(list(levels), family, nfe, None, {}, "", "")
        return art.scheduler_sigmas(scheduler)

    def loss(theta: np.ndarray) -> float:
        levels = levels_of(theta)
        if np.any(np.diff(levels) >= 0):
            return float(error_cap) * 10
        final = sample(scheduler, model, noise, sigmas=sigmas_arg(levels))
        return float(np.minimum(_errors(final, reference), error_cap).mean())

    # θ of the default grid: interval weights in ρ between the default levels (slack = default[-2] → floor)
    rho_default = np.log(default[1:-1])
    steps = -np.diff(np.concatenate([[rho_max], rho_default]))
    theta0 = np.log(np.maximum(np.append(steps, 0.05 * span), 1e-6))
    default_loss = loss(theta0)
    result = minimize(
        loss,
        theta0,
        method="Nelder-Mead",
        options={"maxfev": max_evaluations, "xatol": 1e-3, "fatol": 1e-6, "adaptive": True},
    )
    best_theta, best_loss = (
        (result.x, float(result.fun)) if result.fun < default_loss else (theta0, default_loss)
    )
    logger.info(
        "fit_grid: NFE %d, error %.4g -> %.4g (%d evaluations)", nfe, default_loss, best_loss, result.nfev
    )
    return GridArtifact(
        levels=[float(v) for v in levels_of(best_theta)],
        family=family,
        nfe=nfe,
        guidance_scale=None if guidance_scale is None else float(guidance_scale),
        schedule=_schedule(scheduler.config),
        model_hash=model_id,
        scheduler_class=type(scheduler).__name__,
        solver={k: _jsonable(v) for k, v in dict(scheduler.config).items() if k in SOLVER_KEYS},
        train_error=best_loss,
        default_error=default_loss,
        created=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        num_trajectories=int(noise.shape[0]),
    )
