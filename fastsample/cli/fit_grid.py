"""``fastsample fit-grid``: fit a few-step grid for GHVB on the exact Gaussian-mixture oracle
(:mod:`fastsample.solvers.grid_fit`)."""

from __future__ import annotations

import argparse

from fastsample.cli._common import add_out, positive_int

NAME = "fit-grid"
HELP = "fit an NFE-step grid for a fastsample scheduler (oracle) and write it as a JSON artifact"
DESCRIPTION = """\
Fit the step grid of GHVBScheduler at one NFE and guidance scale on the exact Gaussian-mixture oracle
(SD1.5 VP or SD3 flow schedule) and write the JSON grid artifact (load it with
fastsample.solvers.grid_fit.GridArtifact.load; any fastsample scheduler and diffusers' `sigmas=` take it).

Examples:
  fastsample fit-grid --nfe 6 --out grid_vp_nfe6.json
  fastsample fit-grid --family flow --nfe 5 --guidance-scale 7.5 --out grid_flow_nfe5.json
"""


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The flags of ``fastsample fit-grid``."""
    parser.add_argument("--family", choices=("vp", "flow"), default="vp", help="schedule family")
    parser.add_argument(
        "--nfe", type=positive_int, required=True, help="model calls of the fitted grid (>= 2)"
    )
    parser.add_argument("--guidance-scale", type=float, default=7.5, help="CFG scale w")
    parser.add_argument("--mixture-seed", type=int, default=0, help="seed of the random mixture")
    parser.add_argument("--trajectories", type=positive_int, default=64, help="noise samples fitted on")
    parser.add_argument("--seed", type=int, default=1, help="seed of the noise and labels")
    parser.add_argument("--max-evaluations", type=positive_int, default=300, help="Nelder–Mead budget")
    add_out(parser, "path of the JSON artifact to write", required=True)
    return parser


def run(args: argparse.Namespace) -> int:
    import torch

    from fastsample.cli._common import CommandError
    from fastsample.solvers import GHVBScheduler
    from fastsample.solvers.grid_fit import fit_grid, model_hash
    from fastsample.zoo.gmm import GaussianMixture
    from fastsample.zoo.oracle import oracle_model, oracle_reference
    from fastsample.zoo.solver_table import BASE_CONFIGS

    if args.nfe < 2:
        raise CommandError(f"--nfe must be >= 2, got {args.nfe}")
    mixture = GaussianMixture.random(seed=args.mixture_seed)
    extra = {"final_sigmas_type": "zero"} if args.family == "vp" else {}
    scheduler = GHVBScheduler.from_config(BASE_CONFIGS[args.family], **extra)
    gen = torch.Generator().manual_seed(args.seed)
    noise = torch.randn(args.trajectories, mixture.dim, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, mixture.num_classes, (args.trajectories,), generator=gen)
    w = args.guidance_scale
    reference = oracle_reference(mixture, labels, noise, scheduler, args.nfe, w)
    artifact = fit_grid(
        scheduler,
        oracle_model(mixture, labels, scheduler, w),
        noise,
        args.nfe,
        reference=reference,
        model_id=model_hash(name=f"oracle:gmm-seed-{args.mixture_seed}"),
        guidance_scale=w,
        max_evaluations=args.max_evaluations,
    )
    artifact.save(args.out)
    print(
        f"wrote {args.out}: NFE {artifact.nfe}, mean capped error {artifact.default_error:.4g} (default grid)"
        f" -> {artifact.train_error:.4g}; levels {[round(v, 4) for v in artifact.levels]}"
    )
    return 0
