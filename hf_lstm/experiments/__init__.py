"""The science the LSTM was born for, as experiments you run with one command and read as plots.

    hf-lstm experiment vanishing-gradient --output_dir runs/vg     # gradient norm against distance
    hf-lstm experiment adding --output_dir runs/adding             # Hochreiter & Schmidhuber's adding problem
    hf-lstm experiment long-dependency --output_dir runs/ld        # "I grew up in France ... fluent French"
    hf-lstm experiment gates --output_dir runs/gates               # gate heatmaps of a PTB language model

Each writes OUTPUT_DIR/results.json and PNG plots; docs/SCIENCE.md tells the story with the reference runs.

`EXPERIMENTS` is the registry of the experiments that exist: each name with the module that defines it (as
`EXPERIMENT`, an `hf_lstm.experiments.runner.Experiment`) and a one-line summary. `hf_lstm.cli` dispatches
`hf-lstm experiment NAME` through it, and `hf_lstm.experiments.runner.run_experiment` runs the one chosen;
a module is imported only when its experiment runs.
"""

from __future__ import annotations

EXPERIMENTS = {
    "vanishing-gradient": (
        "hf_lstm.experiments.vanishing_gradient",
        "gradient norm of a last-step loss against distance, at init and after training",
    ),
    "adding": (
        "hf_lstm.experiments.adding",
        "the 1997 adding problem: success rate per cell type and length",
    ),
    "long-dependency": (
        "hf_lstm.experiments.long_dependency",
        "next-token accuracy on a token that depends on one d tokens back",
    ),
    "gates": ("hf_lstm.experiments.gates", "forget/input/output gate and cell-state heatmaps of a PTB model"),
}

__all__ = ["EXPERIMENTS"]
