#!/usr/bin/env bash
# The CPU-budget comparison behind results/robustness.json and the shipped models/ bundles.
# Same data, model, schedule and seed for every method; run from the repository root after bootstrap.
#   bash scripts/train_cpu_models.sh [DATA]   (DATA defaults to ../shared/data/cifar10-jpeg.tar.gz)
set -euo pipefail
data=${1:-../shared/data/cifar10-jpeg.tar.gz}
[ -e "$data" ] || { echo "missing data set: $data (see ../shared/data/README.md)" >&2; exit 1; }
py=.venv/bin/python
common=(--arch preact18 --width 0.125 --dataset cifar10 --data-dir "$data" --epochs 3 --train-limit 24000
        --schedule cosine --lr 0.1 --batch-size 128 --seed 0 --holdout 1000 --holdout-eval 500 --threads 2)
for method in ${METHODS:-standard pgd-at trades otjr}; do
  $py -m training train --method "$method" "${common[@]}" --out "runs/cpu-$method" --resume
done
bundles=()
for method in ${METHODS:-standard pgd-at trades otjr}; do bundles+=(--bundle "runs/cpu-$method/best"); done
$py -m training eval "${bundles[@]}" --data-dir "$data" --attacks pgd20,cw,autoattack --n 1000 \
  --n-autoattack "${N_AUTOATTACK:-250}" --curve-n 500 --seed 0 --out runs/cpu-eval --threads 2
