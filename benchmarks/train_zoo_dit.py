"""Evaluate an exported zoo DiT: class accuracy (shipped feature net) of its generated samples, and a grid.

Training itself is ``fastsample train`` (``python -m fastsample.cli train``); the command
that produced the shipped weights is in ``benchmarks/results/zoo.md``. This script samples ``--per-class``
images of each class with the exported weights (DPM-Solver++(2M) from ``scheduler_config.json``,
``--steps`` steps, classifier-free guidance ``--guidance``) and reports the feature net's accuracy on them::

    nice -n 10 python benchmarks/train_zoo_dit.py --weights fastsample/zoo/weights --per-class 20 \
        --grid grid.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from fastsample.integration.measure import Stopwatch


def build_pipeline(weights: Path):
    from diffusers import DPMSolverMultistepScheduler

    from fastsample.pipelines.pixel_dit import PixelDiTPipeline
    from fastsample.training.trainer import SCHEDULER_FILE
    from fastsample.zoo.data import CLASS_NAMES
    from fastsample.zoo.default import load_dit

    transformer = load_dit(weights)
    config = json.loads((weights / SCHEDULER_FILE).read_text())
    scheduler = DPMSolverMultistepScheduler.from_config(config)
    return PixelDiTPipeline(transformer=transformer, scheduler=scheduler, class_names=list(CLASS_NAMES))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--weights", type=Path, default=Path("fastsample/zoo/weights"))
    parser.add_argument("--per-class", type=int, default=20)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=4.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--grid", type=Path, default=None, help="write a PNG grid (one row per class)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from safetensors import safe_open

    from fastsample.zoo.data import CLASS_NAMES, NUM_CLASSES
    from fastsample.zoo.default import classify, load_feature_net

    with safe_open(str(args.weights / "dit.safetensors"), framework="pt") as handle:
        metadata = handle.metadata() or {}
    pipe = build_pipeline(args.weights)
    labels = list(range(NUM_CLASSES))
    watch = Stopwatch().start()
    images = pipe(
        class_labels=labels,
        num_images_per_label=args.per_class,
        guidance_scale=args.guidance,
        num_inference_steps=args.steps,
        generator=torch.Generator().manual_seed(args.seed),
        output_type="pt",
    ).images
    seconds = watch.stop()
    truth = torch.tensor(labels).repeat_interleave(args.per_class)
    predicted = classify(images, load_feature_net())
    correct = predicted == truth
    step, loss = metadata.get("step", "?"), metadata.get("loss", "?")
    print(f"weights: {args.weights} (training step {step}, loss {loss})")
    print(
        f"{len(truth)} samples, DPM-Solver++(2M) {args.steps} steps, CFG {args.guidance}: "
        f"class accuracy {correct.float().mean().item():.1%} ({seconds:.0f} s sampling)"
    )
    for k, name in enumerate(CLASS_NAMES):
        print(f"  {k} {name:26s} {correct[truth == k].float().mean().item():6.1%}")
    if args.grid is not None:
        from PIL import Image

        size = images.shape[-1]
        grid = images.view(NUM_CLASSES, args.per_class, 3, size, size).permute(0, 3, 1, 4, 2)
        grid = grid.reshape(NUM_CLASSES * size, args.per_class * size, 3)
        Image.fromarray((grid * 255).round().byte().numpy()).resize(
            (args.per_class * size * 2, NUM_CLASSES * size * 2), Image.NEAREST
        ).save(args.grid)
        print(f"grid written to {args.grid}")


if __name__ == "__main__":
    main()
