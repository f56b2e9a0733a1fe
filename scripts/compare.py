#!/usr/bin/env python
"""Train hf_lstm and parameter-matched peers (GPT-2, Llama, Mamba, Mamba-2, xLSTM, RWKV, RecurrentGemma) on
the same data with the same budget, and compare quality, speed and memory in one table (results.json,
REPORT.md, plots).

    python scripts/compare.py --dataset_name ptb --models hf_lstm,gpt2,llama --target_params 4M \
        --budget_minutes 5 --num_threads 1 --output_dir runs/compare-ptb
    python scripts/compare.py --dataset_name ptb --target_params 1M,4M --budget both --budget_tokens 2M \
        --lr_sweep 3 --seeds 3 --num_threads 1 --output_dir runs/compare-peers \
        --models hf_lstm,hf_lstm:gru,gpt2,llama,mamba,mamba2,xlstm,rwkv,recurrent_gemma

The same as `hf-lstm compare`; see `hf-lstm compare --help` for the arguments.
"""

import sys

from hf_lstm.compare import main

if __name__ == "__main__":
    sys.exit(main())
