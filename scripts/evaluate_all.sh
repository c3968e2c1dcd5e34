#!/usr/bin/env bash
# Regenerate every report the README quotes from the shipped weights (about 40 minutes on 2 CPU cores),
# then paste the tables into README.md and docs/results.md.  Two streams of one-thread jobs: two-thread jobs side by side
# oversubscribe the cores and run several times slower.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 OMP_NUM_THREADS=1
# a fixed mmap threshold: with glibc's adaptive one, the 300-image privacy run's heap fragments until
# it is killed for memory (20 GB); with these settings it stays under 1 GB
export MALLOC_MMAP_THRESHOLD_=1048576 MALLOC_TRIM_THRESHOLD_=4194304
PY=.venv/bin/python
VAL=${VAL:-../shared/data/imagenette/val}
KODAK=${KODAK:-../shared/data/kodak}
mkdir -p runs/eval-logs
(
  $PY -m psic_lab.evaluation.privacy --folder "$VAL" --limit 300 --random-keys 1000 --threads 1
  $PY -m psic_lab.evaluation.rd --folder "$KODAK" --no-cli-timings
  $PY -m psic_lab.evaluation.faces --folder "$KODAK" --qualities 1 2
  # the baseline: the rate-distortion weights before any shield stage, full view only
  PSIC_WEIGHTS=lab_weights/rd $PY -m psic_lab.evaluation.privacy --folder "$VAL" --limit 300 --views full \
      --random-keys 0 --threads 1 --name privacy-rdonly
) > runs/eval-logs/stream1.log 2>&1 &
pid1=$!
(
  $PY -m psic_lab.evaluation.attacks --folder "$VAL" --limit 150 --qualities 2 --threads 1
  $PY -m psic_lab.evaluation.privacy --folder "$VAL" --limit 300 --model psic-msh --qualities 2 \
      --random-keys 0 --threads 1 --name privacy-msh
  $PY -m psic_lab.evaluation.rd --folder "$KODAK" --model psic-msh --name kodak-rd-msh --no-cli-timings
  $PY scripts/side_by_side.py examples/kodim23.png examples/kodim15.png
  $PY benchmarks/shield_geometry.py --images 96 --quality 2 --threads 1
) > runs/eval-logs/stream2.log 2>&1 &
pid2=$!
# a failed job fails the script (set -e stops each stream at its first failure), and nothing is pasted
failed=0
wait "$pid1" || { echo "stream 1 failed (exit $?): see runs/eval-logs/stream1.log" >&2; failed=1; }
wait "$pid2" || { echo "stream 2 failed (exit $?): see runs/eval-logs/stream2.log" >&2; failed=1; }
if [ "$failed" -ne 0 ]; then
  exit 1
fi
$PY scripts/update_readme.py
echo "reports regenerated; logs in runs/eval-logs/"
