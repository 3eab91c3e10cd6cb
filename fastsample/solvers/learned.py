"""Learned multistep coefficients: per-step combination weights fitted on a few trajectories of the user's
model (in the spirit of NeuralSolver / DC-Solver's learned corrections), stored as JSON with provenance.

The fastsample core moves the sample as x_{i+1} = a_i·x_i + b_i·U_i (``core.py``: a_i, b_i from the grid and
the integration space, U_i the rule's analytic update). A learned run adds a correction Σ_j δ_ij·f_{i−j}, a
combination of the raw slopes of the last ``order`` calls, to U_i. :func:`fit_coefficients` chooses δ step by
step, along the learned trajectory itself, by ridge-regularised least squares towards the reference states:

    δ_i = argmin_δ ‖x^analytic_{i+1} + b_i·Σ_j δ_j f_{i−j} − x*_{i+1}‖² + λ_i‖δ‖²,

with x* the fine reference solution at the grid levels and λ_i = ``ridge`` × the mean squared column norm,
so a small batch cannot pull the solver far from its analytic default (δ = 0). One pass over the N steps:
N model calls on the batch plus the reference.

:class:`LearnedCoefficients` is the artifact: weights, the grid levels, the model hash, the noise schedule and
the scheduler class. ``scheduler.set_learned_coefficients(artifact, model_hash=...)`` refuses another model,
scheduler class or schedule; on any other grid (another NFE, custom sigmas, an img2img start) the scheduler
silently keeps its analytic weights: the fallback outside the fitted range.
"""

from __future__ import annotations

import copy
import datetime
import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from fastsample.solvers.grid_fit import (
    SOLVER_KEYS,
    GridMismatchError,
    JsonArtifact,
    ModelFn,
    _errors,
    _jsonable,
    _schedule,
    check_provenance,
    sample,
)

ARTIFACT_KIND = "fastsample.learned_coefficients"
ARTIFACT_VERSION = 1


@dataclass
class LearnedCoefficients(JsonArtifact):
    """Fitted per-step corrections δ (``weights[i]``: newest slope first) for the grid ``levels`` (N + 1)."""

    KIND: ClassVar[str] = ARTIFACT_KIND
    VERSION: ClassVar[int] = ARTIFACT_VERSION
    DESCRIPTION: ClassVar[str] = "learned-coefficient"
    REQUIRED: ClassVar[tuple[str, ...]] = (
        "weights",
        "levels",
        "nfe",
        "schedule",
        "model_hash",
        "scheduler_class",
        "solver",
    )

    weights: list[list[float]]
    levels: list[float]
    nfe: int
    guidance_scale: float | None
    schedule: dict
    model_hash: str
    scheduler_class: str
    solver: dict
    train_error: float | None = None
    analytic_error: float | None = None
    num_trajectories: int = 0
    created: str = ""

    def __post_init__(self) -> None:
        if len(self.weights) != self.nfe or len(self.levels) != self.nfe + 1:
            raise ValueError(f"need {self.nfe} weight rows and {self.nfe + 1} levels for NFE {self.nfe}")
        flat = [float(w) for row in self.weights for w in row]
        if any(len(row) < 1 for row in self.weights) or not all(math.isfinite(w) for w in flat):
            raise ValueError("every step needs at least one finite weight")
        self.weights = [[float(w) for w in row] for row in self.weights]
        self.levels = [float(v) for v in self.levels]

    def check(self, scheduler, *, model_hash: str | None) -> None:
        """Raise :class:`~fastsample.solvers.grid_fit.GridMismatchError` on another model, class, schedule."""
        if scheduler is not None and type(scheduler).__name__ != self.scheduler_class:
            raise GridMismatchError(
                f"these coefficients were fitted for {self.scheduler_class}, not {type(scheduler).__name__}"
            )
        check_provenance("coefficient", self.model_hash, self.schedule, scheduler, model_hash)


def fit_coefficients(
    scheduler,
    model: ModelFn,
    noise: torch.Tensor,
    nfe: int,
    reference_states: list[torch.Tensor],
    *,
    model_id: str,
    order: int = 3,
    ridge: float = 0.2,
    trim: float = 3.0,
    guidance_scale: float | None = None,
) -> LearnedCoefficients:
    """Fit per-step weights of ``scheduler`` (a fastsample scheduler without a Runge–Kutta warm-up) at ``nfe``
    steps on its default grid, for ``model`` on the trajectories from ``noise`` (≤ 32 are plenty).

    ``reference_states[i]``: the reference latents after step i (at ``scheduler.sigmas[i + 1]`` after
    ``set_timesteps(nfe)``), e.g. from :func:`~fastsample.zoo.oracle.oracle_reference_states` or a
    fine run through those levels.
    ``order``: slopes in each step's correction (1..5). ``ridge``: pull towards the analytic update (δ = 0).
    ``trim``: trajectories whose analytic residual exceeds ``trim`` × the median are left out of that step's
    fit (outliers near a mode boundary would otherwise dominate the squares).
    """
    from fastsample.solvers.core import MultistepCore

    if not isinstance(scheduler, MultistepCore):
        raise TypeError(f"`scheduler` must be a fastsample scheduler, got {type(scheduler).__name__}")
    if isinstance(order, bool) or not isinstance(order, int) or not 1 <= order <= 5:
        raise ValueError(f"`order` must be an integer in 1..5, got {order!r}")
    if ridge < 0 or trim <= 0:
        raise ValueError(f"`ridge` must be >= 0 and `trim` > 0, got {ridge}, {trim}")
    s = copy.deepcopy(scheduler)
    s.set_learned_coefficients(None, model_hash="")
    s.set_timesteps(nfe)
    if len(s.timesteps) != nfe:
        raise ValueError(
            f"{type(s).__name__} makes {len(s.timesteps)} calls for {nfe} steps (warm-up stages)"
        )
    if len(reference_states) != nfe:
        raise ValueError(
            f"`reference_states` must hold {nfe} tensors (one per step), got {len(reference_states)}"
        )
    x = noise.to(torch.float32) * float(s.init_noise_sigma)
    plain = copy.deepcopy(s)
    slopes: list[torch.Tensor] = []
    weights: list[list[float]] = []
    for i, t in enumerate(s.timesteps):
        call = s._calls[i]
        out = model(x, t, float(s.sigmas[i])).to(torch.float32)
        slopes.append(out * call.slope_b + call.slope_a * x)
        del slopes[: max(0, len(slopes) - order)]
        analytic = s.step(out, t, x).prev_sample  # the default update; also advances the rule's state
        r = len(slopes)
        cols_all = torch.stack([call.move_b * slopes[-1 - j] for j in range(r)], dim=-1).double()
        residual_all = reference_states[i].double() - analytic.double()
        # robust: trajectories whose analytic residual is an outlier (about to change mode) are left out
        size = residual_all.reshape(len(x), -1).norm(dim=1)
        keep = size <= trim * size.median()
        cols, residual = cols_all[keep].reshape(-1, r), residual_all[keep].reshape(-1)
        cols_all = cols_all.reshape(-1, r)
        gram = (cols.T @ cols).numpy()
        lam = ridge * float(np.trace(gram)) / r
        delta = np.linalg.solve(gram + lam * np.eye(r), (cols.T @ residual).numpy())
        weights.append([float(v) for v in delta])
        x = (analytic.double() + (cols_all @ torch.from_numpy(delta)).reshape(x.shape)).to(torch.float32)
    learned_err = float(np.median(_errors(x.double(), reference_states[-1].double())))
    analytic_err = float(
        np.median(_errors(sample(plain, model, noise, num_inference_steps=nfe), reference_states[-1]))
    )
    return LearnedCoefficients(
        weights=weights,
        levels=[float(v) for v in s.sigmas],
        nfe=nfe,
        guidance_scale=None if guidance_scale is None else float(guidance_scale),
        schedule=_schedule(s.config),
        model_hash=model_id,
        scheduler_class=type(s).__name__,
        solver={k: _jsonable(v) for k, v in dict(s.config).items() if k in SOLVER_KEYS},
        train_error=learned_err,
        analytic_error=analytic_err,
        num_trajectories=int(noise.shape[0]),
        created=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    )
