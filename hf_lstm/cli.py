"""The `hf-lstm` command line: one verb per job, each a thin door into its own module.

    hf-lstm train ...        # hf_lstm.training   (same arguments as scripts/train.py)
    hf-lstm compare ...      # hf_lstm.compare    (LSTM vs small Transformers, one table)
    hf-lstm bench ...        # hf_lstm.benchmark  (speed and memory figures with their targets)
    hf-lstm microscope DIR   # hf_lstm.microscope  (the gates in the browser, a Gradio app)
    hf-lstm experiment NAME  # hf_lstm.experiments (vanishing gradient, adding problem, ...)

This module is the one dispatcher: it picks the verb, and for `experiment` the experiment, from a menu and
hands it the rest of the arguments. The verbs' modules expose `main(argv: list[str] | None) -> int`; the
experiments are listed in `hf_lstm.experiments.EXPERIMENTS` and run by `hf_lstm.experiments.runner`. Modules
are imported only when their verb is used, so `hf-lstm train` never pays for matplotlib.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from dataclasses import dataclass

COMMANDS = {  # name: ("module:function" that runs it, one-line help)
    "train": (
        "hf_lstm.training:main",
        "train a language model with Accelerate (run_clm_no_trainer arguments)",
    ),
    "compare": (
        "hf_lstm.compare:main",
        "train hf_lstm and small Transformers on the same data and compare them",
    ),
    "bench": (
        "hf_lstm.benchmark:main",
        "print decode, prefill and training speed against the machine's floor",
    ),
    "microscope": (
        "hf_lstm.microscope.cli:main",
        "watch a trained model's gates token by token in the browser (Gradio)",
    ),
    "experiment": (
        "hf_lstm.cli:experiment_main",
        "run a science experiment (vanishing-gradient, adding, ...)",
    ),
}


@dataclass(frozen=True)
class Menu:
    """A choice of named things on the command line, and how to start the one chosen.

    Args:
        prog (`str`):
            The command so far, e.g. `"hf-lstm"` or `"hf-lstm experiment"`.
        noun (`str`):
            What is chosen, e.g. `"command"`; used in the error message and the usage's heading.
        synopsis (`str`):
            The usage line after `prog`; its first word is the placeholder for the chosen name, e.g. `"NAME"`.
        choices (`dict[str, tuple[str, str]]`):
            Each name with what runs it (for `start`) and its one-line help.
        start (`Callable[[str, list[str]], int | None]`):
            Runs the chosen name with the remaining arguments; returns its exit status.
    """

    prog: str
    noun: str
    synopsis: str
    choices: dict[str, tuple[str, str]]
    start: Callable[[str, list[str]], int | None]

    def usage(self) -> str:
        """The usage text: synopsis, one line per choice with its help (in a column two spaces after the
        longest name), and a last line pointing to the chosen thing's own `--help`."""
        lines = [f"usage: {self.prog} {self.synopsis}", "", f"{self.noun}s:"]
        width = max(map(len, self.choices)) + 2
        lines += [f"  {name:<{width}}{help_}" for name, (_, help_) in self.choices.items()]
        article = "an" if self.noun[0] in "aeiou" else "a"
        hint = f"Run `{self.prog} {self.synopsis.split()[0]} --help` for {article} {self.noun}'s arguments."
        return "\n".join([*lines, "", hint])


def dispatch(menu: Menu, argv: list[str]) -> int:
    """Start the choice that `argv[0]` names with the rest of `argv`.

    Args:
        menu (`Menu`):
            What can be chosen, and how to start it.
        argv (`list[str]`):
            The arguments: the name first, then the chosen thing's own arguments.

    Returns:
        `int`: the chosen thing's exit status; 0 after printing the usage for `-h` or `--help`; 1, with the
        usage on stderr, when nothing is chosen; 2, with the usage and the valid names, for an unknown name.
    """
    if argv and argv[0] in ("-h", "--help"):
        print(menu.usage())
        return 0
    if not argv:  # nothing chosen: say what can be, and fail (a script that forgot the name must notice)
        print(f"{menu.prog}: no {menu.noun} given\n", file=sys.stderr)
        print(menu.usage(), file=sys.stderr)
        return 1
    name, rest = argv[0], argv[1:]
    if name not in menu.choices:
        print(
            f"{menu.prog}: unknown {menu.noun} {name!r}; choose one of {', '.join(menu.choices)}\n",
            file=sys.stderr,
        )
        print(menu.usage(), file=sys.stderr)
        return 2
    return int(menu.start(name, rest) or 0)


def _start_command(name: str, argv: list[str]) -> int | None:
    module, function = COMMANDS[name][0].split(":")
    return getattr(importlib.import_module(module), function)(argv)


def _start_experiment(name: str, argv: list[str]) -> int:
    from .experiments import EXPERIMENTS
    from .experiments.runner import run_experiment

    return run_experiment(importlib.import_module(EXPERIMENTS[name][0]).EXPERIMENT, argv)


def experiment_main(argv: list[str] | None = None) -> int:
    """`hf-lstm experiment NAME ARGS...`: run the experiment NAME of `hf_lstm.experiments.EXPERIMENTS`.

    Args:
        argv (`list[str]`, *optional*):
            The arguments after `experiment`; `sys.argv[2:]` when `None`.

    Returns:
        `int`: the exit status.
    """
    from .experiments import EXPERIMENTS

    menu = Menu(
        prog="hf-lstm experiment",
        noun="experiment",
        synopsis="NAME --output_dir DIR [--cell_types ...] [--seed ...] [--budget_minutes ...]",
        choices=EXPERIMENTS,
        start=_start_experiment,
    )
    return dispatch(menu, list(sys.argv[2:] if argv is None else argv))


MENU = Menu(
    prog="hf-lstm", noun="command", synopsis="COMMAND [ARGS...]", choices=COMMANDS, start=_start_command
)


def main(argv: list[str] | None = None) -> int:
    """`hf-lstm COMMAND ARGS...`: run one of `COMMANDS` (the console script `hf-lstm`).

    Args:
        argv (`list[str]`, *optional*):
            The arguments after `hf-lstm`; `sys.argv[1:]` when `None`.

    Returns:
        `int`: the exit status.
    """
    return dispatch(MENU, list(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    sys.exit(main())
