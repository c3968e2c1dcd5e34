#!/usr/bin/env bash
# Train the codec backbone on a lent accelerator in one call, then export the weights to $OUT.
#
#   bash scripts/train_device.sh                      # on the device machine (the device tool's `run`)
#   OUT=/tmp/out DATA=../shared/data/bsds500 STEPS=2 BATCH=2 PATCH=128 AMP=off COMPILE=0 bash scripts/train_device.sh
#
# The stage is psic_lab/training/configs/rd/<model>.json (CONFIG); the settings below override it for the device.
# It continues from the committed weights (their step count is in the metadata; see training.train.warm_start)
# or from RUN_DIR's checkpoint, trains for MINUTES or STEPS, and writes $OUT/<model>.safetensors.
# The device machine has torch but not compressai: carry its wheel (the device README says how) in .whl/.
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${MODEL:-psic-msh2}
CONFIG=${CONFIG:-psic_lab/training/configs/rd/$MODEL.json}
INIT=${INIT:-lab_weights/rd/$MODEL.safetensors}
DATA=${DATA:-.devdata/bsds500}
RUN_DIR=${RUN_DIR:-runs/device-$MODEL}
MINUTES=${MINUTES:-8}
STEPS=${STEPS:-1000000}
BATCH=${BATCH:-32}
PATCH=${PATCH:-256}
AMP=${AMP:-bf16}
COMPILE=${COMPILE:-1}
: "${OUT:?set OUT to the folder that receives the weights}"
PY=${PYTHON:-python3}
if compgen -G ".whl/*.whl" >/dev/null; then
  echo "installing carried wheels" >&2
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
init=()
if [ -f "$INIT" ] && [ ! -f "$RUN_DIR/checkpoint.pt" ]; then init=(--init-from "$INIT"); fi
compile=(--no-compile)
if [ "$COMPILE" = 1 ]; then compile=(--compile); fi
config=()
if [ -f "$CONFIG" ]; then config=(--config "$CONFIG"); fi
"$PY" -m psic_lab.training rd "${config[@]}" --model-id "$MODEL" --data "$DATA" --run-dir "$RUN_DIR" \
  --steps "$STEPS" --batch "$BATCH" --patch "$PATCH" --lr 1e-4 --max-minutes "$MINUTES" --amp "$AMP" \
  "${compile[@]}" "${init[@]}" --threads 0 --log-every 100 --ckpt-every 1000 2>&1 | tee "$OUT/train.log"
"$PY" -m psic_lab.training export "$RUN_DIR/checkpoint.pt" "$OUT/$MODEL.safetensors" \
  --data-desc "BSDS500 train+val+test (500): random 256x256 crops with flips; never Kodak"
cp "$RUN_DIR/log.jsonl" "$OUT/log.jsonl"
echo "weights in $OUT/$MODEL.safetensors" >&2
