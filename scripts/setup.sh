#!/usr/bin/env bash
# Idempotent set-up: a virtualenv in .venv with the CPU build of torch installed first (a bare `torch`
# requirement would otherwise pull a multi-GB CUDA build), then this package with its dev extra.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    .venv/bin/pip install -q "torch==2.13.0"
fi
if ! .venv/bin/python -c "import hf_lstm, pytest, hypothesis, matplotlib" 2>/dev/null; then
    .venv/bin/pip install -q -e ".[dev]"
fi
