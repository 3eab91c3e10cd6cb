"""``fastsample tune``: the cheapest recipe above a paired-fidelity floor (:mod:`fastsample.tune`)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from fastsample.cli._common import CommandError, add_out, add_pipeline, add_quiet, positive_int

NAME = "tune"
HELP = "search solver x grid x steps x guidance x cache for the cheapest recipe above a fidelity floor"
DESCRIPTION = """\
Successive-halving search over solver × step grid × steps × guidance method (CFG, AG, a window) × feature
cache (× attention path, DiT savings) for the cheapest recipe whose median paired PSNR to the pipeline's own
reference (its scheduler at --reference-steps with full CFG, same noise and conditions) is at least --floor
dB. The cost is clock-free:
denoiser rows × fraction of units computed, per image. Writes recipe.json (apply it with
fs.optimize(pipe, recipe="recipe.json")), front.md (the Pareto front) and front.png (with matplotlib).

Examples:
  fastsample tune --pipeline fixture:dit --samples 2 4 --out tuned/
  fastsample tune --pipeline embedded --floor 30 --out tuned/
  fastsample tune --pipeline embedded --space diffusers --out tuned-diffusers/
"""

# Mirrors of fastsample.tune (a test checks they agree), so --help needs no torch.
SPACES = ("default", "diffusers")
DEFAULT_SAMPLES = (4, 12, 32)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``fastsample tune``."""
    add_pipeline(parser)
    parser.add_argument("--floor", type=float, default=30.0, help="median paired PSNR floor (dB)")
    parser.add_argument(
        "--space",
        choices=SPACES,
        default="default",
        help="search space: fastsample's and diffusers', or diffusers' schedulers only",
    )
    parser.add_argument("--schedulers", nargs="+", default=None, help="override the space's schedulers")
    parser.add_argument(
        "--steps",
        nargs="+",
        type=positive_int,
        default=None,
        help="sampling steps to search (default: the space's)",
    )
    parser.add_argument(
        "--samples", nargs="+", type=positive_int, default=list(DEFAULT_SAMPLES), help="images per round"
    )
    parser.add_argument("--eta", type=positive_int, default=3, help="keep 1/eta of the candidates per round")
    parser.add_argument("--reference-steps", type=positive_int, default=100, help="steps of the reference")
    parser.add_argument("--prompts", nargs="+", default=None, help="prompts of a text-to-image pipeline")
    parser.add_argument(
        "--labels",
        nargs="+",
        type=int,
        default=None,
        help="class labels (default: 0..9 for the embedded DiT)",
    )
    parser.add_argument("--guidance-scale", type=float, default=None, help="default: the pipeline's")
    parser.add_argument("--batch-size", type=positive_int, default=8, help="images per pipeline call")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda")
    parser.add_argument("--seed", type=int, default=0, help="image i uses seed + i (and a fixture's weights)")
    add_out(parser, "folder for recipe.json, front.md and front.png", required=True, metavar="DIR")
    add_quiet(parser)


def run(args: argparse.Namespace) -> int:
    import dataclasses

    from fastsample.cli.pipeline import check_device, load_pipeline_arg
    from fastsample.tune import DEFAULT_SPACE, DIFFUSERS_SPACE, tune

    check_device(args.device)
    space = DEFAULT_SPACE if args.space == "default" else DIFFUSERS_SPACE
    try:
        if args.schedulers:
            space = dataclasses.replace(space, schedulers=tuple(args.schedulers))
        if args.steps:
            space = dataclasses.replace(space, steps=tuple(args.steps))
        space.recipes()  # validates the scheduler names before anything is loaded
    except ValueError as error:
        raise CommandError("--schedulers", str(error)) from error
    if sorted(set(args.samples)) != list(args.samples):
        raise CommandError("--samples", f"must be strictly increasing, got {args.samples}")
    if args.prompts and args.labels:
        raise CommandError("--prompts", "pass --prompts or --labels, not both")
    loaded = load_pipeline_arg(args.pipeline, device=args.device, seed=args.seed)
    pipe = loaded.pipe
    conditions = {}
    if args.prompts:
        conditions["prompts"] = args.prompts
    elif args.labels is not None:
        conditions["class_labels"] = args.labels
    elif "class_labels" in _call_parameters(pipe):
        conditions["class_labels"] = list(range(getattr(pipe, "num_classes", None) or 10))
    else:
        conditions["prompts"] = ["a photo of a red circle"]
    result = tune(
        pipe,
        **conditions,
        floor_db=args.floor,
        space=space,
        samples=args.samples,
        eta=args.eta,
        reference_steps=args.reference_steps,
        guidance_scale=args.guidance_scale,
        seed=args.seed,
        batch_size=args.batch_size,
        progress=not args.quiet,
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = [
        f"# fastsample tune: {loaded.description}",
        "",
        f"Command: `{args.command_line}`",
        "",
        result.table(),
    ]
    (out / "front.md").write_text("\n".join(report) + "\n")
    try:
        result.plot(out / "front.png")
    except ImportError:  # matplotlib is an extra (`pip install "fastsample[bench]"`)
        logging.getLogger(__name__).warning("no front.png: matplotlib is not installed")
    print(result.table())
    if result.chosen is None:
        raise CommandError("--floor", str(_no_recipe(result)))
    recipe = result.recipe()
    recipe.save(out / "recipe.json")
    print(f"\nchosen: {recipe.name}; wrote {out / 'recipe.json'}, {out / 'front.md'}, {out / 'front.png'}")
    return 0


def _no_recipe(result) -> str:
    try:
        result.recipe()
    except ValueError as error:
        return str(error)
    return ""


def _call_parameters(pipe) -> set[str]:
    import inspect

    return set(inspect.signature(type(pipe).__call__).parameters)
