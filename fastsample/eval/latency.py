"""Latency, peak memory, NFE and MACs of diffusion sampling, measured the way acceleration papers report them.

Protocol (docs/design/evaluation.md#timing): warm-up runs at the exact shapes first, then ≥ 10 timed runs;
report the median and the 90th percentile.

* **GPU**: CUDA events recorded around each run, with ``torch.cuda.synchronize`` before the start event and
  after the end event; peak memory is ``torch.cuda.max_memory_allocated`` after
  ``reset_peak_memory_stats``.
* **CPU**: a ``time.perf_counter`` loop with the garbage collector paused during each run, as ``timeit`` does.
  CPU torch ops are synchronous, so the clock brackets exactly the work. ``torch.utils.benchmark.Timer`` is
  not used per run: its ``timeit`` silently runs two extra warm-up calls before every measurement, tripling
  the cost of a pipeline benchmark, its ``blocked_autorange`` averages blocks and so hides the run-to-run
  spread that the median/p90 report, and it pins the thread count to 1 unless told otherwise.
  Peak memory on CPU is the growth of the process's peak resident set size during the run (Linux: reset
  ``VmHWM`` by writing 5 to ``/proc/self/clear_refs``, then peak − resident size at the start). It includes
  every allocation of the process (torch's CPU allocator and others), not only tensors; ``tracemalloc``
  would see none of torch's allocations. ``None`` where the kernel does not offer it.

Scopes: ``"model_step"`` (one denoiser forward at the inputs the pipeline really used),
``"denoising_loop"`` (first denoiser call to the end of the last ``scheduler.step``), ``"end_to_end"`` (the
whole ``pipe(...)`` call, text encoders and VAE included).

The clock, the NFE counter and the MAC counter are :mod:`fastsample.integration.measure` (re-exported
here). Compute: NFE = denoiser forward calls (a forward pre-hook counts them; a batched CFG pass is one call);
MACs from ``torch.utils.flop_counter.FlopCounterMode`` (FLOPs / 2) for linear and convolution layers, plus
attention counted by hand, because the counter gives 0 for ``scaled_dot_product_attention`` on CPU: an SDPA
call with queries [..., L_q, E] and keys/values [..., L_k, E], [..., L_k, E_v] costs L_q·L_k·(E + E_v) MACs
per batch·head (QKᵀ and attention·V; 2·N²·d per head for self-attention).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from fastsample.integration.adapters import find_denoiser, resolve_denoiser
from fastsample.integration.measure import Clock, MacCounter, NFECounter, count_macs, count_nfe, sdpa_macs

__all__ = [
    "MIN_REPEATS",
    "SCOPES",
    "Comparison",
    "MacCounter",
    "NFECounter",
    "PipelineLatency",
    "TimingResult",
    "compare_latency",
    "count_macs",
    "count_nfe",
    "find_denoiser",
    "measure_pipeline",
    "sdpa_macs",
    "time_function",
]

logger = logging.getLogger(__name__)

MIN_REPEATS = 10
SCOPES = ("model_step", "denoising_loop", "end_to_end")


# ---------------------------------------------------------------------------------------------------------
# Timing one run
# ---------------------------------------------------------------------------------------------------------
def _resolve_device(device: torch.device | str | None) -> torch.device:
    return torch.device(device) if device is not None else torch.device("cpu")


@dataclass
class TimingResult:
    """Per-run times (seconds) of a measured callable and summary statistics."""

    times_s: list[float]
    device: str
    method: str
    peak_memory_bytes: int | None = None
    memory_measure: str = ""
    median_s: float = field(init=False)
    p90_s: float = field(init=False)
    mean_s: float = field(init=False)
    std_s: float = field(init=False)
    iqr_s: float = field(init=False)

    def __post_init__(self) -> None:
        times = np.asarray(self.times_s, dtype=np.float64)
        self.median_s = float(np.median(times))
        self.p90_s = float(np.percentile(times, 90))
        self.mean_s = float(times.mean())
        self.std_s = float(times.std(ddof=1)) if times.size > 1 else 0.0
        self.iqr_s = float(np.percentile(times, 75) - np.percentile(times, 25))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _check_counts(warmup: int, repeats: int) -> None:
    if not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"`warmup` must be a non-negative int, got {warmup!r}.")
    if not isinstance(repeats, int) or repeats < MIN_REPEATS:
        raise ValueError(
            f"`repeats` must be an int ≥ {MIN_REPEATS} (median and p90 need it), got {repeats!r}."
        )


def time_function(
    fn: Callable[[], Any],
    warmup: int = 3,
    repeats: int = MIN_REPEATS,
    device: torch.device | str | None = None,
) -> TimingResult:
    """Time ``fn()``: ``warmup`` untimed runs, then ``repeats`` (≥ 10) timed runs on ``device``'s clock."""
    if not callable(fn):
        raise TypeError("`fn` must be callable with no arguments.")
    _check_counts(warmup, repeats)
    clock = Clock(_resolve_device(device))
    for _ in range(warmup):
        clock.run(fn)
    runs = [clock.run(fn) for _ in range(repeats)]
    memories = [m for _, m in runs if m is not None]
    return TimingResult(
        times_s=[t for t, _ in runs],
        device=str(clock.device),
        method=clock.method,
        peak_memory_bytes=max(memories) if memories else None,
        memory_measure=clock.memory_measure,
    )


@dataclass
class Comparison:
    """Interleaved baseline/candidate timings; ``speedup`` = baseline median / candidate median."""

    baseline: TimingResult
    candidate: TimingResult
    speedup: float
    pairwise_ratio_median: float
    pairwise_ratio_p10: float
    pairwise_ratio_p90: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def compare_latency(
    baseline: Callable[[], Any],
    candidate: Callable[[], Any],
    warmup: int = 3,
    repeats: int = MIN_REPEATS,
    device: torch.device | str | None = None,
) -> Comparison:
    """Time ``baseline`` and ``candidate`` interleaved (A B A B …) so that drift hits both alike.

    Returns each side's :class:`TimingResult`, the ratio of medians (speedup > 1: the candidate is faster),
    and the median and 10th/90th percentiles of the per-pair ratios baseline_i / candidate_i.
    """
    if not callable(baseline) or not callable(candidate):
        raise TypeError("`baseline` and `candidate` must be callables with no arguments.")
    _check_counts(warmup, repeats)
    clock = Clock(_resolve_device(device))
    for _ in range(warmup):
        clock.run(baseline)
        clock.run(candidate)
    runs_a, runs_b = [], []
    for _ in range(repeats):
        runs_a.append(clock.run(baseline))
        runs_b.append(clock.run(candidate))

    def result(runs: list[tuple[float, int | None]]) -> TimingResult:
        memories = [m for _, m in runs if m is not None]
        return TimingResult(
            times_s=[t for t, _ in runs],
            device=str(clock.device),
            method=clock.method + ", interleaved",
            peak_memory_bytes=max(memories) if memories else None,
            memory_measure=clock.memory_measure,
        )

    a, b = result(runs_a), result(runs_b)
    ratios = np.asarray(a.times_s) / np.asarray(b.times_s)
    return Comparison(
        baseline=a,
        candidate=b,
        speedup=a.median_s / b.median_s,
        pairwise_ratio_median=float(np.median(ratios)),
        pairwise_ratio_p10=float(np.percentile(ratios, 10)),
        pairwise_ratio_p90=float(np.percentile(ratios, 90)),
    )


# ---------------------------------------------------------------------------------------------------------
# Pipelines: three scopes
# ---------------------------------------------------------------------------------------------------------
class _LoopClock:
    """Per call: time from the first denoiser forward to the end of the last ``scheduler.step``.

    Patches ``pipe.scheduler.step`` on the instance for the duration of the context and restores it exactly.
    """

    def __init__(self, pipe: Any, device: torch.device) -> None:
        self.pipe = pipe
        self.denoiser = resolve_denoiser(pipe, "latency timing", allow_model=False)
        self.clock = Clock(device)
        self.loop_times: list[float] = []
        self._start: Any = None
        self._end: Any = None

    def _on_forward(self, module: nn.Module, args: tuple) -> None:
        if self._start is None:
            self._start = self.clock.mark()

    def begin_call(self) -> None:
        self._start = self._end = None

    def end_call(self) -> None:
        if self._start is None or self._end is None:
            raise RuntimeError("The pipeline call ran no denoiser forward or no scheduler step.")
        self.loop_times.append(self.clock.seconds_between(self._start, self._end))

    def __enter__(self) -> _LoopClock:
        scheduler = self.pipe.scheduler
        self._had_instance_step = "step" in vars(scheduler)
        self._original_step = scheduler.step
        original = self._original_step

        def step(*args: Any, **kwargs: Any) -> Any:
            output = original(*args, **kwargs)
            self._end = self.clock.mark()
            return output

        scheduler.step = step
        self._handle = self.denoiser.register_forward_pre_hook(self._on_forward)
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self._handle.remove()
        if self._had_instance_step:
            self.pipe.scheduler.step = self._original_step
        else:
            del self.pipe.scheduler.step


@dataclass
class PipelineLatency:
    """Latency of one pipeline configuration in up to three scopes, with NFE and MACs per call."""

    scopes: dict[str, TimingResult]
    nfe_per_call: int
    macs_per_call: int | None = None
    denoiser_macs_per_call: int | None = None
    attention_macs_per_call: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "scopes": {name: timing.to_dict() for name, timing in self.scopes.items()},
            "nfe_per_call": self.nfe_per_call,
            "macs_per_call": self.macs_per_call,
            "denoiser_macs_per_call": self.denoiser_macs_per_call,
            "attention_macs_per_call": self.attention_macs_per_call,
        }


def _clone_inputs(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, list | tuple):
        return type(value)(_clone_inputs(v) for v in value)
    if isinstance(value, dict):
        return {k: _clone_inputs(v) for k, v in value.items()}
    return value


def _capture_first_denoiser_call(pipe: Any, call_kwargs: dict[str, Any]) -> tuple[tuple, dict[str, Any], int]:
    denoiser = resolve_denoiser(pipe, "latency timing", allow_model=False)
    captured: list[tuple[tuple, dict]] = []

    def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
        if not captured:
            captured.append((_clone_inputs(args), _clone_inputs(kwargs)))

    handle = denoiser.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with count_nfe(denoiser) as nfe:
            pipe(**call_kwargs)
    finally:
        handle.remove()
    if not captured:
        raise RuntimeError("The pipeline call never ran its denoiser.")
    return captured[0][0], captured[0][1], nfe.count


def measure_pipeline(
    pipe: Any,
    call_kwargs: dict[str, Any],
    scopes: tuple[str, ...] = SCOPES,
    warmup: int = 3,
    repeats: int = MIN_REPEATS,
    count_compute: bool = True,
    device: torch.device | str | None = None,
) -> PipelineLatency:
    """Measure ``pipe(**call_kwargs)`` in the requested scopes (see the module docstring).

    ``denoising_loop`` and ``end_to_end`` come from the same timed calls (the loop is clocked by hooks
    inside them). ``device`` defaults to the denoiser's device. ``count_compute`` also counts MACs of one call
    (all modules, and the denoiser alone).
    """
    unknown = [s for s in scopes if s not in SCOPES]
    if unknown or not scopes:
        raise ValueError(f"`scopes` must be a non-empty subset of {SCOPES}, got {scopes!r}.")
    _check_counts(warmup, repeats)
    denoiser = resolve_denoiser(pipe, "latency timing", allow_model=False)
    device = _resolve_device(device if device is not None else next(denoiser.parameters()).device)
    args, kwargs, nfe = _capture_first_denoiser_call(pipe, call_kwargs)
    results: dict[str, TimingResult] = {}
    if "model_step" in scopes:

        def model_step() -> None:
            with torch.inference_mode():
                denoiser(*args, **kwargs)

        results["model_step"] = time_function(model_step, warmup, repeats, device)
    if "denoising_loop" in scopes or "end_to_end" in scopes:
        with _LoopClock(pipe, device) as loop_clock:

            def call() -> None:
                loop_clock.begin_call()
                pipe(**call_kwargs)
                loop_clock.end_call()

            end_to_end = time_function(call, warmup, repeats, device)
        if "end_to_end" in scopes:
            results["end_to_end"] = end_to_end
        if "denoising_loop" in scopes:
            results["denoising_loop"] = TimingResult(
                times_s=loop_clock.loop_times[warmup:],
                device=str(device),
                method=Clock(device).method + ", first denoiser call → last scheduler.step",
            )
    latency = PipelineLatency(scopes={s: results[s] for s in scopes}, nfe_per_call=nfe)
    if count_compute:
        counter = count_macs(lambda: pipe(**call_kwargs), modules={"denoiser": denoiser})
        latency.macs_per_call = counter.total_macs
        latency.denoiser_macs_per_call = counter.module_macs["denoiser"]
        latency.attention_macs_per_call = counter.attention_macs
    return latency
