"""``fastsample fit-grid``: fit a few-step grid for a fastsample scheduler on the exact Gaussian-mixture
oracle (see :mod:`fastsample.solvers.grid_fit`). Heavy imports live inside the functions."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the solvers' subcommands to the ``fastsample`` command line."""
    parser = subparsers.add_parser(
        "fit-grid",
        help="fit an NFE-step grid for a fastsample scheduler (oracle) and write it as a JSON artifact",
        description="Fit the step grid of GHVBScheduler at one NFE and guidance scale on the exact "
        "Gaussian-mixture oracle (SD1.5 VP or SD3 flow schedule) and write the JSON grid artifact.",
    )
    parser.add_argument("--family", choices=("vp", "flow"), default="vp", help="schedule family (default vp)")
    parser.add_argument("--nfe", type=int, required=True, help="model calls of the fitted grid (>= 2)")
    parser.add_argument("--guidance-scale", type=float, default=7.5, help="CFG scale w (default 7.5)")
    parser.add_argument("--mixture-seed", type=int, default=0, help="seed of the random mixture (default 0)")
    parser.add_argument("--trajectories", type=int, default=64, help="noise samples fitted on (default 64)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the noise and labels (default 1)")
    parser.add_argument("--max-evaluations", type=int, default=300, help="Nelder–Mead budget (default 300)")
    parser.add_argument("--out", required=True, help="path of the JSON artifact to write")
    parser.set_defaults(func=_fit_grid)


def _fit_grid(args: argparse.Namespace) -> int:
    import torch

    from fastsample.solvers import GHVBScheduler
    from fastsample.solvers.grid_fit import fit_grid, model_hash, oracle_model, oracle_reference
    from fastsample.zoo.gmm import GaussianMixture
    from fastsample.zoo.solver_table import BASE_CONFIGS

    if args.nfe < 2 or args.trajectories < 1 or args.max_evaluations < 1:
        raise SystemExit("fit-grid: --nfe must be >= 2, --trajectories and --max-evaluations >= 1")
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
