"""Paired fidelity of few-step solvers on the embedded DiT: PSNR to the model's own 100-step DPM-Solver++(2M)
output from the same noise and labels (40 samples, CFG 4, NFE 6 / 8 / 10), median and interquartile range.

    OMP_NUM_THREADS=1 python benchmarks/solver_dit_psnr.py --threads 1
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch

STEPS = (6, 8, 10)


def _paired_psnr(images: torch.Tensor, reference: torch.Tensor) -> np.ndarray:
    """Per-image PSNR in dB of ``images`` against ``reference`` (both [N, C, H, W] in [0, 1])."""
    mse = ((images.double() - reference.double()) ** 2).flatten(1).mean(dim=1).clamp_min(1e-12)
    return (10.0 * torch.log10(1.0 / mse)).numpy()


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
    parser.add_argument("--samples", type=int, default=40)
    parser.add_argument("--guidance-scale", type=float, default=4.0)
    parser.add_argument("--reference-steps", type=int, default=100)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    pipe = load_default_pipeline()
    pipe.set_progress_bar_config(disable=True)
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

    from diffusers import DPMSolverMultistepScheduler

    reference = run(DPMSolverMultistepScheduler.from_config(config), args.reference_steps)
    lines = [
        "| solver | " + " | ".join(f"NFE {n} (steps {n})" for n in STEPS) + " |",
        "|---|" + "---|" * len(STEPS),
    ]
    for name, make in _rows():
        cells = []
        for steps in STEPS:
            psnr = _paired_psnr(run(make(config), steps), reference)
            q1, med, q3 = np.percentile(psnr, [25, 50, 75])
            cells.append(f"{med:.1f} [{q1:.1f}, {q3:.1f}]")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
        print(lines[-1], flush=True)
    command = "OMP_NUM_THREADS=1 nice -n 10 python benchmarks/solver_dit_psnr.py " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    print(
        f"\ncommand: `{command}`; {args.samples} samples (labels 0..9 cycled, noise seed 0), CFG "
        f"{args.guidance_scale}, reference DPM++2M {args.reference_steps} steps; median PSNR in dB "
        f"[quartiles]; wall time {time.perf_counter() - start:.0f} s"
    )
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
