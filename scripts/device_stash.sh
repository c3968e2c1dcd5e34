#!/usr/bin/env bash
# Take out of the tree what a device call for a shield stage does not need, and put it back afterwards.
#
#   bash scripts/device_stash.sh out    # before the device `run` call (it carries 64 MiB at most)
#   bash scripts/device_stash.sh back   # right after it, whatever happened
#
# Out go lab_weights/, docs/, results/ and every file of weights/ but the target's weights and the key; the
# rest of the tree, .devdata/shield and .whl/ (named in `carry`) come to about 59 MiB. Nothing that reads
# those folders (a benchmark, an export) may run in between.
set -euo pipefail
cd "$(dirname "$0")/.."
STASH=${STASH:-/tmp/psic-device-stash}
KEEP=" weights/psic-vlp-mini.safetensors weights/shipped.key "
case "${1:-}" in
  out)
    if [ -e "$STASH" ]; then echo "$STASH exists: put it back first (device_stash.sh back)" >&2; exit 1; fi
    mkdir -p "$STASH/weights"
    for p in lab_weights docs results; do mv "$p" "$STASH/"; done
    for f in weights/*; do
      case "$KEEP" in *" $f "*) ;; *) mv "$f" "$STASH/weights/" ;; esac
    done
    ;;
  back)
    if [ ! -d "$STASH" ]; then echo "nothing stashed at $STASH" >&2; exit 1; fi
    for p in lab_weights docs results; do if [ -e "$STASH/$p" ]; then mv "$STASH/$p" .; fi; done
    for f in "$STASH"/weights/*; do if [ -e "$f" ]; then mv "$f" weights/; fi; done
    rmdir "$STASH/weights" "$STASH"
    ;;
  *) echo "usage: $0 out|back" >&2; exit 2 ;;
esac
git status --short | head -5
