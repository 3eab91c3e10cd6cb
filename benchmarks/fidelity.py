"""Quality measures on the shipped embedded DiT: shape vs hue accuracy, paired fidelity of solver step counts,
FD with its bootstrap interval and floor.

1. The default recipe (``load_default_pipeline(model=...)``, the pipeline's own defaults: shipped scheduler,
   20 steps, guidance 4.0) on ``--samples`` balanced labels: shape accuracy (colour-blind shape net), hue
   accuracy (foreground hue) and the bench's class accuracy (feature net), each with a bootstrap interval of
   the mean, beside the same figures on real procedural images.
2. Paired fidelity: the shipped scheduler (DPM-Solver++ 2M for VP, FlowMatch Euler for flow) at ``--steps``
   (default 10, 20, 50) against the same scheduler at
   ``--reference-steps`` (100), same noise, labels and guidance; medians of PSNR / SSIM / feature distance
   with bootstrap intervals, and the paired interval of the difference of the medians between the fewest
   and the most steps ("is the spread larger than its interval?").
3. In-domain FD of the default recipe to ``--reference-samples`` real images with its bootstrap interval, and
   the real-vs-real floor at the same sample count.

Prints a markdown section (figures, command, machine, versions) to append to benchmarks/results/eval.md.

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/fidelity.py
"""

from __future__ import annotations

import argparse
import platform
import sys
import time

import diffusers
import numpy as np
import torch

from fastsample.eval.bootstrap import bootstrap_interval, frechet_distance_interval
from fastsample.eval.fidelity import compare_fidelity, paired_fidelity
from fastsample.eval.shape import predict_hues, predict_shapes
from fastsample.zoo.data import generate_batch
from fastsample.zoo.default import classify, load_default_pipeline, load_feature_net, load_shape_net


def generate(pipe, labels: torch.Tensor, noise: torch.Tensor, steps: int, guidance: float, batch: int):
    """Samples in [0, 1] (``output_type="pt"``) for the given labels and initial noise, in batches."""
    out = []
    for batch_labels, batch_noise in zip(labels.split(batch), noise.split(batch)):
        result = pipe(
            class_labels=batch_labels,
            guidance_scale=guidance,
            num_inference_steps=steps,
            latents=batch_noise.clone(),
            output_type="pt",
        )
        out.append(result.images.float().cpu())
    return torch.cat(out)


def accuracy_rows(images: torch.Tensor, labels: torch.Tensor, nets: dict, n_boot: int) -> dict[str, str]:
    correct = {
        "shape": predict_shapes(images, nets["shape"]) == labels,
        "hue": predict_hues(images) == labels,
        "class (feature net)": classify(images, nets["feature"]) == labels,
    }
    return {
        name: str(bootstrap_interval(hit.double().numpy(), np.mean, n_boot=n_boot, strata=labels))
        for name, hit in correct.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", choices=("vp", "flow"), default="vp")
    parser.add_argument("--directory", default=None, help="a model folder (fastsample train --export DIR)")
    parser.add_argument("--shift", type=float, default=None, help="flow only: sampling time shift")
    parser.add_argument("--samples", type=int, default=200, help="generated samples (balanced over classes)")
    parser.add_argument("--steps", type=int, nargs="+", default=[10, 20, 50])
    parser.add_argument("--reference-steps", type=int, default=100)
    parser.add_argument("--guidance-scale", type=float, default=4.0)
    parser.add_argument("--reference-samples", type=int, default=5000, help="real images for FD statistics")
    parser.add_argument("--n-boot", type=int, default=2000)
    parser.add_argument("--fd-boot", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.process_time()

    pipe = load_default_pipeline(model=args.model, directory=args.directory, shift=args.shift)
    pipe.set_progress_bar_config(disable=True)
    default_steps = 20  # PixelDiTPipeline's default num_inference_steps, with the shipped scheduler
    nets = {"shape": load_shape_net(), "feature": load_feature_net()}
    labels = torch.arange(args.samples) % pipe.num_classes
    size = pipe.transformer.config.sample_size
    noise = torch.randn(args.samples, 3, size, size, generator=torch.Generator().manual_seed(args.seed))

    # 1. accuracies: default recipe vs real images
    default_images = generate(pipe, labels, noise, default_steps, args.guidance_scale, args.batch_size)
    real, _ = generate_batch(args.samples, seed=args.seed + 2, labels=labels)
    real = (real + 1) / 2
    generated_acc = accuracy_rows(default_images, labels, nets, args.n_boot)
    real_acc = accuracy_rows(real, labels, nets, args.n_boot)

    # 2. paired fidelity of DPM-Solver++ 2M step counts against the reference
    scheduler_name = type(pipe.scheduler).__name__
    if args.shift is not None:
        scheduler_name += f" (shift {args.shift:g})"
    reference = generate(pipe, labels, noise, args.reference_steps, args.guidance_scale, args.batch_size)
    reports = {}
    for steps in args.steps:
        candidate = default_images if steps == default_steps else None
        if candidate is None:
            candidate = generate(pipe, labels, noise, steps, args.guidance_scale, args.batch_size)
        reports[steps] = paired_fidelity(
            candidate,
            reference,
            value_range=(0, 1),
            feature_net=nets["feature"],
            n_boot=args.n_boot,
            strata=labels,
        )
    fewest, most = min(args.steps), max(args.steps)
    spread = {
        metric: compare_fidelity(reports[most], reports[fewest], metric, n_boot=args.n_boot, strata=labels)
        for metric in ("psnr", "ssim", "feature_distance")
    }

    # 3. FD with interval and floor, default recipe
    net = nets["feature"]
    with torch.no_grad():
        reference_real, _ = generate_batch(args.reference_samples, seed=args.seed + 1)
        reference_features = torch.cat([net.features(chunk) for chunk in reference_real.split(1000)])
        generated_features = net.features(default_images * 2 - 1)
        floor_features = net.features(real * 2 - 1)
    fd = frechet_distance_interval(
        generated_features,
        reference_features,
        floor_features,
        n_boot=args.fd_boot,
        seed=args.seed,
        strata=labels,
    )
    fd_plain = frechet_distance_interval(
        generated_features, reference_features, floor_features, n_boot=args.fd_boot, seed=args.seed
    )
    random_labels, _ = generate_batch(args.samples, seed=args.seed + 3)
    with torch.no_grad():
        random_floor = frechet_distance_interval(
            net.features(random_labels), reference_features, n_boot=args.fd_boot, seed=args.seed
        ).fd
    cpu_seconds = time.process_time() - start

    command = "OMP_NUM_THREADS=1 nice -n 10 python benchmarks/fidelity.py " + " ".join(sys.argv[1:])
    lines = [
        f"## Quality measures on the embedded {args.model.upper()} DiT (`benchmarks/fidelity.py`)",
        "",
        f"Command: `{command.strip()}`; {args.samples} samples "
        f"({args.samples // pipe.num_classes} per class), "
        f"seed {args.seed}, guidance {args.guidance_scale}, {scheduler_name}. Machine: {platform.machine()}, "
        f"{args.threads} torch thread(s), shared 2-core VM; Python {platform.python_version()}, torch "
        f"{torch.__version__}, diffusers {diffusers.__version__}, numpy {np.__version__}. "
        f"CPU time {cpu_seconds / 60:.1f} min. Intervals: 95 % percentile bootstrap, stratified by class "
        f"({args.n_boot} resamples; "
        f"FD: {args.fd_boot}, bias-corrected, see `fastsample.eval.bootstrap`).",
        "",
        f"### Accuracy, default recipe ({default_steps} steps) vs real images",
        "",
        "| accuracy | generated | real |",
        "|---|---|---|",
        *(f"| {name} | {generated_acc[name]} | {real_acc[name]} |" for name in generated_acc),
        "",
        f"### Paired fidelity to {scheduler_name} at {args.reference_steps} steps (medians [95 % interval])",
        "",
        "| steps | PSNR (dB) | SSIM | feature distance |",
        "|---|---|---|---|",
        *(
            f"| {steps} | {r['psnr']} | {r['ssim']} | {r['feature_distance']} |"
            for steps, r in sorted(reports.items())
        ),
        "",
        f"Paired difference of medians, {most} − {fewest} steps: PSNR {spread['psnr']} dB, SSIM "
        f"{spread['ssim']}, feature distance {spread['feature_distance']}. Interval widths of the PSNR "
        f"medians: {fewest} steps {reports[fewest]['psnr'].width:.2f} dB, {most} steps "
        f"{reports[most]['psnr'].width:.2f} dB; spread {spread['psnr'].estimate:.2f} dB.",
        "",
        f"### In-domain FD, default recipe ({args.reference_samples} real images as reference)",
        "",
        f"FD {fd.fd} vs real-vs-real floor {fd.floor} at the same {args.samples} samples; "
        f"FD interval above the floor's: {fd.separated_from_floor}. Intervals from a stratified bootstrap "
        "(within classes, the design's class counts kept).",
        "",
        f"Without stratification the same data give FD {fd_plain.fd} and floor {fd_plain.floor}. A floor "
        f"from {args.samples} real images with *random* labels (as `fastsample bench` computes it today): "
        f"{random_floor}.",
    ]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
