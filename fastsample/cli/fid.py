"""``fastsample fid``: Fréchet distance between two image folders or ``.npz`` statistics files."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from fastsample.cli._common import CommandError, add_deprecated_alias, add_out, add_quiet, positive_int

NAME = "fid"
HELP = "Fréchet distance (FID, or FD with the in-domain net) between two image folders or .npz statistics"
DESCRIPTION = """\
Fréchet distance between A and B (image folders or pytorch-fid .npz statistics). With the Inception
extractor this is FID; with --extractor in-domain it is the in-domain FD of fastsample's feature net
(not comparable with FID). With --save-stats, compute the statistics of folder A and write them to B.

Both paths and the weights are checked before any feature is computed.

Examples:
  fastsample fid generated/ reference.npz --weights pt_inception-2015-12-05-6726825d.pth
  fastsample fid real/ stats.npz --save-stats
  fastsample fid a/ b/ --extractor in-domain
"""

# Mirrors of fastsample.eval's names (a test checks they agree), so --help needs no torch.
EXTRACTOR_NAMES = ("inception", "in-domain")
PREPROCESSING_MODES = ("pytorch-fid", "clean-fid")
INCEPTION_WEIGHTS_ENV = "FASTSAMPLE_INCEPTION_WEIGHTS"
INCEPTION_WEIGHTS_FILENAME = "pt_inception-2015-12-05-6726825d.pth"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("a", help="image folder or .npz statistics")
    parser.add_argument("b", help="image folder or .npz statistics (with --save-stats: the output .npz)")
    parser.add_argument(
        "--extractor",
        choices=EXTRACTOR_NAMES,
        default="inception",
        help="inception: FID's InceptionV3 pool3; in-domain: fastsample's feature net of the zoo images",
    )
    parser.add_argument(
        "--weights",
        default=None,
        metavar="PATH",
        help=f"inception: a local {INCEPTION_WEIGHTS_FILENAME} (or .safetensors), default "
        f"${INCEPTION_WEIGHTS_ENV}; in-domain: a feature net .safetensors, default the shipped one",
    )
    parser.add_argument(
        "--preprocessing",
        choices=PREPROCESSING_MODES,
        default="pytorch-fid",
        help="how images are resized for Inception",
    )
    parser.add_argument("--batch-size", type=positive_int, default=50, help="images per extractor call")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda")
    parser.add_argument(
        "--allow-mixed-sizes", action="store_true", help="accept folders with images of several sizes"
    )
    parser.add_argument(
        "--save-stats", action="store_true", help="write the statistics of folder A to the file B"
    )
    add_out(parser, "also write the result to this JSON file", metavar="FILE.json")
    add_deprecated_alias(parser, "--json", new="--out", dest="out")
    add_quiet(parser)


def metric_name(extractor: str) -> str:
    """``FID`` for Inception features, ``FD (in-domain)`` for the feature net's (not comparable)."""
    return "FID" if extractor == "inception" else f"FD ({extractor})"


def _is_npz(path: str) -> bool:
    return Path(path).suffix == ".npz"


def _check_paths(args: argparse.Namespace) -> None:
    """Every input exists (and the output's folder) before any feature is computed."""
    if args.save_stats:
        if _is_npz(args.a) or not Path(args.a).is_dir():
            raise CommandError("a", f"with --save-stats, A must be an image folder, got {args.a!r}")
        if not _is_npz(args.b):
            raise CommandError("b", f"with --save-stats, B must be the output .npz path, got {args.b!r}")
        parent = Path(args.b).resolve().parent
        if not parent.is_dir():
            raise CommandError("b", f"the folder of {args.b!r} does not exist")
        return
    for name, path in (("a", args.a), ("b", args.b)):
        if _is_npz(path):
            if not Path(path).is_file():
                raise CommandError(name, f"statistics file {path!r} does not exist")
        elif not Path(path).is_dir():
            kind = "a file, not an image folder or .npz" if Path(path).exists() else "does not exist"
            raise CommandError(name, f"{path!r} {kind}")


def _extractor(args: argparse.Namespace):
    """The feature extractor; a weights file that is missing or cannot be read is reported by name."""
    from fastsample.eval.extractors import get_extractor

    weights = args.weights
    if weights is None and args.extractor == "inception":
        weights = os.environ.get(INCEPTION_WEIGHTS_ENV) or None
    source = "--weights" if args.weights is not None else f"${INCEPTION_WEIGHTS_ENV}"
    expected = INCEPTION_WEIGHTS_FILENAME if args.extractor == "inception" else "a feature net .safetensors"
    if weights is not None and not Path(weights).is_file():
        raise CommandError(source, f"weights file {weights!r} does not exist (expected {expected})")
    try:
        return get_extractor(
            args.extractor, weights=weights, preprocessing=args.preprocessing, device=args.device
        )
    except FileNotFoundError as error:  # no weights given and none found
        raise CommandError("--weights", str(error)) from error
    except Exception as error:  # any failure to read a named file is that file's fault, said so
        if weights is None:
            raise
        raise CommandError(source, f"cannot load {weights!r} as {expected}: {error}") from error


def run(args: argparse.Namespace) -> int:
    from fastsample.cli.pipeline import check_device

    _check_paths(args)
    check_device(args.device)
    from fastsample.eval.fid import compute_statistics
    from fastsample.eval.stats import fid_from_statistics, save_statistics

    needs_images = args.save_stats or not (_is_npz(args.a) and _is_npz(args.b))
    extractor = _extractor(args) if needs_images else None
    name = metric_name(args.extractor)

    def stats(source: str):
        return compute_statistics(
            source,
            extractor,
            batch_size=args.batch_size,
            allow_mixed_sizes=args.allow_mixed_sizes,
            progress=not args.quiet,
        )

    if args.save_stats:
        result = stats(args.a)
        save_statistics(args.b, result)
        print(f"saved statistics of {result.num_samples} images ({result.feature_dim}-d) to {args.b}")
        return 0
    value = fid_from_statistics(stats(args.a), stats(args.b))
    print(f"{name}: {value:.6f}")
    if args.out:
        record = {
            "metric": name,
            "value": value,
            "fid" if args.extractor == "inception" else "fd": value,
            "a": args.a,
            "b": args.b,
            "extractor": args.extractor,
            "weights": args.weights,
            "preprocessing": args.preprocessing,
        }
        Path(args.out).write_text(json.dumps(record, indent=2))
    return 0
