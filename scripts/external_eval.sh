#!/usr/bin/env bash
# Evaluate one checkpoint beyond the training hospital, at the operating point its own validation split chose
# (run `src/eval.py ckpt_path=<ckpt> operating_point.method=youden` on its own data first: that saves it):
#   - the COVID-19 image data collection subset (adults, many hospitals; frontal X-rays; pneumonia vs normal):
#     every image is a test image (data.fractions=[0,0,1]); AUROC with its CI is the number to read;
#   - 60 adult NIH ChestX-ray14 radiographs with other findings (none labelled pneumonia): they enter as class
#     NORMAL ("not pneumonia" by their NIH labels), so 1 - specificity is the share called PNEUMONIA.
# Both with the CAM border check. Never train or tune on these sets.
#   bash scripts/external_eval.sh <ckpt> <out dir>      (SHARED=../shared/data by default)
set -euo pipefail
CKPT=$1
OUT=$2
SHARED=${SHARED:-../shared/data}
PYTHON=${PYTHON:-.venv/bin/python}
export NO_ALBUMENTATIONS_UPDATE=1
mkdir -p "$OUT"
COMMON=(operating_point.method=stored shortcut.enabled=true extras.print_config=false)

"$PYTHON" src/eval.py ckpt_path="$CKPT" data=covid_collection data.data_dir="$SHARED/covid_collection_subset" \
  'data.fractions=[0,0,1]' hydra.run.dir="$OUT/covid_collection" "${COMMON[@]}"

NIH="$SHARED/full_resolution_unlabelled"
manifest="$OUT/nih_manifest.csv"
{
  echo "path,label,patient_id"
  tail -n +2 "$NIH/findings.csv" | while IFS=, read -r file _; do
    echo "$(cd "$NIH" && pwd)/$file,NORMAL,${file%%_*}"
  done
} > "$manifest"
"$PYTHON" src/eval.py ckpt_path="$CKPT" data=manifest data.data_dir="$OUT" data.source.csv=nih_manifest.csv \
  'data.fractions=[0,0,1]' hydra.run.dir="$OUT/nih_other_findings" "${COMMON[@]}"
