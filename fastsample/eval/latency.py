"""Latency, peak memory, NFE and MACs of diffusion sampling, measured the way acceleration papers report them.

Protocol (training_eval.md §7): warm-up runs at the exact shapes first, then ≥ 10 timed runs; report the
median and the 90th percentile.

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

Compute: NFE = denoiser forward calls (a forward pre-hook counts them; a batched CFG pass is one call);
MACs from ``torch.utils.flop_counter.FlopCounterMode`` (FLOPs / 2) for linear and convolution layers, plus
attention counted by hand, because the counter gives 0 for ``scaled_dot_product_attention`` on CPU: an SDPA
call with queries [..., L_q, E] and keys/values [..., L_k, E], [..., L_k, E_v] costs L_q·L_k·(E + E_v) MACs
per batch·head (QKᵀ and attention·V; 2·N²·d per head for self-attention).
"""

from __future__ import annotations

import contextlib
import gc
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from fastsample.integration.adapters import find_denoiser

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


def _read_status_kib(field_name: str) -> int | None:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_rss() -> int | None:
    """Reset the kernel's peak RSS counter; return the current RSS in bytes (None if unsupported)."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
    except OSError:
        return None
    rss = _read_status_kib("VmRSS")
    return None if rss is None else rss * 1024


class _RunClock:
    """Times single runs of a callable on one device, with its peak memory."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.is_cuda = device.type == "cuda"
        self.memory_measure = (
            "torch.cuda.max_memory_allocated"
            if self.is_cuda
            else "peak RSS growth (Linux VmHWM after clear_refs)"
        )

    def run(self, fn: Callable[[], Any]) -> tuple[float, int | None]:
        if self.is_cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize(self.device)
            return start.elapsed_time(end) / 1000.0, int(torch.cuda.max_memory_allocated(self.device))
        rss_before = _reset_peak_rss()
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            begin = time.perf_counter()
            fn()
            seconds = time.perf_counter() - begin
        finally:
            if gc_was_enabled:
                gc.enable()
        peak = _read_status_kib("VmHWM")
        memory = None if rss_before is None or peak is None else max(peak * 1024 - rss_before, 0)
        return seconds, memory


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


def _method(device: torch.device) -> str:
    return "cuda-events+synchronize" if device.type == "cuda" else "perf_counter (gc paused)"


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
    clock = _RunClock(_resolve_device(device))
    for _ in range(warmup):
        clock.run(fn)
    runs = [clock.run(fn) for _ in range(repeats)]
    memories = [m for _, m in runs if m is not None]
    return TimingResult(
        times_s=[t for t, _ in runs],
        device=str(clock.device),
        method=_method(clock.device),
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
    clock = _RunClock(_resolve_device(device))
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
            method=_method(clock.device) + ", interleaved",
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
# NFE
# ---------------------------------------------------------------------------------------------------------
class NFECounter:
    """Counts forward calls of a module through a forward pre-hook (removed on :meth:`remove`)."""

    def __init__(self, module: nn.Module) -> None:
        if not isinstance(module, nn.Module):
            raise TypeError(f"`module` must be a torch.nn.Module, got {type(module).__name__}.")
        self.count = 0
        self._handle = module.register_forward_pre_hook(self._hook)

    def _hook(self, module: nn.Module, args: tuple) -> None:
        self.count += 1

    def reset(self) -> None:
        self.count = 0

    def remove(self) -> None:
        self._handle.remove()


@contextlib.contextmanager
def count_nfe(module: nn.Module) -> Iterator[NFECounter]:
    """``with count_nfe(pipe.transformer) as nfe: pipe(...)`` → ``nfe.count`` denoiser calls."""
    counter = NFECounter(module)
    try:
        yield counter
    finally:
        counter.remove()


# ---------------------------------------------------------------------------------------------------------
# MACs
# ---------------------------------------------------------------------------------------------------------
def sdpa_macs(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> int:
    """MACs of softmax(QKᵀ)V: batch·heads · L_q · L_k · (E + E_v)."""
    batch = math.prod(query.shape[:-2])
    length_q, embed = query.shape[-2:]
    length_k, embed_v = key.shape[-2], value.shape[-1]
    return int(batch * length_q * length_k * (embed + embed_v))


class _AttentionMode(TorchFunctionMode):
    """Adds attention MACs by hand and records what the flop counter itself saw inside SDPA calls."""

    def __init__(self, flop_counter: Any) -> None:
        super().__init__()
        self.flop_counter = flop_counter
        self.attention_macs = 0
        self.counter_flops_inside_sdpa = 0
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is not F.scaled_dot_product_attention:
            return func(*args, **kwargs)
        names = ("query", "key", "value")
        tensors = [args[i] if i < len(args) else kwargs[name] for i, name in enumerate(names)]
        before = self.flop_counter.get_total_flops()
        output = func(*args, **kwargs)
        self.counter_flops_inside_sdpa += self.flop_counter.get_total_flops() - before
        self.attention_macs += sdpa_macs(*tensors)
        self.calls += 1
        return output


class MacCounter:
    """Context manager counting multiply-accumulates of everything run inside it.

    ``total_macs`` = FlopCounterMode's FLOPs/2 outside attention + attention MACs by hand (whatever the
    counter attributed to SDPA calls is replaced, never double counted). ``modules`` maps names to modules
    whose forward calls are counted separately in ``module_macs`` (e.g. ``{"denoiser": pipe.transformer}``).
    """

    def __init__(self, modules: dict[str, nn.Module] | None = None) -> None:
        from torch.utils.flop_counter import FlopCounterMode

        self._flops = FlopCounterMode(display=False)
        self._attention = _AttentionMode(self._flops)
        self._modules = dict(modules or {})
        self.module_macs = dict.fromkeys(self._modules, 0)
        self.module_calls = dict.fromkeys(self._modules, 0)
        self._handles: list[Any] = []
        self._starts: dict[str, list[int]] = {name: [] for name in self._modules}

    @property
    def flop_counter_macs(self) -> int:
        """MACs the flop counter saw outside attention (linear, convolution, matmul...)."""
        return (self._flops.get_total_flops() - self._attention.counter_flops_inside_sdpa) // 2

    @property
    def attention_macs(self) -> int:
        return self._attention.attention_macs

    @property
    def attention_calls(self) -> int:
        return self._attention.calls

    @property
    def total_macs(self) -> int:
        return self.flop_counter_macs + self.attention_macs

    def _pre_hook(self, name: str) -> Callable:
        def hook(module: nn.Module, args: tuple) -> None:
            self._starts[name].append(self.total_macs)

        return hook

    def _post_hook(self, name: str) -> Callable:
        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            self.module_macs[name] += self.total_macs - self._starts[name].pop()
            self.module_calls[name] += 1

        return hook

    def __enter__(self) -> MacCounter:
        for name, module in self._modules.items():
            self._handles.append(module.register_forward_pre_hook(self._pre_hook(name)))
            self._handles.append(module.register_forward_hook(self._post_hook(name)))
        self._flops.__enter__()
        self._attention.__enter__()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self._attention.__exit__(*exc_info)
        self._flops.__exit__(*exc_info)
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


def count_macs(fn: Callable[[], Any], modules: dict[str, nn.Module] | None = None) -> MacCounter:
    """Run ``fn()`` once under :class:`MacCounter` (in inference mode) and return the counter."""
    with torch.inference_mode(), MacCounter(modules) as counter:
        fn()
    return counter


# ---------------------------------------------------------------------------------------------------------
# Pipelines: three scopes
# ---------------------------------------------------------------------------------------------------------
class _LoopClock:
    """Per call: time from the first denoiser forward to the end of the last ``scheduler.step``.

    Patches ``pipe.scheduler.step`` on the instance for the duration of the context and restores it exactly.
    """

    def __init__(self, pipe: Any, device: torch.device) -> None:
        self.pipe = pipe
        self.denoiser = find_denoiser(pipe, "latency timing", allow_model=False)
        self.is_cuda = device.type == "cuda"
        self.loop_times: list[float] = []
        self._start: Any = None
        self._end: Any = None

    def _mark(self) -> Any:
        if self.is_cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def _on_forward(self, module: nn.Module, args: tuple) -> None:
        if self._start is None:
            self._start = self._mark()

    def begin_call(self) -> None:
        self._start = self._end = None

    def end_call(self) -> None:
        if self._start is None or self._end is None:
            raise RuntimeError("The pipeline call ran no denoiser forward or no scheduler step.")
        if self.is_cuda:
            torch.cuda.synchronize()
            self.loop_times.append(self._start.elapsed_time(self._end) / 1000.0)
        else:
            self.loop_times.append(self._end - self._start)

    def __enter__(self) -> _LoopClock:
        scheduler = self.pipe.scheduler
        self._had_instance_step = "step" in vars(scheduler)
        self._original_step = scheduler.step
        original = self._original_step

        def step(*args: Any, **kwargs: Any) -> Any:
            output = original(*args, **kwargs)
            self._end = self._mark()
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
    denoiser = find_denoiser(pipe, "latency timing", allow_model=False)
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
    denoiser = find_denoiser(pipe, "latency timing", allow_model=False)
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
                method=_method(device) + ", first denoiser call → last scheduler.step",
            )
    latency = PipelineLatency(scopes={s: results[s] for s in scopes}, nfe_per_call=nfe)
    if count_compute:
        counter = count_macs(lambda: pipe(**call_kwargs), modules={"denoiser": denoiser})
        latency.macs_per_call = counter.total_macs
        latency.denoiser_macs_per_call = counter.module_macs["denoiser"]
        latency.attention_macs_per_call = counter.attention_macs
    return latency
