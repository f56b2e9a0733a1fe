#!/usr/bin/env bash
# Find the next upstream break before users do: a throwaway virtualenv with the newest releases of transformers,
# torch, accelerate, datasets and tokenizers (no pins, no machine-wide pip constraints), then the default test
# suite. Run it before every hf_lstm release and whenever one of those packages ships (docs/UPSTREAM.md).
#
#   bash scripts/check_upstream.sh                         # newest of everything (torch may be a multi-GB CUDA build)
#   TORCH_SPEC="torch==2.13.0" bash scripts/check_upstream.sh   # keep a CPU torch, newest of the rest
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=$(mktemp -d "${TMPDIR:-/tmp}/hf_lstm-upstream.XXXXXX")
trap 'rm -rf "$VENV"' EXIT
export PIP_CONFIG_FILE=/dev/null HF_HUB_OFFLINE=1
"${PYTHON:-python3}" -m venv "$VENV"
"$VENV/bin/pip" install -q --upgrade pip
"$VENV/bin/pip" install -q --upgrade "${TORCH_SPEC:-torch}"
"$VENV/bin/pip" install -q --upgrade -e ".[dev]" transformers accelerate datasets tokenizers
"$VENV/bin/python" - <<'PY'
import accelerate, datasets, tokenizers, torch, transformers
print("testing against: " + ", ".join(f"{m.__name__} {m.__version__}" for m in
                                      (transformers, torch, accelerate, datasets, tokenizers)))
PY
"$VENV/bin/python" -m pytest -q -p no:cacheprovider
