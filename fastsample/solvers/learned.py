"""Learned multistep coefficients: per-step combination weights fitted on a few trajectories of the user's
model (in the spirit of NeuralSolver / DC-Solver's learned corrections), stored as JSON with provenance.

The fastsample core moves the sample as x_{i+1} = a_i·x_i + b_i·U_i (``core.py``: a_i, b_i from the grid and
the integration space). A learned run replaces the analytic U_i by Σ_j w_ij·f_{i−j}, a combination of the
raw slopes of the last ``order`` calls. :func:`fit_coefficients` chooses the weights step by step, along the
learned trajectory itself, by ridge-regularised least squares towards the reference states:

    w_i = argmin_w ‖a_i·x_i + b_i·Σ_j w_j f_{i−j} − x*_{i+1}‖² + λ_i‖w − w⁰_i‖²,

with x* the fine reference solution at the grid levels and w⁰_i the analytic variable-step Adams–Bashforth
weights of the same nodes (so a small batch cannot pull the weights far; λ_i = ``ridge`` × the mean squared
column norm). One pass over the N steps: N model calls on the batch plus the reference.

:class:`LearnedCoefficients` is the artifact: weights, the grid levels, the model hash, the noise schedule and
the scheduler class. ``scheduler.set_learned_coefficients(artifact, model_hash=...)`` refuses another model,
scheduler class or schedule; on any other grid (another NFE, custom sigmas, an img2img start) the scheduler
silently keeps its analytic weights: the fallback outside the fitted range.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import json
import math
from dataclasses import dataclass

import numpy as np
import torch

from fastsample.solvers.grid_fit import (
    SOLVER_KEYS,
    GridMismatchError,
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
class LearnedCoefficients:
    """Fitted per-step weights (``weights[i]``: newest slope first) for the grid ``levels`` (N + 1 values)."""

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

    def to_dict(self) -> dict:
        return {"kind": ARTIFACT_KIND, "version": ARTIFACT_VERSION, **dataclasses.asdict(self)}

    def save(self, path: str) -> None:
        with open(path, "w") as f:
            json.dump(self.to_dict(), f, indent=2)
            f.write("\n")

    @classmethod
    def load(cls, path: str) -> LearnedCoefficients:
        with open(path) as f:
            try:
                data = json.load(f)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path} is not a JSON coefficient artifact: {err}") from err
        if not isinstance(data, dict) or data.get("kind") != ARTIFACT_KIND:
            raise ValueError(f"not a learned-coefficient artifact (expected kind {ARTIFACT_KIND!r})")
        if data.get("version") != ARTIFACT_VERSION:
            raise ValueError(
                f"coefficient artifact version {data.get('version')!r} is not {ARTIFACT_VERSION}"
            )
        names = {f.name for f in dataclasses.fields(cls)}
        missing = {"weights", "levels", "nfe", "schedule", "model_hash", "scheduler_class", "solver"} - set(
            data
        )
        if missing:
            raise ValueError(f"coefficient artifact is missing {sorted(missing)}")
        return cls(**{k: v for k, v in data.items() if k in names})


def _prior(scheduler, nodes: list[float], tau_next: float) -> tuple[float, ...]:
    from fastsample.solvers.coefficients import exponential_adams_bashforth, variable_adams_bashforth

    if not math.isfinite(tau_next):
        return (1.0,)
    fn = exponential_adams_bashforth if scheduler._space == "data" else variable_adams_bashforth
    return fn(tuple(reversed(nodes)), tau_next)


def fit_coefficients(
    scheduler,
    model: ModelFn,
    noise: torch.Tensor,
    nfe: int,
    reference_states: list[torch.Tensor],
    *,
    model_id: str,
    order: int = 3,
    ridge: float = 0.05,
    guidance_scale: float | None = None,
) -> LearnedCoefficients:
    """Fit per-step weights of ``scheduler`` (a fastsample scheduler without a Runge–Kutta warm-up) at ``nfe``
    steps on its default grid, for ``model`` on the trajectories from ``noise`` (≤ 32 are plenty).

    ``reference_states[i]``: the reference latents after step i (at ``scheduler.sigmas[i + 1]`` after
    ``set_timesteps(nfe)``), e.g. from :func:`~fastsample.solvers.grid_fit.oracle_reference_states` or a
    fine run through those levels.
    ``order``: slopes combined per step (1..5). ``ridge``: pull towards the analytic weights.
    """
    from fastsample.solvers.core import MultistepCore

    if not isinstance(scheduler, MultistepCore):
        raise TypeError(f"`scheduler` must be a fastsample scheduler, got {type(scheduler).__name__}")
    if isinstance(order, bool) or not isinstance(order, int) or not 1 <= order <= 5:
        raise ValueError(f"`order` must be an integer in 1..5, got {order!r}")
    if ridge < 0:
        raise ValueError(f"`ridge` must be >= 0, got {ridge}")
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
    x = noise.to(torch.float64) * float(s.init_noise_sigma)
    plain = copy.deepcopy(s)
    slopes: list[torch.Tensor] = []
    taus: list[float] = []
    weights: list[list[float]] = []
    for i, t in enumerate(s.timesteps):
        call = s._calls[i]
        out = model(x.float(), t, float(s.sigmas[i])).double()
        slopes.append(out * call.slope_b + call.slope_a * x)
        taus.append(float(s._tau[call.point]))
        r = min(order, len(slopes))
        tau_next = float(s._tau[call.target])
        prior = np.array(_prior(s, taus[-r:], tau_next), dtype=np.float64)
        r = len(prior)
        cols = torch.stack([call.move_b * slopes[-1 - j] for j in range(r)], dim=-1).reshape(-1, r).numpy()
        target = (reference_states[i].double() - call.move_a * x).reshape(-1).numpy()
        gram = cols.T @ cols
        lam = ridge * float(np.trace(gram)) / r
        delta = np.linalg.solve(gram + lam * np.eye(r), cols.T @ (target - cols @ prior))
        w = prior + delta
        weights.append([float(v) for v in w])
        x = call.move_a * x + torch.from_numpy(cols @ w).reshape(x.shape)
        del slopes[: max(0, len(slopes) - order)], taus[: max(0, len(taus) - order)]
    learned_err = float(np.median(_errors(x, reference_states[-1].double())))
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
