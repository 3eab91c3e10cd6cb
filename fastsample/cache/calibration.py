"""Per-model calibration of the dynamic cache: a fitted error model instead of a hand-set threshold.

The dynamic policy (:class:`~fastsample.cache.policies.DynamicThreshold`) decides from the first block's
residual ``r0``: ``d = mean|r0_k − r0_j| / mean|r0_j|`` between the current step ``k`` and the last fully
computed step ``j``. How much the *model output* ``o`` changes for a given ``d`` depends on the model, which
is why TeaCache (Liu et al. 2024, arXiv 2411.19108) and MagCache (Ma et al. 2025, arXiv 2506.09045) ship
per-model polynomial coefficients. :func:`calibrate_cache` measures them for the user's own model:

1. run the pipeline uncached on a few calls and record, for every pair of forwards ``j < k ≤ j + max_span`` of
   a call, ``d_jk`` (above) and ``e_jk = mean|o_k − o_j| / mean|o_j|``, both computed in float32 over the
   whole batch;
2. fit the polynomial ``e ≈ p(d) = Σ_i c_i d^i`` of degree ``degree`` by least squares (``numpy.polyfit``,
   float64), reporting its R² on the calibration pairs;
3. choose the threshold ``max_change`` in output units (recompute when the predicted relative L1 change of
   the output since the last computed step reaches it): given, or the smallest one whose simulated skip
   fraction on the recorded runs reaches ``target_skip`` (:func:`simulate_skips`);
4. write a JSON artifact: the coefficients, ``max_change``, the warm-up, ``max_consecutive = max_span`` (runs
   of skips longer than the fitted span are outside the error model), the model's class and weight hash, and
   the provenance (versions, date, pipeline, scheduler, call, calls, seed, fit quality, simulated skips).

``enable_cache(pipe, "dynamic", calibration=path)`` loads it (:func:`load_calibration`) and skips the tail
while ``p(d) < max_change``. A file calibrated on another model (weights hash), or corrupt, is refused with
an :class:`~fastsample.errors.ArtifactError` naming the file.

Only pipelines that batch their CFG halves (or run none) are supported: with separate cond/uncond calls
(Flux true CFG) consecutive forwards belong to different contexts.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fastsample.cache.units import find_blocks
from fastsample.integration.adapters import get_adapter, resolve_denoiser

FORMAT = "fastsample-cache-calibration/1"
_FIELDS = ("model_class", "model_hash", "coefficients", "max_change", "warmup_steps", "provenance")
_OPTIONAL = ("max_consecutive",)


def model_weights_hash(model: torch.nn.Module) -> str:
    """sha256 over the model's class, public config and every parameter and buffer (name, dtype, shape and
    bytes, sorted by name: the order in which submodules were registered does not matter, e.g. after a tool
    that swaps ``transformer_blocks`` out and back, as cache-dit's ``disable_cache`` does). Reads every
    weight once (about a second per GB on a CPU)."""
    digest = hashlib.sha256(type(model).__name__.encode())
    config = {k: v for k, v in dict(getattr(model, "config", {})).items() if not k.startswith("_")}
    digest.update(json.dumps(config, sort_keys=True, default=str).encode())
    for name, tensor in sorted(model.state_dict().items()):
        data = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}|{data.dtype}|{tuple(data.shape)}".encode())
        digest.update(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    return digest.hexdigest()


@dataclass
class CacheCalibration:
    """A fitted error model for the dynamic cache of one model (module docstring)."""

    model_class: str
    model_hash: str
    coefficients: list[float]  # highest degree first (numpy.polyval order)
    max_change: float
    warmup_steps: int = 1
    provenance: dict[str, Any] = field(default_factory=dict)
    max_consecutive: int | None = None  # the fit's span: longer runs of skips are outside the fitted range

    def predicted_change(self, indicator: float) -> float:
        """``p(d)``: the predicted relative L1 change of the model output."""
        return float(np.polyval(self.coefficients, indicator))

    def save(self, path: str | os.PathLike) -> Path:
        """Write the artifact as JSON to ``path``."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"format": FORMAT, **asdict(self)}, indent=2))
        return path

    def check_model(self, model: torch.nn.Module, path: str | os.PathLike) -> None:
        """Refuse (``ArtifactError`` naming ``path``) a model other than the calibrated one."""
        from fastsample.errors import ArtifactError

        found = model_weights_hash(model)
        if type(model).__name__ != self.model_class or found != self.model_hash:
            raise ArtifactError(
                path,
                f"a cache calibration of this {type(model).__name__} (weights hash {found[:16]}...)",
                f"a calibration of a {self.model_class} with weights hash {self.model_hash[:16]}... (another "
                "model or other weights: run fastsample.calibrate_cache on this one)",
            )


def load_calibration(path: str | os.PathLike) -> CacheCalibration:
    """Read an artifact written by :func:`calibrate_cache`; a corrupt or foreign file raises
    :class:`~fastsample.errors.ArtifactError` naming it, a missing one ``FileNotFoundError``."""
    from fastsample.errors import ArtifactError, read_json, require_fields

    expected = f"a fastsample cache calibration (JSON, format {FORMAT})"
    meta = read_json(path, expected)
    if meta.pop("format", None) != FORMAT:
        raise ArtifactError(path, expected, f"no 'format': '{FORMAT}' entry")
    require_fields(path, meta, _FIELDS, expected)
    unknown = sorted(set(meta) - set(_FIELDS) - set(_OPTIONAL))
    if unknown:
        raise ArtifactError(path, expected, f"unknown field(s) {unknown}")
    coefficients = meta["coefficients"]
    if (
        not isinstance(coefficients, list)
        or not coefficients
        or not all(isinstance(c, (int, float)) and not isinstance(c, bool) for c in coefficients)
        or not np.all(np.isfinite(coefficients))
    ):
        raise ArtifactError(path, expected, "'coefficients' is not a non-empty list of finite numbers")
    change, warmup = meta["max_change"], meta["warmup_steps"]
    if isinstance(change, bool) or not isinstance(change, (int, float)) or not change > 0:
        raise ArtifactError(path, expected, f"'max_change' {change!r} is not a number > 0")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 1:
        raise ArtifactError(path, expected, f"'warmup_steps' {warmup!r} is not an integer >= 1")
    if not isinstance(meta["model_class"], str) or not isinstance(meta["model_hash"], str):
        raise ArtifactError(path, expected, "'model_class' and 'model_hash' must be strings")
    if not isinstance(meta["provenance"], dict):
        raise ArtifactError(path, expected, "'provenance' is not an object")
    cap = meta.get("max_consecutive")
    if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or cap < 1):
        raise ArtifactError(path, expected, f"'max_consecutive' {cap!r} is not null or an integer >= 1")
    return CacheCalibration(
        meta["model_class"],
        meta["model_hash"],
        [float(c) for c in coefficients],
        float(change),
        warmup,
        meta["provenance"],
        cap,
    )


def _relative_l1(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().mean() / b.abs().mean().clamp_min(1e-12))


class _Recorder:
    """Forward hooks recording block 0's residual and the denoiser's output of every forward (float32)."""

    def __init__(self, model: torch.nn.Module) -> None:
        site = find_blocks(model)[0]
        self.stream = site.streams[-1]
        self.residuals: list[torch.Tensor] = []
        self.outputs: list[torch.Tensor] = []
        self._handles = [
            site.module.register_forward_hook(self._block, with_kwargs=True),
            model.register_forward_hook(self._model),
        ]

    def _block(self, module: torch.nn.Module, args: tuple, kwargs: dict, out: Any) -> None:
        x = kwargs.get(self.stream, args[0] if self.stream == "hidden_states" and args else None)
        y = out[-1] if isinstance(out, tuple) else out
        self.residuals.append((y.detach() - x.detach()).float().cpu())

    def _model(self, module: torch.nn.Module, args: tuple, out: Any) -> None:
        y = out[0] if isinstance(out, tuple) else getattr(out, "sample", out)
        self.outputs.append(y.detach().float().cpu())

    def changes(self, max_span: int) -> dict[tuple[int, int], tuple[float, float]]:
        """``{(j, k): (d_jk, e_jk)}`` for the forwards ``j < k ≤ j + max_span`` (module docstring)."""
        out = {}
        n = min(len(self.residuals), len(self.outputs))
        for k in range(1, n):
            for j in range(max(0, k - max_span), k):
                if self.residuals[k].shape == self.residuals[j].shape:
                    out[j, k] = (
                        _relative_l1(self.residuals[k], self.residuals[j]),
                        _relative_l1(self.outputs[k], self.outputs[j]),
                    )
        return out

    def pairs(self, max_span: int) -> tuple[list[float], list[float]]:
        """The ``d`` and ``e`` of :meth:`changes`, as two lists."""
        values = list(self.changes(max_span).values())
        return [d for d, _ in values], [e for _, e in values]

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()


def simulate_skips(
    changes: dict[tuple[int, int], tuple[float, float]],
    steps: int,
    coefficients: list[float],
    max_change: float,
    warmup_steps: int,
) -> float:
    """Fraction of steps whose tail the calibrated dynamic policy would skip on a recorded uncached run: at
    step ``k ≥ warmup_steps`` it skips when ``p(d_jk) < max_change`` with ``j`` the last computed step and
    ``(j, k)`` within the recorded span, else it computes (``j = k``). An estimate: the cached run's own
    trajectory differs a little from the uncached one."""
    last, skipped = 0, 0
    for k in range(1, steps):
        pair = changes.get((last, k))
        if k >= warmup_steps and pair is not None and np.polyval(coefficients, pair[0]) < max_change:
            skipped += 1
        else:
            last = k
    return skipped / steps if steps else 0.0


def calibrate_cache(
    pipe: Any,
    path: str | os.PathLike | None = None,
    *,
    max_change: float | None = None,
    target_skip: float | None = None,
    calls: int = 2,
    degree: int = 2,
    max_span: int = 3,
    warmup_steps: int = 1,
    seed: int = 0,
    **call_kwargs: Any,
) -> CacheCalibration:
    """Fit the dynamic cache's error model for ``pipe``'s denoiser and (with ``path``) save it as JSON.

    Args:
        pipe: a supported pipeline whose CFG halves are batched (module docstring); it runs uncached.
        path: where to write the artifact (``None``: only return it).
        max_change: the predicted relative L1 change of the model output at which the tail is recomputed
            (default 0.05 unless ``target_skip`` is given).
        target_skip: instead of ``max_change``, the fraction of steps whose tail should be skipped: the
            smallest ``max_change`` whose simulated skip fraction on the recorded runs
            (:func:`simulate_skips`) reaches it is stored.
        calls: how many pipeline calls to record (call ``i`` gets ``generator=torch.manual_seed(seed + i)``
            unless ``call_kwargs`` has a generator).
        degree: degree of the fitted polynomial (1 to 4).
        max_span: the longest gap (in forwards) between the pairs fitted, i.e. how many steps the policy is
            expected to skip in a row.
        warmup_steps: stored for the policy (steps that always compute).
        **call_kwargs: the pipeline call (``num_inference_steps``, ``guidance_scale``, labels or prompts,
            ...), the same as the calls the calibration is meant for.

    Returns:
        the :class:`CacheCalibration` (its ``provenance["fit"]`` has the R² and the number of pairs).
    """
    if max_change is not None and target_skip is not None:
        raise ValueError("give max_change or target_skip, not both.")
    if target_skip is not None and (
        isinstance(target_skip, bool) or not isinstance(target_skip, (int, float)) or not 0 < target_skip < 1
    ):
        raise ValueError(f"target_skip must be a number in (0, 1), got {target_skip!r}.")
    if max_change is None and target_skip is None:
        max_change = 0.05
    if max_change is not None and (
        isinstance(max_change, bool) or not isinstance(max_change, (int, float)) or not max_change > 0
    ):
        raise ValueError(f"max_change must be a number > 0, got {max_change!r}.")
    for name, value, low, high in (
        ("calls", calls, 1, None),
        ("degree", degree, 1, 4),
        ("max_span", max_span, 1, None),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < low or (high and value > high):
            allowed = f"in [{low}, {high}]" if high else f">= {low}"
            raise ValueError(f"{name} must be an integer {allowed}, got {value!r}.")
    if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or warmup_steps < 1:
        raise ValueError(f"warmup_steps must be an integer >= 1, got {warmup_steps!r}.")
    adapter = get_adapter(pipe)
    if adapter.cfg_layout == "separate_calls":
        raise ValueError(
            f"calibrate_cache does not support {type(pipe).__name__}: it runs cond and uncond as separate "
            "calls, so consecutive forwards belong to different contexts."
        )
    model = resolve_denoiser(pipe, "calibrate_cache", require_adapter=True)
    from fastsample.cache.hooks import has_fastsample_cache

    if has_fastsample_cache(model) or getattr(model, "is_cache_enabled", False):
        raise ValueError("calibrate_cache needs the model uncached; disable its cache first.")
    d_all: list[float] = []
    e_all: list[float] = []
    runs: list[tuple[dict, int]] = []
    for i in range(calls):
        kwargs = dict(call_kwargs)
        kwargs.setdefault("generator", torch.Generator("cpu").manual_seed(seed + i))
        kwargs.setdefault("output_type", "latent")
        recorder = _Recorder(model)
        try:
            with torch.no_grad():
                pipe(**kwargs)
        finally:
            recorder.close()
        changes = recorder.changes(max_span)
        runs.append((changes, len(recorder.outputs)))
        d_all += [d for d, _ in changes.values()]
        e_all += [e for _, e in changes.values()]
    if len(d_all) < degree + 1:
        raise ValueError(
            f"calibrate_cache recorded {len(d_all)} pairs of steps, too few for a degree-{degree} fit; use "
            "more num_inference_steps or calls."
        )
    d_arr, e_arr = np.asarray(d_all), np.asarray(e_all)
    coefficients = np.polyfit(d_arr, e_arr, degree)
    residual = e_arr - np.polyval(coefficients, d_arr)
    spread = float(((e_arr - e_arr.mean()) ** 2).sum())
    r2 = 1.0 - float((residual**2).sum()) / spread if spread > 0 else 1.0

    def skip(change: float) -> float:
        return float(
            np.mean([simulate_skips(c, n, list(coefficients), change, warmup_steps) for c, n in runs])
        )

    if target_skip is not None:
        predicted = np.unique(np.polyval(coefficients, d_arr))
        candidates = [float(np.nextafter(x, np.inf)) for x in predicted if x > 0]
        max_change = next((c for c in candidates if skip(c) >= target_skip), None)
        if max_change is None:
            raise ValueError(
                f"no threshold reaches target_skip={target_skip} on the recorded runs (at most "
                f"{skip(float(predicted.max()) * 2 + 1e-12):.2f} of the steps can be skipped with max_span="
                f"{max_span}, warmup_steps={warmup_steps})."
            )
    import diffusers

    import fastsample

    provenance = {
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "fastsample": fastsample.__version__,
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "python": platform.python_version(),
        "pipeline": type(pipe).__name__,
        "scheduler": type(pipe.scheduler).__name__,
        "call": {k: v for k, v in call_kwargs.items() if isinstance(v, (int, float, str, bool))},
        "calls": calls,
        "seed": seed,
        "fit": {"degree": degree, "max_span": max_span, "pairs": len(d_all), "r2": r2, "dtype": "float32"},
        "target_skip": target_skip,
        "simulated_skip": skip(float(max_change)),
    }
    calibration = CacheCalibration(
        type(model).__name__,
        model_weights_hash(model),
        [float(c) for c in coefficients],
        float(max_change),
        warmup_steps,
        provenance,
        max_consecutive=max_span,
    )
    if path is not None:
        calibration.save(path)
    return calibration


__all__ = ["CacheCalibration", "calibrate_cache", "load_calibration", "model_weights_hash", "simulate_skips"]
