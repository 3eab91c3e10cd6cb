"""Fit step grids for the embedded DiT (fastsample.solvers.grid_fit) and measure them: paired PSNR to the
model's own 100-step DPM-Solver++(2M) output on 40 held-out samples (CFG 4), against the same solver on its
default grid and diffusers' DPM++2M at the same NFE.

    OMP_NUM_THREADS=1 python benchmarks/solver_dit_fit.py --threads 1 --out-dir benchmarks/results/grids
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch

from benchmarks.solver_dit_psnr import _paired_psnr


def _model_fn(pipe, labels: torch.Tensor, guidance_scale: float):
    """The pipeline's guided denoiser as a grid_fit ModelFn (cond + uncond batched, as the pipeline does)."""
    null = torch.full_like(labels, pipe.null_class_id)
    class_input = torch.cat([labels, null])

    @torch.no_grad()
    def model(x, t, level):
        inp = torch.cat([x, x])
        ts = torch.as_tensor(t).reshape(1).expand(inp.shape[0])
        pred = pipe.transformer(inp, timestep=ts, class_labels=class_input, return_dict=False)[0]
        return pipe._model_output(pred, guidance_scale)

    return model


def main(argv=None) -> int:
    from diffusers import DPMSolverMultistepScheduler

    from fastsample.solvers import GHVBScheduler
    from fastsample.solvers.grid_fit import fit_grid, model_hash, sample
    from fastsample.zoo.default import load_default_pipeline

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nfe", default="6,8,10")
    parser.add_argument("--fit-samples", type=int, default=8)
    parser.add_argument("--samples", type=int, default=40)
    parser.add_argument("--max-evaluations", type=int, default=120)
    parser.add_argument("--guidance-scale", type=float, default=4.0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out-dir", default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    pipe = load_default_pipeline()
    pipe.set_progress_bar_config(disable=True)
    config = dict(pipe.scheduler.config)
    size = pipe.transformer.config.sample_size
    n_classes = len(pipe.class_names)
    digest = model_hash(pipe.transformer)
    w = args.guidance_scale

    def batch(n, seed):
        gen = torch.Generator().manual_seed(seed)
        return torch.randn(n, 3, size, size, generator=gen), torch.arange(n) % n_classes

    def reference(noise, labels):
        pipe.scheduler = DPMSolverMultistepScheduler.from_config(config)
        out = pipe(labels, guidance_scale=w, num_inference_steps=100, latents=noise, output_type="latent")
        return out.images.double()

    fit_noise, fit_labels = batch(args.fit_samples, 1)
    test_noise, test_labels = batch(args.samples, 0)  # the noise of benchmarks/solver_dit_psnr.py
    fit_ref, test_ref = reference(fit_noise, fit_labels), reference(test_noise, test_labels)
    to_img = lambda x: (x / 2 + 0.5).clamp(0, 1)  # noqa: E731 (the pipeline's conversion)
    test_model = _model_fn(pipe, test_labels, w)
    lines = [
        "| NFE | DPM++2M (diffusers) | GHVB q1.8 linspace grid | GHVB q1.8 fitted grid | fit time |",
        "|---|---|---|---|---|",
    ]
    for nfe in [int(v) for v in args.nfe.split(",")]:
        sched = GHVBScheduler.from_config(config, grid="spacing")
        start = time.process_time()
        art = fit_grid(
            sched,
            _model_fn(pipe, fit_labels, w),
            fit_noise,
            nfe,
            reference=fit_ref,
            model_id=digest,
            guidance_scale=w,
            max_evaluations=args.max_evaluations,
        )
        cpu = time.process_time() - start
        if args.out_dir:
            os.makedirs(args.out_dir, exist_ok=True)
            art.save(os.path.join(args.out_dir, f"dit_ghvb_nfe{nfe}.json"))
        dpm = sample(
            DPMSolverMultistepScheduler.from_config(config), test_model, test_noise, num_inference_steps=nfe
        )
        default = sample(sched, test_model, test_noise, num_inference_steps=nfe)
        fitted = sample(sched, test_model, test_noise, sigmas=art.scheduler_sigmas(sched))
        cells = []
        for final in (dpm, default, fitted):
            p = _paired_psnr(to_img(final), to_img(test_ref))
            q1, med, q3 = np.percentile(p, [25, 50, 75])
            cells.append(f"{med:.1f} [{q1:.1f}, {q3:.1f}]")
        lines.append(f"| {nfe} | " + " | ".join(cells) + f" | {cpu:.0f} CPU-s |")
        print(lines[-1], [round(v, 3) for v in art.levels], flush=True)
    command = "OMP_NUM_THREADS=1 nice -n 10 python benchmarks/solver_dit_fit.py " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    print(
        f"\ncommand: `{command}`; model {digest}; fit on {args.fit_samples} trajectories (noise seed 1), "
        f"tested on {args.samples} (noise seed 0), CFG {w}; median PSNR dB [quartiles] vs DPM++2M 100 steps"
    )
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
