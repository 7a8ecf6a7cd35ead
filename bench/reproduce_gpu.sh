#!/usr/bin/env bash
# The seed paper's experiments at full scale on a CUDA machine: approximation quality and
# training (every default optimizer, 3 seeds, 100 epochs) on CURVES, MNIST and FACES, with the
# original files fetched once by --download (SHA-256 recorded and checked; see core/training/download.py).
# Each experiment writes a results folder OUT/<dataset>-<experiment>/ (settings.json,
# results.csv, verdicts.csv, report.html); point the app at OUT with KRONOSCOPE_RESULTS_DIR=OUT
# to show them on the "Paper reproductions" page.
#
#   bash bench/reproduce_gpu.sh [OUT]                  # default OUT: results/
#   EPOCHS=100 SEEDS=1,2,3 DATASETS="curves mnist faces" EXPERIMENTS="quality training" \
#   CURVES_GENERATED=1 PYTHON=.venv/bin/python bash bench/reproduce_gpu.sh results
#
# CURVES_GENERATED=1 uses the generated CURVES-like set instead of downloading digs3pts_1.mat.
# A run that diverges is a result (exit status 3, its folder is written); any other failure
# stops the script. Not run in CI: it needs a GPU, the network once, and hours.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-.venv/bin/python}
OUT=${1:-results}
EPOCHS=${EPOCHS:-100}
SEEDS=${SEEDS:-1,2,3}
DATASETS=${DATASETS:-curves mnist faces}
EXPERIMENTS=${EXPERIMENTS:-quality training}

"$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else "no CUDA device here: this script is for a GPU machine (python -m core reproduce runs on a CPU too)")'
mkdir -p "$OUT"

for dataset in $DATASETS; do
    data=(--download)
    if [[ "$dataset" == curves && "${CURVES_GENERATED:-0}" == 1 ]]; then
        data=()
    fi
    for experiment in $EXPERIMENTS; do
        folder="$OUT/$dataset-$experiment"
        echo "== $dataset $experiment -> $folder ($(date '+%F %T'))"
        status=0
        "$PYTHON" -m core reproduce --experiment "$experiment" --dataset "$dataset" \
            --epochs "$EPOCHS" --seeds "$SEEDS" --device cuda "${data[@]}" \
            --out "$folder" 2>"$folder.log" || status=$?
        tail -n 1 "$folder.log" || true
        if [[ $status -ne 0 && $status -ne 3 ]]; then
            echo "$dataset $experiment failed (exit $status): see $folder.log" >&2
            exit "$status"
        fi
    done
done
echo "done: $(ls -d "$OUT"/*/ | wc -l) results folders in $OUT ($(date '+%F %T'))"
