"""Regenerate ``fastsample/zoo/weights/shapenet.safetensors``, the colour-blind shape classifier.

Trains :func:`fastsample.eval.shape.train_shape_net` (one CPU thread, a few minutes) and prints its held-out
accuracy on fresh procedural images, as they are and with their hue rotated by a random angle. The weights are
stored in float16 (loaded into float32).

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/train_shape_net.py
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import torch

from fastsample.eval.shape import rotate_hue, shape_net_input, train_shape_net
from fastsample.zoo.featurenet import evaluate_accuracy, save_feature_net

_DEFAULT_OUT = Path(__file__).resolve().parents[1] / "fastsample" / "zoo" / "weights" / "shapenet.safetensors"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=1200)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-samples", type=int, default=5000)
    parser.add_argument("--eval-seed", type=int, default=2024)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=_DEFAULT_OUT)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    net, summary = train_shape_net(steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed)
    generator = torch.Generator().manual_seed(args.eval_seed + 1)

    def hue_rotated_view(images: torch.Tensor) -> torch.Tensor:
        angles = 360.0 * torch.rand(images.shape[0], generator=generator)
        return shape_net_input(rotate_hue(images, angles), value_range=(-1, 1))

    def view(images: torch.Tensor) -> torch.Tensor:
        return shape_net_input(images, value_range=(-1, 1))

    summary.update(
        seed=args.seed,
        lr=args.lr,
        eval_seed=args.eval_seed,
        eval_samples=args.eval_samples,
        accuracy=evaluate_accuracy(net, n=args.eval_samples, seed=args.eval_seed, transform=view),
        hue_rotated_accuracy=evaluate_accuracy(
            net, n=args.eval_samples, seed=args.eval_seed, transform=hue_rotated_view
        ),
        parameters=sum(p.numel() for p in net.parameters()),
        torch_threads=args.threads,
        torch_version=torch.__version__,
        machine=f"{platform.machine()} {platform.processor() or ''}".strip(),
    )
    save_feature_net(net.half(), args.out, metadata=summary)
    print(json.dumps(summary, indent=2))
    print(f"wrote {args.out} ({args.out.stat().st_size / 1024:.0f} kB)")


if __name__ == "__main__":
    main()
