"""Why the embedding initialisation matters: a bare torch LSTM LM against hf_lstm under the same loop.

    python scripts/init_diagnostic.py --model torch --optimizer adamw --learning_rate 3e-3
    python scripts/init_diagnostic.py --model hf_lstm --optimizer adamw --learning_rate 3e-3
    python scripts/init_diagnostic.py --model hf_lstm_small_embeddings --optimizer adamw --learning_rate 3e-3

The loop and the three models are in hf_lstm/experiments/embedding_init.py; results: docs/TRAINING.md,
"Initialisation".
"""

import sys

from hf_lstm.experiments.embedding_init import main

if __name__ == "__main__":
    sys.exit(main())
