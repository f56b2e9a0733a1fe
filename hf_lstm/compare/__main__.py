"""`python -m hf_lstm.compare`: the same as `hf-lstm compare`."""

import sys

from .cli import main

sys.exit(main())
