"""Paired fidelity of few-step solvers on an embedded DiT: PSNR to the model's own 100-step output (its
shipped scheduler: DPM-Solver++(2M) for VP, FlowMatch Euler for flow) from the same noise and labels (40
samples, CFG 4, NFE 6 / 8 / 10), median and interquartile range.

    OMP_NUM_THREADS=1 python benchmarks/solver_dit_psnr.py --threads 1
    OMP_NUM_THREADS=1 python benchmarks/solver_dit_psnr.py --model flow --steps 6 10 --samples 20 --threads 1
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch

STEPS = (6, 8, 10)


def _flow_rows():
    from diffusers import FlowMatchEulerDiscreteScheduler

    from fastsample.solvers import GHVBScheduler
    from fastsample.solvers.presets import build

    return [
        ("FlowMatch Euler (diffusers)", lambda c: FlowMatchEulerDiscreteScheduler.from_config(c)),
        ("DPM++2M flow mode (diffusers)", lambda c: build("dpm++2m", c, baselines=True)),
        ("UniPC flow mode (diffusers)", lambda c: build("unipc", c, baselines=True)),
        ("GHVB default (fastsample: q 1.8, the schedule's spacing)", lambda c: GHVBScheduler.from_config(c)),
        (
            "GHVB q 1.8, Karras grid (the flow default before stop 14)",
            lambda c: GHVBScheduler.from_config(c, grid="karras"),
        ),
        ("GHVB q 2.0, spacing", lambda c: GHVBScheduler.from_config(c, grid="spacing", ghvb_order=2.0)),
        (
            "GHVB q 1.8, spacing, variable-step weights",
            lambda c: GHVBScheduler.from_config(c, grid="spacing", variable_step=True),
        ),
    ]


def _rows():
    from diffusers import DPMSolverMultistepScheduler, UniPCMultistepScheduler

    from fastsample.solvers import GHVBScheduler

    return [
        ("DPM++2M (diffusers, shipped config)", lambda c: DPMSolverMultistepScheduler.from_config(c)),
        ("UniPC (diffusers)", lambda c: UniPCMultistepScheduler.from_config(c)),
        (
            "DPM++2M Karras (diffusers)",
            lambda c: DPMSolverMultistepScheduler.from_config(c, use_karras_sigmas=True),
        ),
        ("GHVB default (fastsample)", lambda c: GHVBScheduler.from_config(c)),
        (
            "GHVB 1.8 Karras equal-step (old README)",
            lambda c: GHVBScheduler.from_config(c, use_karras_sigmas=True, variable_step=False),
        ),
        (
            "GHVB q2 data space, exponential grid",
            lambda c: GHVBScheduler.from_config(
                c, ghvb_order=2.0, grid="exponential", solver_space="data", variable_step=True
            ),
        ),
        ("GHVB q1.8 spacing (linspace) vs", lambda c: GHVBScheduler.from_config(c, grid="spacing")),
        ("GHVB q1.8 exponential vs", lambda c: GHVBScheduler.from_config(c, grid="exponential")),
        (
            "GHVB q2.0 spacing vs",
            lambda c: GHVBScheduler.from_config(c, grid="spacing", ghvb_order=2.0),
        ),
        (
            "GHVB q2.5 spacing vs",
            lambda c: GHVBScheduler.from_config(c, grid="spacing", ghvb_order=2.5),
        ),
    ]


def main(argv=None) -> int:
    from fastsample.zoo.default import load_default_pipeline

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=("vp", "flow"), default="vp", help="embedded model")
    parser.add_argument("--steps", type=int, nargs="+", default=list(STEPS), help="NFE (= steps) to measure")
    parser.add_argument("--samples", type=int, default=40)
    parser.add_argument("--guidance-scale", type=float, default=4.0)
    parser.add_argument("--reference-steps", type=int, default=100)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    from fastsample.eval.fidelity import psnr

    pipe = load_default_pipeline(model=args.model)
    pipe.set_progress_bar_config(disable=True)
    shipped = type(pipe.scheduler)
    config = dict(pipe.scheduler.config)
    size = pipe.transformer.config.sample_size
    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(args.samples) % len(pipe.class_names)
    noise = torch.randn(args.samples, 3, size, size, generator=gen)

    def run(scheduler, steps):
        pipe.scheduler = scheduler
        out = pipe(
            labels,
            guidance_scale=args.guidance_scale,
            num_inference_steps=steps,
            latents=noise,
            output_type="pt",
        )
        return out.images

    reference = run(shipped.from_config(config), args.reference_steps)
    lines = [
        "| solver | " + " | ".join(f"NFE {n} (steps {n})" for n in args.steps) + " |",
        "|---|" + "---|" * len(args.steps),
    ]
    for name, make in _rows() if args.model == "vp" else _flow_rows():
        cells = []
        for steps in args.steps:
            values = psnr(run(make(config), steps), reference, value_range=(0, 1)).numpy()
            q1, med, q3 = np.percentile(values, [25, 50, 75])
            cells.append(f"{med:.1f} [{q1:.1f}, {q3:.1f}]")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
        print(lines[-1], flush=True)
    command = "OMP_NUM_THREADS=1 nice -n 10 python benchmarks/solver_dit_psnr.py " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    print(
        f"\ncommand: `{command}`; {args.samples} samples (labels 0..9 cycled, noise seed 0), CFG "
        f"{args.guidance_scale}, {args.model} model, reference {shipped.__name__} {args.reference_steps} "
        "steps; median PSNR in dB "
        f"[quartiles]; wall time {time.perf_counter() - start:.0f} s"
    )
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
