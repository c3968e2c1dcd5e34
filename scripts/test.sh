#!/usr/bin/env bash
# Set up (if needed), then lint and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
.venv/bin/ruff check psic_cli psic_lab tests scripts benchmarks
.venv/bin/python scripts/update_readme.py --check  # README / docs tables are what results/ renders
.venv/bin/python -m pytest -q "$@"
