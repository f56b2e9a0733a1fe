#!/usr/bin/env python
"""Train hf_lstm and parameter-matched small Transformers on the same data with the same budget, and compare
quality, speed and memory in one table (results.json, REPORT.md, plots).

    python scripts/compare.py --dataset_name ptb --models hf_lstm,gpt2,llama --target_params 4M \
        --budget_minutes 5 --num_threads 1 --output_dir runs/compare-ptb

The same as `hf-lstm compare`; see `hf-lstm compare --help` for the arguments.
"""

import sys

from hf_lstm.compare import main

if __name__ == "__main__":
    sys.exit(main())
