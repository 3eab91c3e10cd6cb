"""Cache policies alone and composed with Adaptive Guidance on the embedded VP DiT (issue 18, items 1-2).

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/cache_compose.py --samples 40 --steps 10 \
        --out /tmp/cache_compose.json

Setting: the shipped ``PixelDiTPipeline`` (``fastsample.zoo.default.load_default_pipeline``) with its shipped
scheduler (DPM-Solver++ 2M), ``--steps`` steps, classifier-free guidance 4.0, ``--samples`` samples
(balanced labels, one seeded generator per sample, so every recipe starts from the same noises) in batches
of ``--batch``. Per row:

* ``psnr``: paired PSNR (dB, images in [0, 1]) of each sample to the *uncached output of the same recipe*
  (plain CFG for the cache rows; Adaptive Guidance without a cache for the AG + cache rows), mean over
  samples, with the lowest sample;
* ``units``: fraction of the uncached MACs computed (``CacheStats.computed_mac_fraction``; per forward);
* ``samples``: denoiser samples evaluated over the full ``2B`` rows per step (AG's saving; 1.0 without AG);
* ``work``: denoiser samples × computed fraction of the composed run relative to full uncached CFG batches
  (``CacheStats.work_fraction``); for the AG rows also ``product`` = samples(AG alone) × units(cache alone)
  and ``work / product`` (the issue's target: ≤ 1.05); ``hit``: the cache's hit ratio.

Rows: FORA(2, 3); TaylorSeer = FORA's schedule with order-1/2 forecasting; the dynamic first-block threshold
with and without order-1 forecasting; the dynamic policy calibrated by ``fastsample.calibrate_cache`` (2 calls
on other seeds) at two ``max_change`` and two ``target_skip``; Adaptive Guidance (γ̄ = 0.99, re-packing)
alone and with caches.

``_paired_psnr`` is local so that it can be swapped for ``fastsample.eval.fidelity`` once that lands.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import tempfile
import time
from typing import Any

import numpy as np
import torch

GUIDANCE = 4.0


def _paired_psnr(images: torch.Tensor, reference: torch.Tensor) -> np.ndarray:
    """Per-sample PSNR (dB) of ``images`` to ``reference``, both ``[N, 3, H, W]`` in [0, 1]:
    ``10 log10(1 / mean((x - y)²))``; identical samples give ``inf``."""
    if images.shape != reference.shape:
        raise ValueError(
            f"paired PSNR needs equal shapes, got {tuple(images.shape)} and {tuple(reference.shape)}."
        )
    mse = (images.double() - reference.double()).pow(2).flatten(1).mean(1)
    with np.errstate(divide="ignore"):
        return 10.0 * np.log10(1.0 / mse.numpy())


def _recipes(args: argparse.Namespace) -> list[tuple[str, tuple | None, bool]]:
    """(row name, (cache method, knobs) or None, with AG)."""
    cache_rows: list[tuple[str, tuple]] = []
    for interval in (2, 3):
        cache_rows.append((f"FORA({interval})", ("fora", {"interval": interval})))
        cache_rows += [
            (f"TaylorSeer({interval}, order {k})", ("fora", {"interval": interval, "order": k}))
            for k in (1, 2)
        ]
    cache_rows += [
        (f"dynamic({t:g}, order {k})", ("dynamic", {"threshold": t, "order": k}))
        for t in args.thresholds
        for k in (0, 1)
    ]
    cache_rows += [
        (f"dynamic calibrated({name} {value:g})", ("calibrated", {name: value}))
        for name, values in (("max_change", args.max_changes), ("target_skip", args.target_skips))
        for value in values
    ]
    rows: list[tuple[str, tuple | None, bool]] = [("CFG, uncached", None, False)]
    rows += [(name, cache, False) for name, cache in cache_rows]
    rows.append(("AG, uncached", None, True))
    rows.append(("AG + FORA(2)", ("fora", {"interval": 2}), True))
    rows.append(("AG + TaylorSeer(2, order 1)", ("fora", {"interval": 2, "order": 1}), True))
    rows.append(("AG + TaylorSeer(3, order 2)", ("fora", {"interval": 3, "order": 2}), True))
    return rows


def _calibration(pipe: Any, args: argparse.Namespace, **knobs: float) -> str:
    """A calibration file for this setting, fitted on 2 calls of ``--batch`` samples whose seeds differ from
    the evaluation seeds (``fastsample.calibrate_cache``)."""
    from fastsample.cache import calibrate_cache

    ((name, value),) = knobs.items()
    path = os.path.join(tempfile.gettempdir(), f"cache_compose_{args.steps}_{name}_{value:g}.json")
    if not os.path.exists(path):
        labels = [i % 10 for i in range(args.batch)]
        calibration = calibrate_cache(
            pipe,
            path,
            calls=2,
            seed=args.seed + 10_000,
            class_labels=labels,
            num_inference_steps=args.steps,
            guidance_scale=GUIDANCE,
            **knobs,
        )
        fit = calibration.provenance["fit"]
        print(
            f"calibration {path}: coefficients {calibration.coefficients}, R2 {fit['r2']:.3f}, max_change "
            f"{calibration.max_change:.4f}, simulated skip {calibration.provenance['simulated_skip']:.2f}"
        )
    return path


def _run(pipe: Any, args: argparse.Namespace, cache: tuple | None, with_ag: bool) -> dict[str, Any]:
    from fastsample.cache import enable_cache
    from fastsample.guidance import AdaptiveGuidance, guide

    images, stats, samples, seconds = [], [], 0, 0.0
    for start in range(0, args.samples, args.batch):
        ids = list(range(start, min(start + args.batch, args.samples)))
        handles = []
        if with_ag:
            handles.append(guide(pipe, AdaptiveGuidance(threshold=args.ag_threshold)))
        if cache is not None and cache[0] == "calibrated":
            handles.append(enable_cache(pipe, "dynamic", calibration=_calibration(pipe, args, **cache[1])))
        elif cache is not None:
            handles.append(enable_cache(pipe, cache[0], **cache[1]))
        try:
            began = time.process_time()
            out = pipe(
                class_labels=[i % 10 for i in ids],
                num_inference_steps=args.steps,
                guidance_scale=GUIDANCE,
                generator=[torch.Generator().manual_seed(args.seed + i) for i in ids],
                output_type="pt",
            ).images
            seconds += time.process_time() - began
            images.append(out.float().cpu())
            for handle in handles:
                if hasattr(handle, "last_stats"):
                    samples += handle.last_stats["model_samples"]
                else:
                    stats.append((handle.stats(), len(ids)))
        finally:
            for handle in reversed(handles):
                handle.disable()
    full_samples = 2 * args.samples * args.steps
    result: dict[str, Any] = {"images": torch.cat(images), "cpu_s": seconds}
    result["samples"] = samples / full_samples if with_ag else 1.0
    if stats:
        total = sum(b for _, b in stats)
        result["units"] = sum(s.computed_mac_fraction * b for s, b in stats) / total
        result["hit"] = sum(s.hit_ratio * b for s, b in stats) / total
        result["work"] = sum(s.work_fraction(2 * b) * b for s, b in stats) / total
    else:
        result["units"], result["hit"], result["work"] = 1.0, 0.0, result["samples"]
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=40)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--seed", type=int, default=1000)
    parser.add_argument("--ag-threshold", type=float, default=0.99)
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.05, 0.1])
    parser.add_argument("--max-changes", type=float, nargs="+", default=[0.06, 0.1])
    parser.add_argument("--target-skips", type=float, nargs="+", default=[0.2, 0.4])
    parser.add_argument("--out", default=None, help="JSON file for the figures")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    from fastsample.zoo.default import load_default_pipeline

    pipe = load_default_pipeline()
    pipe.set_progress_bar_config(disable=True)
    results: dict[str, dict[str, Any]] = {}
    references: dict[bool, torch.Tensor] = {}
    for name, cache, with_ag in _recipes(args):
        r = _run(pipe, args, cache, with_ag)
        if cache is None:
            references[with_ag] = r["images"]
        psnr = _paired_psnr(r.pop("images"), references[with_ag])
        r["psnr"], r["psnr_min"] = float(np.mean(psnr)), float(np.min(psnr))
        if with_ag and cache is not None:
            alone = next(v for k, v in results.items() if k == _alone_name(name))
            r["product"] = results["AG, uncached"]["samples"] * alone["units"]
            r["work_over_product"] = r["work"] / r["product"]
        results[name] = r
        print(_row(name, r), flush=True)
    meta = {
        "command": shlex.join([sys.executable.rsplit("/", 1)[-1], *sys.argv]),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "diffusers": __import__("diffusers").__version__,
        "threads": torch.get_num_threads(),
    }
    if args.out:
        with open(args.out, "w") as handle:
            json.dump({"meta": meta, "args": vars(args), "rows": results}, handle, indent=1, default=float)
    print(json.dumps(meta))
    return 0


def _alone_name(name: str) -> str:
    return name.split(" + ", 1)[1]


def _row(name: str, r: dict[str, Any]) -> str:
    cells = [
        name,
        "ref" if r["psnr"] == float("inf") else f"{r['psnr']:.1f} (min {r['psnr_min']:.1f})",
        f"{r['units']:.3f}",
        f"{r['samples']:.3f}",
        f"{r['work']:.3f}",
        f"{r['hit']:.3f}",
        f"{r['product']:.3f}" if "product" in r else "",
        f"{r['work_over_product']:.3f}" if "work_over_product" in r else "",
        f"{r['cpu_s']:.1f}",
    ]
    return "| " + " | ".join(cells) + " |"


if __name__ == "__main__":
    sys.exit(main())
