"""Statistics throughput: fastsample's streaming float64 statistics against pytorch-fid's algorithm.

pytorch-fid itself cannot be installed here (it needs torchvision, which has no CPU build on this machine), so
the reference is its algorithm, written out: every batch's features are copied to a preallocated float64
NumPy array, then ``np.mean`` and ``np.cov(rowvar=False)`` run once at the end
(``pytorch_fid.fid_score.get_activations`` + ``calculate_activation_statistics``). Both sides run the same
extractor on the same in-memory uint8 batches at the same batch size, interleaved (A B A B ...) with
:func:`fastsample.eval.compare_latency`; throughput = images / median seconds.

Extractors (random weights; no weights are downloaded):
* ``featurenet``: the zoo's FeatureNet architecture (128-d) on 32×32 images: a realistic in-domain run;
* ``proj2048``: a fixed random projection + ReLU to 2048-d features (Inception's pool3 size) on 32×32
  images: cheap features, so the cost of the statistics themselves dominates;
* ``precomputed2048``: the same features computed once and looked up: statistics only, no extractor.

Usage: python benchmarks/eval_throughput.py [--num-images 2048] [--batch-size 50] [--threads 1]
       [--out benchmarks/results/eval.md]
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys


def _threads_from_argv(default: int = 1) -> str:
    for i, arg in enumerate(sys.argv):
        if arg == "--threads" and i + 1 < len(sys.argv):
            return sys.argv[i + 1]
        if arg.startswith("--threads="):
            return arg.split("=", 1)[1]
    return str(default)


# NumPy's BLAS reads its thread count at import: give both sides the same number of threads.
for _variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_variable] = _threads_from_argv()

import numpy as np  # noqa: E402
import torch  # noqa: E402

from fastsample.eval import FeatureStatistics, ModuleExtractor, compare_latency  # noqa: E402


def pytorch_fid_style_statistics(batches: list[torch.Tensor], extractor, num_images: int):
    """pytorch-fid's get_activations + calculate_activation_statistics, on a given extractor."""
    activations = np.empty((num_images, extractor.feature_dim))
    start = 0
    for batch in batches:
        with torch.no_grad():
            features = extractor(batch).cpu().numpy()
        activations[start : start + features.shape[0]] = features
        start += features.shape[0]
    return np.mean(activations, axis=0), np.cov(activations, rowvar=False)


def fastsample_statistics(batches: list[torch.Tensor], extractor):
    """What fastsample.eval.compute_statistics does per batch (without tqdm and metadata)."""
    accumulator = FeatureStatistics(extractor.feature_dim, device=extractor.device)
    with torch.inference_mode():
        for batch in batches:
            accumulator.update(extractor(batch))
    return accumulator.mean, accumulator.covariance


def build_extractor(name: str, batches: list[torch.Tensor]) -> ModuleExtractor:
    torch.manual_seed(0)
    if name == "featurenet":
        from fastsample.zoo.featurenet import FeatureNet

        net = FeatureNet().eval()
        return ModuleExtractor(net.features, net.feature_dim, name="featurenet-random")
    if name == "proj2048":
        projection = torch.randn(3 * 32 * 32, 2048) / 40.0

        def project(x: torch.Tensor) -> torch.Tensor:
            return torch.relu(x.flatten(1) @ projection)

        return ModuleExtractor(project, 2048, name="proj2048")
    if name == "precomputed2048":
        # Features computed once up front and looked up per batch: isolates the statistics themselves.
        projection = torch.randn(3 * 32 * 32, 2048) / 40.0
        table = {b.data_ptr(): torch.relu((b.float() / 127.5 - 1).flatten(1) @ projection) for b in batches}
        return ModuleExtractor(lambda x: table[x.data_ptr()], 2048, name=name, transform=lambda b: b)
    raise ValueError(name)


def machine_description() -> str:
    model = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} logical CPUs (shared), load average {os.getloadavg()[0]:.1f} at start"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num-images", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=50, help="pytorch-fid's default is 50")
    parser.add_argument("--threads", type=int, default=1, help="torch and BLAS threads, both sides")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--extractors", nargs="+", default=["featurenet", "proj2048", "precomputed2048"])
    parser.add_argument("--out", default=None, help="write the markdown results here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (args.num_images, 3, 32, 32), dtype=torch.uint8, generator=generator)
    batches = list(images.split(args.batch_size))
    rows = []
    for name in args.extractors:
        extractor = build_extractor(name, batches)
        ref_mu, ref_sigma = pytorch_fid_style_statistics(batches, extractor, args.num_images)
        our_mu, our_sigma = fastsample_statistics(batches, extractor)
        agreement = float(np.abs(our_sigma - ref_sigma).max() / np.abs(ref_sigma).max())
        comparison = compare_latency(
            lambda b=batches, e=extractor: pytorch_fid_style_statistics(b, e, args.num_images),
            lambda b=batches, e=extractor: fastsample_statistics(b, e),
            warmup=1,
            repeats=args.repeats,
        )
        row = {
            "extractor": f"{name} ({extractor.feature_dim}-d)",
            "reference_img_s": args.num_images / comparison.baseline.median_s,
            "fastsample_img_s": args.num_images / comparison.candidate.median_s,
            "ratio": comparison.speedup,
            "pairwise_p10_p90": f"{comparison.pairwise_ratio_p10:.2f}–{comparison.pairwise_ratio_p90:.2f}",
            "max_rel_sigma_diff": agreement,
        }
        rows.append(row)
        print(row, flush=True)
    versions = (
        f"python {platform.python_version()}, torch {torch.__version__}, numpy {np.__version__}, "
        f"fastsample {__import__('fastsample').__version__}"
    )
    command = "python " + " ".join(sys.argv)
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        commit = "unknown"
    table = [
        "| extractor | pytorch-fid-style img/s | fastsample img/s | ratio (median) | per-pair ratio p10–p90 "
        "| max rel. Σ difference |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        table.append(
            f"| {r['extractor']} | {r['reference_img_s']:.0f} | {r['fastsample_img_s']:.0f} "
            f"| {r['ratio']:.3f} | {r['pairwise_p10_p90']} | {r['max_rel_sigma_diff']:.1e} |"
        )
    report = "\n".join(
        [
            f"- machine: {machine_description()}",
            f"- versions: {versions} (git {commit})",
            f"- settings: {args.num_images} random uint8 32×32 images, batch {args.batch_size}, "
            f"{args.threads} torch thread(s), {args.repeats} interleaved runs after 1 warm-up pair",
            f"- command: `{command}`",
            "",
            *table,
        ]
    )
    print(report)
    if args.out:
        with open(args.out, "a") as handle:
            handle.write(report + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
