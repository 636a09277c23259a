#!/usr/bin/env bash
# The one short GPU check a session with a lent device runs (see benchmarks/README.md): inference throughput
# of every predictor path at batch 1 and 32, then the serving benchmark on CUDA, JSON into $OUT.
# Packages the device image lacks travel as wheels in .whl/ (Python 3.12); torch, lightning, opencv are there.
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site || exit 1
export NO_ALBUMENTATIONS_UPDATE=1 PYTHONUNBUFFERED=1 WANDB_MODE=offline SHARED_DATA=${SHARED_DATA:-.gpu_data}
OUT=${OUT:-benchmarks/results}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 benchmarks/inference.py --iters 20 --warmup 3 --batch-sizes 1 32 --no-compile --out "$OUT/inference_gpu.json" \
    > "$OUT/inference_gpu.log" 2>&1; echo "inference: exit $?"; tail -5 "$OUT/inference_gpu.log"
python3 benchmarks/serve.py --device cuda --precision bf16 --requests "${REQUESTS:-1000}" --images 64 \
    --out "$OUT/serve_gpu.json" > "$OUT/serve_gpu.log" 2>&1; echo "serve: exit $?"; tail -5 "$OUT/serve_gpu.log"
