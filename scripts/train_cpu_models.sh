#!/usr/bin/env bash
# CPU training recipes; run from the repository root after bootstrap.
#
#   bash scripts/train_cpu_models.sh fast [DATA]   the fast adversarial-training recipe (issue 13), below
#   bash scripts/train_cpu_models.sh [DATA]        the 3-epoch comparison behind results/robustness.json and the
#                                                  shipped models/ bundles (after the fast recipe's section)
# DATA defaults to ../shared/data/cifar10-jpeg.tar.gz.
set -euo pipefail
py=.venv/bin/python
export OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE

if [ "${1:-}" = "fast" ]; then
  # ---- Fast adversarial training (single-step inner attack), PreActResNet-18 at width 0.25, full CIFAR-10 ----
  # Seconds per epoch on this machine (2 shared cores, 1 thread, batch 128, 382 steps on the 49,000 training
  # images left after the 1,000 held out, plus the held-out check), from benchmarks/epoch_time.py
  # (results/benchmark_epoch_time.json, load average about 7 from other work, so these are upper-ish values):
  #   standard 2.8 min, PGD-AT with FGSM-RS or N-FGSM 4.4 min, PGD-AT with PGD-2 6.5 min, PGD-AT with PGD-10
  #   19.4 min, TRADES with N-FGSM 7.8 min, OTJR with FGSM-RS or N-FGSM 11.2 min, OTJR with PGD-2 12.3 min.
  # Observed in real niced runs beside other work: standard 6.3-7.7 min per epoch, 25 min at load average 10-14.
  # Every run resumes from OUT/last.pt with the same command (--resume).  RUNS (default runs/) holds them;
  # point it outside the worktree for runs that outlive a checkout.
  data=${2:-../shared/data/cifar10-jpeg.tar.gz}
  [ -e "$data" ] || { echo "missing data set: $data (see ../shared/data/README.md)" >&2; exit 1; }
  runs=${RUNS:-runs}
  mkdir -p "$runs"
  common=(--arch preact18 --width 0.25 --dataset cifar10 --data-dir "$data" --schedule onecycle --lr 0.2
          --batch-size 128 --seed 0 --holdout 1000 --holdout-eval 500 --threads 1 --resume)
  # 1. The standard companion: 8 epochs, about 25 min quiet (an hour or more niced beside other work).
  nice -n 15 $py -m training train --method standard "${common[@]}" --epochs 8 --out "$runs/standard-w0.25" \
    > "$runs/standard-w0.25.log" 2>&1
  # 2. The shippable robust candidate: PGD-AT on N-FGSM examples (noise 2 eps, step eps, no projection;
  #    de Jorge et al. report no catastrophic overfitting with it at 8/255), 15 epochs, about 66 min quiet, several
  #    hours niced beside other work.
  nice -n 15 $py -m training train --method pgd-at --attack n-fgsm "${common[@]}" --epochs 15 --weight-decay 5e-4 \
    --out "$runs/pgdat-nfgsm-w0.25" > "$runs/pgdat-nfgsm-w0.25.log" 2>&1
  # 3. The fair comparison at the same wall-clock budget (about 2 h quiet each at the per-epoch times above):
  #    PGD-AT N-FGSM 27 epochs, TRADES N-FGSM 15 epochs, OTJR N-FGSM 10 epochs.  One at a time on 2 cores.
  if [ -n "${COMPARE:-}" ]; then
    for spec in "pgd-at 27" "trades 15" "otjr 10"; do
      set -- $spec
      nice -n 15 $py -m training train --method "$1" --attack n-fgsm "${common[@]}" --epochs "$2" \
        --weight-decay 5e-4 --out "$runs/budget-$1-w0.25" > "$runs/budget-$1-w0.25.log" 2>&1
    done
  fi
  # 4. Evaluation: clean, PGD-20, CW-inf and standard AutoAttack on 1,000 random test images (AutoAttack on all
  #    of them; the curve on a class-stratified 500), 95% Wilson intervals in eval.json / eval.md.
  for run in "$runs"/standard-w0.25 "$runs"/pgdat-nfgsm-w0.25 ${COMPARE:+"$runs"/budget-*-w0.25}; do
    [ -d "$run/best" ] || continue
    nice -n 15 $py -m training eval --bundle "$run/best" --data-dir "$data" --attacks pgd20,cw,autoattack \
      --n 1000 --n-autoattack 1000 --curve-n 500 --seed 0 --out "$run-eval" --threads 1 > "$run-eval.log" 2>&1
  done
  exit 0
fi

# ---- The 3-epoch comparison (width 0.125, 20,000 images) behind results/robustness.json and models/ ----
# Same data, model, schedule, seed and epochs for every method.  The methods train side by side, one thread
# each: on a small machine one-thread processes waste no time spinning in OpenMP barriers, which several
# multi-thread processes sharing two cores do.
data=${1:-../shared/data/cifar10-jpeg.tar.gz}
[ -e "$data" ] || { echo "missing data set: $data (see ../shared/data/README.md)" >&2; exit 1; }
methods=(${METHODS:-standard pgd-at trades otjr})
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
  --data-dir "$data" --n 6000 --web-n 900 --epochs 30 --threads 1 --examples runs/detector-examples.pt
$py -m worker.calibrate --robust models/otjr-preact18-w0.125 --standard models/standard-preact18-w0.125 \
  --data-dir "$data" --n-clean 3000 --n-adv 1200 --n-web-adv 160 --measure kl_rs,disagree,perturbation_net \
  --threads 2
$py -m training train --method standard --arch vgg11 --width 0.25 --dataset cifar10 --data-dir "$data" \
  --epochs 4 --schedule onecycle --lr 0.1 --batch-size 128 --seed 3 --holdout 1000 --holdout-eval 500 \
  --threads 1 --out runs/vgg11-w0.25-std > runs/train-vgg11.log 2>&1
$py -m worker.evaluate --robust models/otjr-preact18-w0.125 --standard models/standard-preact18-w0.125 \
  --transfer-source runs/vgg11-w0.25-std/best --data-dir "$data" --n 1000 --steps 10 --adaptive-steps 40 \
  --square-queries 500 --n-web-attack 120 --threads 2 --out results
