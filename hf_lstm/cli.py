"""The `hf-lstm` command line: one verb per job, each a thin door into its own module.

    hf-lstm train ...        # hf_lstm.training   (same arguments as scripts/train.py)
    hf-lstm compare ...      # hf_lstm.compare    (LSTM vs small Transformers, one table)
    hf-lstm bench ...        # hf_lstm.benchmark  (speed and memory figures with their targets)
    hf-lstm experiment NAME  # hf_lstm.experiments (vanishing gradient, adding problem, ...)

Each module exposes `main(argv: list[str] | None) -> int`; modules are imported only when their verb
is used, so `hf-lstm train` never pays for matplotlib.
"""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "train": ("hf_lstm.training", "train a language model with Accelerate (run_clm_no_trainer arguments)"),
    "compare": ("hf_lstm.compare", "train hf_lstm and small Transformers on the same data and compare them"),
    "bench": ("hf_lstm.benchmark", "print decode, prefill and training speed against the machine's floor"),
    "experiment": ("hf_lstm.experiments", "run a science experiment (vanishing-gradient, adding, ...)"),
}


def _usage() -> str:
    lines = ["usage: hf-lstm COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<12}{help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "Run `hf-lstm COMMAND --help` for a command's arguments."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"hf-lstm: unknown command {command!r}; choose one of {', '.join(COMMANDS)}\n", file=sys.stderr)
        print(_usage(), file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[command][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
