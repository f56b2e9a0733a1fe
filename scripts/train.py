#!/usr/bin/env python
"""Train a causal language model (hf_lstm or a Transformer) with Accelerate.

    python scripts/train.py --dataset_name ptb --output_dir runs/ptb-lstm
    accelerate launch scripts/train.py --dataset_name ptb --model_type gpt2 \
        --config_overrides "n_embd=256,n_layer=4"

The same as `hf-lstm train`; see `hf-lstm train --help` for the arguments.
"""

import sys

from hf_lstm.training import main

if __name__ == "__main__":
    sys.exit(main())
