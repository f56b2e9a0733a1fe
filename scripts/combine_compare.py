"""One report from several `hf-lstm compare` runs that differ only in their seeds: see
`hf_lstm/compare/combine.py`."""

import sys

from hf_lstm.compare.combine import main

if __name__ == "__main__":
    sys.exit(main())
