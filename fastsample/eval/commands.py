"""``fastsample fid`` and ``fastsample latency`` subcommands."""

from __future__ import annotations

import argparse
import functools
import inspect
import json
import sys
from pathlib import Path
from typing import Any

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``fid`` and ``latency`` subcommands."""
    from fastsample.eval.extractors import EXTRACTOR_NAMES
    from fastsample.eval.inception import INCEPTION_WEIGHTS_ENV, INCEPTION_WEIGHTS_FILENAME
    from fastsample.eval.latency import MIN_REPEATS, SCOPES
    from fastsample.eval.preprocess import PREPROCESSING_MODES

    fid = subparsers.add_parser(
        "fid",
        help="Fréchet distance (FID) between two image folders or .npz statistics files",
        description="FID between A and B (image folders or pytorch-fid .npz statistics). With --save-stats, "
        "compute the statistics of folder A and write them to B (pytorch-fid's format).",
    )
    fid.add_argument("a", help="image folder or .npz statistics")
    fid.add_argument("b", help="image folder or .npz statistics (with --save-stats: the output .npz)")
    fid.add_argument("--extractor", choices=EXTRACTOR_NAMES, default="inception")
    fid.add_argument(
        "--weights",
        default=None,
        help=f"local {INCEPTION_WEIGHTS_FILENAME} (or .safetensors); default ${INCEPTION_WEIGHTS_ENV}",
    )
    fid.add_argument("--preprocessing", choices=PREPROCESSING_MODES, default="pytorch-fid")
    fid.add_argument("--batch-size", type=int, default=50)
    fid.add_argument("--device", default="cpu")
    fid.add_argument(
        "--allow-mixed-sizes", action="store_true", help="accept folders with images of several sizes"
    )
    fid.add_argument(
        "--save-stats", action="store_true", help="write the statistics of folder A to the file B"
    )
    fid.add_argument("--json", default=None, help="also write the result to this JSON file")
    fid.set_defaults(func=run_fid)

    latency = subparsers.add_parser(
        "latency",
        help="latency, NFE, MACs and peak memory of a diffusers pipeline",
        description="Warm-up, then >= 10 timed calls; median and p90 in up to three scopes.",
    )
    source = latency.add_mutually_exclusive_group(required=True)
    source.add_argument("--pipeline", help="local folder for DiffusionPipeline.from_pretrained (no download)")
    source.add_argument("--tiny", help="a tiny random-weight pipeline from fastsample.testing (e.g. dit, sd)")
    latency.add_argument("--steps", type=int, default=20, help="num_inference_steps")
    latency.add_argument(
        "--compare-steps",
        type=int,
        default=None,
        help="also time this many steps, interleaved with --steps, and report the speedup",
    )
    latency.add_argument("--prompt", default="a photo of a red circle")
    latency.add_argument("--class-label", type=int, default=0)
    latency.add_argument("--guidance-scale", type=float, default=None)
    latency.add_argument("--batch-size", type=int, default=1, help="images per call")
    latency.add_argument("--output-type", default="np", choices=("np", "pil", "latent", "pt"))
    latency.add_argument("--scopes", nargs="+", choices=SCOPES, default=list(SCOPES))
    latency.add_argument("--warmup", type=int, default=3)
    latency.add_argument("--repeats", type=int, default=MIN_REPEATS)
    latency.add_argument("--device", default="cpu")
    latency.add_argument("--seed", type=int, default=0)
    latency.add_argument("--no-macs", action="store_true", help="skip counting MACs")
    latency.add_argument("--out", default=None, help="folder for latency.md / latency.json")
    latency.set_defaults(func=run_latency)


# ---------------------------------------------------------------------------------------------------------
def _report_errors(handler):
    """Print expected user errors (bad paths, missing weights, bad inputs) and exit with status 2."""

    @functools.wraps(handler)
    def wrapped(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except (FileNotFoundError, NotADirectoryError, ValueError, TypeError, ImportError) as error:
            print(f"fastsample {args.command}: error: {error}", file=sys.stderr)
            return 2

    return wrapped


@_report_errors
def run_fid(args: argparse.Namespace) -> int:
    from fastsample.eval.extractors import get_extractor
    from fastsample.eval.fid import compute_statistics
    from fastsample.eval.stats import fid_from_statistics, save_statistics

    needs_images = args.save_stats or not (args.a.endswith(".npz") and args.b.endswith(".npz"))
    extractor = (
        get_extractor(
            args.extractor, weights=args.weights, preprocessing=args.preprocessing, device=args.device
        )
        if needs_images
        else None
    )

    def stats(source: str):
        return compute_statistics(
            source, extractor, batch_size=args.batch_size, allow_mixed_sizes=args.allow_mixed_sizes
        )

    if args.save_stats:
        if not args.b.endswith(".npz"):
            raise ValueError("with --save-stats, B must be the output .npz path.")
        result = stats(args.a)
        save_statistics(args.b, result)
        print(f"saved statistics of {result.num_samples} images ({result.feature_dim}-d) to {args.b}")
        return 0
    value = fid_from_statistics(stats(args.a), stats(args.b))
    print(f"FID: {value:.6f}")
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "fid": value,
                    "a": args.a,
                    "b": args.b,
                    "extractor": args.extractor,
                    "preprocessing": args.preprocessing,
                },
                indent=2,
            )
        )
    return 0


def _load_pipeline(args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    import torch

    if args.tiny:
        try:
            from fastsample import testing
        except ImportError as error:
            raise ImportError("--tiny needs fastsample.testing, which is not available.") from error
        pipe = testing.tiny_pipeline(args.tiny, seed=args.seed)
        kwargs = dict(testing.call_kwargs(args.tiny, seed=args.seed))
    else:
        from diffusers import DiffusionPipeline

        if not Path(args.pipeline).is_dir():
            raise NotADirectoryError(
                f"--pipeline must be a local folder; {args.pipeline!r} is not one (nothing is downloaded)."
            )
        pipe = DiffusionPipeline.from_pretrained(args.pipeline, local_files_only=True)
        kwargs = {}
    pipe.to(args.device)
    if hasattr(pipe, "set_progress_bar_config"):
        pipe.set_progress_bar_config(disable=True)
    parameters = inspect.signature(pipe.__call__).parameters
    kwargs.pop("generator", None)
    if "class_labels" in parameters:
        kwargs["class_labels"] = [args.class_label] * args.batch_size
        kwargs.pop("prompt", None)
    elif "prompt" in parameters:
        kwargs["prompt"] = [args.prompt] * args.batch_size
    kwargs["generator"] = torch.Generator("cpu").manual_seed(args.seed)
    kwargs["num_inference_steps"] = args.steps
    kwargs["output_type"] = args.output_type
    if args.guidance_scale is not None:
        kwargs["guidance_scale"] = args.guidance_scale
    return pipe, kwargs


@_report_errors
def run_latency(args: argparse.Namespace) -> int:
    from fastsample.eval.latency import compare_latency, measure_pipeline
    from fastsample.eval.report import write_report

    pipe, kwargs = _load_pipeline(args)
    latency = measure_pipeline(
        pipe,
        kwargs,
        scopes=tuple(args.scopes),
        warmup=args.warmup,
        repeats=args.repeats,
        count_compute=not args.no_macs,
        device=args.device,
    )
    rows = []
    for scope, timing in latency.scopes.items():
        rows.append(
            {
                "scope": scope,
                "steps": args.steps,
                "nfe": latency.nfe_per_call,
                "median_s": timing.median_s,
                "p90_s": timing.p90_s,
                "peak_memory_MiB": (timing.peak_memory_bytes or 0) / 2**20,
            }
        )
    summary: dict[str, Any] = latency.to_dict()
    if args.compare_steps is not None:
        candidate_kwargs = {**kwargs, "num_inference_steps": args.compare_steps}
        comparison = compare_latency(
            lambda: pipe(**kwargs),
            lambda: pipe(**candidate_kwargs),
            warmup=args.warmup,
            repeats=args.repeats,
            device=args.device,
        )
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
    for row in rows:
        print("  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
    if latency.macs_per_call is not None:
        print(
            f"MACs per call: {latency.macs_per_call:.4g} (denoiser {latency.denoiser_macs_per_call:.4g}, "
            f"attention by hand {latency.attention_macs_per_call:.4g})"
        )
    if args.out:
        setup = {
            "pipeline": args.pipeline or f"tiny:{args.tiny}",
            "device": args.device,
            "steps": args.steps,
            "batch_size": args.batch_size,
            "warmup": args.warmup,
            "repeats": args.repeats,
        }
        write_report(
            args.out, rows, title="fastsample latency", quality_key=None, setup=setup, name="latency"
        )
        Path(args.out, "latency_raw.json").write_text(json.dumps(summary, indent=2, default=str))
    return 0
