"""Guidance methods on the embedded trained DiT (issue 4): savings, distance to full CFG, class accuracy,
in-domain FD and saturation, plus the discretisation-error yardstick of the Adaptive-Guidance target.

Every row samples the same balanced labels from the same initial noise with DPM-Solver++ 2M (diffusers
``DPMSolverMultistepScheduler``, built from the shipped training schedule by ``fastsample bench``'s
``build_scheduler``) at a fixed step count, through ``fastsample.guidance.guide``. Model rows are counted by
the hook (``last_stats["model_samples"]``: a batched CFG step costs 2 rows per sample, a re-packed AG step
1 + [not yet switched]). FD, class accuracy and saturation reuse ``fastsample.eval.bench``'s helpers and
reference statistics (the same 2,000 real procedural images, seed + 1).

Yardstick: the solver's own discretisation error at AG's budget is the distance between full CFG at the
step count with the same number of rows (E/2 steps for E rows per sample, linearly interpolated between the
neighbouring integer step counts) and full CFG at ``--reference-steps`` steps, on the first
``--yardstick-samples`` samples; AG's error is its distance to full CFG at the benchmark step count on the
same samples.

    OMP_WAIT_POLICY=PASSIVE nice -n 10 python benchmarks/guidance_dit.py --samples 500 --threads 1 --out <dir>
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import shlex
import sys
from pathlib import Path
from typing import Any

import torch

from fastsample.integration.measure import Stopwatch

logger = logging.getLogger("guidance_dit")


def _methods(w: float, linear_ag: Any) -> dict[str, Any]:
    from fastsample.guidance import APG, CFG, AdaptiveGuidance, AnnealedGuidance, CFGRescale, CFGZeroStar

    methods = {
        "CFG": CFG(),
        "AG γ̄=0.95": AdaptiveGuidance(threshold=0.95),
        "AG γ̄=0.99": AdaptiveGuidance(threshold=0.99),
        "AG γ̄=0.999": AdaptiveGuidance(threshold=0.999),
        "LinearAG (every 2nd step of 1st half)": linear_ag,
        "interval ρ∈(0.28, 5.42]": AnnealedGuidance("interval"),
        "linear schedule": AnnealedGuidance("linear"),
        "APG paper defaults": APG(),
        "CFG-rescale φ=0.7": CFGRescale(guidance_rescale=0.7),
        "CFG-Zero* (no zero-init)": CFGZeroStar(zero_init_steps=0),
    }
    return {k: v for k, v in methods.items() if v is not None}


def render(payload: dict[str, Any]) -> str:
    """Markdown tables of a ``results.json`` written by this script."""
    lines = [
        f"{payload['model']}; {payload['scheduler']}; {payload['samples']} samples (balanced labels, fixed "
        f"noise); {payload['threads']} thread(s); wall time {payload['wall_s']:.0f} s. FD floor (real vs "
        f"real, same count) {payload['fd_floor']:.3f}; real-data saturation "
        f"{payload['real_saturation']:.3f}.",
        "",
        "| w | method | rows/sample | saving vs CFG | dist to CFG | class acc | in-domain FD | saturation "
        "| norm ratio | clipped |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in payload["rows"]:
        lines.append(
            f"| {r['w']:g} | {r['method']} | {r['evals']:.2f} | {100 * r['saving']:.0f} % | "
            f"{r['dist_cfg']:.3e} | {r['class_acc']:.3f} | {r['fd']:.3f} | {r['saturation']:.3f} | "
            f"{r['norm_ratio']:.3f} | {r['clipped']:.4f} |"
        )
    lines += [
        "",
        "| w | method | rows/sample | dist to CFG (yardstick samples) | CFG disc. err at same rows "
        "| below? |",
        "|---|---|---|---|---|---|",
    ]
    for y in payload["yardstick"]:
        below = "-" if y["method"] == "CFG" else ("yes" if y["err"] < y["disc"] else "no")
        lines.append(
            f"| {y['w']:g} | {y['method']} | {y['evals']:.2f} | {y['err']:.3e} | {y['disc']:.3e} | {below} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="guidance-dit")
    parser.add_argument("--samples", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--scales", default="15,7.5,3")
    parser.add_argument("--reference-steps", type=int, default=100)
    parser.add_argument("--yardstick-samples", type=int, default=100)
    parser.add_argument("--calibration-samples", type=int, default=50)
    parser.add_argument("--reference-samples", type=int, default=2000)
    parser.add_argument("--skip", default="", help="comma-separated method names to leave out")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--render", default=None, help="print the tables of an existing results.json and exit"
    )
    args = parser.parse_args(argv)
    if args.render:
        print(render(json.loads(Path(args.render).read_text())))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)

    from fastsample.eval.bench import (
        BenchSettings,
        _balanced_labels,
        _statistics,
        build_scheduler,
        load_pipeline,
        mean_saturation,
    )
    from fastsample.eval.extractors import InDomainExtractor
    from fastsample.eval.frechet import frechet_distance
    from fastsample.guidance import LinearAG, guide
    from fastsample.zoo.data import generate_batch
    from fastsample.zoo.default import classify, load_feature_net

    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    settings = BenchSettings(
        out=out_dir, samples=args.samples, batch_size=args.batch_size,
        reference_samples=args.reference_samples, seed=args.seed, recipes={"vp": ()},
    )  # fmt: skip
    pipe, weights = load_pipeline(settings)
    pipe.scheduler = build_scheduler("dpm++2m", pipe.scheduler.config)
    size, channels = pipe.transformer.config.sample_size, pipe.transformer.config.in_channels
    labels = _balanced_labels(args.samples, pipe.num_classes)
    noise = torch.randn(
        args.samples, channels, size, size, generator=torch.Generator().manual_seed(args.seed)
    )
    calib_labels = _balanced_labels(args.calibration_samples, pipe.num_classes)
    calib_noise = torch.randn(
        args.calibration_samples,
        channels,
        size,
        size,
        generator=torch.Generator().manual_seed(args.seed + 10),
    )
    dim = channels * size * size

    feature_net = load_feature_net()
    extractor = InDomainExtractor(feature_net, device="cpu")
    real, _ = generate_batch(args.reference_samples, seed=args.seed + 1)  # the same reference as bench
    reference = _statistics(extractor, (real + 1) / 2)
    real_check, _ = generate_batch(args.samples, seed=args.seed + 2)
    check = _statistics(extractor, (real_check + 1) / 2)
    fd_floor = frechet_distance(check.mu, check.sigma, reference.mu, reference.sigma)
    real_norm = float(real.flatten(1).norm(dim=1).mean())

    def sample(method: Any, w: float, steps: int, n: int | None = None, lab=labels, noi=noise):
        """Final samples x0 ([-1, 1] model scale) and model rows per sample."""
        n = len(lab) if n is None else n
        outs, rows = [], 0
        for start in range(0, n, args.batch_size):
            stop = min(start + args.batch_size, n)
            kwargs = {
                "class_labels": lab[start:stop],
                "guidance_scale": w,
                "num_inference_steps": steps,
                "latents": noi[start:stop],
                "output_type": "latent",
            }
            if method is None:
                outs.append(pipe(**kwargs).images.float())
                rows += (stop - start) * steps * (2 if w > 1 else 1)
            else:
                with guide(pipe, method) as handle:
                    outs.append(pipe(**kwargs).images.float())
                rows += handle.last_stats["model_samples"]
        return torch.cat(outs), rows / n

    def distance(a: torch.Tensor, b: torch.Tensor) -> float:
        return float(((a - b).flatten(1).norm(dim=1) / math.sqrt(dim)).median())

    def metrics(x: torch.Tensor) -> dict[str, float]:
        images = (x / 2 + 0.5).clamp(0, 1)  # what output_type="pt" returns
        stats = _statistics(extractor, images)
        return {
            "class_acc": float((classify(images, feature_net) == labels).double().mean()),
            "fd": frechet_distance(stats.mu, stats.sigma, reference.mu, reference.sigma),
            "saturation": mean_saturation(images),
            "norm_ratio": float(x.flatten(1).norm(dim=1).mean()) / real_norm,
            "clipped": float((x.abs() > 1).double().mean()),
        }

    rows: list[dict[str, Any]] = []
    yard: list[dict[str, Any]] = []
    results_path = out_dir / "results.json"
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    wall = Stopwatch().start()

    def save() -> None:
        payload = {
            "command": "python benchmarks/guidance_dit.py "
            + shlex.join(sys.argv[1:] if argv is None else argv),
            "model": weights,
            "scheduler": f"DPMSolverMultistepScheduler (dpmsolver++, order 2), {args.steps} steps",
            "samples": args.samples,
            "threads": torch.get_num_threads(),
            "fd_floor": fd_floor,
            "real_saturation": mean_saturation((real + 1) / 2),
            "rows": rows,
            "yardstick": yard,
            "wall_s": wall.elapsed(),
        }
        results_path.write_text(json.dumps(payload, indent=2))

    def add(w: float, name: str, x: torch.Tensor, evals: float, ref: torch.Tensor | None, **extra) -> None:
        row = {"w": w, "method": name, "evals": evals, "saving": 1 - evals / (2 * args.steps)}
        row["dist_cfg"] = distance(x, ref) if ref is not None else float("nan")
        row.update(metrics(x), **extra)
        rows.append(row)
        logger.info("%s", row)
        save()

    def disc(w: float, steps: float, cache: dict[int, torch.Tensor]) -> float:
        """Median distance of full CFG at ``steps`` (linearly interpolated between the neighbouring integer
        step counts) to full CFG at the reference step count, on the yardstick samples (``cache`` holds the
        full-CFG runs at scale ``w`` by step count)."""
        lo, hi = math.floor(steps), math.ceil(steps)
        for k in {lo, hi}:
            if k not in cache:
                cache[k] = sample(None, w, k, n=args.yardstick_samples)[0]
        ref = cache[args.reference_steps]
        d_lo, d_hi = distance(cache[lo], ref), distance(cache[hi], ref)
        return d_lo + (steps - lo) * (d_hi - d_lo)

    scales = [float(s) for s in args.scales.split(",")]
    for w in scales:
        cfg, evals = sample(None, w, args.steps)
        add(w, "CFG", cfg, evals, cfg)
        cache: dict[int, torch.Tensor] = {
            args.reference_steps: sample(None, w, args.reference_steps, n=args.yardstick_samples)[0],
            args.steps: cfg[: args.yardstick_samples],
        }
        yard.append(
            {
                "w": w,
                "method": "CFG",
                "evals": 2.0 * args.steps,
                "err": 0.0,
                "disc": disc(w, args.steps, cache),
            }
        )
        linear_ag = None
        if "LinearAG" not in skip:
            calls = [
                {"class_labels": calib_labels[i : i + args.batch_size], "guidance_scale": w,
                 "num_inference_steps": args.steps, "latents": calib_noise[i : i + args.batch_size],
                 "output_type": "latent"}
                for i in range(0, args.calibration_samples, args.batch_size)
            ]  # fmt: skip
            linear_ag = LinearAG(LinearAG.fit(pipe, calls))
        for name, method in _methods(w, linear_ag).items():
            if name == "CFG" or any(name.startswith(s) for s in skip):
                continue
            x, evals = sample(method, w, args.steps)
            add(w, name, x, evals, cfg)
            if evals < 2 * args.steps - 1e-9:
                err = distance(x[: args.yardstick_samples], cfg[: args.yardstick_samples])
                yard.append(
                    {"w": w, "method": name, "evals": evals, "err": err, "disc": disc(w, evals / 2, cache)}
                )
                logger.info("yardstick %s", yard[-1])
                save()
        if w == max(scales):
            x, evals = sample(None, 5.0, args.steps)
            add(5.0, "CFG", x, evals, None)
            x, evals = sample(None, 1.0, args.steps)
            add(1.0, "no guidance (w=1)", x, evals, cfg, note=f"dist to CFG w={w}")
    save()
    (out_dir / "report.md").write_text(render(json.loads(results_path.read_text())))
    logger.info("done in %.0f s; %s", wall.elapsed(), results_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
