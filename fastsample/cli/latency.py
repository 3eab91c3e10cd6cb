"""``fastsample latency``: latency, NFE, MACs and peak memory of a diffusers pipeline
(:mod:`fastsample.eval.latency`)."""

from __future__ import annotations

import argparse
import inspect
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

from fastsample.cli._common import (
    CommandError,
    add_deprecated_alias,
    add_out,
    add_pipeline,
    add_quiet,
    non_negative_int,
    positive_int,
)

NAME = "latency"
HELP = "latency, NFE, MACs and peak memory of a diffusers pipeline"
DESCRIPTION = """\
Warm-up calls, then timed calls (at least 10); median and p90 in up to three scopes: model_step (one
denoiser call), denoising_loop (first denoiser call to last scheduler step) and end_to_end (the whole
pipe(...) call). The report gives the versions, the machine, NFE, MACs and peak memory (CUDA: max allocated;
CPU: peak resident set size of the process).

Examples:
  fastsample latency --pipeline fixture:dit --steps 8 --compare-steps 4
  fastsample latency --pipeline ./my-pipeline --steps 20 --device cuda --out latency/
"""

# Mirrors of fastsample.eval.latency (a test checks they agree), so --help needs no torch.
SCOPES = ("model_step", "denoising_loop", "end_to_end")
MIN_REPEATS = 10


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_pipeline(parser)
    parser.add_argument("--tiny", dest="tiny", default=None, help=argparse.SUPPRESS)  # deprecated: fixture:
    parser.add_argument("--steps", type=positive_int, default=20, help="sampling steps (num_inference_steps)")
    parser.add_argument(
        "--compare-steps",
        type=positive_int,
        default=None,
        help="also time this many steps, interleaved with --steps, and report the speedup",
    )
    parser.add_argument("--prompt", default="a photo of a red circle", help="prompt of text pipelines")
    parser.add_argument(
        "--class-label", type=int, default=0, help="class label of class-conditional pipelines"
    )
    parser.add_argument(
        "--guidance-scale", type=float, default=None, help="guidance scale (default: the pipeline's)"
    )
    parser.add_argument("--batch-size", type=positive_int, default=1, help="images per call")
    parser.add_argument(
        "--output-type",
        default="np",
        choices=("np", "pil", "latent", "pt"),
        help="the pipeline's output_type",
    )
    parser.add_argument("--scopes", nargs="+", choices=SCOPES, default=list(SCOPES), help="what to time")
    parser.add_argument("--warmup", type=non_negative_int, default=3, help="untimed calls first")
    parser.add_argument(
        "--repeats", type=positive_int, default=MIN_REPEATS, help=f"timed calls (at least {MIN_REPEATS})"
    )
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda")
    parser.add_argument("--seed", type=int, default=0, help="seed of the noise (and of a fixture's weights)")
    parser.add_argument("--no-macs", action="store_true", help="skip counting MACs")
    add_out(parser, "folder for latency.md, latency.json and latency_raw.json")
    add_deprecated_alias(parser, "--output", new="--out", dest="out")
    add_quiet(parser)


def pipeline_spec(args: argparse.Namespace) -> str:
    """``--pipeline``, or the deprecated ``--tiny NAME`` (= ``fixture:NAME``)."""
    if args.tiny is None:
        return args.pipeline
    print(
        "fastsample latency: warning: --tiny NAME is deprecated and will be removed in the next release; "
        "use --pipeline fixture:NAME",
        file=sys.stderr,
    )
    return f"fixture:{args.tiny}"


def call_kwargs(args: argparse.Namespace, loaded: Any) -> dict[str, Any]:
    """The timed call's arguments: the fixture's own (a fixture), else a prompt or class labels."""
    import torch

    kwargs: dict[str, Any] = {}
    if loaded.fixture is not None:
        from fastsample import testing

        kwargs = dict(testing.call_kwargs(loaded.fixture, seed=args.seed))
    parameters = inspect.signature(loaded.pipe.__call__).parameters
    if "class_labels" in parameters:
        kwargs["class_labels"] = [args.class_label] * args.batch_size
        kwargs.pop("prompt", None)
    elif "prompt" in parameters:
        kwargs["prompt"] = [args.prompt] * args.batch_size
        if "negative_prompt" in kwargs:
            kwargs["negative_prompt"] = [kwargs["negative_prompt"]] * args.batch_size
    kwargs["generator"] = torch.Generator("cpu").manual_seed(args.seed)
    kwargs["num_inference_steps"] = args.steps
    kwargs["output_type"] = args.output_type
    if args.guidance_scale is not None:
        kwargs["guidance_scale"] = args.guidance_scale
    return kwargs


def peak_rss_mib() -> float | None:
    """Peak resident set size of this process in MiB (``getrusage``; None where unsupported)."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, KiB on Linux


def _progress(pipe: Any, quiet: bool):
    """A progress bar counting denoiser calls (the measurement's own calls are not changed)."""
    from tqdm.auto import tqdm

    from fastsample.integration.adapters import resolve_denoiser

    bar = tqdm(desc="latency (denoiser calls)", unit="call", disable=quiet)

    def count(*_: Any) -> None:  # a pre-hook's return value would replace the inputs: return None
        bar.update()

    handle = resolve_denoiser(pipe, "latency").register_forward_pre_hook(count)
    return bar, handle


def run(args: argparse.Namespace) -> int:
    from fastsample.cli.pipeline import check_device, load_pipeline_arg

    if args.repeats < MIN_REPEATS:
        raise CommandError("--repeats", f"must be >= {MIN_REPEATS} for a median and p90, got {args.repeats}")
    check_device(args.device)
    spec = pipeline_spec(args)
    loaded = load_pipeline_arg(spec, device=args.device, seed=args.seed)
    import torch

    from fastsample.eval.bench import _versions
    from fastsample.eval.latency import compare_latency, measure_pipeline
    from fastsample.eval.report import write_report

    pipe = loaded.pipe
    kwargs = call_kwargs(args, loaded)
    bar, handle = _progress(pipe, args.quiet)
    try:
        latency = measure_pipeline(
            pipe,
            kwargs,
            scopes=tuple(args.scopes),
            warmup=args.warmup,
            repeats=args.repeats,
            count_compute=not args.no_macs,
            device=args.device,
        )
        comparison = None
        if args.compare_steps is not None:
            candidate_kwargs = {**kwargs, "num_inference_steps": args.compare_steps}
            comparison = compare_latency(
                lambda: pipe(**kwargs),
                lambda: pipe(**candidate_kwargs),
                warmup=args.warmup,
                repeats=args.repeats,
                device=args.device,
            )
    finally:
        handle.remove()
        bar.close()
    on_cuda = torch.device(args.device).type == "cuda"
    peak_rss = peak_rss_mib()
    rows = []
    for scope, timing in latency.scopes.items():
        row: dict[str, Any] = {
            "scope": scope,
            "steps": args.steps,
            "nfe": latency.nfe_per_call,
            "median_s": timing.median_s,
            "p90_s": timing.p90_s,
        }
        if on_cuda:
            row["peak_memory_MiB"] = (timing.peak_memory_bytes or 0) / 2**20
        rows.append(row)
    summary: dict[str, Any] = latency.to_dict()
    if comparison is not None:
        summary["comparison"] = comparison.to_dict()
        rows.append(
            {
                "scope": f"end_to_end, {args.steps} vs {args.compare_steps} steps (interleaved)",
                "steps": args.compare_steps,
                "median_s": comparison.candidate.median_s,
                "p90_s": comparison.candidate.p90_s,
                "speedup": comparison.speedup,
            }
        )
    setup = {
        "command": args.command_line,
        "pipeline": f"{spec} ({loaded.description})",
        "versions": _versions(),
        "machine": f"{platform.platform()}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}",
        "device": args.device + (f" ({torch.cuda.get_device_name(args.device)})" if on_cuda else ""),
        "steps": args.steps,
        "batch_size": args.batch_size,
        "warmup": args.warmup,
        "repeats": args.repeats,
    }
    if peak_rss is not None:
        setup["peak RSS of the process (MiB, getrusage)"] = round(peak_rss, 1)
    summary["setup"] = setup
    for key in ("versions", "machine", "device"):
        print(f"{key}: {setup[key]}")
    for row in rows:
        print("  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
    if peak_rss is not None:
        print(f"peak RSS of the process: {peak_rss:.1f} MiB")
    if latency.macs_per_call is not None:
        print(
            f"MACs per call: {latency.macs_per_call:.4g} (denoiser {latency.denoiser_macs_per_call:.4g}, "
            f"attention by hand {latency.attention_macs_per_call:.4g})"
        )
    if args.out:
        write_report(
            args.out, rows, title="fastsample latency", quality_key=None, setup=setup, name="latency"
        )
        Path(args.out, "latency_raw.json").write_text(json.dumps(summary, indent=2, default=str))
    return 0
