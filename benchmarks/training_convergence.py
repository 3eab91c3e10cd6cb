"""In-domain Fréchet distance against training steps for ``fastsample train`` runs (issue 6 benchmark).

The sampler follows each run's saved ``train_config.json``: VP runs are sampled with DPM-Solver++(2M) (20
steps, training betas), flow-matching runs (``--prediction-type flow``) with their own FlowMatch Euler config
(50 steps). Step 0 of a post-training run (``--init-from``) is its start (the source's weights).

Train the runs first (same seed and data stream; only the weighting differs), e.g.::

    fastsample train --output-dir runs/baseline --weighting none --steps 1500 --checkpoint-every-steps 150 \
        --checkpoint-every-minutes 0 --keep-checkpoints 50 --num-threads 1
    fastsample train --output-dir runs/minsnr --weighting min_snr --snr-gamma 5 ...same flags...

then evaluate the EMA weights of each checkpoint (fixed sampler, fixed noise and labels, FD against real
procedural samples with the shipped feature net, the same reference as ``fastsample bench``)::

    python benchmarks/training_convergence.py eval --run baseline=runs/baseline --steps 300 600 --out b.json
    python benchmarks/training_convergence.py report b.json m.json --baseline baseline --candidate minsnr \
        --plot benchmarks/results/img/training_fd.png

MixFlow post-training (flow matching): pretrain with ``--prediction-type flow``, then start two runs from
its checkpoint with ``--init-from`` (same seed, so the same data, noise and τ streams), one with
``--mixflow-gamma 0.4``; ``eval`` each at step 0 (the start, evaluated once: ``report`` shares it between
runs with the same source) and at their checkpoints (see benchmarks/results/training.md for the commands).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger("training_convergence")


def load_run_config(run_dir: Path):
    """The ``TrainConfig`` a run saved in ``train_config.json``."""
    from fastsample.training.trainer import TrainConfig

    fields = json.loads((run_dir / "train_config.json").read_text())
    fields["adam_betas"] = tuple(fields["adam_betas"])
    return TrainConfig(**fields)


def load_ema_transformer(run_dir: Path, step: int):
    """The EMA weights of checkpoint ``step`` of a ``fastsample train`` run in a fresh model (eval mode),
    and the run's config. Step 0 of a post-training run (``--init-from``) is its start: the source's weights.
    """
    from fastsample.training.trainer import build_model, load_checkpoint_ema, load_init_weights

    config = load_run_config(run_dir)
    model = build_model(config)
    checkpoint = run_dir / f"checkpoint-{step}"
    if step == 0 and not checkpoint.exists() and config.init_from is not None:
        load_init_weights(config, model)
    else:
        load_checkpoint_ema(checkpoint, model)
    return model.eval(), config


def sampler_for(config, steps: int | None):
    """The run's sampling scheduler (from its saved prediction type, never from a flag) and its step count:
    DPM-Solver++(2M) with the training betas, 20 steps, for VP runs; the run's own FlowMatch Euler config,
    50 steps, for flow runs (Euler is first order: 50 steps keep its error small next to the FD changes)."""
    import diffusers

    from fastsample.training.trainer import sampling_scheduler_config

    scheduler_config = sampling_scheduler_config(config.prediction_type)
    scheduler = getattr(diffusers, scheduler_config["_class_name"]).from_config(scheduler_config)
    default = 50 if config.prediction_type == "flow" else 20
    return scheduler, steps if steps is not None else default


def evaluate(args: argparse.Namespace) -> None:
    from tqdm.auto import tqdm

    from fastsample.eval.bench import _statistics
    from fastsample.eval.extractors import InDomainExtractor
    from fastsample.eval.frechet import frechet_distance
    from fastsample.pipelines.pixel_dit import PixelDiTPipeline
    from fastsample.zoo.data import generate_batch
    from fastsample.zoo.default import classify, load_feature_net

    torch.set_num_threads(args.threads)
    name, run_dir = args.run.split("=", 1)
    feature_net = load_feature_net()
    extractor = InDomainExtractor(feature_net)
    real, _ = generate_batch(args.reference_samples, seed=args.seed + 1)  # as fastsample bench
    reference = _statistics(extractor, (real + 1) / 2)
    check, _ = generate_batch(args.samples, seed=args.seed + 2)
    floor_stats = _statistics(extractor, (check + 1) / 2)
    floor = frechet_distance(floor_stats.mu, floor_stats.sigma, reference.mu, reference.sigma)
    labels = torch.arange(args.samples) % 10
    noise = torch.randn(args.samples, 3, 32, 32, generator=torch.Generator().manual_seed(args.seed))
    rows = []
    run_config = load_run_config(Path(run_dir))
    _, sampler_steps = sampler_for(run_config, args.sampler_steps)
    for step in tqdm(args.steps, desc=name):
        model, config = load_ema_transformer(Path(run_dir), step)
        scheduler, _ = sampler_for(config, args.sampler_steps)
        pipe = PixelDiTPipeline(transformer=model, scheduler=scheduler)
        pipe.set_progress_bar_config(disable=True)
        images = []
        with torch.no_grad():
            for lab, lat in zip(labels.split(args.batch_size), noise.split(args.batch_size)):
                out = pipe(
                    class_labels=lab,
                    guidance_scale=args.guidance_scale,
                    num_inference_steps=sampler_steps,
                    latents=lat.clone(),
                    generator=torch.Generator().manual_seed(args.seed),
                    output_type="pt",
                ).images
                images.append(out.float().cpu())
        generated = torch.cat(images)
        stats = _statistics(extractor, generated)
        fd = frechet_distance(stats.mu, stats.sigma, reference.mu, reference.sigma)
        accuracy = float((classify(generated, feature_net) == labels).double().mean())
        rows.append({"step": step, "fd": fd, "class_accuracy": accuracy})
        logger.info("%s step %d FD %.3f accuracy %.3f", name, step, fd, accuracy)
    result = {
        "run": name,
        "dir": run_dir,
        "rows": rows,
        "fd_floor": floor,
        "prediction_type": run_config.prediction_type,
        "scheduler": type(scheduler).__name__,
        "sampler_steps": sampler_steps,
        "init_from": run_config.init_from,
        "settings": vars(args) | {},
    }
    result["settings"].pop("func", None)
    Path(args.out).write_text(json.dumps(result, indent=2, default=str) + "\n")


def steps_to_reach(rows: list[dict[str, Any]], target: float) -> float | None:
    """First step where the FD curve reaches ``target``, linearly interpolated between checkpoints."""
    prev = None
    for row in rows:
        if row["fd"] <= target:
            if prev is None:
                return float(row["step"])
            s0, f0, s1, f1 = prev["step"], prev["fd"], row["step"], row["fd"]
            return float(s0 + (f0 - target) / (f0 - f1) * (s1 - s0))
        prev = row
    return None


def report(args: argparse.Namespace) -> None:
    results: dict[str, dict[str, Any]] = {}
    for path in args.results:  # several files of one run are merged, sorted by step
        loaded = json.loads(Path(path).read_text())
        merged = results.setdefault(loaded["run"], {**loaded, "rows": []})
        merged["rows"] = sorted(merged["rows"] + loaded["rows"], key=lambda row: row["step"])
        if merged.get("fd_floor") is None:  # a file copied from a log may lack the floor
            merged["fd_floor"] = loaded.get("fd_floor")
    # Post-training runs from the same start share step 0 (the start), so it is evaluated once.
    for r in results.values():
        if r.get("init_from") and all(row["step"] != 0 for row in r["rows"]):
            for other in results.values():
                start = [row for row in other["rows"] if row["step"] == 0]
                if start and other.get("init_from") == r["init_from"]:
                    r["rows"] = [start[0]] + r["rows"]
                    break
    base, cand = results[args.baseline], results[args.candidate]
    steps = sorted({row["step"] for r in results.values() for row in r["rows"]})
    by = {n: {row["step"]: row for row in r["rows"]} for n, r in results.items()}
    names = list(results)
    print("| step | " + " | ".join(f"FD {n} | acc {n}" for n in names) + " |")
    print("|---|" + "---|---|" * len(names))
    for s in steps:
        cells = []
        for n in names:
            row = by[n].get(s)
            cells += [f"{row['fd']:.3f}", f"{row['class_accuracy']:.3f}"] if row else ["", ""]
        print(f"| {s} | " + " | ".join(cells) + " |")
    final = base["rows"][-1]
    reach = steps_to_reach(cand["rows"], final["fd"])
    print(f"\nbaseline final FD {final['fd']:.3f} at step {final['step']}; FD floor {base['fd_floor']:.3f}")
    start = cand["rows"][0]
    if reach is None:
        print(f"{args.candidate} does not reach it within {cand['rows'][-1]['step']} steps")
    elif start["step"] == 0 and start["fd"] <= final["fd"]:
        print(
            f"the start (step 0, FD {start['fd']:.3f}) is already at or below the baseline's final FD: "
            "no speed-up can be read off"
        )
    else:
        ratio = reach / final["step"]
        print(f"{args.candidate} reaches it at step {reach:.0f} (interpolated) = {ratio:.2f} x the steps")
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        for n, r in results.items():
            ax.plot([x["step"] for x in r["rows"]], [x["fd"] for x in r["rows"]], marker="o", label=n)
        ax.axhline(base["fd_floor"], color="grey", ls="--", label="real-vs-real floor")
        post = base.get("init_from") is not None
        ax.set_xlabel("post-training step (0 = the pretrained start)" if post else "training step")
        ax.set_ylabel("in-domain FD (lower is better)")
        ax.set_yscale("log")
        ax.legend()
        ax.grid(alpha=0.3)
        fig.tight_layout()
        Path(args.plot).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(args.plot, dpi=110)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    e = sub.add_parser("eval", help="FD of each checkpoint's EMA weights")
    e.add_argument("--run", required=True, help="NAME=RUN_DIR")
    e.add_argument("--steps", type=int, nargs="+", required=True, help="checkpoint steps to evaluate")
    e.add_argument("--samples", type=int, default=500)
    e.add_argument("--reference-samples", type=int, default=2000)
    e.add_argument(
        "--sampler-steps",
        type=int,
        default=None,
        help="default: 20 DPM-Solver++(2M) steps (VP runs), 50 FlowMatch Euler steps (flow runs)",
    )
    e.add_argument("--guidance-scale", type=float, default=4.0, help="CFG scale (fastsample bench default)")
    e.add_argument("--batch-size", type=int, default=250)
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--threads", type=int, default=1)
    e.add_argument("--out", required=True)
    e.set_defaults(func=evaluate)
    r = sub.add_parser("report", help="markdown table, steps-to-reach and plot")
    r.add_argument("results", nargs="+")
    r.add_argument("--baseline", required=True)
    r.add_argument("--candidate", required=True)
    r.add_argument("--plot", default=None)
    r.set_defaults(func=report)
    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
