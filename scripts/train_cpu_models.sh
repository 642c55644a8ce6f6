#!/usr/bin/env bash
# The CPU-budget comparison behind results/robustness.json and the shipped models/ bundles.
# Same data, model, schedule, seed and epochs for every method; run from the repository root after bootstrap:
#   bash scripts/train_cpu_models.sh [DATA]   (DATA defaults to ../shared/data/cifar10-jpeg.tar.gz)
# The methods train side by side, one thread each: on a small machine one-thread processes waste no time
# spinning in OpenMP barriers, which several multi-thread processes sharing two cores do.
set -euo pipefail
data=${1:-../shared/data/cifar10-jpeg.tar.gz}
[ -e "$data" ] || { echo "missing data set: $data (see ../shared/data/README.md)" >&2; exit 1; }
py=.venv/bin/python
methods=(${METHODS:-standard pgd-at trades otjr})
export OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE
common=(--arch preact18 --width 0.125 --dataset cifar10 --data-dir "$data" --epochs 3 --train-limit 20000
        --schedule cosine --lr 0.1 --batch-size 128 --seed 0 --holdout 1000 --holdout-eval 500 --threads 1)
mkdir -p runs
$py -c "from training.data import load_splits; load_splits('cifar10', '$data')"  # fill the decode cache once
for method in "${methods[@]}"; do
  $py -m training train --method "$method" "${common[@]}" --out "runs/cpu-$method" --resume \
    > "runs/train-$method.log" 2>&1 &
done
wait
for method in "${methods[@]}"; do
  $py -m training eval --bundle "runs/cpu-$method/best" --data-dir "$data" --attacks pgd20,cw,autoattack \
    --n 1000 --n-autoattack "${N_AUTOATTACK:-500}" --curve-n 500 --seed 0 --out "runs/eval-$method" --threads 1 \
    > "runs/eval-$method.log" 2>&1 &
done
wait
evals=(); for method in "${methods[@]}"; do evals+=(--eval "runs/eval-$method/eval.json"); done
$py scripts/collect_results.py "${evals[@]}" --results results --ship otjr --ship standard --models models
# The web-image set (Debian packages: wallpapers, photo stamps, fonts), then the perturbation detector and the
# detector calibration shipped beside the OTJR bundle (1% false-positive rate), then the detection report
# (results/detection.json) against an evaluation-only model family (VGG-11, never attacked in training).
$py -m worker.web_images build
$py -m worker.train_detector --robust models/otjr-preact18-w0.125 --standard models/standard-preact18-w0.125 \
  --data-dir "$data" --n 6000 --web-n 900 --epochs 12 --threads 2 --examples runs/detector-examples.pt
$py -m worker.calibrate --robust models/otjr-preact18-w0.125 --standard models/standard-preact18-w0.125 \
  --data-dir "$data" --n-clean 3000 --n-adv 1200 --n-web-adv 160 --measure kl_rs,disagree,perturbation_net \
  --threads 2
$py -m training train --method standard --arch vgg11 --width 0.25 --dataset cifar10 --data-dir "$data" \
  --epochs 4 --schedule onecycle --lr 0.1 --batch-size 128 --seed 3 --holdout 1000 --holdout-eval 500 \
  --threads 1 --out runs/vgg11-w0.25-std > runs/train-vgg11.log 2>&1
$py -m worker.evaluate --robust models/otjr-preact18-w0.125 --standard models/standard-preact18-w0.125 \
  --transfer-source runs/vgg11-w0.25-std/best --data-dir "$data" --n 1000 --steps 10 --adaptive-steps 40 \
  --square-queries 500 --n-web-attack 120 --threads 2 --out results
