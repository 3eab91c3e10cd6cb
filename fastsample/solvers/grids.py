"""Noise schedules and time grids for the fastsample schedulers (pure functions, no solver state).

VP schedules (DDPM-style β tables): ᾱ_t = Π(1 − β), σ̄_t = √((1 − ᾱ_t)/ᾱ_t). Grids follow diffusers:

- ``"leading"``:  t_i = i·⌊T/N⌋ + steps_offset (PNDM, DDIM, Euler),
- ``"trailing"``: t_i = round(T − i·T/N) − 1 (every diffusers scheduler),
- ``"linspace"``: N + 1 points linspace(0, T − 1) with t = 0 dropped (DPM-Solver's convention: the last
  step lands on the end level instead of spending a call at t = 0),
- Karras (ρ = 7), exponential and beta (a = b = 0.6) σ̄ grids between σ̄(t=0) and σ̄(t=T−1), as
  ``DPMSolverMultistepScheduler`` builds them; their timesteps are fractional, t = interp(log σ̄).

Flow-matching schedules (x = (1 − s)·x0 + s·ε) follow ``FlowMatchEulerDiscreteScheduler`` (static ``shift``,
or ``use_dynamic_shifting`` with the ``mu`` the pipeline passes, ``shift_terminal``) or, with
``use_flow_sigmas``, the flow grid of ``DPMSolverMultistepScheduler`` (``flow_shift``).
"""

from __future__ import annotations

import math

import numpy as np
import torch

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
TIMESTEP_SPACINGS = ("linspace", "leading", "trailing")
SIGMA_GRIDS = ("karras", "exponential", "beta")
TIME_SHIFT_TYPES = ("exponential", "linear")


def make_betas(
    num_train_timesteps: int,
    beta_start: float,
    beta_end: float,
    beta_schedule: str,
    trained_betas,
    rescale_betas_zero_snr: bool,
) -> torch.Tensor:
    """The β table (float32, as diffusers builds it, so that ᾱ matches the other schedulers bit for bit)."""
    from diffusers.schedulers.scheduling_ddim import betas_for_alpha_bar, rescale_zero_terminal_snr

    if trained_betas is not None:
        betas = torch.tensor(np.asarray(trained_betas), dtype=torch.float32)
    elif beta_schedule == "linear":
        betas = torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float32)
    elif beta_schedule == "scaled_linear":
        betas = torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float32) ** 2
    elif beta_schedule == "squaredcos_cap_v2":
        betas = betas_for_alpha_bar(num_train_timesteps)
    else:
        raise ValueError(f"`beta_schedule` must be one of {BETA_SCHEDULES}, got {beta_schedule!r}")
    if rescale_betas_zero_snr:
        betas = rescale_zero_terminal_snr(betas)
    return betas


def spaced_timesteps(spacing: str, n: int, num_train_timesteps: int, steps_offset: int) -> np.ndarray:
    """N integer timesteps in decreasing order for a ``timestep_spacing`` (see the module docstring)."""
    T = num_train_timesteps
    if spacing == "leading":
        t = np.arange(n) * (T // n) + steps_offset
        t = t[::-1]
    elif spacing == "trailing":
        t = np.round(np.arange(T, 0, -T / n)).astype(np.int64) - 1
    elif spacing == "linspace":
        t = np.linspace(0, T - 1, n + 1).round()[::-1][:-1]
    else:
        raise ValueError(f"`timestep_spacing` must be one of {TIMESTEP_SPACINGS}, got {spacing!r}")
    t = np.asarray(t, dtype=np.int64).copy()
    if t.min() < 0 or t.max() > T - 1:
        raise ValueError(
            f"timesteps {t.tolist()} fall outside [0, {T - 1}] (check steps_offset={steps_offset})"
        )
    return t


def sigma_grid(kind: str, n: int, sigma_min: float, sigma_max: float) -> np.ndarray:
    """N decreasing noise levels between ``sigma_max`` and ``sigma_min`` (Karras ρ=7, exponential or beta)."""
    ramp = np.linspace(0.0, 1.0, n)
    if kind == "karras":  # Karras et al. 2022, eq. (5)
        rho = 7.0
        lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
        return (hi + ramp * (lo - hi)) ** rho
    if kind == "exponential":
        return np.exp(np.linspace(math.log(sigma_max), math.log(sigma_min), n))
    if kind == "beta":  # Lee et al. 2024, "Beta sampling is all you need"
        import scipy.stats

        ppf = scipy.stats.beta.ppf(1.0 - ramp, 0.6, 0.6)
        return sigma_min + ppf * (sigma_max - sigma_min)
    raise ValueError(f"sigma grid must be one of {SIGMA_GRIDS}, got {kind!r}")


def timestep_for_sigma_bar(sigma_bar: np.ndarray, alphas_cumprod: np.ndarray) -> np.ndarray:
    """Fractional timesteps t with σ̄(t) = σ̄, interpolating linearly in log σ̄ (diffusers' ``_sigma_to_t``)."""
    ac = np.asarray(alphas_cumprod, dtype=np.float64)
    log_table = np.log(np.sqrt((1.0 - ac) / ac))  # increasing in t
    log_sigma = np.log(np.maximum(np.asarray(sigma_bar, dtype=np.float64), 1e-10))
    return np.interp(log_sigma, log_table, np.arange(len(ac), dtype=np.float64))


def alphas_cumprod_at(t: np.ndarray, alphas_cumprod: np.ndarray) -> np.ndarray:
    """ᾱ at (possibly fractional) timesteps: exact at integers, linear in t between them."""
    ac = np.asarray(alphas_cumprod, dtype=np.float64)
    return np.interp(np.asarray(t, dtype=np.float64), np.arange(len(ac), dtype=np.float64), ac)


def time_shift(mu: float, s: np.ndarray, kind: str) -> np.ndarray:
    """Resolution-dependent shift of flow levels (SD3/Flux): exp(μ)/(exp(μ) + 1/s − 1), or its linear form."""
    if kind == "exponential":
        return math.exp(mu) / (math.exp(mu) + (1.0 / s - 1.0))
    if kind == "linear":
        return mu / (mu + (1.0 / s - 1.0))
    raise ValueError(f"`time_shift_type` must be one of {TIME_SHIFT_TYPES}, got {kind!r}")


def static_shift(s: np.ndarray, shift: float) -> np.ndarray:
    """SD3's static shift s ↦ shift·s/(1 + (shift − 1)·s)."""
    return shift * s / (1.0 + (shift - 1.0) * s)


def flow_levels(
    config,
    n: int | None,
    sigmas: np.ndarray | None,
    timesteps: np.ndarray | None,
    mu: float | None,
    sigma_kind: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(labels, s) for a flow-matching run: N decreasing levels s in (0, 1] and the timesteps t = s·T.

    Follows ``FlowMatchEulerDiscreteScheduler.set_timesteps`` (or DPM-Solver's ``use_flow_sigmas`` grid), so
    that the same configuration gives the same grid as diffusers. ``sigma_kind`` ("karras", "exponential",
    "beta" or None) re-spaces the shifted levels between their ends, as diffusers' ``use_*_sigmas`` do.
    """
    T = config.num_train_timesteps
    if config.use_dynamic_shifting and mu is None:
        raise ValueError(
            "`mu` must be passed to set_timesteps when `use_dynamic_shifting=True` (SD3/Flux pass it)"
        )
    if config.use_flow_sigmas:  # DPMSolverMultistepScheduler's flow grid
        if sigmas is not None or timesteps is not None:
            raise ValueError("`sigmas`/`timesteps` cannot be combined with `use_flow_sigmas=True`")
        shift = math.exp(mu) if (config.use_dynamic_shifting and mu is not None) else config.flow_shift
        s = 1.0 - np.linspace(1.0, 1.0 / T, n + 1)
        s = np.flip(static_shift(s, shift))[:-1].copy()
        return s * T, s
    given_t = timesteps is not None
    if sigmas is not None:
        s = np.asarray(sigmas, dtype=np.float64)
    else:
        if timesteps is None:
            # the training table's ends, with the static shift applied once already (as diffusers does)
            s_train = np.linspace(1.0, T, T)[::-1] / T
            if not config.use_dynamic_shifting:
                s_train = static_shift(s_train, config.shift)
            timesteps = np.linspace(s_train[0] * T, s_train[-1] * T, n)
        s = np.asarray(timesteps, dtype=np.float64) / T
    s = s.astype(np.float32).astype(np.float64)
    if config.use_dynamic_shifting:
        s = time_shift(mu, s, config.time_shift_type)
    else:
        s = static_shift(s, config.shift)
    if config.shift_terminal:
        one_minus = 1.0 - s
        s = 1.0 - one_minus / (one_minus[-1] / (1.0 - config.shift_terminal))
    if sigma_kind is not None:
        s = sigma_grid(sigma_kind, len(s), float(s[-1]), float(s[0]))
    s = s.astype(np.float32).astype(np.float64)
    labels = np.asarray(timesteps, dtype=np.float64) if given_t else s * T
    return labels, s
