"""The science the LSTM was born for, as experiments you run with one command and read as plots.

    hf-lstm experiment vanishing-gradient --output_dir runs/vg     # gradient norm against distance
    hf-lstm experiment adding --output_dir runs/adding             # Hochreiter & Schmidhuber's adding problem
    hf-lstm experiment long-dependency --output_dir runs/ld        # "I grew up in France ... fluent French"
    hf-lstm experiment gates --output_dir runs/gates               # gate heatmaps of a PTB language model

Each writes OUTPUT_DIR/results.json and PNG plots; docs/SCIENCE.md tells the story with the reference runs.
"""

from __future__ import annotations

import importlib
import sys

EXPERIMENTS = {
    "vanishing-gradient": ("hf_lstm.experiments.vanishing_gradient",
                           "gradient norm of a last-step loss against distance, at init and after training"),
    "adding": ("hf_lstm.experiments.adding", "the 1997 adding problem: success rate per cell type and length"),
    "long-dependency": ("hf_lstm.experiments.long_dependency",
                        "next-token accuracy on a token that depends on one d tokens back"),
    "gates": ("hf_lstm.experiments.gates", "forget/input/output gate and cell-state heatmaps of a PTB model"),
}


def _usage() -> str:
    lines = ["usage: hf-lstm experiment NAME --output_dir DIR [--cell_types ...] [--seed ...] [--budget_minutes ...]",
             "", "experiments:"]
    lines += [f"  {name:<20}{help_}" for name, (_, help_) in EXPERIMENTS.items()]
    lines += ["", "Run `hf-lstm experiment NAME --help` for an experiment's arguments."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Dispatch `hf-lstm experiment NAME ARGS...` to the experiment's module."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in EXPERIMENTS:
        print(f"hf-lstm experiment: unknown experiment {name!r}; choose one of {', '.join(EXPERIMENTS)}\n", file=sys.stderr)
        print(_usage(), file=sys.stderr)
        return 2
    module = importlib.import_module(EXPERIMENTS[name][0])
    return int(module.main(rest) or 0)


__all__ = ["EXPERIMENTS", "main"]
