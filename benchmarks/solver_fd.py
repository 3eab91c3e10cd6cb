"""In-domain Fréchet distance of the solvers on the embedded DiT at NFE 6/8/10/15 (issue 3, benchmark c).

Reuses ``fastsample bench``'s machinery (same labels and noise for every row, in-domain FD against real
procedural images, class accuracy, latency against the first row measured in the same run): one row per
(scheduler, steps), all with full classifier-free guidance at the same scale. The first row is diffusers'
usual setting, DPM-Solver++ 2M at 50 steps.

    python benchmarks/solver_fd.py --out solver-fd --samples 200 --threads 1
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import torch

from fastsample.eval.bench import BASELINE, BenchSettings, Recipe, run_bench

SCHEDULERS = ("dpm++2m", "ddim", "euler", "pndm", "ghvb", "hb")
STEPS = (6, 8, 10, 15)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="solver-fd")
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=40)
    parser.add_argument("--reference-samples", type=int, default=2000)
    parser.add_argument("--guidance-scale", type=float, default=4.0)
    parser.add_argument("--steps", default=",".join(map(str, STEPS)))
    parser.add_argument("--schedulers", default=",".join(SCHEDULERS))
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    recipes = [Recipe(BASELINE, "dpm++2m", 50, description="diffusers DPM-Solver++ 2M, 50 steps, full CFG")]
    for steps in (int(s) for s in args.steps.split(",")):
        for scheduler in args.schedulers.split(","):
            recipes.append(
                Recipe(f"{scheduler}-{steps}", scheduler, steps, description=f"{scheduler}, {steps} steps")
            )
    settings = BenchSettings(
        out=Path(args.out),
        recipes=tuple(recipes),
        samples=args.samples,
        batch_size=min(args.batch_size, args.samples),
        reference_samples=args.reference_samples,
        guidance_scale=args.guidance_scale,
        seed=args.seed,
        device="cpu",
        dtype="float32",
        pipeline=None,
        fd_tolerance=0.1,
    )
    run_bench(
        settings,
        command="python benchmarks/solver_fd.py " + shlex.join(sys.argv[1:] if argv is None else argv),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
