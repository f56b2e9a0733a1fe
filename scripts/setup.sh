#!/usr/bin/env bash
# Idempotent set-up: a virtualenv (.venv, or $VENV) with the CPU build of torch installed first (a bare `torch`
# requirement would otherwise pull a multi-GB CUDA build), then this package with its dev extra.
# CONSTRAINTS=file installs the versions pinned there instead of the newest (CI's run on the declared minima).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
fi
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
    "$VENV/bin/pip" install -q "torch==2.13.0"
fi
if ! "$VENV/bin/python" -c "import hf_lstm, pytest, hypothesis, matplotlib, importlinter, lm_eval, gradio, playwright, onnxscript, onnxruntime" 2>/dev/null; then
    "$VENV/bin/pip" install -q -e ".[dev]" ${CONSTRAINTS:+-c "$CONSTRAINTS"}
fi
