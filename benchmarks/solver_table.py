"""Schedulers against the exact Gaussian-mixture oracle: median error and blow-up rate per NFE and CFG scale.

    python benchmarks/solver_table.py --quick            # a subset, under a minute
    python benchmarks/solver_table.py --out benchmarks/results/solvers.md

The logic lives in :mod:`fastsample.zoo.solver_table` (also ``fastsample solver-table``).
"""

import sys

from fastsample.zoo.solver_table import main

if __name__ == "__main__":
    sys.exit(main())
