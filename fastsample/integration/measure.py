"""The measurements of fastsample, each written once: one clock, one MAC counter, one NFE counter.

Everything that reports time, compute or model evaluations (``fastsample.eval.latency``, the benchmark runner
``fastsample.eval.bench``, ``fastsample.cache`` and ``benchmarks/*.py``) uses these; the protocol around them
(warm-up, repeats, median and p90, interleaving) is docs/design/evaluation.md#timing.

**Clock** (:class:`Clock`, :class:`Stopwatch`). On CUDA: CUDA events recorded around the work, with
``torch.cuda.synchronize`` before the start event and after the end event (events time the device, not the
host's launch queue). Otherwise ``time.perf_counter``; CPU torch ops are synchronous, so it brackets exactly
the work. :meth:`Clock.run` also pauses the garbage collector during the run (as ``timeit`` does) and reads
the peak memory of the run: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats`` on CUDA,
the growth of the process's peak resident set size on Linux CPUs (``VmHWM`` reset through
``/proc/self/clear_refs``; every allocation of the process, not only tensors), ``None`` elsewhere. A
:class:`Stopwatch` also reads the process CPU time (``time.process_time``), the clock of the "lean" CPU
protocol on a shared machine.

**MACs** (:class:`MacCounter`). ``torch.utils.flop_counter.FlopCounterMode`` (FLOPs / 2) for everything but
attention, which is counted by hand for every ``F.scaled_dot_product_attention`` call, whatever kernel runs it
(the counter itself gives 0 for some CPU kernels and counts the math fallback's pieces otherwise): queries
[..., L_q, E] against keys [..., L_k, E] and values [..., L_k, E_v] cost B·L_q·L_k·(E + E_v) MACs (QKᵀ and
the attention-weighted sum of V; 2·N²·d per head for self-attention; B = batch · heads). What the flop counter
attributed to the SDPA call is replaced, never added. Attention written as plain matmuls is counted by the
flop counter as the matmuls it is.

**NFE** (:class:`NFECounter`). One function evaluation = one forward call of the denoiser (a forward
pre-hook counts them); a batched CFG pass is one call on 2B samples, so the counter also sums the leading
batch dimension of the first input (``samples``).
"""

from __future__ import annotations

import contextlib
import gc
import math
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

__all__ = [
    "Clock",
    "MacCounter",
    "NFECounter",
    "Stopwatch",
    "count_macs",
    "count_nfe",
    "sdpa_macs",
]


# ---------------------------------------------------------------------------------------------------------
# Clock
# ---------------------------------------------------------------------------------------------------------
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


class Clock:
    """The clock of one device: CUDA events on CUDA, ``time.perf_counter`` otherwise (module docstring).

    ``device=None`` is the CPU. :meth:`mark` / :meth:`seconds_between` time spans whose ends are found
    elsewhere (the denoising loop between hooks); :meth:`run` times one call of a callable.
    """

    def __init__(self, device: torch.device | str | None = None) -> None:
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.is_cuda = self.device.type == "cuda"
        self.method = "cuda-events+synchronize" if self.is_cuda else "perf_counter (gc paused)"
        self.memory_measure = (
            "torch.cuda.max_memory_allocated"
            if self.is_cuda
            else "peak RSS growth (Linux VmHWM after clear_refs)"
        )

    def synchronize(self) -> None:
        """Wait for the device's queued work (a no-op on the CPU)."""
        if self.is_cuda:
            torch.cuda.synchronize(self.device)

    def mark(self) -> Any:
        """A point in time: a recorded CUDA event, or a ``perf_counter`` reading."""
        if self.is_cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def seconds_between(self, start: Any, end: Any) -> float:
        """Seconds from ``start`` to ``end`` (two :meth:`mark` results); synchronises on CUDA."""
        if self.is_cuda:
            torch.cuda.synchronize(self.device)
            return start.elapsed_time(end) / 1000.0
        return end - start

    def run(self, fn: Callable[[], Any]) -> tuple[float, int | None]:
        """Time one call ``fn()``: (seconds, peak memory in bytes or ``None``)."""
        if self.is_cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            start = self.mark()
            fn()
            end = self.mark()
            return self.seconds_between(start, end), int(torch.cuda.max_memory_allocated(self.device))
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

    def stopwatch(self) -> Stopwatch:
        """A :class:`Stopwatch` on this clock."""
        return Stopwatch(self.device)


class Stopwatch:
    """``with Stopwatch(device) as watch: ...`` (or ``watch = Stopwatch().start()`` ... ``watch.stop()``),
    then ``watch.seconds`` (the :class:`Clock` of ``device``) and ``watch.cpu_seconds`` (process CPU time); a
    running watch reads the time so far with ``elapsed()``."""

    def __init__(self, device: torch.device | str | None = None) -> None:
        self.clock = Clock(device)
        self.seconds = math.nan
        self.cpu_seconds = math.nan
        self._start: Any = None
        self._cpu_start = 0.0

    def start(self) -> Stopwatch:
        """Start (or restart) timing; returns the watch (``watch = Stopwatch().start()``)."""
        self.clock.synchronize()
        self.seconds = self.cpu_seconds = math.nan
        self._cpu_start = time.process_time()
        self._start = self.clock.mark()
        return self

    def stop(self) -> float:
        """Stop timing; returns (and keeps in ``seconds``) the elapsed seconds."""
        if self._start is None:
            raise RuntimeError("the stopwatch has not been started.")
        end = self.clock.mark()
        self.seconds = self.clock.seconds_between(self._start, end)
        self.cpu_seconds = time.process_time() - self._cpu_start
        return self.seconds

    def __enter__(self) -> Stopwatch:
        return self.start()

    def elapsed(self) -> float:
        """Seconds since the start (the final time once the block has ended)."""
        if self._start is None:
            raise RuntimeError("the stopwatch has not been started.")
        if not math.isnan(self.seconds):
            return self.seconds
        return self.clock.seconds_between(self._start, self.clock.mark())

    def __exit__(self, *exc: Any) -> None:
        self.stop()


# ---------------------------------------------------------------------------------------------------------
# NFE
# ---------------------------------------------------------------------------------------------------------
def _leading_batch(args: tuple, kwargs: dict) -> int:
    first = args[0] if args else kwargs.get("hidden_states", kwargs.get("sample"))
    return int(first.shape[0]) if isinstance(first, torch.Tensor) and first.ndim > 0 else 0


class NFECounter:
    """Counts forward calls of a module (``count``) and the samples they ran (``samples``, the leading
    batch dimension of the first input) through a forward pre-hook, removed on :meth:`remove`."""

    def __init__(self, module: nn.Module) -> None:
        if not isinstance(module, nn.Module):
            raise TypeError(f"`module` must be a torch.nn.Module, got {type(module).__name__}.")
        self.count = 0
        self.samples = 0
        self._handle = module.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        self.count += 1
        self.samples += _leading_batch(args, kwargs)

    def reset(self) -> None:
        """Start counting from zero again."""
        self.count = 0
        self.samples = 0

    def remove(self) -> None:
        """Remove the hook (the counts stay readable)."""
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
    """Context manager counting multiply-accumulates of everything run inside it (module docstring).

    ``total_macs`` = FlopCounterMode's FLOPs/2 outside attention + attention MACs by hand. It may be read
    while the counter runs, so a span of work is measured as the difference of two readings (the cache
    attributes MACs to each cached site this way). ``modules`` maps names to modules whose forward calls are
    counted separately in ``module_macs`` (e.g. ``{"denoiser": pipe.transformer}``).
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
