"""Per-step scheduler overhead of the fastsample solvers against DPMSolverMultistepScheduler.

What is timed: ``set_timesteps(N)`` and N ``scale_model_input`` + ``step`` calls on a 4×4×128×128 latent
with a fixed model output (no network), divided by the number of calls: the scheduler's own cost per call. The
schedulers are timed in interleaved rounds (``torch.utils.benchmark.Timer.timeit``, shuffled order per round),
so that load on a shared machine hits all of them alike; the figure of merit is the median over rounds of the
per-round ratio to ``DPMSolverMultistepScheduler`` (SD1.5 config).

    python benchmarks/scheduler_overhead.py [--steps 20] [--rounds 25] [--threads 1] [--device cpu]
        [--out benchmarks/results/scheduler_overhead.md]
"""

from __future__ import annotations

import argparse
import platform
import random
import statistics

import diffusers
import torch
import torch.utils.benchmark as benchmark

from fastsample.integration.measure import Stopwatch
from fastsample.solvers import (
    GHVBScheduler,
    HeavyBallScheduler,
    MomentumDPMSolverMultistepScheduler,
    PNDMFamilyScheduler,
)

SD15 = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    steps_offset=1,
    set_alpha_to_one=False,
    skip_prk_steps=True,
)


def schedulers() -> dict:
    base = diffusers.PNDMScheduler(**SD15).config
    return {
        "DPMSolverMultistep (diffusers, baseline)": diffusers.DPMSolverMultistepScheduler.from_config(base),
        "PNDM/PLMS (diffusers)": diffusers.PNDMScheduler.from_config(base),
        "Euler (diffusers)": diffusers.EulerDiscreteScheduler.from_config(base),
        "UniPC (diffusers)": diffusers.UniPCMultistepScheduler.from_config(base),
        "PLMS (fastsample)": PNDMFamilyScheduler.from_config(base),
        "F-PNDM (fastsample)": PNDMFamilyScheduler.from_config(base, method="f_pndm"),
        "GHVB default (fastsample)": GHVBScheduler.from_config(base),
        "GHVB data space q2 (fastsample)": GHVBScheduler.from_config(
            base, ghvb_order=2.0, solver_space="data", variable_step=True
        ),
        "GHVB 2.5 (fastsample)": GHVBScheduler.from_config(base, ghvb_order=2.5),
        "GHVB 3.8 (fastsample)": GHVBScheduler.from_config(base, ghvb_order=3.8),
        "PLMS4 + HB 0.8 (fastsample)": HeavyBallScheduler.from_config(base, plms_order=4, momentum=0.8),
        "PLMS4 + Nesterov 0.8 (fastsample)": HeavyBallScheduler.from_config(
            base, momentum=0.8, nesterov=True
        ),
        "DPM++2M + HB 0.8 (fastsample)": MomentumDPMSolverMultistepScheduler.from_config(base, momentum=0.8),
    }


def run_loop(scheduler, n: int, sample: torch.Tensor, model_output: torch.Tensor) -> int:
    """set_timesteps + the sampling loop with a fixed output; returns the number of step calls."""
    scheduler.set_timesteps(n, device=sample.device)
    x = sample
    for t in scheduler.timesteps:
        scheduler.scale_model_input(x, t)
        x = scheduler.step(model_output, t, x).prev_sample
    if sample.device.type == "cuda":
        torch.cuda.synchronize()
    return len(scheduler.timesteps)


def measure(steps: int, rounds: int, device: str) -> list[tuple[str, float, float, int]]:
    """(name, median µs per call, median per-round ratio to the first scheduler, calls) per scheduler."""
    gen = torch.Generator().manual_seed(0)
    sample = torch.randn(4, 4, 128, 128, generator=gen).to(device)
    model_output = (0.9 * sample + 0.1 * torch.randn(4, 4, 128, 128, generator=gen).to(device)).contiguous()
    scheds = schedulers()
    timers, calls = {}, {}
    for name, sched in scheds.items():
        calls[name] = run_loop(sched, steps, sample, model_output)  # warm-up and call count
        timers[name] = benchmark.Timer(
            stmt="run_loop(sched, steps, sample, model_output)",
            globals=dict(
                run_loop=run_loop, sched=sched, steps=steps, sample=sample, model_output=model_output
            ),
            num_threads=torch.get_num_threads(),
        )
    baseline = next(iter(scheds))
    per_call = {name: [] for name in scheds}
    rng = random.Random(0)
    for _ in range(rounds):
        order = list(scheds)
        rng.shuffle(order)
        for name in order:
            per_call[name].append(timers[name].timeit(number=1).median / calls[name])
    rows = []
    for name in scheds:
        ratios = [a / b for a, b in zip(per_call[name], per_call[baseline])]
        rows.append((name, statistics.median(per_call[name]), statistics.median(ratios), calls[name]))
    return rows


def render(rows, args, elapsed: float) -> str:
    lines = [
        "# Scheduler overhead per model call (fastsample vs diffusers)",
        "",
        f"Command: `python benchmarks/scheduler_overhead.py --steps {args.steps} --rounds {args.rounds} "
        f"--threads {args.threads} --device {args.device}`",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
        f"device `{args.device}`; Python {platform.python_version()}, torch {torch.__version__}, "
        f"diffusers {diffusers.__version__}. Wall time of the run: {elapsed:.0f} s.",
        "",
        f"Latent 4×4×128×128 float32, SD1.5 scheduler config, N = {args.steps} steps, fixed model output (no "
        "network): `set_timesteps` + every `scale_model_input`/`step` call, divided by the number of calls. "
        f"{args.rounds} interleaved rounds (shuffled order); ratio = median over rounds of the per-round "
        "ratio to DPMSolverMultistepScheduler. The machine is shared (other jobs running), so absolute "
        "times are noisy; the ratio is the figure to read.",
        "",
        "| scheduler | calls | µs per call (median) | ratio to DPM-Solver++ (median) |",
        "|---|---|---|---|",
    ]
    for name, per_call, ratio, calls in rows:
        lines.append(f"| {name} | {calls} | {per_call * 1e6:.0f} | {ratio:.2f}× |")
    lines += [
        "",
        "Target: fastsample schedulers ≤ 1.0× DPMSolverMultistepScheduler. The fastsample schedulers make no "
        "device sync per step (the NaN/inf check of the model output is the `check_finite` debug flag, off).",
        "",
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=25)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default="benchmarks/results/scheduler_overhead.md")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    watch = Stopwatch().start()
    rows = measure(args.steps, args.rounds, args.device)
    text = render(rows, args, watch.elapsed())
    print(text)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as fh:
            fh.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
