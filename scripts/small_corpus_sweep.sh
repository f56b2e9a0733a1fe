#!/usr/bin/env bash
# The small-corpus regularisation sweep of docs/TRAINING.md ("A recipe for small corpora"): the first 1.0M
# characters of the built-in Shakespeare's training plays as a user's train.txt, the built-in held-out plays as
# validation.txt and test.txt, and every other flag at its default (2x512 LSTM, BPE sized to the corpus, 3
# epochs, the best of ten evaluations kept). Budgets are in steps, so the numbers do not depend on the machine's
# load. Usage: bash scripts/small_corpus_sweep.sh [OUT_DIR]   (about 10-20 CPU-minutes per run on one core)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/small-corpus-sweep}
PY=${PY:-.venv/bin/python}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} HF_HUB_OFFLINE=1
mkdir -p "$OUT/data"
"$PY" - "$OUT/data" <<'EOF'
import sys
from hf_lstm.data.corpora import load_corpus

out = sys.argv[1]
corpus = load_corpus("shakespeare")
rows, chars = [], 0
for text in corpus["train"]["text"]:
    if chars >= 1_000_000:
        break
    rows.append(text)
    chars += len(text)
open(f"{out}/train.txt", "w").write("\n".join(rows) + "\n")
for split in ("validation", "test"):
    open(f"{out}/{split}.txt", "w").write("\n".join(corpus[split]["text"]) + "\n")
print(f"train.txt: {chars:,} characters in {len(rows):,} lines")
EOF
D=$OUT/data
run() {
    name=$1
    shift
    [ -f "$OUT/$name/all_results.json" ] && return
    "$PY" -m hf_lstm.cli train --train_file "$D/train.txt" --validation_file "$D/validation.txt" \
        --test_file "$D/test.txt" --output_dir "$OUT/$name" --overwrite_output_dir --sample_max_new_tokens 0 \
        "$@" >"$OUT/$name.log" 2>&1
    echo "$name done"
}
run none --regularization none
run lighter --regularization none --config_overrides input_dropout=0.1,hidden_dropout=0.1,output_dropout=0.1
run light --regularization none --config_overrides input_dropout=0.2,hidden_dropout=0.2,output_dropout=0.2
run awd_small --regularization none --config_overrides \
    embedding_dropout=0.1,input_dropout=0.3,hidden_dropout=0.25,output_dropout=0.4,weight_dropout=0.3
run gpt2 --model_type gpt2 --config_overrides n_embd=344,n_layer=4,n_head=4,n_positions=128,tie_word_embeddings=true
"$PY" - "$OUT" <<'EOF'
import glob
import json
import sys

print(f"{'run':<12}{'params':>10}{'best step':>10}{'valid bpb':>11}{'test bpb':>10}  (fixed windows of 128)")
for path in sorted(glob.glob(f"{sys.argv[1]}/*/all_results.json")):
    r = json.load(open(path))
    name = path.split("/")[-2]
    print(
        f"{name:<12}{r['num_parameters']:>10,}{str(r.get('best_step')):>10}"
        f"{r['validation_bits_per_byte_fixed_window']:>11.3f}{r['test_bits_per_byte_fixed_window']:>10.3f}"
    )
EOF
