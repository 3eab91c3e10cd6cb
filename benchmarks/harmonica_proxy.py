"""Why HarmoniCa's router loses to FORA(2) (issue 18, item 5): does its training objective rank cache
schedules the way their final images do?

    OMP_NUM_THREADS=1 nice -n 15 python benchmarks/harmonica_proxy.py --out /tmp/harmonica_proxy.json

Fixed schedules (boolean ``[steps, units]`` masks; ``True`` = compute) of the embedded VP DiT are scored two
ways, on the setting the routers of ``results/cache.md`` (b)/(b2) were trained for (the shipped
DPM-Solver++ 2M, 20 steps, CFG 4):

* **the router's objective**: each mask becomes a :class:`fastsample.cache.Router` with logits ±5 (scores
  0.993 / 0.007: the soft training forward is then within 0.7 % of the hard inference schedule) and
  :func:`fastsample.cache.evaluate_router_loss` gives Σ_k λ_k · MSE(ε̂_k, ε*_k) of one SDT episode with
  IEPO's λ on a fixed batch (β = 0: the fidelity part only; the sparsity part β Σ r is the same for masks of
  equal compute);
* **the final image**: the mask runs as ``enable_cache(pipe, "static", mask=...)`` and each sample is compared
  with the uncached sample from the same noise (paired PSNR, :func:`fastsample.eval.fidelity.psnr`), the
  measure the router is judged by.

A proxy that trains well must order the masks (roughly) as the final images do; Spearman's ρ between
"−objective" and PSNR says how well. Masks: FORA(2) and FORA(3); reuse of a contiguous block of steps early
or late; half the units every step, alternating attention and MLP (no unit stale for two steps);
"router-like": the per-step counts of the 1,500-iteration router of results/cache.md (b2), units drawn at
random (seed 0).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROUTER_COUNTS = [12, 0, 4, 1, 6, 1, 8, 9, 7, 1, 9, 9, 1, 12, 5, 10, 11, 12, 12, 12]


def masks(steps: int, units: int) -> dict[str, np.ndarray]:
    k = np.arange(steps)[:, None]
    full = np.ones((steps, units), dtype=bool)
    out = {
        "FORA(2)": np.broadcast_to(k % 2 == 0, (steps, units)).copy(),
        "FORA(3)": np.broadcast_to(k % 3 == 0, (steps, units)).copy(),
        "reuse steps 1..9, compute the rest": np.broadcast_to((k == 0) | (k >= 10), (steps, units)).copy(),
        "compute steps 0..10, reuse the rest": np.broadcast_to(k <= 10, (steps, units)).copy(),
    }
    spread = full.copy()
    spread[1::2, 0::2] = False  # odd steps: reuse the attention units (even unit index)
    spread[2::2, 1::2] = False  # even steps ≥ 2: reuse the MLPs
    out["half the units every step (attn / MLP alternating)"] = spread
    if steps == len(ROUTER_COUNTS):
        rng = np.random.default_rng(0)
        like = np.zeros((steps, units), dtype=bool)
        for step, count in enumerate(ROUTER_COUNTS):
            like[step, rng.choice(units, size=count, replace=False)] = True
        like[0] = True
        out["router-like (b2 counts, random units)"] = like
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--scale", type=float, default=4.0)
    parser.add_argument("--batch", type=int, default=8, help="objective batch (the routers' training batch)")
    parser.add_argument("--samples", type=int, default=32, help="samples for the final-image PSNR")
    parser.add_argument("--seed", type=int, default=1000)
    parser.add_argument(
        "--masks", nargs="*", default=None, help="run only these schedules (names as printed; default all)"
    )
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    from scipy.stats import spearmanr

    from fastsample.cache import Router, RouterTrainingConfig, enable_cache, evaluate_router_loss, find_units
    from fastsample.eval.fidelity import psnr
    from fastsample.zoo.default import load_default_pipeline
    from fastsample.zoo.solver_table import environment_lines

    pipe = load_default_pipeline()
    pipe.set_progress_bar_config(disable=True)
    units = len(find_units(pipe.transformer))
    config = RouterTrainingConfig(
        num_inference_steps=args.steps, guidance_scale=args.scale, batch_size=args.batch, beta=0.0
    )

    def sample(mask: np.ndarray | None) -> torch.Tensor:
        handle = enable_cache(pipe, "static", mask=mask) if mask is not None else None
        try:
            ids = range(args.samples)
            return pipe(
                class_labels=[i % 10 for i in ids], num_inference_steps=args.steps, guidance_scale=args.scale,
                generator=[torch.Generator().manual_seed(args.seed + i) for i in ids], output_type="pt",
            ).images  # fmt: skip
        finally:
            if handle is not None:
                handle.disable()

    reference = sample(None)
    rows: dict[str, Any] = {}
    selected = masks(args.steps, units)
    if args.masks is not None:
        unknown = sorted(set(args.masks) - set(selected))
        if unknown:
            raise SystemExit(f"unknown --masks {unknown}; choose from {sorted(selected)}")
        selected = {name: selected[name] for name in args.masks}
    for name, mask in selected.items():
        router = Router(args.steps, units, init_mask=mask, init_logit=5.0)
        objective = evaluate_router_loss(pipe, router, config)
        values = psnr(sample(mask), reference, value_range=(0, 1)).numpy()
        rows[name] = {
            "compute": float(mask.mean()),
            "objective": objective,
            "psnr_mean": float(values.mean()),
            "psnr_median": float(np.median(values)),
        }
        print(f"{name}: {rows[name]}", flush=True)
    names = list(rows)
    rho = spearmanr([-rows[n]["objective"] for n in names], [rows[n]["psnr_mean"] for n in names])
    rho = float("nan") if len(names) < 3 else float(rho.statistic)
    print(
        "\n| schedule | units computed | router objective Σ λ_k MSE_k (β = 0) | PSNR mean | PSNR median |\n"
        "|---|---|---|---|---|"
    )
    for n in names:
        r = rows[n]
        print(
            f"| {n} | {100 * r['compute']:.1f} % | {r['objective']:.3e} | {r['psnr_mean']:.1f} | "
            f"{r['psnr_median']:.1f} |"
        )
    print(f"\nSpearman ρ(−objective, PSNR) = {rho:.2f} over {len(names)} schedules")
    payload = {"command": shlex.join(["python", *sys.argv]), "environment": environment_lines()}
    payload |= {"args": vars(args), "rows": rows, "spearman": rho}
    if args.out is not None:
        Path(args.out).write_text(json.dumps(payload, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
