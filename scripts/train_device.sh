#!/usr/bin/env bash
# Train the codec backbone on a lent accelerator in one call, then export the weights to $OUT.
#
#   OUT=$OUT MINUTES=6.2 DECAY_MINUTES=1.5 BATCH=32 AMP=off COMPILE=0 bash scripts/train_device.sh   # device `run`
#   OUT=/tmp/out DATA=../shared/data/bsds500 MINUTES=0.05 BATCH=2 PATCH=128 COMPILE=0 bash scripts/train_device.sh
#   OUT=$OUT MODEL=psic-msh5cj MODEL_ID=psic_lab/training/model_configs/psic-msh5c48.json MINUTES=8 BATCH=32 \
#     LR=2e-4 AMP=bf16 COMPILE=0 bash scripts/train_device.sh  # the next device run (docs/profile-backbone.md):
#     a wide encoder and latent with a 64-wide synthesis and a 48-wide last stage, with its context, from scratch
#     (MODEL_ID=...psic-msh5c32.json: the 32-wide last stage, the one at CompressAI's decode speed on the CPU);
#     its parts join as lab_weights/rd/psic-msh5cj.safetensors, which the next call continues
#   OUT=$OUT MODEL=psic-msh3 MINUTES=8 BATCH=32 LR=2e-4 AMP=bf16 COMPILE=0 bash scripts/train_device.sh  # the wide
#     model from scratch (no committed weights yet: it starts fresh; its weights come back in 15 MiB parts)
#   OUT=$OUT MODEL=psic-msh3cj MODEL_ID=psic-msh3c MINUTES=8 BATCH=32 LR=2e-4 AMP=bf16 COMPILE=0 \
#     bash scripts/train_device.sh  # the wide model with its checkerboard context, all learnt together from
#     scratch (stage rd/psic-msh3cj; the export is a psic-msh3c model, cat its parts into
#     lab_weights/rd/psic-msh3c.safetensors)
#   OUT=$OUT MODEL=psic-msh4 MINUTES=8 BATCH=32 LR=1e-4 AMP=bf16 COMPILE=0 bash scripts/train_device.sh  # psic-msh2c
#     with a wider synthesis (stage rd/psic-msh4): it continues lab_weights/rd/psic-msh4.safetensors, or starts from
#     psic-msh2c widened when there is none
#   OUT=$OUT MODEL=psic-msh2-wa MODEL_ID=psic_lab/training/model_configs/psic-msh2-wide-encoder.json \
#     INIT=lab_weights/rd/psic-msh2.safetensors MINUTES=8 BATCH=32 AMP=off COMPILE=0 bash scripts/train_device.sh
#     # a wider encoder for psic-msh2's frozen decoder (stage rd/psic-msh2-wa: train_part encoder)
#
# The stage is psic_lab/training/configs/rd/<model>.json (CONFIG); the settings below override it for the device.
# It continues from the committed weights (their step count is in the metadata; see training.train.warm_start)
# or from RUN_DIR's checkpoint, trains for MINUTES at LR, then DECAY_MINUTES at DECAY_LR (a step down, as
# CompressAI's schedules do; DECAY_MINUTES=0 skips it), and writes $OUT/<model>.safetensors and its log.
#
# What travels (64 MiB at most): the data in .devdata/ (cp -r ../shared/data/bsds500 .devdata/) and the wheels
# the device's python 3.12 lacks in .whl/ (both in .git/info/exclude, both named in `carry`):
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_34_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#     -d .whl compressai==1.2.8 pytorch-msssim==1.0.0 cryptography==50.0.2 cffi pycparser
# and no weights but the model's own: take the others out of the tree for the call (the tree is over 64 MiB).
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${MODEL:-psic-msh2}
CONFIG=${CONFIG:-psic_lab/training/configs/rd/$MODEL.json}
MODEL_ID=${MODEL_ID:-$MODEL}  # the model config: a bundled id, or a JSON file when the stage's name is not one
INIT=${INIT:-lab_weights/rd/$MODEL.safetensors}
DATA=${DATA:-.devdata/bsds500}
RUN_DIR=${RUN_DIR:-runs/device-$MODEL}
MINUTES=${MINUTES:-8}
LR=${LR:-1e-4}
DECAY_MINUTES=${DECAY_MINUTES:-0}
DECAY_LR=${DECAY_LR:-1e-5}
STEPS=${STEPS:-1000000}
BATCH=${BATCH:-32}
PART_MIB=${PART_MIB:-15}  # weights bigger than this come back in parts (the device tool returns files of <= 16 MiB)
PATCH=${PATCH:-256}
AMP=${AMP:-bf16}
COMPILE=${COMPILE:-1}
: "${OUT:?set OUT to the folder that receives the weights}"
PY=${PYTHON:-python3}
WHEELS=${WHEELS:-.whl}  # carried wheels, installed first when there are any
# shellcheck source=scripts/device_lib.sh
. scripts/device_lib.sh
install_carried_wheels "$PY" "$WHEELS"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
init=()
if [ -f "$INIT" ] && [ ! -f "$RUN_DIR/checkpoint.pt" ]; then init=(--init-from "$INIT"); fi
compile=(--no-compile)
if [ "$COMPILE" = 1 ]; then compile=(--compile); fi
config=()
if [ -f "$CONFIG" ]; then config=(--config "$CONFIG"); fi
phase() {  # phase <lr> <minutes> <log>
  "$PY" -m psic_lab.training rd "${config[@]}" --model-id "$MODEL_ID" --data "$DATA" --run-dir "$RUN_DIR" \
    --steps "$STEPS" --batch "$BATCH" --patch "$PATCH" --lr "$1" --lr-final "$1" --max-minutes "$2" --amp "$AMP" \
    "${compile[@]}" "${init[@]}" --threads 0 --log-every 100 --ckpt-every 1000 2>&1 | tee -a "$OUT/$3"
  init=()  # the second phase resumes from RUN_DIR's checkpoint
}
phase "$LR" "$MINUTES" train.log
if [ "$DECAY_MINUTES" != 0 ]; then phase "$DECAY_LR" "$DECAY_MINUTES" train.log; fi
"$PY" -m psic_lab.training export "$RUN_DIR/checkpoint.pt" "$OUT/$MODEL.safetensors" \
  --data-desc "BSDS500 train+val+test (500): random 256x256 crops with flips; never Kodak"
cp "$RUN_DIR/log.jsonl" "$OUT/log.jsonl"
# a wider model's weights come back in parts
split_for_return "$OUT/$MODEL.safetensors" "$PART_MIB"
