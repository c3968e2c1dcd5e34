#!/usr/bin/env bash
# Set up (if needed), then encode a bundled example and decode both views.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1
out=${1:-demo-out}
mkdir -p "$out"
.venv/bin/psic models
.venv/bin/psic encode examples/kodim23.png -o "$out/kodim23.psic" --force
.venv/bin/psic info "$out/kodim23.psic"
.venv/bin/psic decode "$out/kodim23.psic" -o "$out/kodim23-shielded.png" --force
.venv/bin/psic decode --key weights/shipped.key "$out/kodim23.psic" -o "$out/kodim23-full.png" --force
echo "demo outputs in $out/"
