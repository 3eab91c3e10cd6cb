"""Caches side by side (issue 18, item 6): fastsample's policies against diffusers' own caches and cache-dit's
DBCache, at matched compute fractions, on the embedded VP and flow DiTs; speed at real size (random weights).

    # fidelity at matched compute, both embedded models (one run)
    OMP_NUM_THREADS=1 nice -n 15 python benchmarks/cache_peers.py quality --models vp flow --samples 32 \\
        --out /tmp/cache_peers.json
    # speed at DiT-XL/2 256² with random weights, a 2-step loop, batch 1 (forward batch 2)
    OMP_NUM_THREADS=1 nice -n 15 python benchmarks/cache_peers.py speed --steps 2 \\
        --out /tmp/cache_peers_speed.json

cache-dit is optional: its rows run when ``import cache_dit`` works (e.g. ``pip install cache-dit``, or
``PYTHONPATH=<dir with cache_dit>``); otherwise the reason is recorded in the output.

**quality**: ``fastsample.zoo.default.load_default_pipeline(model=...)`` with its shipped scheduler (VP:
DPM-Solver++ 2M; flow: FlowMatch Euler, shift 3), ``--steps`` steps, CFG ``--scale``, ``--samples`` samples
(labels ``i % 10``, one seeded generator per sample: every row starts from the same noises) in batches of
``--batch``, the batches of all rows interleaved. Per row:

* ``compute``: the computed-MAC fraction, measured the same way for every row, peers included
  (``cache_quality.ComputeCounter``: forward hooks record which blocks, attention units and MLPs really ran,
  weighted by the per-unit MACs of one ``FlopCounterMode`` forward);
* ``PSNR``: per-sample PSNR (images in [0, 1]) to the uncached output of the same solver recipe (same model,
  scheduler, steps, scale and noise), :func:`fastsample.eval.fidelity.paired_fidelity`: median with its 95 %
  bootstrap interval, and the mean;
* matched compute: each family's PSNR linearly interpolated along its own curve at fixed compute fractions,
  and the compute each family needs for a given PSNR (``--psnr-targets``).

Rows: fastsample FORA(2, 3, 4), TaylorSeer (FORA's schedule, order-1 forecast), the dynamic first-block
threshold, the dynamic policy calibrated by ``fastsample.calibrate_cache`` (2 calls on other seeds, a target
skip fraction); diffusers 0.42.1's FirstBlockCache, Pyramid Attention Broadcast, TaylorSeer (on attn1/ff: its
default patterns hook nothing on DiT) and MagCache (mag ratios from its own ``calibrate=True`` run), applied
through ``diffusers.hooks.apply_*`` with a cache context set by hand (DiT is not a ``CacheMixin`` and its
pipeline opens none; ``cache_quality.DiffusersRow``); cache-dit's DBCache (F1B0: first block as indicator, no
back blocks) with and without its TaylorSeer calibrator. cache-dit's wrapper replaces ``transformer_blocks``
during the forward, and ``DiTTransformer2DModel.forward`` reads ``transformer_blocks[0].norm1.emb`` after the
blocks; the row gives cache-dit's wrapper that one attribute (unregistered, so no module is shared), without
which every DiT call fails with ``AttributeError: 'CachedBlocks_Pattern_3_4_5' object has no attribute
'norm1'``.

**speed**: a :class:`~fastsample.pipelines.pixel_dit.PixelDiTPipeline` around a randomly initialised
``DiTTransformer2DModel`` with the DiT-XL/2 256² config (``cache_speed.MODELS``: 28 blocks, width 1152, 256
tokens; 3 input and output channels instead of the latent's 4 in / 8 out, which the pixel pipeline needs and
which changes only the patch embedding and the final projection), the VP scheduler,
``--steps`` steps, batch 1. Dynamic caches get a threshold far above any change, so step 1 reuses what the
policy allows (the random weights make fidelity meaningless; this measures what each implementation's reuse
costs): measured = uncached seconds / cached seconds against theoretical = 1 / computed-MAC fraction. The
rows are timed in ``--repeats`` rounds, each round an uncached loop followed by one loop of every row, plus
a final uncached loop (medians; the CPU speed-up's p10–p90 over the rounds); process CPU seconds beside wall
seconds, because the machine is shared.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import shlex
import sys
import tempfile
from typing import Any

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cache_quality import (  # noqa: E402 (the sibling benchmark's rows and counters)
    ComputeCounter,
    FastsampleRow,
    Row,
    Uncached,
    _interpolate,
    calibrate_mag_cache,
    diffusers_row,
    mac_profiles,
    pab_row,
)
from cache_speed import MODELS  # noqa: E402 (the real-size configs)

from fastsample.integration.measure import Stopwatch  # noqa: E402
from fastsample.zoo.solver_table import environment_lines  # noqa: E402

logger = logging.getLogger("cache_peers")
PAB_SETTINGS = ((2, (100, 800)), (2, (0, 1000)), (3, (0, 1000)))  # (attn1 every N steps, timestep window)
DIT_UNITS = r"transformer_blocks\.\d+\.(attn1|ff)"


# -------------------------------------------------------------------------------- cache-dit
def cache_dit_status() -> str | None:
    """``None`` when ``import cache_dit`` works, else why not."""
    try:
        import cache_dit  # noqa: F401
    except Exception as error:  # recorded in the report
        return f"{type(error).__name__}: {error}"
    return None


def _cached_blocks(function: Any, seen: set[int] | None = None) -> list[torch.nn.Module]:
    """cache-dit's block wrappers, found in the closure of the forward it installed on the transformer."""
    seen = set() if seen is None else seen
    while isinstance(function, functools.partial):
        function = function.func
    function = getattr(function, "__func__", function)
    if id(function) in seen or getattr(function, "__closure__", None) is None:
        return []
    seen.add(id(function))
    found: list[torch.nn.Module] = []
    for cell in function.__closure__:
        try:
            value = cell.cell_contents
        except ValueError:
            continue
        if (
            isinstance(value, dict)
            and value
            and all(isinstance(v, torch.nn.ModuleList) for v in value.values())
        ):
            found += [blocks[0] for blocks in value.values()]
        elif callable(value):
            found += _cached_blocks(value, seen)
    return found


class CacheDitRow(Row):
    """cache-dit's DBCache through an explicit ``BlockAdapter`` (DiT blocks return the hidden states only:
    ``ForwardPattern.Pattern_3``), enabled before each call and disabled after it."""

    def __init__(self, name: str, family: str, knob: str, options: dict, taylorseer: bool = False) -> None:
        super().__init__(name, family, knob)
        self.options, self.taylorseer = options, taylorseer

    def enter(self, pipe) -> None:
        import cache_dit

        model = pipe.transformer
        first = model.transformer_blocks[0]
        adapter = cache_dit.BlockAdapter(
            pipe=pipe,
            transformer=model,
            blocks=model.transformer_blocks,
            forward_pattern=cache_dit.ForwardPattern.Pattern_3,
            check_forward_pattern=False,
        )
        calibrator = cache_dit.TaylorSeerCalibratorConfig(taylorseer_order=1) if self.taylorseer else None
        cache_dit.enable_cache(
            adapter, cache_config=cache_dit.DBCacheConfig(**self.options), calibrator_config=calibrator
        )
        wrappers = _cached_blocks(model.forward)
        if not wrappers:
            raise RuntimeError("cache-dit: found no block wrapper to give DiT's norm1 to")
        for wrapper in wrappers:
            object.__setattr__(wrapper, "norm1", first.norm1)  # DiT's forward reads blocks[0].norm1.emb

    def exit(self, pipe) -> None:
        import cache_dit

        cache_dit.disable_cache(pipe)


def cache_dit_rows(thresholds: list[float], warmup: int) -> list[Row]:
    rows: list[Row] = []
    for taylorseer in (False, True):
        family = "cache-dit DBCache F1B0" + (" + TaylorSeer" if taylorseer else "")
        for threshold in thresholds:
            options = dict(
                Fn_compute_blocks=1,
                Bn_compute_blocks=0,
                residual_diff_threshold=threshold,
                max_warmup_steps=warmup,
            )
            tag = "-ts" if taylorseer else ""
            rows.append(
                CacheDitRow(
                    f"cachedit-dbcache{tag}-{threshold:g}",
                    family,
                    f"threshold {threshold:g}",
                    options,
                    taylorseer,
                )
            )
    return rows


# -------------------------------------------------------------------------------- rows
def fastsample_rows(pipe, model: str, args: argparse.Namespace, profiles: dict) -> list[Row]:
    from fastsample.cache import calibrate_cache

    rows: list[Row] = []
    for n in (2, 3, 4):
        rows.append(FastsampleRow(f"fora-{n}", "fastsample FORA", f"N={n}", "fora", profiles, interval=n))
    for n in (2, 3):
        rows.append(
            FastsampleRow(
                f"taylorseer-{n}",
                "fastsample TaylorSeer (order 1)",
                f"N={n}",
                "taylorseer",
                profiles,
                interval=n,
                order=1,
            )
        )
    for t in args.thresholds:
        rows.append(
            FastsampleRow(
                f"dynamic-{t:g}", "fastsample dynamic", f"threshold {t:g}", "dynamic", profiles, threshold=t
            )
        )
    for skip in args.target_skips:
        path = os.path.join(tempfile.gettempdir(), f"cache_peers_{model}_{args.steps}_{skip:g}.json")
        calibrate_cache(
            pipe,
            path,
            calls=2,
            seed=args.seed + 10_000,
            class_labels=[i % 10 for i in range(args.batch)],
            num_inference_steps=args.steps,
            guidance_scale=args.scale,
            target_skip=skip,
        )
        rows.append(
            FastsampleRow(
                f"calibrated-{skip:g}",
                "fastsample dynamic, calibrated",
                f"target skip {skip:g}",
                "dynamic",
                profiles,
                calibration=path,
            )
        )
    return rows


def diffusers_peer_rows(pipe, args: argparse.Namespace, current_timestep: list) -> list[Row]:
    rows: list[Row] = []
    for t in args.thresholds:
        rows.append(
            diffusers_row(
                "fbc", f"diffusers-fbc-{t:g}", "diffusers FirstBlockCache", f"threshold {t:g}", threshold=t
            )
        )
    rows += [pab_row(skip, window, current_timestep) for skip, window in PAB_SETTINGS]
    for interval in (2, 3):
        rows.append(
            diffusers_row(
                "taylorseer", f"diffusers-taylorseer-{interval}", "diffusers TaylorSeer (attn1/ff, order 1)",
                f"interval {interval}", cache_interval=interval, disable_cache_before_step=1, max_order=1,
                taylor_factors_dtype=torch.float32, cache_identifiers=[DIT_UNITS],
            )
        )  # fmt: skip
    ratios = calibrate_mag_cache(pipe, args.steps, args.scale)
    for t in args.mag_thresholds:
        rows.append(
            diffusers_row(
                "magcache", f"diffusers-magcache-{t:g}", "diffusers MagCache (calibrated)",
                f"threshold {t:g}", threshold=t, num_inference_steps=args.steps, mag_ratios=ratios,
            )
        )  # fmt: skip
    return rows


def _timestep_probe(model: torch.nn.Module, current: list) -> Any:
    """PAB's timestep callback reads ``current[0]``: the timestep of the denoiser call in progress."""
    return model.register_forward_pre_hook(
        lambda m, a, k: current.__setitem__(0, float(torch.as_tensor(k["timestep"]).reshape(-1)[0])),
        with_kwargs=True,
    )


# -------------------------------------------------------------------------------- quality
def quality_model(model_name: str, args: argparse.Namespace) -> dict[str, Any]:
    from tqdm.auto import tqdm

    from fastsample.eval.fidelity import paired_fidelity
    from fastsample.zoo.default import load_default_pipeline

    pipe = load_default_pipeline(model=model_name)
    pipe.set_progress_bar_config(disable=True)
    model = pipe.transformer
    starts = range(0, args.samples, args.batch)
    batches = [list(range(s, min(s + args.batch, args.samples))) for s in starts]

    def call(ids=batches[0], num_inference_steps=args.steps):
        return pipe(
            class_labels=[i % 10 for i in ids],
            num_inference_steps=num_inference_steps,
            guidance_scale=args.scale,
            generator=[torch.Generator().manual_seed(args.seed + i) for i in ids],
            output_type="pt",
        ).images

    current = [0.0]
    probe = _timestep_probe(model, current)
    profiles = mac_profiles(pipe, call)
    rows: list[Row] = [Uncached(), *fastsample_rows(pipe, model_name, args, profiles)]
    rows += diffusers_peer_rows(pipe, args, current)
    unavailable = cache_dit_status()
    if unavailable is None:
        rows += cache_dit_rows(args.dbcache_thresholds, args.dbcache_warmup)
    counter = ComputeCounter(model, profiles)
    images: dict[str, list[torch.Tensor]] = {r.name: [] for r in rows}
    fractions: dict[str, list[float]] = {r.name: [] for r in rows}
    errors: dict[str, str] = {}
    try:
        with tqdm(total=len(rows) * len(batches), desc=f"cache-peers {model_name}", unit="batch") as bar:
            for ids in batches:
                for row in rows:
                    bar.update()
                    if row.name in errors:
                        continue
                    counter.take()
                    try:
                        row.enter(pipe)
                        try:
                            out = call(ids)
                        finally:
                            row.exit(pipe)
                    except Exception as error:  # a peer that cannot run is recorded, never hidden
                        errors[row.name] = f"{type(error).__name__}: {str(error).splitlines()[0][:300]}"
                        logger.warning("%s failed: %s", row.name, errors[row.name])
                        continue
                    images[row.name].append(out.float().cpu())
                    fractions[row.name].append(counter.take())
    finally:
        counter.remove()
        probe.remove()
    reference = torch.cat(images["uncached"])
    results: dict[str, Any] = {}
    for row in rows:
        if row.name in errors:
            results[row.name] = {"family": row.family, "knob": row.knob, "error": errors[row.name]}
            continue
        candidate = torch.cat(images[row.name])
        entry = {"family": row.family, "knob": row.knob, "compute": float(np.mean(fractions[row.name]))}
        if row.name != "uncached":
            report = paired_fidelity(candidate, reference, value_range=(0, 1), metrics=("psnr",), n_boot=1000)
            values = np.minimum(report.values["psnr"], 100.0)
            interval = report["psnr"]
            entry["psnr"] = [
                min(interval.estimate, 100.0),
                min(interval.low, 100.0),
                min(interval.high, 100.0),
            ]
            entry["psnr_mean"] = float(values.mean())
        results[row.name] = entry
    return {"rows": results, "cache_dit": unavailable or "available"}


def matched(results: dict[str, Any], fractions: list[float], targets: list[float]) -> dict[str, Any]:
    """Per family: PSNR at each compute fraction, and the compute fraction needed for each PSNR target
    (linear interpolation along the family's own points; ``None`` outside them)."""
    families: dict[str, list[tuple[float, float]]] = {}
    for row in results.values():
        if "psnr" in row:
            families.setdefault(row["family"], []).append((row["compute"], row["psnr"][0]))
    table: dict[str, Any] = {}
    for family, points in families.items():
        table[family] = {
            "psnr_at": {f: _interpolate(points, f) for f in fractions},
            "compute_for": {t: _compute_for(points, t) for t in targets},
        }
    return table


def _compute_for(points: list[tuple[float, float]], target: float) -> float | None:
    """The least compute fraction at which the family's curve (sorted by compute) reaches ``target`` dB."""
    points = sorted(points)
    best = None
    for (c0, p0), (c1, p1) in zip(points, points[1:]):
        if min(p0, p1) <= target <= max(p0, p1) and p1 != p0:
            c = c0 + (c1 - c0) * (target - p0) / (p1 - p0)
            best = c if best is None else min(best, c)
    for c, p in points:
        if p >= target:
            best = c if best is None else min(best, c)
    return best


def render_quality(name: str, payload: dict[str, Any], fractions: list[float], targets: list[float]) -> str:
    rows = payload["rows"]
    lines = [
        f"**{name}** (cache-dit: {payload['cache_dit']})",
        "",
        "| row | family | knob | compute | theoretical | PSNR median [95 % CI] | PSNR mean |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, r in rows.items():
        if "error" in r:
            lines.append(f"| {key} | {r['family']} | {r['knob']} | failed: {r['error']} | | | |")
            continue
        psnr = "ref" if "psnr" not in r else f"{r['psnr'][0]:.1f} [{r['psnr'][1]:.1f}, {r['psnr'][2]:.1f}]"
        mean = "" if "psnr_mean" not in r else f"{r['psnr_mean']:.1f}"
        lines.append(
            f"| {key} | {r['family']} | {r['knob']} | {100 * r['compute']:.1f} % | {1 / r['compute']:.2f}x | "
            f"{psnr} | {mean} |"
        )
    table = matched(rows, fractions, targets)
    head = " | ".join(f"{f:g}" for f in fractions)
    lines += ["", f"| PSNR (median, dB) at compute | {head} |", "|---|" + "---|" * len(fractions)]
    for family, t in table.items():
        cells = " | ".join("" if v is None else f"{v:.1f}" for v in t["psnr_at"].values())
        lines.append(f"| {family} | {cells} |")
    head = " | ".join(f"{t:g} dB" for t in targets)
    lines += ["", f"| compute needed for PSNR | {head} |", "|---|" + "---|" * len(targets)]
    for family, t in table.items():
        cells = " | ".join("" if v is None else f"{100 * v:.1f} %" for v in t["compute_for"].values())
        lines.append(f"| {family} | {cells} |")
    return "\n".join(lines) + "\n"


# -------------------------------------------------------------------------------- speed
def speed(args: argparse.Namespace) -> dict[str, Any]:
    from diffusers import DiTTransformer2DModel

    from fastsample.pipelines.pixel_dit import PixelDiTPipeline
    from fastsample.zoo.data import CLASS_NAMES
    from fastsample.zoo.default import load_default_scheduler

    family, overrides = MODELS[args.size]
    if family != "dit":
        raise SystemExit(f"--size must be a DiT config, got {args.size}")
    torch.manual_seed(0)
    config = dict(
        in_channels=3, out_channels=3, patch_size=2, num_embeds_ada_norm=1000, norm_type="ada_norm_zero"
    )
    model = DiTTransformer2DModel(**{**config, **overrides}).eval()
    names = [f"class {i}" for i in range(1000)] if len(CLASS_NAMES) != 1000 else list(CLASS_NAMES)
    pipe = PixelDiTPipeline(transformer=model, scheduler=load_default_scheduler(), class_names=names)
    pipe.set_progress_bar_config(disable=True)

    def call(num_inference_steps=args.steps):
        return pipe(
            class_labels=[1] * args.batch,
            num_inference_steps=num_inference_steps,
            guidance_scale=4.0,
            generator=torch.Generator().manual_seed(0),
            output_type="latent",
        ).images

    big = 1e9  # a threshold no change reaches: the dynamic caches reuse whenever their rules allow
    current = [0.0]
    probe = _timestep_probe(model, current)
    with torch.no_grad():
        profiles = mac_profiles(pipe, call)  # also the warm-up
    rows: list[Row] = [
        FastsampleRow("fora-2", "fastsample FORA", "N=2", "fora", profiles, interval=2),
        FastsampleRow("dynamic", "fastsample dynamic", "threshold 1e9", "dynamic", profiles, threshold=big),
        diffusers_row("fbc", "diffusers-fbc", "diffusers FirstBlockCache", "threshold 1e9", threshold=big),
        diffusers_row(
            "taylorseer", "diffusers-taylorseer-2", "diffusers TaylorSeer", "interval 2, order 1",
            cache_interval=2, disable_cache_before_step=1, max_order=1, taylor_factors_dtype=torch.float32,
            cache_identifiers=[DIT_UNITS],
        ),
        diffusers_row(
            "magcache", "diffusers-magcache", "diffusers MagCache", "threshold 1e9, ratios 1", threshold=big,
            num_inference_steps=args.steps, mag_ratios=[1.0] * args.steps, retention_ratio=0.0,
        ),
        pab_row(2, (0, 1000), current),
    ]  # fmt: skip
    unavailable = cache_dit_status()
    if unavailable is None:
        rows.append(
            CacheDitRow(
                "cachedit-dbcache",
                "cache-dit DBCache F1B0",
                "threshold 1e9, warm-up 1",
                dict(
                    Fn_compute_blocks=1, Bn_compute_blocks=0, residual_diff_threshold=big, max_warmup_steps=1
                ),
            )
        )
    counter = ComputeCounter(model, profiles)
    timings: dict[str, Any] = {}

    def timed(row: Row | None) -> tuple[float, float, float]:
        counter.take()
        if row is not None:
            row.enter(pipe)
        try:
            with torch.no_grad(), Stopwatch() as watch:
                call()
        finally:
            if row is not None:
                row.exit(pipe)
        return watch.seconds, watch.cpu_seconds, counter.take()

    try:
        uncached = []
        for _ in range(args.repeats):  # U, every row, U, every row, ...: one sequence per repeat
            uncached.append(timed(None))
            for row in rows:
                if row.name in timings and "error" in timings[row.name]:
                    continue
                try:
                    seconds, cpu, fraction = timed(row)
                except Exception as error:  # recorded in the report
                    timings[row.name] = {"family": row.family, "error": f"{type(error).__name__}: {error}"}
                    continue
                entry = timings.setdefault(row.name, {"family": row.family, "knob": row.knob, "runs": []})
                entry["runs"].append({"seconds": seconds, "cpu": cpu, "compute": fraction})
                logger.info("%s: %.1f s (cpu %.1f), compute %.3f", row.name, seconds, cpu, fraction)
        uncached.append(timed(None))
    finally:
        counter.remove()
        probe.remove()
    base_wall = float(np.median([u[0] for u in uncached]))
    base_cpu = float(np.median([u[1] for u in uncached]))
    for entry in timings.values():
        if "error" in entry:
            continue
        for key in ("seconds", "cpu", "compute"):
            entry[key] = float(np.median([run[key] for run in entry["runs"]]))
        cpu = np.asarray([run["cpu"] for run in entry["runs"]])
        entry["measured_cpu_p10_p90"] = [
            float(base_cpu / np.percentile(cpu, 90)),
            float(base_cpu / np.percentile(cpu, 10)),
        ]
        entry["theoretical"] = 1.0 / entry["compute"]
        entry["measured_wall"] = base_wall / entry["seconds"]
        entry["measured_cpu"] = base_cpu / entry["cpu"]
        entry["ratio_cpu"] = entry["measured_cpu"] / entry["theoretical"]
    return {
        "size": args.size,
        "steps": args.steps,
        "batch": args.batch,
        "uncached": [{"seconds": u[0], "cpu": u[1], "compute": u[2]} for u in uncached],
        "rows": timings,
        "cache_dit": unavailable or "available",
        "gmacs_per_forward": profiles["unit"][0] / 1e9,
    }


def render_speed(payload: dict[str, Any]) -> str:
    u = payload["uncached"]
    wall, cpu = (float(np.median([x[key] for x in u])) for key in ("seconds", "cpu"))
    lines = [
        f"**{payload['size']}**, {payload['steps']} steps, batch {payload['batch']} (forward batch "
        f"{2 * payload['batch']}), {payload['gmacs_per_forward']:.0f} GMACs per forward; {len(u)} uncached "
        f"loops (median {wall:.1f} s wall, {cpu:.1f} CPU s); cache-dit: {payload['cache_dit']}",
        "",
        "| row | knob | compute | theoretical | measured (CPU) [p10, p90] | measured/theoretical "
        "| measured (wall) | cached CPU s (median) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in payload["rows"].items():
        if "error" in r:
            lines.append(f"| {name} | failed: {r['error']} | | | | | | |")
            continue
        spread = r["measured_cpu_p10_p90"]
        lines.append(
            f"| {name} | {r['knob']} | {100 * r['compute']:.1f} % | {r['theoretical']:.2f}x | "
            f"{r['measured_cpu']:.2f}x [{spread[0]:.2f}, {spread[1]:.2f}] | "
            f"{r['ratio_cpu']:.2f} | {r['measured_wall']:.2f}x | {r['cpu']:.1f} |"
        )
    return "\n".join(lines) + "\n"


# -------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="stage", required=True)
    q = sub.add_parser("quality")
    q.add_argument("--models", nargs="+", default=["vp", "flow"], choices=["vp", "flow"])
    q.add_argument("--samples", type=int, default=32)
    q.add_argument("--batch", type=int, default=16)
    q.add_argument("--steps", type=int, default=20)
    q.add_argument("--scale", type=float, default=4.0)
    q.add_argument("--seed", type=int, default=1000)
    q.add_argument("--thresholds", type=float, nargs="+", default=[0.05, 0.1, 0.2])
    q.add_argument("--mag-thresholds", type=float, nargs="+", default=[0.06, 0.12, 0.24])
    q.add_argument("--target-skips", type=float, nargs="+", default=[0.2, 0.4])
    q.add_argument("--dbcache-thresholds", type=float, nargs="+", default=[0.05, 0.1, 0.2])
    q.add_argument("--dbcache-warmup", type=int, default=1, help="DBCache max_warmup_steps (its default: 8)")
    q.add_argument("--fractions", type=float, nargs="+", default=[0.3, 0.4, 0.5, 0.6, 0.7, 0.8])
    q.add_argument("--psnr-targets", type=float, nargs="+", default=[25.0, 30.0])
    s = sub.add_parser("speed")
    s.add_argument("--size", default="dit-xl2-256")
    s.add_argument("--steps", type=int, default=2)
    s.add_argument("--batch", type=int, default=1)
    s.add_argument("--repeats", type=int, default=3, help="timed loops per row (uncached: repeats + 1)")
    for p in (q, s):
        p.add_argument("--out", default=None, help="JSON file for the figures")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for name in list(logging.root.manager.loggerDict):
        if "cache_dit" in name.lower() or "cache-dit" in name.lower():
            logging.getLogger(name).setLevel(logging.WARNING)
    payload: dict[str, Any] = {"command": shlex.join(["python", *sys.argv]), "args": vars(args)}
    payload |= {"environment": environment_lines(), "load_average": list(os.getloadavg())}
    if cache_dit_status() is None:
        payload["cache_dit_version"] = __import__("cache_dit").__version__
    if args.stage == "quality":
        payload["models"] = {}
        for model in args.models:
            payload["models"][model] = quality_model(model, args)
            print(
                render_quality(model, payload["models"][model], args.fractions, args.psnr_targets), flush=True
            )
    else:
        payload["speed"] = speed(args)
        print(render_speed(payload["speed"]), flush=True)
    payload["load_average_end"] = list(os.getloadavg())
    print(json.dumps({k: payload[k] for k in ("command", "environment", "load_average")}))
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(payload, handle, indent=1, default=float)
    return 0


if __name__ == "__main__":
    sys.exit(main())
