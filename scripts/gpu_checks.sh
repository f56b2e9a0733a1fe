#!/usr/bin/env bash
# Everything this project checks on a CUDA GPU, in one run of about nine minutes (CI has no GPU):
#   1. `hf-lstm bench --device cuda`, alone on the GPU (docs/PERFORMANCE.md, "On a GPU");
#   2. Zaremba et al.'s "medium" PTB recipe through `hf-lstm train`, in the background, for the minutes left
#      (docs/TRAINING.md, "Zaremba et al. (2014), medium, on a GPU");
#   3. the GPU tests beside it (`pytest -m gpu tests/test_gpu.py`).
# Each writes its output into OUT_DIR (seven files); a failing step does not stop the others.
#
#     bash scripts/gpu_checks.sh OUT_DIR [SECONDS]      # SECONDS: the whole run's budget (default 540)
#
# Run from the repository root with hf_lstm importable (installed, or PYTHONPATH=.). PYTHON picks the
# interpreter (default python3).
set -uo pipefail
out=${1:?usage: bash scripts/gpu_checks.sh OUT_DIR [SECONDS]}
budget=${2:-540}
python=${PYTHON:-python3}
mkdir -p "$out"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
start=$SECONDS

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
$python -c "import sys, torch, transformers, accelerate, datasets; print('python', sys.version.split()[0], \
'torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version(), \
'transformers', transformers.__version__, 'accelerate', accelerate.__version__, 'datasets', datasets.__version__)"
echo "$(nproc) CPU cores; $(date -u)"

echo "bench: start at $((SECONDS - start)) s"
timeout 200 $python -m hf_lstm.cli bench --device cuda --json "$out/bench-cuda.json" >"$out/bench-cuda.txt" 2>&1
echo "bench: exit $? at $((SECONDS - start)) s"

# Zaremba medium: 2x650, untied, U(-0.05, 0.05), forget bias 0, dropout 0.5 on the non-recurrent connections, SGD
# at the paper's rate 1 and clipping 5 restated for a loss averaged over 35 steps (x35 and /35), the rate divided
# by 1.2 every epoch from the 7th, 39 epochs of 20 x 35. It gets what is left of the budget, less 90 s for its
# start (PTB, tokenizer) and its final evaluation.
minutes=$(((budget - (SECONDS - start) - 90) / 6))
minutes="$((minutes / 10)).$((minutes % 10))"
echo "zaremba medium: --max_train_minutes $minutes"
(
    TQDM_MININTERVAL=20 timeout $((budget - (SECONDS - start))) $python -m hf_lstm.cli train --dataset_name ptb \
        --config_overrides "hidden_size=650,num_hidden_layers=2,tie_word_embeddings=false,initializer_range=0.05,forget_bias=0.0,input_dropout=0.5,hidden_dropout=0.5,output_dropout=0.5" \
        --optimizer sgd --learning_rate 35 --max_grad_norm 0.143 --lr_scheduler_type epoch_decay --lr_decay 0.8333 \
        --lr_decay_start_epoch 7 --num_train_epochs 39 --bptt 35 --per_device_train_batch_size 20 \
        --max_train_minutes "$minutes" --output_dir runs/zaremba-medium >"$out/zaremba-medium.txt" 2>&1
    echo "exit $?" >>"$out/zaremba-medium.txt"
    for f in all_results.json README.md train_log.json; do
        cp "runs/zaremba-medium/$f" "$out/zaremba-medium-$f" 2>/dev/null
    done
) &

timeout 240 $python -m pytest -m gpu tests/test_gpu.py -q -p no:cacheprovider -rf >"$out/pytest-gpu.txt" 2>&1
echo "gpu tests: exit $? at $((SECONDS - start)) s"
wait
echo "all done at $((SECONDS - start)) s"
