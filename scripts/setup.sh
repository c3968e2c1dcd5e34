#!/usr/bin/env bash
# Create .venv (idempotent) with CPU torch first, then psic with its training and test extras.
# Says what it is doing before each long step (on stderr); a rerun with everything installed is quiet.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
say() { echo "setup: $*" >&2; }
if [ ! -x .venv/bin/python ]; then
  say "creating the virtual environment .venv with $PY"
  "$PY" -m venv .venv
fi
chmod 600 weights/shipped.key 2>/dev/null || true  # git does not keep file modes; the shipped key is public anyway
# compressai and open_clip import torchvision, which needs psic's shim first (psic_cli/_compat.py)
check="from psic_cli._compat import ensure_torchvision_importable as shim; shim()
import compressai, open_clip, pytest, hypothesis"
if ! .venv/bin/python -c "$check" >/dev/null 2>&1; then
  # torch first and pinned with torchvision: an open range pulls a multi-GB CUDA build
  say "installing torch 2.13.0 (first run: a large download, a few minutes)"
  .venv/bin/pip install -q torch==2.13.0
  say "installing psic with its training and test extras (torchvision, compressai, open_clip, ...)"
  .venv/bin/pip install -q torch==2.13.0 torchvision==0.28.0 -e ".[train,test]"
  say "done: run .venv/bin/psic --help"
else
  say "everything is already installed in .venv"
fi
