#!/usr/bin/env bash
# The one short GPU check a session with a lent device runs: inference throughput of every predictor path
# (batch 1 and 32), frozen-backbone head training (plain loop vs feature cache: the cold cache side is one
# extraction pass), and the serving benchmark on CUDA; JSON into $OUT (default benchmarks/results).
# Packages the device image lacks travel as Python 3.12 wheels in .whl/; torch, lightning, opencv are there.
# Real images: $SHARED_DATA (default .gpu_data, a copy of a few Kermany train/test images made beforehand).
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site || exit 1
export NO_ALBUMENTATIONS_UPDATE=1 PYTHONUNBUFFERED=1 WANDB_MODE=offline SHARED_DATA=${SHARED_DATA:-.gpu_data}
OUT=${OUT:-benchmarks/results}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
run() {  # name, then the command: log to $OUT/<name>.log, print the exit code and the tail
    local name=$1; shift
    "$@" > "$OUT/$name.log" 2>&1; echo "$name: exit $?"; tail -3 "$OUT/$name.log"
}
run inference_gpu python3 benchmarks/inference.py --iters 20 --warmup 3 --batch-sizes 1 32 --no-compile \
    --out "$OUT/inference_gpu.json"
run train_frozen_gpu python3 benchmarks/train_frozen.py --n 256 --epochs 10 --out "$OUT/train_frozen_gpu.json"
run serve_gpu python3 benchmarks/serve.py --device cuda --precision "${PRECISION:-fp32}" --requests 1000 \
    --images 40 --out "$OUT/serve_gpu.json"
