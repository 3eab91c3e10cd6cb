"""What a cache did: hit ratios per step and per site, computed-MAC fraction and theoretical speed-up.

MACs come from one profiled forward (:class:`fastsample.integration.measure.MacCounter`: matmuls,
convolutions and attention; element-wise work is not counted, as in the papers' FLOP tables). With ``M`` the
MACs of a whole denoiser forward and ``m_i`` those of site ``i``, the computed fraction of a run is

    f = Σ_steps (M - Σ_{i reused} m_i) / (steps · M),   theoretical speed-up = 1 / f.

When another capability changes how many rows each forward carries (Adaptive Guidance re-packing the CFG
batch), the work of the composed recipe relative to full batches of ``R`` rows is

    W = Σ_steps rows_k (M - Σ_{i reused at k} m_i) / (steps · R · M)        (:meth:`CacheStats.work_fraction`)

(MACs of a transformer forward are linear in its rows), which is the product of the two savings when they
compose: (Σ rows_k / (steps · R)) × f.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class CacheStats:
    """Per-context record of one sampling run. ``computed[ctx][k, i]``: site ``i`` computed at step ``k``."""

    method: str
    level: str
    site_names: list[str]
    computed: dict[str, np.ndarray]
    total_macs: dict[str, float] = field(default_factory=dict)  # per forward, by context
    site_macs: dict[str, np.ndarray] = field(default_factory=dict)  # by context
    measured_speedup: float | None = None
    cache_bytes: int = 0  # memory held by the cache buffers (all contexts)
    rows: dict[str, np.ndarray] = field(default_factory=dict)  # rows each forward carried, by context

    # ---------------------------------------------------------------- counts
    @property
    def num_forwards(self) -> int:
        return int(sum(c.shape[0] for c in self.computed.values()))

    @property
    def unit_calls(self) -> int:
        """Number of site forwards actually run."""
        return int(sum(c.sum() for c in self.computed.values()))

    def _all(self) -> np.ndarray:
        rows = [c for c in self.computed.values() if c.size]
        return np.concatenate(rows) if rows else np.zeros((0, len(self.site_names)), dtype=bool)

    @property
    def hit_ratio(self) -> float:
        """Fraction of (step, site) pairs served from the cache, over all contexts."""
        everything = self._all()
        return float(1.0 - everything.mean()) if everything.size else 0.0

    @property
    def per_step_hit_ratio(self) -> np.ndarray:
        """Hit ratio of each step (averaged over contexts that reached it)."""
        steps = max((c.shape[0] for c in self.computed.values()), default=0)
        out = np.zeros(steps)
        for k in range(steps):
            rows = [c[k] for c in self.computed.values() if c.shape[0] > k]
            out[k] = 1.0 - np.mean(rows)
        return out

    @property
    def per_site_hit_ratio(self) -> np.ndarray:
        everything = self._all()
        return 1.0 - everything.mean(axis=0) if everything.size else np.zeros(len(self.site_names))

    def per_site(self) -> dict[str, float]:
        """``{site name: hit ratio}``."""
        return dict(zip(self.site_names, self.per_site_hit_ratio.tolist()))

    # ---------------------------------------------------------------- MACs
    @property
    def computed_mac_fraction(self) -> float | None:
        """Fraction of the uncached MACs actually spent (``None`` when no forward was profiled)."""
        spent = full = 0.0
        for ctx, computed in self.computed.items():
            if ctx not in self.total_macs:
                return None
            total, sites = self.total_macs[ctx], self.site_macs[ctx]
            full += total * computed.shape[0]
            spent += total * computed.shape[0] - float(((~computed) * sites).sum())
        return spent / full if full else None

    def work_fraction(self, full_rows: int | None = None) -> float:
        """Row-weighted fraction of the work of full, uncached forwards of ``full_rows`` rows (default: the
        most rows any forward carried), MAC-weighted when a forward was profiled, else by site count (module
        docstring)."""
        if not self.rows:
            raise ValueError("these stats carry no per-forward row counts.")
        reference = full_rows if full_rows is not None else max(int(r.max()) for r in self.rows.values())
        if not isinstance(reference, int) or reference < 1:
            raise ValueError(f"full_rows must be a positive integer, got {full_rows!r}.")
        spent = full = 0.0
        for ctx, computed in self.computed.items():
            if ctx in self.total_macs and self.total_macs[ctx]:
                reused = ((~computed) * self.site_macs[ctx]).sum(axis=1) / self.total_macs[ctx]
            else:
                reused = (~computed).mean(axis=1)
            spent += float((self.rows[ctx] * (1.0 - reused)).sum())
            full += reference * computed.shape[0]
        return spent / full if full else 0.0

    @property
    def theoretical_speedup(self) -> float | None:
        fraction = self.computed_mac_fraction
        return 1.0 / fraction if fraction else None

    def summary(self) -> str:
        """One line: method, steps, hit ratio, computed MACs, theoretical (and measured) speed-up."""
        steps = max((c.shape[0] for c in self.computed.values()), default=0)
        parts = [
            f"fastsample cache {self.method}: {steps} steps x {len(self.site_names)} {self.level}s"
            + (f" x {len(self.computed)} contexts" if len(self.computed) > 1 else ""),
            f"hit ratio {100 * self.hit_ratio:.1f}%",
            f"site calls {self.unit_calls}/{self._all().size}",
        ]
        fraction = self.computed_mac_fraction
        if fraction is not None:
            parts.append(f"computed MACs {100 * fraction:.1f}% (theoretical {1 / fraction:.2f}x)")
        if self.measured_speedup is not None:
            parts.append(f"measured {self.measured_speedup:.2f}x")
        if self.cache_bytes:
            parts.append(f"cache {self.cache_bytes / 2**20:.1f} MiB")
        return ", ".join(parts)

    def __str__(self) -> str:
        return self.summary()
