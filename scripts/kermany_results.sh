#!/usr/bin/env bash
# Reproduce docs/results.md: one Hydra multirun over the seeds of an experiment. After each job, the seed_summary
# callback evaluates its best checkpoint on the official test split with the threshold chosen on the validation
# split (never on test/); after the sweep it writes <OUT>/seeds.md (every seed, then mean ± std). With
# ../shared/data present, each checkpoint is then also evaluated beyond Kermany (scripts/external_eval.sh).
#   bash scripts/kermany_results.sh                       # seeds 42 to 46, ../shared/data/chest_xray_kermany224
#   SEEDS="42" EXPERIMENT=kermany_resnet18_scratch DATA=/path/to/chest_xray bash scripts/kermany_results.sh
#   EXTRA="paths.weights_dir=../shared/weights/imagenet_tflite" ...   (more overrides for every seed's training)
set -euo pipefail
EXPERIMENT=${EXPERIMENT:-kermany_resnet18_budget}
DATA=${DATA:-../shared/data/chest_xray_kermany224}
SEEDS=${SEEDS:-"42 43 44 45 46"}
OUT=${OUT:-logs/results/$EXPERIMENT}
PYTHON=${PYTHON:-.venv/bin/python}
read -r -a EXTRA_ARGS <<< "${EXTRA:-}"
export NO_ALBUMENTATIONS_UPDATE=1

"$PYTHON" src/train.py -m experiment="$EXPERIMENT" seed="$(echo $SEEDS | tr ' ' ',')" data.data_dir="$DATA" \
  hydra/callbacks=seed_summary hydra.sweep.dir="$OUT" 'hydra.sweep.subdir=seed_${seed}' \
  callbacks.rich_progress_bar=null extras.print_config=false "${EXTRA_ARGS[@]}"

if [ -d "${SHARED:-../shared/data}/covid_collection_subset" ]; then
  for seed in $SEEDS; do
    ckpt=$(ls "$OUT/seed_$seed"/checkpoints/epoch_*.ckpt)
    PYTHON="$PYTHON" bash scripts/external_eval.sh "$ckpt" "$OUT/seed_$seed/external"
  done
fi
