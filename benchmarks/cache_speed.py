"""Cache speed at real model size with random weights: measured vs theoretical (MAC) speed-up.

Static schedules' compute pattern does not depend on the weights, so random weights at the real width/depth
give the real latency. Each row times a full sampling loop of the bare transformer (CFG batch = 2 x batch)
uncached and cached in the same process (A-B-A medians, ``fastsample.cache.measure``).

    nice -n 10 python benchmarks/cache_speed.py --models dit-b2-256 --steps 4 --repeats 1 --threads 1

Models (diffusers configs of the released checkpoints, ``from_config``):
  dit-xl2-256   DiT-XL/2 at 256² (28 blocks, width 1152, 256 tokens)       ~119 GMACs/sample
  dit-b2-256    DiT-B/2 at 256² (12 blocks, width 768, 256 tokens)         ~23 GMACs/sample
  pixart-256    PixArt-α at 256² (28 blocks, width 1152, 256 tokens, T5 cross-attention, 120 text tokens)
  pixart-512    PixArt-α at 512² (1024 tokens)
"""

from __future__ import annotations

import argparse
import platform
import sys
import time

import numpy as np
import torch

MODELS = {
    "dit-xl2-256": (
        "dit",
        dict(num_layers=28, attention_head_dim=72, num_attention_heads=16, sample_size=32),
    ),
    "dit-b2-256": ("dit", dict(num_layers=12, attention_head_dim=64, num_attention_heads=12, sample_size=32)),
    "pixart-256": ("pixart", dict(sample_size=32)),
    "pixart-512": ("pixart", dict(sample_size=64)),
}


def build(name: str) -> tuple[torch.nn.Module, str]:
    from diffusers import DiTTransformer2DModel, PixArtTransformer2DModel

    family, overrides = MODELS[name]
    if family == "dit":
        config = dict(
            in_channels=4, out_channels=8, patch_size=2, num_embeds_ada_norm=1000, norm_type="ada_norm_zero"
        )
        model = DiTTransformer2DModel(**config, **overrides)
    else:
        config = dict(
            num_attention_heads=16, attention_head_dim=72, in_channels=4, out_channels=8, num_layers=28,
            cross_attention_dim=1152, patch_size=2, caption_channels=4096, norm_type="ada_norm_single",
            norm_elementwise_affine=False, norm_eps=1e-6, use_additional_conditions=False,
        )  # fmt: skip
        model = PixArtTransformer2DModel(**config, **overrides)
    return model.eval(), family


def make_run(model: torch.nn.Module, family: str, steps: int, batch: int):
    c = model.config
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(2 * batch, c.in_channels, c.sample_size, c.sample_size, generator=g)
    if family == "dit":
        cond = {"class_labels": torch.tensor([1] * batch + [1000] * batch)}
    else:
        cond = {
            "encoder_hidden_states": torch.randn(2 * batch, 120, c.caption_channels, generator=g),
            "added_cond_kwargs": {"resolution": None, "aspect_ratio": None},
        }
    timesteps = torch.linspace(999, 0, steps).round()

    @torch.no_grad()
    def run() -> torch.Tensor:
        x = x0
        for t in timesteps:
            out = model(x, timestep=t.expand(x.shape[0]), **cond).sample
            x = x - 0.01 * out[:, : c.in_channels]
        return x

    return run


def schedules(num_units: int, steps: int) -> list[tuple[str, str, dict]]:
    """(label, method, knobs): FORA(1) (hooks only), FORA(2), and a HarmoniCa-like static mask (MLPs reused
    at every other step)."""
    mask = np.ones((steps, num_units), dtype=bool)
    mask[1::2, 1::2] = False  # units alternate attn1, ff (DiT) -> skip every ff at odd steps
    return [
        ("fora(1): 0 % reuse, hook overhead", "fora", {"interval": 1}),
        ("fora(2)", "fora", {"interval": 2}),
        ("static: ff reused at odd steps", "static", {"mask": mask}),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="+", default=["dit-b2-256"], choices=sorted(MODELS))
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    import diffusers

    from fastsample.cache import find_units
    from fastsample.cache.measure import measure_speedup

    print(
        f"# cache speed, {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}, diffusers {diffusers.__version__}, python {sys.version.split()[0]}"
    )
    print(
        f"# command: python benchmarks/cache_speed.py {' '.join(argv if argv is not None else sys.argv[1:])}"
    )
    print(
        "| model | schedule | hit ratio | computed MACs | theoretical | measured | measured/theoretical "
        "| uncached s | cached s |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    start = time.time()
    for name in args.models:
        model, family = build(name)
        run = make_run(model, family, args.steps, args.batch)
        for label, method, knobs in schedules(len(find_units(model)), args.steps):
            report = measure_speedup(run, model, method, repeats=args.repeats, warmup=1, **knobs)
            s = report.stats
            print(
                f"| {name} | {label} | {100 * s.hit_ratio:.1f}% | {100 * s.computed_mac_fraction:.1f}% "
                f"| {report.theoretical:.2f}x | {report.measured:.2f}x | {report.efficiency:.2f} "
                f"| {report.uncached_s:.2f} | {report.cached_s:.2f} |",
                flush=True,
            )
    print(f"# total benchmark time {time.time() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
