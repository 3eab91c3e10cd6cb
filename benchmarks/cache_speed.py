"""Cache speed at real model size with random weights: measured vs theoretical (MAC) speed-up.

Static schedules' compute pattern does not depend on the weights, so random weights at the real width/depth
give the real latency. Each row times a full sampling loop of the bare transformer (CFG batch = 2 x batch)
uncached and cached in the same process, alternated. Two protocols:

  loop (default)  ``fastsample.cache.measure_speedup`` per row: a warm-up loop, one untimed profiled
                  cached loop for the statistics, then ``--repeats`` alternated uncached/cached timed loops
                  (medians).
  lean            for models where one forward takes minutes (PixArt 512² on one CPU thread): one untimed,
                  MAC-profiled full forward (the warm-up) shared by all rows, then per row ``--repeats``
                  alternated uncached/cached timed loops, each forward timed separately. The rows'
                  computed-MAC fractions use that one profile (MACs per site do not depend on the schedule).
                  About ``1 + rows x (2 + f) x steps`` forwards instead of ``rows x (3 + 2f) x steps``
                  (f = computed fraction).

    nice -n 10 python benchmarks/cache_speed.py --models dit-b2-256 --steps 4 --repeats 1 --threads 1
    nice -n 10 python benchmarks/cache_speed.py --models pixart-512 --steps 2 --protocol lean --clock cpu \
        --threads 1

Models (diffusers configs of the released checkpoints, ``from_config``):
  dit-xl2-256   DiT-XL/2 at 256² (28 blocks, width 1152, 256 tokens)       ~119 GMACs/sample
  dit-b2-256    DiT-B/2 at 256² (12 blocks, width 768, 256 tokens)         ~23 GMACs/sample
  pixart-256    PixArt-α at 256² (28 blocks, width 1152, 256 tokens, T5 cross-attention, 120 text tokens)
  pixart-512    PixArt-α at 512² (1024 tokens)
"""

from __future__ import annotations

import argparse
import platform
import sys
from collections.abc import Callable

import numpy as np
import torch

from fastsample.cache import enable_cache, find_units
from fastsample.cache.measure import SpeedupReport, measure_speedup
from fastsample.integration.measure import Stopwatch

MODELS = {
    "dit-xl2-256": (
        "dit",
        dict(num_layers=28, attention_head_dim=72, num_attention_heads=16, sample_size=32),
    ),
    "dit-b2-256": ("dit", dict(num_layers=12, attention_head_dim=64, num_attention_heads=12, sample_size=32)),
    "pixart-256": ("pixart", dict(sample_size=32)),
    "pixart-512": ("pixart", dict(sample_size=64)),
}


def build(name: str) -> tuple[torch.nn.Module, str]:
    from diffusers import DiTTransformer2DModel, PixArtTransformer2DModel

    family, overrides = MODELS[name]
    if family == "dit":
        config = dict(
            in_channels=4, out_channels=8, patch_size=2, num_embeds_ada_norm=1000, norm_type="ada_norm_zero"
        )
        model = DiTTransformer2DModel(**config, **overrides)
    else:
        config = dict(
            num_attention_heads=16, attention_head_dim=72, in_channels=4, out_channels=8, num_layers=28,
            cross_attention_dim=1152, patch_size=2, caption_channels=4096, norm_type="ada_norm_single",
            norm_elementwise_affine=False, norm_eps=1e-6, use_additional_conditions=False,
        )  # fmt: skip
        model = PixArtTransformer2DModel(**config, **overrides)
    return model.eval(), family


def make_run(
    model: torch.nn.Module,
    family: str,
    steps: int,
    batch: int,
    times: list[tuple[float, float]] | None = None,
) -> Callable[[], torch.Tensor]:
    """A ``steps``-step loop of the bare model (CFG batch); appends each forward's (wall, process CPU)
    seconds to ``times``."""
    c = model.config
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(2 * batch, c.in_channels, c.sample_size, c.sample_size, generator=g)
    if family == "dit":
        cond = {"class_labels": torch.tensor([1] * batch + [1000] * batch)}
    else:
        cond = {
            "encoder_hidden_states": torch.randn(2 * batch, 120, c.caption_channels, generator=g),
            "added_cond_kwargs": {"resolution": None, "aspect_ratio": None},
        }
    timesteps = torch.linspace(999, 0, steps).round()

    @torch.no_grad()
    def run() -> torch.Tensor:
        x = x0
        for t in timesteps:
            watch = Stopwatch(x0.device).start()  # wall (the device clock) and process CPU time
            out = model(x, timestep=t.expand(x.shape[0]), **cond).sample
            if times is not None:
                watch.stop()
                times.append((watch.seconds, watch.cpu_seconds))
            x = x - 0.01 * out[:, : c.in_channels]
        return x

    return run


def schedules(unit_kinds: list[str], steps: int) -> list[tuple[str, str, dict]]:
    """(label, method, knobs): FORA(1) (hooks only), FORA(2), and a HarmoniCa-like static mask (every ``ff``
    unit reused at odd steps; ``unit_kinds`` are the units' kinds in call order, see ``find_units``)."""
    mask = np.ones((steps, len(unit_kinds)), dtype=bool)
    mask[1::2, [i for i, kind in enumerate(unit_kinds) if kind == "ff"]] = False
    return [
        ("fora(1): 0 % reuse, hook overhead", "fora", {"interval": 1}),
        ("fora(2)", "fora", {"interval": 2}),
        ("static: ff reused at odd steps", "static", {"mask": mask}),
    ]


def print_row(name: str, label: str, report: SpeedupReport, extra: str = "") -> None:
    s = report.stats
    print(
        f"| {name} | {label} | {100 * s.hit_ratio:.1f}% | {100 * s.computed_mac_fraction:.1f}% "
        f"| {report.theoretical:.2f}x | {report.measured:.2f}x | {report.efficiency:.2f} "
        f"| {report.uncached_s:.2f} | {report.cached_s:.2f} |" + (f" {extra} |" if extra else ""),
        flush=True,
    )


def _seconds(times: list[tuple[float, float]], column: int) -> str:
    return " ".join(f"{t[column]:.1f}" for t in times)


def lean_rows(
    model: torch.nn.Module,
    family: str,
    name: str,
    rows: list[tuple[str, str, dict]],
    args: argparse.Namespace,
) -> None:
    """The ``lean`` protocol (module docstring): one shared profiled forward, then alternated timed loops.

    The table's seconds are ``--clock`` (process CPU or wall); the last column gives the other clock too.
    """
    main_col = 1 if args.clock == "cpu" else 0
    times: list[tuple[float, float]] = []
    run = make_run(model, family, args.steps, args.batch, times)
    with enable_cache(model, "fora", interval=1) as handle:  # profiles MACs on its first (full) forward
        make_run(model, family, 1, args.batch)()
        profile = handle.stats()
    print(f"# {name}: profiled warm-up forward done", flush=True)
    for label, method, knobs in rows:
        totals: dict[str, list[list[float]]] = {"uncached": [[], []], "cached": [[], []]}
        per_forward = []
        for _ in range(args.repeats):  # alternate, so that load changes hit both alike
            times.clear()
            run()
            per_uncached = list(times)
            times.clear()
            with enable_cache(model, method, profile_macs=False, **knobs) as handle:
                run()
                stats = handle.stats()
            for key, measured in (("uncached", per_uncached), ("cached", times)):
                for column in (0, 1):
                    totals[key][column].append(sum(t[column] for t in measured))
            per_forward.append(
                f"cpu {_seconds(per_uncached, 1)} / {_seconds(times, 1)}, "
                f"wall {_seconds(per_uncached, 0)} / {_seconds(times, 0)}"
            )
        # the sites' MACs do not depend on the schedule: take them from the shared profile
        stats.total_macs = {ctx: profile.total_macs[ctx] for ctx in stats.computed}
        stats.site_macs = {ctx: profile.site_macs[ctx] for ctx in stats.computed}
        median = {key: [float(np.median(v)) for v in cols] for key, cols in totals.items()}
        report = SpeedupReport(stats, median["uncached"][main_col], median["cached"][main_col])
        stats.measured_speedup = report.measured
        other = median["uncached"][1 - main_col] / median["cached"][1 - main_col]
        other_clock = "wall" if main_col else "cpu"
        print_row(name, label, report, f"{other_clock} {other:.2f}x; " + "; ".join(per_forward))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="+", default=["dit-b2-256"], choices=sorted(MODELS))
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument(
        "--protocol", choices=("loop", "lean"), default="loop", help="see the module docstring (default loop)"
    )
    parser.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="lean protocol only: time by wall clock or by process CPU time (with --threads 1 the CPU time "
        "is the work done, whatever share of a loaded machine the process gets)",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    import diffusers

    print(
        f"# cache speed, {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}, diffusers {diffusers.__version__}, python {sys.version.split()[0]}"
    )
    print(
        f"# command: python benchmarks/cache_speed.py {' '.join(argv if argv is not None else sys.argv[1:])}"
    )
    lean = args.protocol == "lean"
    print(
        "| model | schedule | hit ratio | computed MACs | theoretical | measured | measured/theoretical "
        "| uncached s | cached s |" + (" other clock; per-forward s, uncached / cached |" if lean else "")
    )
    print("|---|---|---|---|---|---|---|---|---|" + ("---|" if lean else ""))
    total = Stopwatch().start()
    for name in args.models:
        model, family = build(name)
        rows = schedules([u.kind for u in find_units(model)], args.steps)
        if lean:
            lean_rows(model, family, name, rows, args)
            continue
        run = make_run(model, family, args.steps, args.batch)
        for label, method, knobs in rows:
            report = measure_speedup(run, model, method, repeats=args.repeats, warmup=1, **knobs)
            print_row(name, label, report)
    print(f"# total benchmark time {total.elapsed():.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
