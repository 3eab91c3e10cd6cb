"""LinearAG (Castillo et al. 2023, arXiv 2312.12487): replace the unconditional pass on selected steps by an
affine combination of past predictions, with per-step coefficients fitted by least squares on full-CFG runs.

On a selected step i the unconditional prediction is estimated as

    û_i = a_i c_i + b_i c_{i−1} + d_i u_{i−1} + e_i

(model output space; u_{i−1} is the previous step's real or estimated unconditional prediction) and the
step is guided with û_i, so the model runs on the conditional half only. The coefficients are fitted per step
on calibration runs of full CFG (every element of every sample is one least-squares row; only the 4×4 normal
equations are accumulated, so calibration needs no memory for trajectories). The exact feature set and step
pattern of the paper are not verified (docs/design/guidance.md#adaptive-guidance-and-linearag); this is
fastsample's reading: by default every second step of the first half is estimated.

The fitted :class:`LinearAGCoefficients` name the model, scheduler and step count they were fitted for and
refuse to run on anything else.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

import torch

from fastsample.integration.adapters import pipeline_signature

from .context import GuidanceContext
from .methods import GuidanceMethod, cfg_combine

_FILE = "linear_ag.json"


@dataclass
class LinearAGCoefficients:
    """Per-step coefficients (a, b, d, e) for the estimated steps, and what they were fitted for."""

    signature: dict[str, Any]
    coefficients: dict[int, list[float]]
    num_calibration_rows: int = 0
    residual_rms: dict[int, float] = field(default_factory=dict)

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        os.makedirs(directory, exist_ok=True)
        payload = {
            "signature": self.signature,
            "coefficients": {str(k): v for k, v in self.coefficients.items()},
            "num_calibration_rows": self.num_calibration_rows,
            "residual_rms": {str(k): v for k, v in self.residual_rms.items()},
        }
        with open(os.path.join(directory, _FILE), "w") as f:
            json.dump(payload, f, indent=2)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> LinearAGCoefficients:
        """Read a folder written by :meth:`save_pretrained`. A corrupt or foreign file raises
        :class:`~fastsample.errors.ArtifactError` naming it."""
        from fastsample.errors import ArtifactError, read_json, reading, require_fields

        path = os.path.join(directory, _FILE)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no LinearAG coefficients at {path}")
        expected = "LinearAG coefficients (JSON with 'signature' and 'coefficients')"
        payload = read_json(path, expected)
        require_fields(path, payload, ("signature", "coefficients"), expected)
        if not isinstance(payload["signature"], dict) or not isinstance(payload["coefficients"], dict):
            raise ArtifactError(path, expected, "'signature' or 'coefficients' is not an object")
        with reading(path, expected):
            coefficients = {int(k): [float(x) for x in v] for k, v in payload["coefficients"].items()}
            if any(len(v) != 4 for v in coefficients.values()):
                raise ValueError("each step needs 4 coefficients (a, b, d, e)")
            return cls(
                signature=payload["signature"],
                coefficients=coefficients,
                num_calibration_rows=int(payload.get("num_calibration_rows", 0)),
                residual_rms={int(k): float(v) for k, v in payload.get("residual_rms", {}).items()},
            )

    def check(self, signature: dict[str, Any] | None) -> None:
        """Refuse a model, scheduler or step count other than the fitted one."""
        if signature is None:
            raise ValueError(
                "LinearAG needs the pipeline signature (ctx.extra['signature']); use it through guide()."
            )
        for key in ("model", "scheduler", "num_steps"):
            if signature.get(key) != self.signature.get(key):
                raise ValueError(
                    f"LinearAG coefficients were fitted for {key}={self.signature.get(key)!r}, "
                    f"but this run has {key}={signature.get(key)!r}; fit them again with LinearAG.fit()."
                )


class LinearAG(GuidanceMethod):
    """CFG whose unconditional pass is replaced by a fitted affine estimate on the steps in ``coefficients``.

    Args:
        coefficients: a :class:`LinearAGCoefficients` (from :meth:`fit` or
            ``LinearAGCoefficients.from_pretrained``).
        guidance_scale: w ≥ 1 (``None``: the pipeline's).
    """

    needs_signature = True

    def __init__(self, coefficients: LinearAGCoefficients, guidance_scale: float | None = None) -> None:
        super().__init__(guidance_scale)
        if not isinstance(coefficients, LinearAGCoefficients):
            raise TypeError("coefficients must be LinearAGCoefficients (see LinearAG.fit / from_pretrained).")
        if any(step < 1 for step in coefficients.coefficients):
            raise ValueError("LinearAG cannot estimate step 0 (it has no past predictions).")
        self.coefficients = coefficients
        self._prev: tuple[torch.Tensor, torch.Tensor] | None = None

    def reset(self) -> None:
        self._prev = None

    def plan(self, ctx: GuidanceContext):
        if ctx.step == 0:
            self.coefficients.check(ctx.extra.get("signature"))
        return "cond" if ctx.step in self.coefficients.coefficients and self._prev is not None else "full"

    def estimate_uncond(self, cond: torch.Tensor, step: int) -> torch.Tensor:
        a, b, d, e = self.coefficients.coefficients[step]
        c_prev, u_prev = self._prev
        return a * cond + b * c_prev + d * u_prev + e

    def __call__(self, cond, uncond, ctx):
        if uncond is None:
            uncond = self.estimate_uncond(cond, ctx.step)
        self._prev = (cond, uncond)
        return cfg_combine(cond, uncond, ctx.guidance_scale)

    @staticmethod
    def fit(
        pipe: Any,
        calibration_calls: list[dict[str, Any]],
        steps: list[int] | None = None,
        ridge: float = 1e-8,
    ) -> LinearAGCoefficients:
        """Fit the coefficients on full-CFG runs ``pipe(**kwargs)`` for each kwargs in ``calibration_calls``.

        Args:
            steps: guided-step indices to estimate (≥ 1); default every second step of the first half
                (1, 3, 5, ... < N/2). All calibration calls must use the same number of steps.
            ridge: Tikhonov term added to the normal equations' diagonal (relative to its trace).
        """
        from .hook import guide

        if not calibration_calls:
            raise ValueError("calibration_calls must contain at least one set of pipeline kwargs.")
        recorder = _NormalEquations()
        signature = None
        for kwargs in calibration_calls:
            with guide(pipe, recorder):
                pipe(**kwargs)
            sig = pipeline_signature(pipe)
            if signature is not None and sig != signature:
                raise ValueError("all calibration calls must use the same model, scheduler and step count.")
            signature = sig
        num_steps = recorder.num_steps
        if steps is None:
            steps = list(range(1, max(num_steps // 2, 2), 2))
        bad = [s for s in steps if not 1 <= s < num_steps]
        if bad:
            raise ValueError(f"steps must lie in [1, {num_steps}) for this run, got {bad}.")
        coefficients, residuals = {}, {}
        for s in steps:
            xtx, xty, yty, n = recorder.stats[s]
            reg = ridge * torch.trace(xtx) / 4 * torch.eye(4, dtype=torch.float64)
            theta = torch.linalg.solve(xtx + reg, xty)
            rss = yty - 2 * theta @ xty + theta @ xtx @ theta
            coefficients[s] = [float(v) for v in theta]
            residuals[s] = float(torch.sqrt(torch.clamp(rss, min=0) / n))
        return LinearAGCoefficients(signature, coefficients, recorder.rows, residuals)


class _NormalEquations(GuidanceMethod):
    """Plain CFG that accumulates, per step i ≥ 1, the least-squares normal equations of
    u_i ≈ a c_i + b c_{i−1} + d u_{i−1} + e over every element of every sample."""

    def __init__(self) -> None:
        super().__init__(None)
        self.stats: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]] = {}
        self.rows = 0
        self.num_steps = 0
        self._prev = None

    def reset(self) -> None:
        self._prev = None

    def __call__(self, cond, uncond, ctx):
        self.num_steps = max(self.num_steps, ctx.step + 1)
        c, u = (
            cond.detach().to("cpu", torch.float64).flatten(),
            uncond.detach().to("cpu", torch.float64).flatten(),
        )
        if self._prev is not None:
            c_prev, u_prev = self._prev
            x = torch.stack([c, c_prev, u_prev, torch.ones_like(c)], dim=1)
            xtx, xty, yty, n = self.stats.get(ctx.step, (0, 0, 0, 0))
            self.stats[ctx.step] = (xtx + x.T @ x, xty + x.T @ u, yty + u @ u, n + u.numel())
            self.rows += u.numel()
        self._prev = (c, u)
        return cfg_combine(cond, uncond, ctx.guidance_scale)


__all__ = ["LinearAG", "LinearAGCoefficients", "pipeline_signature"]
