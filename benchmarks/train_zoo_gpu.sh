#!/usr/bin/env bash
# Train both embedded DiTs (VP ε and rectified flow) on one CUDA GPU in a few minutes, then measure them.
#
#   bash benchmarks/train_zoo_gpu.sh runs/gpu            # STEPS=8000 BATCH=512 by default
#
# bf16 autocast, a large batch (the LR scaled up from the CPU runs' 7e-4 at batch 64), torch.compile of the
# training forward, checkpoints every 2 minutes (resume: rerun with RESUME="--resume latest"). The exports in
# OUT/{vp,flow}/export load with load_default_pipeline(model=..., directory=...); copy them to
# fastsample/zoo/weights{,/flow}/ to ship them (keep the flow folder's scheduler_config.json shift of 3).
# Environment overrides: STEPS, BATCH, LR, COMPILE ("--compile" or ""), PRECISION ("bf16" or "no"), RESUME,
# EXTRA (more `fastsample train` flags, e.g. for a tiny CPU smoke test), EVAL (1: run benchmarks/zoo_curve.py).
set -euo pipefail
OUT=${1:-runs/gpu}
STEPS=${STEPS:-8000}
BATCH=${BATCH:-512}
LR=${LR:-1e-3}
COMPILE=${COMPILE---compile}
PRECISION=${PRECISION:-bf16}
RESUME=${RESUME:-}
EXTRA=${EXTRA:-}
EVAL=${EVAL:-1}
common=(--train-steps "$STEPS" --batch-size "$BATCH" --lr "$LR" --mixed-precision "$PRECISION"
        --checkpoint-every-minutes 2 --keep-checkpoints 2 --quiet)
# shellcheck disable=SC2086
python -m fastsample.cli train --out "$OUT/vp" --export "$OUT/vp/export" "${common[@]}" $COMPILE $RESUME $EXTRA
# shellcheck disable=SC2086
python -m fastsample.cli train --out "$OUT/flow" --export "$OUT/flow/export" "${common[@]}" $COMPILE $RESUME \
    --prediction-type flow --weighting none --sampler logit_normal $EXTRA
if [ "$EVAL" = 1 ]; then
    python benchmarks/zoo_curve.py --model vp "$OUT/vp/export"
    python benchmarks/zoo_curve.py --model flow --shift 3 "$OUT/flow/export"
fi
