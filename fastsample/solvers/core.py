"""The one multistep core behind every fastsample scheduler: grid, slope conversion, history, update.

Coordinates (docs/design/solvers.md#coordinates). A VP model sees x = α·x0 + σ·ε. In x̄ = x/α and σ̄ = σ/α the
probability-flow ODE is dx̄/dσ̄ = ε̂ and DDIM is one Euler step. A flow-matching model sees x = (1−s)·x0 + s·ε
and the ODE is dx/ds = v̂ = ε̂ − x̂0. The core integrates y' = f(τ) in one of two spaces:

- ``"sigma_bar"`` (VP): τ = σ̄, y = x/α, slope f = ε̂;
- ``"flow"``: τ = σ/(α+σ), y = x/(α+σ), slope f = ε̂ − x̂0. For flow models α+σ = 1, so this is (s, x, v̂).
  Any VP process is also a flow process after rescaling x by 1/(α+σ), with s = σ̄/(1+σ̄). Zero-terminal-SNR
  VP schedules (ᾱ = 0, σ̄ = ∞ at the first call) therefore run in this space, where every quantity is finite.

Every model output (epsilon, v_prediction, sample; flow_prediction) is converted to the slope f = a·x + b·out
*per call, before any mixing*, and a rule (``rules.py``) turns the slope history into the update slope U.
The sample then moves as y_{n+1} = y_n + Δτ·U, i.e. x_{n+1} = (c_n/c_{n+1})·x_n + (Δτ/c_{n+1})·U with
c = 1/α or 1/(α+σ); at the end (σ̄ = 0 or s = 0) this returns x̄ (or x) itself.

Warm-up steps (PNDM's pseudo Heun and pseudo RK4) are explicit "pseudo" Runge–Kutta tableaux: every stage
moves from the step's start point y_i to the next stage's point, y = y_i + (τ_stage − τ_i)·Σ a_j k_j, where
the stage points are grid points or timestep midpoints (Liu et al., ICLR 2022, eqs. 9–13). The first stage
slope of each warm-up step enters the multistep history, as in PNDM.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from dataclasses import dataclass

import numpy as np
import torch
from diffusers.configuration_utils import ConfigMixin
from diffusers.schedulers.scheduling_utils import KarrasDiffusionSchedulers, SchedulerMixin, SchedulerOutput

from fastsample.solvers import grids
from fastsample.solvers.kwargs_check import StrictKwargsMixin
from fastsample.solvers.rules import Rule

logger = logging.getLogger(__name__)

# Debug flag: check every model output for NaN/inf on accelerators too (costs a device sync per step).
CHECK_FINITE = os.environ.get("FASTSAMPLE_CHECK_FINITE", "0") not in ("", "0")

VP_PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
FLOW_PREDICTION = "flow_prediction"
PREDICTION_TYPES = (*VP_PREDICTION_TYPES, FLOW_PREDICTION)
FINAL_SIGMAS_TYPES = ("zero", "sigma_min")
SOLVER_SPACES = ("auto", "data")
_FLOW_CONFIG_KEYS = ("shift", "use_dynamic_shifting", "base_shift", "max_shift", "shift_terminal")


@dataclass(frozen=True)
class Tableau:
    """A pseudo Runge–Kutta warm-up step: stage nodes ("start", "mid", "end"), stage rows a, weights b."""

    name: str
    nodes: tuple[str, ...]
    a: tuple[tuple[float, ...], ...]  # a[s]: weights of k_0..k_{s-1} that give the point of stage s (s ≥ 1)
    b: tuple[float, ...]


HEUN = Tableau("heun", ("start", "end"), ((), (1.0,)), (0.5, 0.5))
RK4 = Tableau(
    "rk4",
    ("start", "mid", "mid", "end"),
    ((), (1.0,), (0.0, 1.0), (0.0, 0.0, 1.0)),
    (1 / 6, 1 / 3, 1 / 3, 1 / 6),
)


@dataclass(frozen=True)
class _Call:
    """One model call: evaluated at ``point``; the returned sample sits at ``target``, moved from ``base``."""

    point: int
    base: int
    target: int
    stage: int
    tableau: Tableau | None
    slope_a: float  # f = slope_a·x + slope_b·model_output
    slope_b: float
    move_a: float  # x_target = move_a·x_base + move_b·U
    move_b: float
    max_order: int | None = None  # cap on the multistep order at this call (lower-order final steps)


def is_flow_config(config) -> bool:
    """Whether a scheduler config (any diffusers or fastsample scheduler) describes a flow-matching model.

    Flow: a FlowMatch* class name, ``use_flow_sigmas=True``, ``prediction_type="flow_prediction"``, or no
    ``prediction_type`` at all but FlowMatch's ``shift``/``use_dynamic_shifting`` keys (FlowMatch schedulers
    have no prediction type; every VP scheduler has one).
    """
    config = dict(config)
    if str(config.get("_class_name", "")).startswith("FlowMatch") or config.get("use_flow_sigmas", False):
        return True
    if "prediction_type" in config:
        return config["prediction_type"] == FLOW_PREDICTION
    return any(k in config for k in _FLOW_CONFIG_KEYS)


class MultistepCore(StrictKwargsMixin, SchedulerMixin, ConfigMixin):
    """Base class of the fastsample schedulers (not used directly). Subclasses register their ``__init__``
    with ``@register_to_config`` (the common keys below plus their own) and implement ``_make_rule``
    (and ``_warmup`` for a Runge–Kutta start).

    Common config keys: ``num_train_timesteps, beta_start, beta_end, beta_schedule`` (linear, scaled_linear,
    squaredcos_cap_v2), ``trained_betas``, ``prediction_type`` (epsilon, v_prediction, sample; flow_prediction
    switches to the flow-matching family), ``timestep_spacing`` (linspace [default, DPM-Solver's grid],
    leading, trailing), ``steps_offset``, ``rescale_betas_zero_snr``, ``use_karras_sigmas``,
    ``use_exponential_sigmas``, ``use_beta_sigmas``; ``clip_sample``/``thresholding`` exist only to refuse
    True loudly. End point: ``final_sigmas_type`` "zero" (σ̄ = 0) or
    "sigma_min" (ᾱ[0]); if it is None, ``set_alpha_to_one`` decides as in DDIM/PNDM (False → ᾱ[0]); if both
    are None the run ends at σ̄ = 0. Flow keys as ``FlowMatchEulerDiscreteScheduler`` spells them (``shift,
    use_dynamic_shifting, base_shift, max_shift, base_image_seq_len, max_image_seq_len, time_shift_type,
    shift_terminal``) or as ``DPMSolverMultistepScheduler`` does (``use_flow_sigmas, flow_shift``).

    Keys a subclass may register (read with ``getattr``, default in brackets): ``grid`` ["spacing"]: the σ
    grid when no ``use_*_sigmas`` flag is set; ``solver_space`` ["auto"]: "data" integrates y = x/σ over
    τ = α/σ with the slope x̂0 (exponential Adams–Bashforth in λ = log τ); ``lower_order_final`` [False].

    Unknown keyword arguments raise (``kwargs_check``); the per-step NaN/inf check of the model output is a
    debug aid, off by default on accelerators because it synchronises the device (``check_finite``).
    """

    _compatibles = [e.name for e in KarrasDiffusionSchedulers] + ["FlowMatchEulerDiscreteScheduler"]
    order = 1
    #: check every model output for NaN/inf (one device sync per step). ``None`` (default): on the CPU
    #: always, on accelerators only with the environment variable ``FASTSAMPLE_CHECK_FINITE=1``; set it
    #: on an instance or on the class to force it on or off.
    check_finite: bool | None = None

    # ------------------------------------------------------------------------------------------ set-up
    def _init_core(self) -> None:
        """Validate the common config and build the training tables; called by every subclass ``__init__``."""
        cfg = self.config
        if cfg.prediction_type not in PREDICTION_TYPES:
            raise ValueError(
                f"`prediction_type` must be one of {PREDICTION_TYPES}, got {cfg.prediction_type!r}"
            )
        if cfg.timestep_spacing not in grids.TIMESTEP_SPACINGS:
            raise ValueError(
                f"`timestep_spacing` must be one of {grids.TIMESTEP_SPACINGS}, got {cfg.timestep_spacing!r}"
            )
        if cfg.final_sigmas_type is not None and cfg.final_sigmas_type not in FINAL_SIGMAS_TYPES:
            raise ValueError(
                f"`final_sigmas_type` must be one of {FINAL_SIGMAS_TYPES} or None, "
                f"got {cfg.final_sigmas_type!r}"
            )
        if cfg.time_shift_type not in grids.TIME_SHIFT_TYPES:
            raise ValueError(
                f"`time_shift_type` must be one of {grids.TIME_SHIFT_TYPES}, got {cfg.time_shift_type!r}"
            )
        space = getattr(cfg, "solver_space", "auto")
        if space not in SOLVER_SPACES:
            raise ValueError(f"`solver_space` must be one of {SOLVER_SPACES}, got {space!r}")
        grid = getattr(cfg, "grid", "spacing")
        if grid not in (*grids.SIGMA_GRIDS, "spacing", "auto"):
            raise ValueError(f"`grid` must be one of {(*grids.SIGMA_GRIDS, 'spacing', 'auto')}, got {grid!r}")
        if sum(map(bool, (cfg.use_karras_sigmas, cfg.use_exponential_sigmas, cfg.use_beta_sigmas))) > 1:
            raise ValueError(
                "only one of `use_karras_sigmas`, `use_exponential_sigmas`, `use_beta_sigmas` may be set"
            )
        if not isinstance(cfg.num_train_timesteps, int) or cfg.num_train_timesteps < 2:
            raise ValueError(
                f"`num_train_timesteps` must be an integer >= 2, got {cfg.num_train_timesteps!r}"
            )
        if cfg.clip_sample or cfg.thresholding:
            raise ValueError(
                "`clip_sample`/`thresholding` change the sample outside the ODE and are not supported by the "
                "fastsample solvers; pass clip_sample=False, thresholding=False"
            )
        self.is_flow = cfg.prediction_type == FLOW_PREDICTION
        if cfg.use_flow_sigmas and not self.is_flow:
            raise ValueError("`use_flow_sigmas=True` needs `prediction_type='flow_prediction'`")
        if not self.is_flow:
            self.betas = grids.make_betas(
                cfg.num_train_timesteps,
                cfg.beta_start,
                cfg.beta_end,
                cfg.beta_schedule,
                cfg.trained_betas,
                cfg.rescale_betas_zero_snr,
            )
            if len(self.betas) != cfg.num_train_timesteps:
                raise ValueError(
                    f"`trained_betas` has {len(self.betas)} entries but "
                    f"num_train_timesteps={cfg.num_train_timesteps}"
                )
            self.alphas = 1.0 - self.betas
            self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)
            self.final_alpha_cumprod = torch.tensor(1.0) if self._ends_at_zero() else self.alphas_cumprod[0]
        self.init_noise_sigma = 1.0
        self.num_inference_steps = None
        self.timesteps = None
        self.sigmas = None
        self._calls: list[_Call] | None = None
        self._step_index = None
        self._begin_index = None
        self._rule: Rule = self._make_rule()
        self._stage_base: torch.Tensor | None = None
        self._stage_slopes: list[torch.Tensor] = []
        self._learned = None  # a LearnedCoefficients artifact (``fastsample.solvers.learned``)
        self._learned_weights: list[tuple[float, ...]] | None = None
        self._raw_slopes: list[torch.Tensor] = []

    def _make_rule(self) -> Rule:
        raise NotImplementedError

    def _warmup(self) -> tuple[Tableau | None, int]:
        """(tableau, number of warm-up steps); methods without a Runge–Kutta start return (None, 0)."""
        return None, 0

    def _ends_at_zero(self) -> bool:
        cfg = self.config
        if cfg.final_sigmas_type is not None:
            return cfg.final_sigmas_type == "zero"
        if cfg.set_alpha_to_one is not None:
            return bool(cfg.set_alpha_to_one)
        return True

    @classmethod
    def from_config(cls, config=None, return_unused_kwargs=False, **kwargs):
        """diffusers' ``from_config``; a flow-matching source config (FlowMatch*, ``use_flow_sigmas``, or
        ``shift``/``use_dynamic_shifting`` set) selects ``prediction_type="flow_prediction"``."""
        if isinstance(config, dict) and "prediction_type" not in kwargs and is_flow_config(config):
            kwargs["prediction_type"] = FLOW_PREDICTION
        return super().from_config(config, return_unused_kwargs=return_unused_kwargs, **kwargs)

    # ------------------------------------------------------------------------------------------ indexing
    @property
    def step_index(self) -> int | None:
        """Index of the next call into ``timesteps`` (None before the first ``step``)."""
        return self._step_index

    @property
    def begin_index(self) -> int | None:
        """First call index, set by the pipeline through ``set_begin_index`` (img2img, Flux)."""
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0) -> None:
        """Start sampling at ``timesteps[begin_index]`` (called by img2img pipelines before ``add_noise``)."""
        self._begin_index = int(begin_index)
        self._learned_weights = None  # fitted for full runs from the first grid point

    def __len__(self) -> int:
        return self.config.num_train_timesteps

    def index_for_timestep(self, timestep, schedule_timesteps: torch.Tensor | None = None) -> int:
        """The first index of ``timestep`` in the schedule (duplicates here are warm-up stages)."""
        if schedule_timesteps is None:
            self._require_timesteps("index_for_timestep")
            schedule_timesteps = self.timesteps
        t = torch.as_tensor(timestep).to(schedule_timesteps.device).reshape(-1)[0]
        hits = (schedule_timesteps == t).nonzero()
        if len(hits) == 0:
            hits = (torch.isclose(schedule_timesteps.double(), t.double(), rtol=0, atol=1e-4)).nonzero()
        if len(hits) == 0:
            raise ValueError(
                f"timestep {float(t)} is not in this scheduler's timesteps {schedule_timesteps.tolist()}"
            )
        return int(hits[0].item())

    def _init_step_index(self, timestep) -> None:
        begin = self._begin_index
        self._step_index = self.index_for_timestep(timestep) if begin is None else begin
        if not 0 <= self._step_index < len(self._calls):
            raise ValueError(f"begin index {self._step_index} is outside 0..{len(self._calls) - 1}")
        if self._step_index > 0:
            self._reanchor(self._step_index)

    def _reanchor(self, start: int) -> None:
        """Starting mid-schedule (img2img): warm-up steps cut by ``start`` become single-stage steps.

        A cut warm-up call moves from its own point to the next call's point with the multistep rule (which
        starts with an empty history, i.e. AB1); a call whose next point is its own is evaluated, not moved.
        """
        calls = self._calls
        step_start = {}
        for j, c in enumerate(calls):
            if c.tableau is not None and c.stage == 0:
                step_start[c.base] = j
        new = list(calls)
        for j in range(start, len(calls)):
            c = calls[j]
            if c.tableau is None or step_start[c.base] >= start:
                continue
            target = calls[j + 1].point if j + 1 < len(calls) else len(self._points_alpha) - 1
            new[j] = self._make_call(c.point, c.point, target, 0, None)
        self._calls = new

    def _require_timesteps(self, what: str) -> None:
        if self._calls is None:
            raise ValueError(f"call `set_timesteps` before `{what}`")

    # ------------------------------------------------------------------------------------------ grid
    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        timesteps: list | np.ndarray | None = None,
        sigmas: list | np.ndarray | None = None,
        mu: float | None = None,
    ) -> None:
        """Build the time grid and the call plan, and reset all solver state.

        Exactly one of ``num_inference_steps``, ``timesteps`` (decreasing, in training units) or ``sigmas``
        defines the N solver steps. ``sigmas`` follow diffusers: for VP, decreasing σ̄ *including* the end
        value (N + 1 entries, as ``EulerDiscreteScheduler``); for flow, N decreasing s with 0 appended (as
        ``FlowMatchEulerDiscreteScheduler``). ``num_inference_steps`` may accompany them if it matches.
        ``mu`` is the dynamic shift that
        SD3/Flux pass; it is required with ``use_dynamic_shifting`` and not used otherwise (as in
        ``FlowMatchEulerDiscreteScheduler``). ``len(timesteps)`` is the number of model calls (N, plus the
        warm-up's extra stages).
        """
        n = self._check_grid_args(num_inference_steps, timesteps, sigmas)
        kind = self._sigma_kind(custom=timesteps is not None or sigmas is not None)
        if self.is_flow:
            labels, s = grids.flow_levels(
                self.config,
                n,
                None if sigmas is None else np.asarray(sigmas, dtype=np.float64),
                None if timesteps is None else np.asarray(timesteps, dtype=np.float64),
                mu,
                sigma_kind=kind,
            )
            alpha, sigma = list(1.0 - s) + [1.0], list(s) + [0.0]
            integer_labels = False
        else:
            if mu is not None:
                logger.debug("`mu` is only used by flow-matching schedules with dynamic shifting; ignored")
            labels, alpha, sigma, integer_labels = self._vp_levels(n, timesteps, sigmas, kind)
        self._build_plan(np.asarray(labels, dtype=np.float64), alpha, sigma, integer_labels, device)
        self._rule.exponential = self._space == "data"
        self._match_learned()

    def _check_grid_args(self, n, timesteps, sigmas) -> int:
        given = [x for x in (timesteps, sigmas) if x is not None]
        if len(given) > 1:
            raise ValueError("pass at most one of `timesteps` and `sigmas`")
        if given:
            length = len(given[0]) - (1 if (sigmas is not None and not self.is_flow) else 0)
            if n is not None and n != length:
                raise ValueError(
                    f"`num_inference_steps`={n} does not match the {length} given timesteps/sigmas"
                )
            n = length
            values = np.asarray(given[0], dtype=np.float64)
            if length < 1 or not np.all(np.isfinite(values)) or np.any(np.diff(values) >= 0):
                raise ValueError("custom `timesteps`/`sigmas` must be finite and strictly decreasing")
        if n is None:
            raise ValueError("pass `num_inference_steps`, `timesteps` or `sigmas` to set_timesteps")
        if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
            raise ValueError(f"`num_inference_steps` must be a positive integer, got {n!r}")
        return int(n)

    def _sigma_kind(self, custom: bool) -> str | None:
        """The σ grid of this run: a ``use_*_sigmas`` flag, else the class's ``grid`` key ("karras",
        "exponential", "beta"; "spacing" = ``timestep_spacing``) unless custom timesteps/sigmas are given or
        the VP schedule has zero terminal SNR (no finite σ̄ at t = T−1); "auto" is Karras for VP and the
        spacing for flow."""
        cfg = self.config
        flags = (cfg.use_karras_sigmas, cfg.use_exponential_sigmas, cfg.use_beta_sigmas)
        for kind, on in zip(grids.SIGMA_GRIDS, flags):
            if on:
                return kind
        grid = getattr(cfg, "grid", "spacing")
        if grid == "auto":  # Karras for VP; flow keeps its own shifted spacing (Karras ignores the shift)
            grid = "spacing" if self.is_flow else "karras"
        if custom or grid == "spacing" or (not self.is_flow and float(self.alphas_cumprod[-1]) == 0.0):
            return None
        return grid

    def _vp_levels(self, n, timesteps, sigmas, kind):
        """Labels and (α, σ) of the N call points plus the end point for a VP schedule."""
        cfg = self.config
        ac = self.alphas_cumprod.double().numpy()
        T = cfg.num_train_timesteps
        kinds = [] if kind is None else [kind]
        if timesteps is not None:
            labels = np.asarray(timesteps, dtype=np.float64)
            if labels.min() < 0 or labels.max() > T - 1:
                raise ValueError(f"custom `timesteps` must lie in [0, {T - 1}]")
            integer_labels = bool(np.all(labels == np.round(labels)))
            abar = grids.alphas_cumprod_at(labels, ac)
        elif sigmas is not None or kinds:
            if ac[-1] == 0.0:
                raise ValueError(
                    "σ̄-defined grids (custom sigmas, Karras, exponential, beta) need a finite σ̄ at t = T−1; "
                    "this schedule has zero terminal SNR: use `timestep_spacing` instead"
                )
            if sigmas is not None:
                sb = np.asarray(sigmas, dtype=np.float64)
                if sb[:-1].min() <= 0 or sb[-1] < 0:
                    raise ValueError("custom VP `sigmas` (σ̄, the end value last) must be > 0, the end >= 0")
                end_sb, sb = float(sb[-1]), sb[:-1]
            else:
                table = np.sqrt((1 - ac) / ac)
                sb = grids.sigma_grid(kinds[0], n, float(table[0]), float(table[-1]))
            labels = grids.timestep_for_sigma_bar(sb, ac)
            abar = 1.0 / (1.0 + sb * sb)
            integer_labels = False
        else:
            labels = grids.spaced_timesteps(cfg.timestep_spacing, n, T, cfg.steps_offset).astype(np.float64)
            abar = ac[labels.astype(np.int64)]
            integer_labels = True
        end = 1.0 if self._ends_at_zero() else float(ac[0])
        if kinds and sigmas is None and cfg.final_sigmas_type is None:
            end = 1.0  # σ̄ grids end at σ̄ = 0 as DPM-Solver's do (their last level is already σ̄(t=0))
        if sigmas is not None:
            end = 1.0 / (1.0 + end_sb * end_sb)
        abar = np.append(abar, end)
        return labels, list(np.sqrt(abar)), list(np.sqrt(1.0 - abar)), integer_labels

    def _midpoint(self, i_label, j_label, alpha_i, sigma_i, alpha_j, sigma_j, integer_labels):
        """A timestep midpoint between two points (PNDM's t − ⌊δ/2⌋ for integer grids): (label, α, σ)."""
        if self.is_flow:
            s = 0.5 * (sigma_i + sigma_j)
            return s * self.config.num_train_timesteps, 1.0 - s, s
        ac = self.alphas_cumprod.double().numpy()
        if integer_labels and j_label is not None:
            label = j_label + (i_label - j_label) // 2
            abar = float(ac[int(label)])
        else:
            sb = 0.5 * (sigma_i / alpha_i + sigma_j / alpha_j)
            label = float(grids.timestep_for_sigma_bar(np.array([sb]), ac)[0])
            abar = 1.0 / (1.0 + sb * sb)
        return label, math.sqrt(abar), math.sqrt(1.0 - abar)

    def _build_plan(self, labels, alpha, sigma, integer_labels, device) -> None:
        """Points (grid points, warm-up midpoints, the end) and one ``_Call`` per model call."""
        n = len(labels)
        if not self.is_flow and alpha[0] == 0.0 and self.config.prediction_type == "epsilon":
            raise ValueError(
                "this schedule starts at zero SNR (ᾱ = 0), where an epsilon prediction carries no "
                "information "
                "about x0; use prediction_type='v_prediction' or 'sample' (or timestep_spacing='leading')"
            )
        space = getattr(self.config, "solver_space", "auto")
        if space == "data":
            self._space = "data"
        else:
            self._space = "flow" if (self.is_flow or alpha[0] == 0.0) else "sigma_bar"
        pa, ps, plabel = list(alpha[:n]), list(sigma[:n]), list(labels)
        tableau, n_warm = self._warmup()
        # the model is never evaluated at the end level: the last step is always a multistep step
        n_warm = min(n_warm, n - 1) if tableau is not None else 0
        mids = {}
        if tableau is not None and "mid" in tableau.nodes:
            for i in range(n_warm):
                j_label = labels[i + 1] if i + 1 < n else None
                lab, a, s = self._midpoint(
                    labels[i], j_label, alpha[i], sigma[i], alpha[i + 1], sigma[i + 1], integer_labels
                )
                mids[i] = len(pa)
                pa.append(a), ps.append(s), plabel.append(lab)
        end = len(pa)
        pa.append(alpha[n]), ps.append(sigma[n]), plabel.append(None)
        self._points_alpha, self._points_sigma = pa, ps
        self._tau, self._scale = zip(*(self._tau_scale(a, s) for a, s in zip(pa, ps)), strict=True)

        def grid(i):
            return i if i < n else end

        calls = []
        for i in range(n):
            if i < n_warm:
                where = {"start": i, "mid": mids.get(i), "end": grid(i + 1)}
                nodes = [where[nd] for nd in tableau.nodes]
                for st, p in enumerate(nodes):
                    target = nodes[st + 1] if st + 1 < len(nodes) else grid(i + 1)
                    calls.append(self._make_call(p, i, target, st, tableau))
            else:
                call = self._make_call(i, i, grid(i + 1), 0, None)
                calls.append(dataclasses.replace(call, max_order=self._order_cap(i, n)))
        self._calls = calls
        call_labels = np.array([plabel[c.point] for c in calls], dtype=np.float64)
        if integer_labels:
            self.timesteps = torch.from_numpy(call_labels.astype(np.int64)).to(device)
        else:
            self.timesteps = torch.from_numpy(call_labels.astype(np.float32)).to(device)
        level = [self._level(pa[c.point], ps[c.point]) for c in calls] + [self._level(pa[end], ps[end])]
        self.sigmas = torch.tensor(level, dtype=torch.float32)
        self.num_inference_steps = n
        self._reset_state()

    def _order_cap(self, i: int, n: int) -> int | None:
        """The order cap of grid step i of n: 1 at the last step when ``lower_order_final`` is set and n < 15
        (as DPM-Solver's ``lower_order_final``: the step into σ = 0 is the stiffest at few steps)."""
        if getattr(self.config, "lower_order_final", False) and i == n - 1 and n < 15:
            return 1
        if self._space == "data" and i == n - 1 and self._points_sigma[-1] == 0.0:
            return 1  # the step into σ = 0 (λ = ∞) is the data prediction itself: x = α·x̂0
        return None

    def _level(self, alpha: float, sigma: float) -> float:
        """The public noise level of a point: σ̄ = σ/α (VP, ∞ at zero SNR) or s (flow)."""
        if self.is_flow:
            return sigma
        return math.inf if alpha == 0.0 else sigma / alpha

    def _tau_scale(self, alpha: float, sigma: float) -> tuple[float, float]:
        """(τ, c) with y = c·x in the integration space (``"data"``: τ = α/σ = e^λ, y = x/σ, ∞ at σ = 0)."""
        if self._space == "data":
            return (math.inf, math.inf) if sigma == 0.0 else (alpha / sigma, 1.0 / sigma)
        if self._space == "sigma_bar":
            return sigma / alpha, 1.0 / alpha
        return sigma / (alpha + sigma), 1.0 / (alpha + sigma)

    def _slope_coefficients(self, alpha: float, sigma: float) -> tuple[float, float]:
        """(a, b) with slope f = a·x + b·model_output at a point with (α, σ)."""
        pt = self.config.prediction_type
        if self._space == "data":  # f = x̂0
            if pt == "epsilon":  # x̂0 = (x − σ ε̂)/α
                return 1.0 / alpha, -sigma / alpha
            if pt == "v_prediction":  # x̂0 = αx − σv
                return alpha, -sigma
            if pt == FLOW_PREDICTION:  # x̂0 = x − s·v̂ (α + σ = 1)
                return 1.0, -sigma
            return 0.0, 1.0  # sample
        if self._space == "sigma_bar":  # f = ε̂
            if pt == "epsilon":
                return 0.0, 1.0
            if pt == "v_prediction":  # ε̂ = α·v + σ·x
                return sigma, alpha
            return 1.0 / sigma, -alpha / sigma  # sample: ε̂ = (x − α·x̂0)/σ
        # flow space: f = ε̂ − x̂0
        if pt == FLOW_PREDICTION:
            return 0.0, 1.0
        if pt == "epsilon":  # x̂0 = (x − σ ε̂)/α
            return -1.0 / alpha, (alpha + sigma) / alpha
        if pt == "v_prediction":  # ε̂ = σx + αv, x̂0 = αx − σv
            return sigma - alpha, alpha + sigma
        return 1.0 / sigma, -(alpha + sigma) / sigma  # sample

    def _make_call(self, point, base, target, stage, tableau) -> _Call:
        a, b = self._slope_coefficients(self._points_alpha[point], self._points_sigma[point])
        if self._space == "data":  # y = x/σ, τ = α/σ: x_t = (σ_t/σ_s)·x_s + (α_t − σ_t·α_s/σ_s)·U
            a_s, s_s = self._points_alpha[base], self._points_sigma[base]
            a_t, s_t = self._points_alpha[target], self._points_sigma[target]
            return _Call(point, base, target, stage, tableau, a, b, s_t / s_s, a_t - s_t * a_s / s_s)
        c_base, c_target = self._scale[base], self._scale[target]
        move_a = c_base / c_target
        move_b = (self._tau[target] - self._tau[base]) / c_target
        return _Call(point, base, target, stage, tableau, a, b, move_a, move_b)

    def set_learned_coefficients(self, artifact, *, model_hash: str) -> None:
        """Use fitted per-step weights (``fastsample.solvers.learned.LearnedCoefficients``) on the grid they
        were fitted on; any other grid (NFE, schedule, custom sigmas) runs the analytic weights. Raises
        ``ValueError`` if the artifact was fitted for another model, scheduler class or schedule; pass
        ``None`` to go back to the analytic weights."""
        if artifact is not None:
            artifact.check(self, model_hash=model_hash)
        self._learned = artifact
        self._match_learned()

    def _match_learned(self) -> None:
        art = self._learned
        self._learned_weights = None
        if art is None or self.sigmas is None or self._begin_index is not None:
            return
        levels = [float(v) for v in self.sigmas]
        calls_are_steps = len(self._calls) == self.num_inference_steps
        if calls_are_steps and len(levels) == len(art.levels) and np.allclose(levels, art.levels, rtol=1e-5):
            self._learned_weights = [tuple(w) for w in art.weights]
            self._learned_k = max(len(w) for w in self._learned_weights)
        else:
            logger.info("learned coefficients were fitted on another grid; using the analytic weights")

    def _learned_terms(self, i: int, f: torch.Tensor, analytic):
        """The analytic update plus the fitted correction Σ_j δ_ij·f_{i−j} (raw slopes, newest first)."""
        self._raw_slopes.append(f)
        weights = self._learned_weights[i]
        del self._raw_slopes[: max(0, len(self._raw_slopes) - self._learned_k)]
        return list(analytic) + [(w, h) for w, h in zip(weights, reversed(self._raw_slopes)) if w != 0.0]

    def _reset_state(self) -> None:
        self._raw_slopes = []
        self._rule.reset()
        self._stage_base = None
        self._stage_slopes = []
        self._step_index = None
        self._begin_index = None

    # ------------------------------------------------------------------------------------------ sampling
    def scale_model_input(self, sample: torch.Tensor, timestep=None) -> torch.Tensor:
        """Identity: the latents are x, what the model expects."""
        return sample

    def step(
        self,
        model_output: torch.Tensor,
        timestep,
        sample: torch.Tensor,
        generator: torch.Generator | None = None,
        return_dict: bool = True,
    ) -> SchedulerOutput | tuple:
        """Advance one model call: convert the output to the slope, update the rule, move the sample.

        ``generator`` is accepted for interface compatibility; these solvers are deterministic.
        """
        self._require_timesteps("step")
        if self._step_index is None:
            self._init_step_index(timestep)
        i = self._step_index
        if i >= len(self._calls):
            raise ValueError(
                f"`step` was called {i + 1} times but there are only {len(self._calls)} timesteps"
            )
        out = model_output.float()
        # reading a value forces a device sync: by default only on the CPU (see `check_finite`)
        check = (
            self.check_finite if self.check_finite is not None else out.device.type == "cpu" or CHECK_FINITE
        )
        if check and not math.isfinite(float(out.sum())):
            raise ValueError(
                f"{type(self).__name__}: the model output at step index {i} "
                f"(timestep {float(self.timesteps[i])}) "
                "contains NaN or inf"
            )
        x = sample.float()
        call = self._calls[i]
        if call.slope_a == 0.0:
            f = out if call.slope_b == 1.0 else out * call.slope_b
        else:
            f = torch.add(out * call.slope_b, x, alpha=call.slope_a)
        if call.tableau is None:
            if call.target == call.point:  # a cut warm-up stage (img2img): evaluated, not moved
                self._step_index += 1
                return SchedulerOutput(prev_sample=sample) if return_dict else (sample,)
            tau = self._tau
            terms, base = self._rule.terms(f, tau[call.point], tau[call.target], call.max_order), x
            if self._learned_weights is not None:
                terms = self._learned_terms(i, f, terms)
        else:
            if call.stage == 0:
                self._stage_base, self._stage_slopes = x, [f]
                self._rule.record(f, self._tau[call.point])
            else:
                self._stage_slopes.append(f)
            tab = call.tableau
            weights = tab.a[call.stage + 1] if call.stage + 1 < len(tab.nodes) else tab.b
            terms = [(w, k) for w, k in zip(weights, self._stage_slopes) if w != 0.0]
            base = self._stage_base
        prev = base * call.move_a
        for w, term in terms:
            prev.add_(term, alpha=call.move_b * w)
        self._step_index += 1
        prev = prev.to(model_output.dtype)
        return SchedulerOutput(prev_sample=prev) if return_dict else (prev,)

    # ------------------------------------------------------------------------------------------ noising
    def _grid_alpha_sigma(self, timesteps: torch.Tensor, n: int):
        """(α, σ) per sample for labels on the current grid, located as diffusers does (index or lookup)."""
        if self._begin_index is None:
            idx = [self.index_for_timestep(t) for t in timesteps.reshape(-1)]
        else:
            idx = [self._step_index if self._step_index is not None else self._begin_index] * n
        points = [self._calls[j].point for j in idx]
        alpha = [self._points_alpha[p] for p in points]
        sigma = [self._points_sigma[p] for p in points]
        if len(alpha) == 1 and n > 1:
            alpha, sigma = alpha * n, sigma * n
        return alpha, sigma

    def add_noise(
        self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
    ) -> torch.Tensor:
        """Forward process x_t = α_t·x0 + σ_t·ε (VP); flow schedules: x = (1−s)·x0 + s·ε (``scale_noise``).

        VP integer timesteps use the ᾱ table (any training timestep works); fractional or flow timesteps must
        be on the current grid.
        """
        timesteps = torch.as_tensor(timesteps).reshape(-1)
        n = original_samples.shape[0]
        if self.is_flow or timesteps.is_floating_point() and not torch.all(timesteps == timesteps.round()):
            self._require_timesteps("add_noise")
            alpha, sigma = self._grid_alpha_sigma(timesteps, n)
            a = torch.tensor(alpha, dtype=original_samples.dtype, device=original_samples.device)
            s = torch.tensor(sigma, dtype=original_samples.dtype, device=original_samples.device)
        else:
            ac = self.alphas_cumprod.to(device=original_samples.device, dtype=original_samples.dtype)
            abar = ac[timesteps.to(original_samples.device).long()]
            a, s = abar.sqrt(), (1 - abar).sqrt()
        shape = (-1,) + (1,) * (original_samples.ndim - 1)
        return a.reshape(shape) * original_samples + s.reshape(shape) * noise

    def scale_noise(self, sample: torch.Tensor, timestep, noise: torch.Tensor | None = None) -> torch.Tensor:
        """Flow-matching forward process x = (1−s)·x0 + s·ε at a timestep of the grid (SD3/Flux img2img)."""
        if not self.is_flow:
            raise ValueError(
                "`scale_noise` is the flow-matching forward process; use `add_noise` for VP schedules"
            )
        if noise is None:
            raise ValueError("`scale_noise` needs `noise`")
        return self.add_noise(sample, noise, torch.as_tensor(timestep))
