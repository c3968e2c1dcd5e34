#!/usr/bin/env bash
# Create .venv (idempotent) with CPU torch first, then psic with its training and test extras.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
chmod 600 weights/shipped.key 2>/dev/null || true  # git does not keep file modes; the shipped key is public anyway
if ! .venv/bin/python -c "import psic_cli, compressai, open_clip, pytest, hypothesis" >/dev/null 2>&1; then
  # torch first and pinned with torchvision: an open range pulls a multi-GB CUDA build
  .venv/bin/pip install -q torch==2.13.0
  .venv/bin/pip install -q torch==2.13.0 torchvision==0.28.0 -e ".[train,test]"
fi
