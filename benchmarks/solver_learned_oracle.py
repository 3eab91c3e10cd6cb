"""Learned multistep coefficients (fastsample.solvers.learned) per model on the exact oracle: for every
issue-20 cell (VP SD1.5 / flow SD3, mixture seeds 0–4, w ∈ {1, 7.5, 15}, NFE 5, 6, 8, 10) fit the default
GHVBScheduler's weights on 32 trajectories of that model (the mixture at that w; noise seed 1) and test on the
1000 held-out samples of benchmarks/solver_targets.py (noise seed 0), against the best diffusers median of the
same cell read from its output.

    OMP_NUM_THREADS=1 python benchmarks/solver_learned_oracle.py \
        --targets benchmarks/results/solver_targets.md
"""

from __future__ import annotations

import argparse
import re
import sys
import time

import torch

SEEDS = (0, 1, 2, 3, 4)
GUIDANCE = (1.0, 7.5, 15.0)
NFES = (5, 6, 8, 10)
CELL = re.compile(r"([\d.]+) \(([\d.]+)%\) / (.+?) ([\d.]+) \(([\d.]+)%; fewest ([\d.]+)%\)")


def _best_diffusers(path: str) -> dict:
    best = {}
    with open(path) as f:
        lines = f.readlines()
    for line in lines:
        if not (line.startswith("| vp") or line.startswith("| flow")):
            continue
        parts = [p.strip() for p in line.strip().strip("|").split("|")]
        family, w, n = parts[0], float(parts[1]), int(parts[2])
        for seed, text in zip(SEEDS, parts[3:]):
            m = CELL.match(text)
            best[(family, w, n, seed)] = (m.group(3), float(m.group(4)), float(m.group(1)), float(m.group(2)))
    return best


def main(argv=None) -> int:
    from fastsample.solvers import GHVBScheduler
    from fastsample.solvers.grid_fit import model_hash
    from fastsample.solvers.learned import fit_coefficients
    from fastsample.zoo.gmm import GaussianMixture
    from fastsample.zoo.oracle import (
        OracleProblem,
        ReferenceCache,
        evaluate,
        oracle_model,
        oracle_reference_states,
    )
    from fastsample.zoo.solver_table import BASE_CONFIGS

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--targets", required=True, help="the markdown written by solver_targets.py")
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--trajectories", type=int, default=32)
    args = parser.parse_args(argv)
    best = _best_diffusers(args.targets)
    rows, met, total, fit_cpu = {}, 0, 0, []
    for seed in SEEDS:
        mixture = GaussianMixture.random(seed=seed)
        problem = OracleProblem.create(mixture, args.samples, 0)
        cache = ReferenceCache(problem)
        gen = torch.Generator().manual_seed(1)
        noise = torch.randn(args.trajectories, mixture.dim, generator=gen, dtype=torch.float64)
        labels = torch.randint(0, mixture.num_classes, (args.trajectories,), generator=gen)
        for family in ("vp", "flow"):
            for w in GUIDANCE:
                for n in NFES:
                    s = GHVBScheduler.from_config(BASE_CONFIGS[family])
                    start = time.process_time()
                    refs = oracle_reference_states(mixture, labels, noise, s, n, w)
                    art = fit_coefficients(
                        s,
                        oracle_model(mixture, labels, s, w),
                        noise,
                        n,
                        refs,
                        model_id=model_hash(name=f"oracle:gmm-seed-{seed}:w={w:g}"),
                        guidance_scale=w,
                    )
                    fit_cpu.append(time.process_time() - start)
                    s.set_learned_coefficients(art, model_hash=art.model_hash)
                    m = evaluate(s, problem, family=family, nfe=n, guidance_scale=w, cache=cache)
                    name, best_med, default_med, default_blowup = best[(family, w, n, seed)]
                    ratio = m.median_error / best_med
                    ok = m.blowup_rate == 0.0 and ratio <= 0.5
                    met += ok
                    total += 1
                    text = f"{ratio:.2f}x, {100 * m.blowup_rate:.1f}% (default {default_med / best_med:.2f}x)"
                    rows.setdefault((family, w, n), {})[seed] = f"**{text}**" if ok else text
    lines = [
        "| family | w | NFE | " + " | ".join(f"seed {s}" for s in SEEDS) + " |",
        "|---|---|---|" + "---|" * len(SEEDS),
    ]
    for (family, w, n), by_seed in sorted(
        rows.items(), key=lambda kv: (kv[0][0] != "vp", kv[0][1], kv[0][2])
    ):
        lines.append(f"| {family} | {w:g} | {n} | " + " | ".join(by_seed[s] for s in SEEDS) + " |")
    command = "OMP_NUM_THREADS=1 nice -n 10 python benchmarks/solver_learned_oracle.py " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    print(
        f"command: `{command}`; {met} of {total} cells met; fit (reference states + weights) "
        f"{max(fit_cpu):.1f} CPU-s at most, {sum(fit_cpu):.0f} CPU-s in all"
    )
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
