"""Guidance windows (issue 18, item 4): unconditional work skipped and paired fidelity to full CFG on the
embedded VP and flow DiTs, with the wall-clock of each row against full CFG.

    OMP_NUM_THREADS=1 nice -n 15 python benchmarks/guidance_window.py --models vp flow --samples 32 \\
        --steps 20 --repeats 3 --out /tmp/guidance_window.json

Setting: ``fastsample.zoo.default.load_default_pipeline(model=...)`` with its shipped scheduler (VP:
DPM-Solver++ 2M; flow: FlowMatch Euler, shift 3), ``--steps`` steps, guidance scale ``--scale``, ``--samples``
samples (labels ``i % 10``, one seeded generator per sample, so every row starts from the same noises) in
batches of ``--batch``. Rows: full CFG (the pipeline's own, no hook: the reference), Adaptive Guidance
alone, and :class:`fastsample.guidance.GuidanceWindow` over the progress windows ``--windows`` (e.g.
``0:0.6``: guidance on the first, high-noise 60 % of the trajectory, the unconditional pass skipped after
it) and ``--ag-windows`` (the same with AG's switch inside); with ``--head DIR``, the window a trained
annealing head asks for (:meth:`fastsample.guidance.AnnealingHead.window`), alone and with AG.

Per row:

* ``uncond skipped``: 1 − (unconditional samples evaluated) / (steps × samples); the samples the denoiser
  really ran are counted by :class:`fastsample.integration.measure.NFECounter` on the transformer's patch
  embedding (which sees the sliced or re-packed batch) minus the conditional ones (steps × samples);
* ``samples``: all denoiser samples / full CFG's (2 × steps × samples);
* ``PSNR``: per-sample PSNR (images in [0, 1]) to the full-CFG output from the same noise
  (:func:`fastsample.eval.fidelity.paired_fidelity`): median with its 95 % bootstrap interval, and the
  minimum;
* ``time``: per-batch pipeline-call seconds, wall clock and process CPU time (the shared machine's load moves
  the wall clock; with one thread the CPU time is the work done), median and p10–p90 over the ``--repeats``
  × batches calls; the rows are interleaved within each repeat (every row runs batch j of repeat r before any
  runs the next batch), so load changes hit all rows alike; ``speed-up`` = median(full CFG) / median(row).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from typing import Any

import numpy as np
import torch


def _rows(args: argparse.Namespace) -> list[tuple[str, Any]]:
    """(row name, a factory of the guidance method or ``None`` for the pipeline's own CFG)."""
    from fastsample.guidance import AdaptiveGuidance, GuidanceWindow

    rows: list[tuple[str, Any]] = [("full CFG", None)]
    ag = lambda: AdaptiveGuidance(threshold=args.ag_threshold)  # noqa: E731
    rows.append((f"AG γ̄={args.ag_threshold:g}", ag))
    for spec in args.windows:
        start, end = (float(v) for v in spec.split(":"))
        rows.append((f"window [{start:g}, {end:g}]", lambda s=start, e=end: GuidanceWindow(s, e)))
    if args.head is not None:  # the window a trained annealing head asks for (AnnealingHead.window)
        from fastsample.guidance import AnnealingHead

        head = AnnealingHead.from_pretrained(args.head)
        read = {"lam": args.head_lam, "fraction": args.head_fraction, "delta_norm": args.head_delta}
        learned = head.window(**read)
        label = f"learned window [{learned.start:.2f}, {learned.end:.2f}]"
        rows.append((label, lambda: head.window(**read)))
        rows.append((f"{label} + AG", lambda: head.window(**read, inner=ag())))
    for spec in args.ag_windows:
        start, end = (float(v) for v in spec.split(":"))
        rows.append(
            (f"window [{start:g}, {end:g}] + AG", lambda s=start, e=end: GuidanceWindow(s, e, inner=ag()))
        )
    return rows


def run_model(model: str, args: argparse.Namespace) -> dict[str, Any]:
    from fastsample.eval.fidelity import paired_fidelity
    from fastsample.guidance import guide
    from fastsample.integration.measure import NFECounter, Stopwatch
    from fastsample.zoo.default import load_default_pipeline

    pipe = load_default_pipeline(model=model)
    pipe.set_progress_bar_config(disable=True)
    rows = _rows(args)
    batches = [
        list(range(start, min(start + args.batch, args.samples)))
        for start in range(0, args.samples, args.batch)
    ]
    images: dict[str, list[torch.Tensor | None]] = {name: [None] * len(batches) for name, _ in rows}
    seconds: dict[str, list[float]] = {name: [] for name, _ in rows}
    cpu: dict[str, list[float]] = {name: [] for name, _ in rows}
    samples: dict[str, int] = {name: 0 for name, _ in rows}
    counter = NFECounter(pipe.transformer.pos_embed)
    try:
        for repeat in range(args.repeats):
            for j, ids in enumerate(batches):
                for name, factory in rows:
                    handle = guide(pipe, factory()) if factory is not None else None
                    counter.reset()
                    try:
                        with Stopwatch() as watch:
                            out = pipe(
                                class_labels=[i % 10 for i in ids],
                                num_inference_steps=args.steps,
                                guidance_scale=args.scale,
                                generator=[torch.Generator().manual_seed(args.seed + i) for i in ids],
                                output_type="pt",
                            ).images
                    finally:
                        if handle is not None:
                            handle.disable()
                    seconds[name].append(watch.seconds)
                    cpu[name].append(watch.cpu_seconds)
                    if repeat == 0:
                        images[name][j] = out.float().cpu()
                        samples[name] += counter.samples
                    elif not torch.equal(images[name][j], out.float().cpu()):
                        raise RuntimeError(f"{model} {name}: repeat {repeat} differs from repeat 0.")
    finally:
        counter.remove()
    reference = torch.cat(images["full CFG"])
    conditional = args.steps * args.samples
    results: dict[str, Any] = {}
    for name, _ in rows:
        candidate = torch.cat(images[name])
        row: dict[str, Any] = {
            "samples": samples[name] / (2 * conditional),
            "uncond_skipped": 1.0 - (samples[name] - conditional) / conditional,
            "seconds": seconds[name],
            "cpu_seconds": cpu[name],
        }
        if name != "full CFG":
            report = paired_fidelity(candidate, reference, value_range=(0, 1), metrics=("psnr",), n_boot=1000)
            interval = report["psnr"]
            row["psnr"] = [interval.estimate, interval.low, interval.high]
            row["psnr_min"] = float(np.min(report.values["psnr"]))
        results[name] = row
    for key, clock in (("time", "seconds"), ("cpu", "cpu_seconds")):
        base = float(np.median(results["full CFG"][clock]))
        for row in results.values():
            t = np.asarray(row[clock])
            row[key] = [float(np.median(t)), float(np.percentile(t, 10)), float(np.percentile(t, 90))]
            row[f"speedup_{key}"] = base / row[key][0]
    return results


def render(model: str, results: dict[str, Any]) -> str:
    lines = [
        "| row | uncond skipped | samples | PSNR median [95 % CI] | PSNR min "
        "| wall s/batch median [p10, p90] | speed-up (wall) | CPU s/batch median [p10, p90] "
        "| speed-up (CPU) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        psnr = "ref" if "psnr" not in r else f"{r['psnr'][0]:.1f} [{r['psnr'][1]:.1f}, {r['psnr'][2]:.1f}]"
        low = "" if "psnr_min" not in r else f"{r['psnr_min']:.1f}"
        t, c = r["time"], r["cpu"]
        lines.append(
            f"| {name} | {100 * r['uncond_skipped']:.1f} % | {r['samples']:.3f} | {psnr} | {low} | "
            f"{t[0]:.3f} [{t[1]:.3f}, {t[2]:.3f}] | {r['speedup_time']:.2f}x | "
            f"{c[0]:.3f} [{c[1]:.3f}, {c[2]:.3f}] | {r['speedup_cpu']:.2f}x |"
        )
    return f"**{model}**\n\n" + "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["vp", "flow"], choices=["vp", "flow"])
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--scale", type=float, default=4.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1000)
    parser.add_argument("--ag-threshold", type=float, default=0.99)
    parser.add_argument(
        "--windows", nargs="*", default=["0:0.5", "0:0.6", "0:0.7"], help="progress windows start:end"
    )
    parser.add_argument(
        "--ag-windows", nargs="*", default=["0:0.6", "0:0.7"], help="the same, with AG inside"
    )
    parser.add_argument("--head", default=None, help="a trained AnnealingHead folder: add its window")
    parser.add_argument("--head-lam", type=float, default=0.4, help="λ at which the head's window is read")
    parser.add_argument("--head-fraction", type=float, default=0.5, help="AnnealingHead.window's fraction")
    parser.add_argument(
        "--head-delta",
        type=float,
        default=None,
        help="‖ε_u − ε_c‖ at which the window is read (default: the head's)",
    )
    parser.add_argument("--out", default=None, help="JSON file for the figures")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    from fastsample.zoo.solver_table import environment_lines

    payload: dict[str, Any] = {"command": shlex.join(["python", *sys.argv]), "args": vars(args), "models": {}}
    payload |= {"environment": environment_lines(), "load_average": list(os.getloadavg())}
    for model in args.models:
        payload["models"][model] = run_model(model, args)
        print(render(model, payload["models"][model]), flush=True)
    payload["load_average_end"] = list(os.getloadavg())
    print(json.dumps({k: payload[k] for k in ("command", "environment", "load_average")}))
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(payload, handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
