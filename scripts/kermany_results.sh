#!/usr/bin/env bash
# Reproduce docs/results.md: train experiment=kermany_resnet18_scratch once per seed, then evaluate each best
# checkpoint on the official test split with the threshold chosen on the validation split (never on test/).
# With ../shared/data present, each checkpoint is also evaluated beyond Kermany (scripts/external_eval.sh).
#   bash scripts/kermany_results.sh                       # seeds 42 to 46, ../shared/data/chest_xray_kermany224
#   SEEDS="42" DATA=/path/to/chest_xray bash scripts/kermany_results.sh
# Then: python src/summarize_seeds.py runs='[<OUT>/seed_*/eval]' (make results runs both).
set -euo pipefail
DATA=${DATA:-../shared/data/chest_xray_kermany224}
SEEDS=${SEEDS:-"42 43 44 45 46"}
OUT=${OUT:-logs/results/kermany_resnet18_scratch}
PYTHON=${PYTHON:-.venv/bin/python}
export NO_ALBUMENTATIONS_UPDATE=1

for seed in $SEEDS; do
  run="$OUT/seed_$seed"
  start=$SECONDS
  "$PYTHON" src/train.py experiment=kermany_resnet18_scratch seed="$seed" data.data_dir="$DATA" \
    hydra.run.dir="$run" callbacks.rich_progress_bar=null extras.print_config=false
  echo "{\"seed\": $seed, \"train_wall_s\": $((SECONDS - start))}" > "$run/wall_time.json"
  ckpt=$(ls "$run"/checkpoints/epoch_*.ckpt)
  "$PYTHON" src/eval.py ckpt_path="$ckpt" operating_point.method=youden hydra.run.dir="$run/eval" \
    extras.print_config=false
  if [ -d "${SHARED:-../shared/data}/covid_collection_subset" ]; then
    PYTHON="$PYTHON" bash scripts/external_eval.sh "$ckpt" "$run/external"
  fi
done
