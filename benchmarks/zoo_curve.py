"""Learning curve of an embedded DiT: shape and hue accuracy and in-domain FD against training steps.

Each positional argument is a model folder as ``fastsample train --export DIR`` writes it
(``dit.safetensors`` with the training step in its metadata, ``dit_config.json``, ``scheduler_config.json``),
e.g. copies of the export taken at successive checkpoints. For each folder the default recipe (the stored
scheduler, 20 steps, guidance ``--guidance-scale``, default 4 as the pipeline's; flow models sampled with
``--shift``) generates ``--samples`` balanced images from fixed noise; prints one markdown row per folder:

* shape accuracy (colour-blind shape net, :mod:`fastsample.eval.shape`) and hue accuracy, with stratified
  bootstrap intervals of the mean;
* in-domain FD to ``--reference-samples`` real images with its interval, and the real-vs-real floor at the
  same sample count with the same class counts (:func:`fastsample.eval.bootstrap.frechet_distance_interval`),
  and their ratio (the target is FD ≤ 2× floor).

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/zoo_curve.py --model vp runs/vp/exports/step-*
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import diffusers
import numpy as np
import torch
from fidelity import generate  # the sibling benchmark's sampler (benchmarks/fidelity.py)
from safetensors import safe_open

from fastsample.eval.bootstrap import bootstrap_interval, frechet_distance_interval
from fastsample.eval.shape import predict_hues, predict_shapes
from fastsample.zoo.data import generate_batch
from fastsample.zoo.default import load_default_pipeline, load_feature_net, load_shape_net

DEFAULT_STEPS = 20  # PixelDiTPipeline's default num_inference_steps


def _step(folder: Path) -> int:
    with safe_open(str(folder / "dit.safetensors"), framework="pt") as handle:
        return int((handle.metadata() or {}).get("step", -1))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("folders", nargs="+", type=Path, help="exported model folders")
    parser.add_argument("--model", choices=("vp", "flow"), default="vp")
    parser.add_argument("--shift", type=float, default=None, help="flow only: sampling time shift")
    parser.add_argument("--guidance-scale", type=float, default=4.0, help="the pipeline's default: 4")
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--reference-samples", type=int, default=5000)
    parser.add_argument("--n-boot", type=int, default=1000)
    parser.add_argument("--fd-boot", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.process_time()

    shape_net, feature_net = load_shape_net(), load_feature_net()
    labels = torch.arange(args.samples) % 10
    real, _ = generate_batch(args.samples, seed=args.seed + 2, labels=labels)
    with torch.no_grad():
        reference_real, _ = generate_batch(args.reference_samples, seed=args.seed + 1)
        reference_features = torch.cat([feature_net.features(chunk) for chunk in reference_real.split(1000)])
        floor_features = feature_net.features(real)

    rows = []
    for folder in sorted(args.folders, key=_step):
        pipe = load_default_pipeline(model=args.model, directory=folder, shift=args.shift)
        pipe.set_progress_bar_config(disable=True)
        size = pipe.transformer.config.sample_size
        noise = torch.randn(args.samples, 3, size, size, generator=torch.Generator().manual_seed(args.seed))
        images = generate(pipe, labels, noise, DEFAULT_STEPS, args.guidance_scale, args.batch_size)
        shape = bootstrap_interval(
            (predict_shapes(images, shape_net) == labels).double().numpy(),
            np.mean,
            n_boot=args.n_boot,
            strata=labels,
        )
        hue = bootstrap_interval(
            (predict_hues(images) == labels).double().numpy(), np.mean, n_boot=args.n_boot, strata=labels
        )
        with torch.no_grad():
            generated_features = feature_net.features(images * 2 - 1)
        fd = frechet_distance_interval(
            generated_features,
            reference_features,
            floor_features,
            n_boot=args.fd_boot,
            seed=args.seed,
            strata=labels,
        )
        ratio = fd.fd.estimate / fd.floor.estimate
        rows.append(f"| {_step(folder)} | {shape} | {hue} | {fd.fd} | {fd.floor} | {ratio:.2f} |")
        print(rows[-1], file=sys.stderr, flush=True)

    command = "OMP_NUM_THREADS=1 nice -n 10 python benchmarks/zoo_curve.py " + " ".join(sys.argv[1:])
    print(
        "\n".join(
            [
                f"Command: `{command}`; {args.samples} samples ({args.samples // 10} per class), "
                f"seed {args.seed}, {DEFAULT_STEPS} steps, guidance {args.guidance_scale:g}. "
                f"Machine: {platform.machine()}, "
                f"{args.threads} torch thread(s), shared 2-core VM; torch {torch.__version__}, diffusers "
                f"{diffusers.__version__}. CPU time {(time.process_time() - start) / 60:.1f} min. "
                f"95 % stratified bootstrap intervals ({args.n_boot} resamples; "
                f"FD {args.fd_boot}, bias-corrected).",
                "",
                "| step | shape accuracy | hue accuracy | FD | floor (same n) | FD / floor |",
                "|---|---|---|---|---|---|",
                *rows,
            ]
        )
    )


if __name__ == "__main__":
    main()
