"""The cache's inference state machine: step counting per CFG context, compute/reuse decisions, cached
buffers, records.

One :class:`CacheController` serves one hooked denoiser. The denoiser-level hook calls
:meth:`begin_forward` / :meth:`end_forward` around every forward; the site hooks call :meth:`run_unit` or
:meth:`run_block`. Every decision is plain Python made outside the (optionally compiled) site forwards.
Router training drives the same hooks with its own controller
(:class:`fastsample.cache.router_training.RouterTrainingController`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from fastsample.cache.buffers import CacheSlot, is_identity
from fastsample.cache.forecast import ForecastSlot
from fastsample.cache.policies import CachePolicy, NoCache
from fastsample.cache.stats import CacheStats
from fastsample.cache.units import CacheSite
from fastsample.integration.measure import MacCounter
from fastsample.integration.rows import current_rows

logger = logging.getLogger(__name__)

DEFAULT_CONTEXT = "default"


class _ContextState:
    """Everything one CFG context (``"default"``, or ``"cond"``/``"uncond"`` for separate calls) keeps.

    Each slot holds one value per canonical row (CFG half × sample, :mod:`fastsample.integration.rows`), so a
    forward that carries only some rows (Adaptive Guidance re-packing) reads and refreshes those rows."""

    def __init__(self, num_sites: int, order: int = 0) -> None:
        self.slots: list[Any] = [ForecastSlot(order) if order else CacheSlot() for _ in range(num_sites)]
        self.slot_inputs: list[tuple | None] = [None] * num_sites  # input signature of each stored value
        self.head_reference = CacheSlot()  # dynamic policy: block 0's residual at the last full step
        self.head_inputs: tuple | None = None
        self.step = 0
        self.consecutive_skips = 0
        self.log: list[list[bool]] = []
        self.rows_log: list[int] = []  # rows each logged forward carried
        self.signature: tuple | None = None
        self.profiled: tuple | None = None  # signature of the last forward profiled in this context

    def reset(self) -> None:
        for slot in self.slots:
            slot.invalidate()
        self.head_reference.invalidate()
        self.head_inputs = None
        self.step = 0
        self.consecutive_skips = 0
        self.log = []
        self.rows_log = []


def _signature(args: tuple, kwargs: dict, batch: int | None = None) -> tuple:
    """Shapes/dtypes of the tensor inputs: one MAC profile per distinct signature. With ``batch``, a leading
    dimension equal to it is written as ``-1`` (the per-row signature of a site's inputs)."""
    items = list(enumerate(args)) + sorted(kwargs.items(), key=lambda kv: kv[0])
    return tuple(
        (
            key,
            (-1, *v.shape[1:]) if batch is not None and v.ndim and v.shape[0] == batch else tuple(v.shape),
            str(v.dtype),
        )
        for key, v in items
        if isinstance(v, torch.Tensor)
    )


def _leading(args: tuple, kwargs: dict) -> int | None:
    """The batch size of a site call: the leading dimension of its first tensor input."""
    for value in (*args, *kwargs.values()):
        if isinstance(value, torch.Tensor) and value.ndim:
            return int(value.shape[0])
    return None


def _keep(slot: Any, value: Any, step: int, rows: torch.Tensor | None, full: int) -> None:
    if isinstance(slot, ForecastSlot):
        slot.store(value, step, rows, full)
    else:
        slot.store(value, rows, full if rows is not None else None)


def _serve(slot: Any, step: int, rows: torch.Tensor | None) -> Any:
    return slot.read(step, rows) if isinstance(slot, ForecastSlot) else slot.load(rows)


def _residual(outputs: tuple, inputs: tuple) -> tuple:
    return tuple(None if o is None or x is None else o - x for o, x in zip(outputs, inputs))


class CacheController:
    """State and decisions of one enabled cache (see the module docstring)."""

    def __init__(
        self,
        model: torch.nn.Module,
        sites: Sequence[CacheSite],
        policy: CachePolicy,
        *,
        pipe: Any = None,
        profile_macs: bool = True,
    ) -> None:
        self.model = model
        self.sites = list(sites)
        self.policy = policy
        self.pipe = pipe
        self.profile_macs = profile_macs
        self.stores = not isinstance(policy, NoCache)
        self.states: dict[str, _ContextState] = {}
        self.profiles: dict[tuple, tuple[float, np.ndarray]] = {}
        self.profiling = False
        self.active: _ContextState | None = None
        self.flags: list[bool | None] = []
        self._counter: Any = None
        self.call_args: dict[str, Any] | None = None
        self.in_call = False  # inside a call of the owning pipeline (pipelines only)
        self._site_macs = np.zeros(len(self.sites))
        self.forward_rows: int | None = None

    # ------------------------------------------------------------------ lifecycle
    def reset(self, call_args: dict[str, Any] | None = None) -> None:
        """Forget every step and cached tensor (buffers are kept for reuse); starts a new sampling run.

        ``call_args``: the pipeline call's bound arguments
        (:func:`fastsample.integration.call_scope.on_call`), handed to the policy's ``check_call``."""
        if self.active is not None:
            raise RuntimeError("cannot reset the cache in the middle of a denoiser forward.")
        self.call_args = call_args
        for state in self.states.values():
            state.reset()

    def begin_call(self, call_args: dict[str, Any] | None = None) -> None:
        """Start of a call of the owning pipeline: :meth:`reset`, and cache the denoiser until
        :meth:`end_call`."""
        self.reset(call_args)
        self.in_call = True

    def end_call(self) -> None:
        self.in_call = False
        self.call_args = None  # do not keep the call's tensors alive

    @property
    def bypassed(self) -> bool:
        """Whether the denoiser must run uncached now: it belongs to a pipeline that is not running (another
        pipeline sharing it, e.g. through ``from_pipe``, or a direct call); a bare model is always cached."""
        return self.pipe is not None and not self.in_call

    def _state(self, name: str) -> _ContextState:
        state = self.states.get(name)
        if state is None:
            state = self.states[name] = _ContextState(len(self.sites), getattr(self.policy, "order", 0))
        return state

    # ------------------------------------------------------------------ denoiser forward
    def _enter(self, context: str) -> _ContextState:
        if self.active is not None:
            raise RuntimeError("the cached denoiser was called re-entrantly; this is not supported.")
        return self._state(context)

    def begin_forward(self, context: str, args: tuple, kwargs: dict) -> bool:
        """Decide this step's flags; returns whether the caller should profile MACs during this forward."""
        state = self._enter(context)
        step = state.step
        n = len(self.sites)
        if step == 0:
            flags: list[bool | None] = [True] * n
            self.policy.check_call(step, kwargs.get("timestep"), self.pipe, self.call_args)
        elif self.policy.dynamic:
            flags = [True] + [None] * (n - 1)  # block 0 decides for the rest
        else:
            flags = [bool(f) for f in self.policy.plan(step, n)]
            if len(flags) != n:
                raise RuntimeError(f"{self.policy.describe()} planned {len(flags)} sites, the model has {n}.")
            flags = [f or not slot.valid for f, slot in zip(flags, state.slots)]
        self.active, self.flags = state, flags
        self.forward_rows = None  # rows the model's sites carried in this forward (None: not run)
        state.signature = _signature(args, kwargs)
        want_profile = (
            self.profile_macs and state.signature not in self.profiles and all(f is True for f in flags)
        )
        self.profiling = want_profile
        return want_profile

    def end_forward(self, completed: bool) -> None:
        state, self.active, self.profiling = self.active, None, False
        if state is None or not completed or self.forward_rows is None:
            return  # failed, or the model was not run (e.g. guidance skipped this pass): no step taken
        state.log.append([bool(f) for f in self.flags])
        state.rows_log.append(self.forward_rows)
        state.step += 1

    def run_profiled(self, forward: Callable[..., Any], args: tuple, kwargs: dict, profile: bool) -> Any:
        if not profile:
            return forward(*args, **kwargs)
        self._site_macs = np.zeros(len(self.sites))
        with MacCounter() as counter:
            self._counter = counter
            try:
                out = forward(*args, **kwargs)
            finally:
                self._counter = None
        self.profiles[self.active.signature] = (float(counter.total_macs), self._site_macs)
        self.active.profiled = self.active.signature
        return out

    def _call_site(self, index: int, forward: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
        """Run a site's forward, attributing its MACs to it while profiling."""
        if self._counter is None:
            return forward(*args, **kwargs)
        before = self._counter.total_macs
        out = forward(*args, **kwargs)
        self._site_macs[index] += self._counter.total_macs - before
        return out

    # ------------------------------------------------------------------ sites
    def run_unit(self, index: int, forward: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
        """Run unit ``index`` or return its cached output, as decided for the current step."""
        state = self.active
        if state is None:
            return forward(*args, **kwargs)
        slot = state.slots[index]
        rows, full, key = self._rows(args, kwargs)
        if self._must_compute(state, index, key, rows, full):
            out = self._call_site(index, forward, args, kwargs)
            if self.stores:
                _keep(slot, out, state.step, rows, full)
            return out
        return _serve(slot, state.step, rows)

    def run_block(
        self, index: int, streams: tuple[str, ...], forward: Callable[..., Any], args: tuple, kwargs: dict
    ) -> Any:
        """Run block ``index`` (storing its residuals) or add its cached residuals to the inputs."""
        state = self.active
        if state is None:
            return forward(*args, **kwargs)
        inputs = tuple(
            kwargs[name] if name in kwargs else (args[0] if name == "hidden_states" and args else None)
            for name in streams
        )
        single = len(streams) == 1
        rows, full, key = self._rows(args, kwargs)
        if self.policy.dynamic and index == 0:
            out = self._call_site(index, forward, args, kwargs)
            self._decide_tail(state, _residual((out,) if single else out, inputs)[-1], rows, full, key)
            return out
        slot = state.slots[index]
        if self._must_compute(state, index, key, rows, full):
            out = self._call_site(index, forward, args, kwargs)
            if self.stores:
                _keep(slot, _residual((out,) if single else out, inputs), state.step, rows, full)
            return out
        residual = _serve(slot, state.step, rows)
        out = tuple(None if x is None or r is None else x + r for x, r in zip(inputs, residual))
        return out[0] if single else out

    def _rows(self, args: tuple, kwargs: dict) -> tuple[torch.Tensor | None, int, tuple]:
        """``(rows, full, key)`` of a site call: the canonical rows it carries (``None``: all of a
        ``full``-row batch), and the per-row signature of its inputs. The rows come from the map a
        re-packing hook set on the denoiser (:func:`fastsample.integration.rows.current_rows`) when it
        matches the call's batch."""
        lead = _leading(args, kwargs)
        row_map = current_rows(self.model)
        if row_map is not None and len(row_map) == lead:
            rows, full = row_map.rows, row_map.full
            if is_identity(rows, full):
                rows = None
        else:
            rows, full = None, lead
        if self.forward_rows is None:
            self.forward_rows = lead if rows is None else len(rows)
        return rows, full, (full, _signature(args, kwargs, batch=lead))

    def _must_compute(
        self, state: _ContextState, index: int, key: tuple, rows: torch.Tensor | None, full: int
    ) -> bool:
        """The planned flag, forced to True when the slot does not hold every row this call carries, or holds
        them from inputs of another per-row shape; records the signature."""
        if not self.flags[index] and (
            state.slot_inputs[index] != key or not state.slots[index].holds(rows, full)
        ):
            self.flags[index] = True
        if self.flags[index]:
            state.slot_inputs[index] = key
        return bool(self.flags[index])

    def _decide_tail(
        self,
        state: _ContextState,
        head_residual: torch.Tensor,
        rows: torch.Tensor | None,
        full: int,
        key: tuple,
    ) -> None:
        step = state.step
        skip = False
        held = state.head_inputs == key and state.head_reference.holds(rows, full)
        reference = state.head_reference.load(rows) if held else None
        if step > 0 and reference is not None and reference.shape == head_residual.shape:
            change = (
                (head_residual - reference).abs().mean() / reference.abs().mean().clamp_min(1e-12)
            ).item()
            skip = self.policy.skip_tail(step, change, state.consecutive_skips)
        self.flags[1:] = [not skip] * (len(self.flags) - 1)
        if skip:
            state.consecutive_skips += 1
        else:
            state.consecutive_skips = 0
            state.head_reference.store(head_residual, rows, full if rows is not None else None)
            state.head_inputs = key

    # ------------------------------------------------------------------ reporting
    def stats(self) -> CacheStats:
        names = [s.name for s in self.sites]
        computed, totals, site_macs, rows = {}, {}, {}, {}
        for ctx, state in self.states.items():
            if not state.log:
                continue
            computed[ctx] = np.array(state.log, dtype=bool).reshape(len(state.log), len(names))
            rows[ctx] = np.array(state.rows_log, dtype=np.int64)
            # the last forward's shape, else the last one profiled in this context (a re-packed batch of
            # another size: the per-site MAC shares, all that the fractions use, do not depend on the rows)
            profile = self.profiles.get(state.signature) or self.profiles.get(state.profiled)
            if profile is not None:
                totals[ctx], site_macs[ctx] = profile
        held = sum(
            slot.nbytes() for state in self.states.values() for slot in [*state.slots, state.head_reference]
        )
        return CacheStats(
            self.policy.describe(),
            self.policy.level,
            names,
            computed,
            totals,
            site_macs,
            cache_bytes=held,
            rows=rows,
        )

    def nothing_reused(self) -> bool:
        """True when the last run took steps but never served a site from the cache."""
        logs = [row for state in self.states.values() for row in state.log]
        return bool(logs) and all(all(row) for row in logs)
