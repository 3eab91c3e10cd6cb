"""In-domain Fréchet distance and paired fidelity of the solvers on the embedded DiT at NFE 6/8/10/15 (issue
3, benchmark c).

Runs ``fastsample bench``'s machinery (:mod:`fastsample.eval.frontier`: same labels and noise for every row,
paired PSNR/SSIM/feature distance against DPM-Solver++ 2M at 100 steps, in-domain FD with its interval and
floor, shape/hue accuracy, interleaved timing): one row per (scheduler, steps), all with full
classifier-free guidance at the same scale.

    python benchmarks/solver_fd.py --out solver-fd --samples 200 --threads 1
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import torch

from fastsample.eval.bench import BenchSettings, run_bench
from fastsample.eval.frontier import DIFFUSERS_SCHEDULERS, Recipe

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
    recipes = []
    for steps in (int(s) for s in args.steps.split(",")):
        for scheduler in args.schedulers.split(","):
            family = "diffusers" if scheduler in DIFFUSERS_SCHEDULERS else "fastsample"
            recipes.append(Recipe(f"{scheduler}-{steps}", family, scheduler, steps))
    settings = BenchSettings(
        out=Path(args.out),
        samples=args.samples,
        batch_size=min(args.batch_size, args.samples),
        reference_samples=args.reference_samples,
        guidance_scale=args.guidance_scale,
        seed=args.seed,
        recipes={"vp": tuple(recipes)},
    )
    run_bench(
        settings,
        command="python benchmarks/solver_fd.py " + shlex.join(sys.argv[1:] if argv is None else argv),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
