"""`python -m hf_lstm.benchmark` runs `hf-lstm bench`."""

import sys

from .cli import main

sys.exit(main())
