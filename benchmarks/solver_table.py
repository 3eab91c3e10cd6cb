"""Schedulers against the exact Gaussian-mixture oracle: median error and blow-up rate per NFE and CFG scale.

    python benchmarks/solver_table.py --quick            # a subset, under a minute
    python benchmarks/solver_table.py --out benchmarks/results/solvers.md

The same as ``fastsample solver-table`` (flags: :mod:`fastsample.cli.solver_table`); the logic lives in
:mod:`fastsample.zoo.solver_table`.
"""

import sys

from fastsample.cli import main

if __name__ == "__main__":
    sys.exit(main(["solver-table", *sys.argv[1:]]))
