"""What every experiment shares: the runner that takes an experiment from its command line to its results file
and plots, the seed, the wall-clock budget, and the small models the experiments train (a recurrent cell from
hf_lstm, or a small GPT-2 for contrast).

An experiment is an `Experiment`: its name, its own arguments, `run` and `plot`. `run_experiment` does the
rest, the same for all of them: parse `hf-lstm experiment NAME --output_dir DIR [--cell_types ...]
[--seed ...] [--budget_minutes ...]`, apply the seed and threads, create DIR, run, write `DIR/results.json`,
draw the PNG plots, and say where the results went. The budget is wall-clock time per trained model (one cell
type, one setting), so a run's length is predictable before it starts.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

RECURRENT_CELLS = ("rnn", "gru", "lstm", "peephole")
TRANSFORMER = "transformer"


@dataclass(frozen=True)
class Experiment:
    """What one experiment declares about itself; `run_experiment` does everything else.

    Args:
        name (`str`):
            The name on the command line, `hf-lstm experiment NAME`, and in results.json.
        description (`str`):
            One paragraph for `--help`.
        default_cells (`tuple[str, ...]`):
            The default of `--cell_types`.
        default_budget (`float`):
            The default of `--budget_minutes`, per trained model.
        add_arguments (`Callable[[argparse.ArgumentParser], None]`):
            Adds the experiment's own arguments to the shared ones of `base_parser`.
        run (`Callable[[argparse.Namespace, Path], dict]`):
            Runs the experiment with the parsed arguments and the output folder; returns the results
            dictionary.
        plot (`Callable[[dict, Path], list[Path]]`):
            Draws the results into PNG files in the output folder; returns their paths.
    """

    name: str
    description: str
    default_cells: tuple[str, ...]
    default_budget: float
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace, Path], dict]
    plot: Callable[[dict, Path], list[Path]]

    def parser(self) -> argparse.ArgumentParser:
        """The experiment's command line: the shared arguments of `base_parser` and its own."""
        parser = base_parser(self.name, self.description, self.default_cells, self.default_budget)
        self.add_arguments(parser)
        return parser

    @classmethod
    def from_module(
        cls, namespace: dict, default_cells: tuple[str, ...], default_budget: float
    ) -> Experiment:
        """The experiment an experiment module declares by convention: its `NAME`, the first paragraph of its
        docstring as the description, and its functions `add_arguments`, `run` and `plot`.

        Args:
            namespace (`dict`):
                The module's `globals()`, once those names are defined.
            default_cells (`tuple[str, ...]`), default_budget (`float`):
                The defaults of `--cell_types` and `--budget_minutes`.

        Returns:
            `Experiment`: the experiment, for the module to expose as `EXPERIMENT`.
        """
        return cls(
            name=namespace["NAME"],
            description=namespace["__doc__"].split("\n\n")[0],
            default_cells=default_cells,
            default_budget=default_budget,
            add_arguments=namespace["add_arguments"],
            run=namespace["run"],
            plot=namespace["plot"],
        )


def run_experiment(experiment: Experiment, argv: Sequence[str] | None = None) -> int:
    """Run one experiment from its command line: parse, set up, run, write results.json, plot, report.

    Args:
        experiment (`Experiment`):
            The experiment to run.
        argv (`Sequence[str]`, *optional*):
            Its arguments (those after `hf-lstm experiment NAME`); `sys.argv` when `None`.

    Returns:
        `int`: the exit status: 0, or 1 after one line on stderr for a `ValueError` (bad arguments).
    """
    args = experiment.parser().parse_args(argv)
    created = not Path(args.output_dir).exists()
    output_dir = setup(args)
    try:
        results = experiment.run(args, output_dir)
    except BaseException as error:
        if created and not any(output_dir.iterdir()):
            output_dir.rmdir()  # a refused run (a bad --cell_types, ...) leaves no empty folder behind
        if isinstance(error, ValueError):
            print(f"hf-lstm experiment {experiment.name}: error: {error}", file=sys.stderr)
            return 1
        raise
    path = write_results(output_dir, results)
    if not args.no_plots:
        experiment.plot(results, output_dir)
    print(f"wrote {path}")
    return 0


def base_parser(
    name: str, description: str, default_cells: tuple[str, ...], default_budget: float
) -> argparse.ArgumentParser:
    """The arguments every experiment takes: --output_dir, --cell_types, --seed, --budget_minutes, --threads,
    --no_plots.

    Args:
        name (`str`), description (`str`):
            The experiment's name (the parser's prog is `hf-lstm experiment NAME`) and its `--help` text.
        default_cells (`tuple[str, ...]`), default_budget (`float`):
            The defaults of `--cell_types` and `--budget_minutes`.

    Returns:
        `argparse.ArgumentParser`: the parser, for the experiment to add its own arguments to.
    """
    parser = argparse.ArgumentParser(prog=f"hf-lstm experiment {name}", description=description)
    parser.add_argument("--output_dir", required=True, help="where results.json and the PNG plots go")
    parser.add_argument(
        "--cell_types",
        default=",".join(default_cells),
        help=f"comma-separated subset of {','.join((*RECURRENT_CELLS, TRANSFORMER))} "
        f"(default: {','.join(default_cells)})",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed for data, initialisation and batching")
    parser.add_argument(
        "--budget_minutes",
        type=float,
        default=default_budget,
        help="wall-clock training budget per trained model (default: %(default)s)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: torch's choice); 1 is kind to a shared machine",
    )
    parser.add_argument("--no_plots", action="store_true", help="write results.json only")
    return parser


def add_memory_bias_argument(parser: argparse.ArgumentParser, default: float | None = 3.0) -> None:
    """--memory_bias: the initial bias of the gate that keeps memory (LSTM/peephole forget gate, GRU update
    gate)."""
    parser.add_argument(
        "--memory_bias",
        type=float,
        default=default,
        help="initial bias of the forget gate (LSTM, peephole) and update gate (GRU); sigmoid(3) = 0.95 "
        "keeps 95%% of the memory per step at the start (default: %(default)s; the library's "
        "forget_bias default, 1, is the language-modelling choice)",
    )


def parse_cell_types(text: str, allowed: tuple[str, ...]) -> list[str]:
    """Split '--cell_types rnn,lstm' into a list and check every name against `allowed`.

    Args:
        text (`str`):
            The comma-separated names.
        allowed (`tuple[str, ...]`):
            The names the experiment accepts.

    Returns:
        `list[str]`: the names in the order given. A `ValueError` names the allowed ones if any is not
        allowed or none is given.
    """
    cells = [c.strip() for c in text.split(",") if c.strip()]
    bad = [c for c in cells if c not in allowed]
    if not cells or bad:
        raise ValueError(
            f"--cell_types must be a comma-separated subset of {','.join(allowed)}; got {text!r}"
        )
    return cells


def recorded_settings(args: argparse.Namespace, *names: str) -> dict:
    """The settings a results file records: `--seed`, `--budget_minutes`, then the experiment's own `names`,
    in that order, each with its parsed value."""
    return {k: getattr(args, k) for k in ("seed", "budget_minutes", *names)}


def setup(args: argparse.Namespace) -> Path:
    """Apply --threads and --seed, create --output_dir, and return it."""
    if args.threads:
        torch.set_num_threads(args.threads)
    seed_everything(args.seed)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    return out


def seed_everything(seed: int) -> None:
    """Seed Python's and torch's generators (the experiments draw their data from explicit generators too)."""
    random.seed(seed)
    torch.manual_seed(seed)


def environment() -> dict:
    """The facts a reader needs to judge a wall-clock number: versions, threads, machine."""
    import transformers

    return {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "command": "hf-lstm experiment " + " ".join(sys.argv[2:])
        if sys.argv[1:2] == ["experiment"]
        else None,
    }


def write_results(output_dir: Path, results: dict) -> Path:
    """Write `results` as indented JSON to output_dir/results.json (floats to 6 significant digits, NaN and
    inf become null) and return the file's path."""

    def clean(value):
        if isinstance(value, float):
            return float(f"{value:.6g}") if math.isfinite(value) else None
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(v) for v in value]
        return value

    path = Path(output_dir) / "results.json"
    path.write_text(json.dumps(clean(results), indent=1) + "\n")
    return path


class Budget:
    """A wall-clock deadline: `Budget(minutes)`, then `budget.expired()` and `budget.elapsed()` (seconds)."""

    def __init__(self, minutes: float):
        self.seconds = max(0.0, minutes * 60.0)
        self.start = time.perf_counter()

    def elapsed(self) -> float:
        """Seconds since the budget started."""
        return time.perf_counter() - self.start

    def expired(self) -> bool:
        """Whether the wall-clock budget is used up."""
        return self.elapsed() >= self.seconds


def pyplot():
    """matplotlib's pyplot on the Agg backend (matplotlib is optional: imported only when plotting)."""
    try:
        import matplotlib
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise SystemExit("plots need matplotlib: pip install matplotlib (or pass --no_plots)") from error
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path, dpi: int = 90) -> Path:
    """Lay out `fig` (`tight_layout`), write it to `path` at `dpi` and close it; returns `path`."""
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    pyplot().close(fig)
    return path


CELL_COLOURS = {
    "rnn": "tab:red",
    "gru": "tab:green",
    "lstm": "tab:blue",
    "peephole": "tab:purple",
    "transformer": "tab:gray",
}


# ----------------------------------------------------------------------------------------------------------
# Sequence-to-one models for continuous inputs (the adding problem): a recurrent stack from hf_lstm fed
# through `inputs_embeds`, or a small GPT-2, both with a linear read-out of the last position.
# ----------------------------------------------------------------------------------------------------------


class SequenceRegressor(nn.Module):
    """Read a sequence of input vectors, predict one number from the last position.

    For the recurrent cells the body is `hf_lstm.LSTMModel` (one layer, `inputs_embeds` of size `input_size`);
    for "transformer" it is a small `transformers.GPT2Model` behind a linear input projection. The read-out is
    `nn.Linear(hidden, 1)` on the last position's hidden state.

    Args:
        cell_type (`str`):
            A recurrent cell (`"rnn"`, `"gru"`, `"lstm"`, `"peephole"`) or `"transformer"`.
        input_size (`int`), hidden_size (`int`):
            The input vectors' size and the recurrent width.
        max_positions (`int`, *optional*, defaults to 1024):
            The GPT-2's position table.
        transformer_layers (`int`, *optional*, defaults to 2):
            The GPT-2's depth.
        transformer_width (`int`, *optional*, defaults to 32):
            The GPT-2's width.
        memory_bias (`float`, *optional*):
            For a recurrent cell: the initial bias of its memory gate (`set_memory_bias`).
    """

    def __init__(
        self,
        cell_type: str,
        input_size: int,
        hidden_size: int,
        max_positions: int = 1024,
        transformer_layers: int = 2,
        transformer_width: int = 32,
        memory_bias: float | None = None,
    ):
        super().__init__()
        self.cell_type = cell_type
        if cell_type == TRANSFORMER:
            from transformers import GPT2Model

            config = gpt2_config(
                vocab_size=1,
                positions=max_positions,
                width=transformer_width,
                layers=transformer_layers,
                heads=2,
                special_token_id=0,
            )
            self.input_projection = nn.Linear(input_size, transformer_width)
            self.body = GPT2Model(config)
            width = transformer_width
        else:
            from hf_lstm import LSTMConfig, LSTMModel

            config = LSTMConfig(
                vocab_size=1,
                hidden_size=hidden_size,
                embedding_size=input_size,
                num_hidden_layers=1,
                cell_type=cell_type,
                tie_word_embeddings=False,
                use_cache=False,
            )
            self.input_projection = None
            self.body = LSTMModel(config)
            if memory_bias is not None:
                set_memory_bias(self.body, memory_bias)
            width = hidden_size
        self.readout = nn.Linear(width, 1)

    def hidden_states(self, x: torch.Tensor, output_gates: bool = False):
        """The body's output for inputs x (batch, T, input_size): (last_hidden_state, gates or None)."""
        if self.input_projection is not None:
            out = self.body(inputs_embeds=self.input_projection(x), use_cache=False)
            return out.last_hidden_state, None
        out = self.body(inputs_embeds=x, use_cache=False, output_gates=output_gates)
        return out.last_hidden_state, out.gates

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Predictions of shape (batch,) read from the last position."""
        hidden, _ = self.hidden_states(x)
        return self.readout(hidden[:, -1]).squeeze(-1)


def gpt2_config(vocab_size: int, positions: int, width: int, layers: int, heads: int, special_token_id: int):
    """The `transformers.GPT2Config` of the experiments' small GPT-2s: no dropout, and one token id as both
    beginning and end of sequence.

    Args:
        vocab_size (`int`), positions (`int`):
            The vocabulary and the position table (`vocab_size`, `n_positions`).
        width (`int`), layers (`int`), heads (`int`):
            `n_embd`, `n_layer` and `n_head`.
        special_token_id (`int`):
            `bos_token_id` and `eos_token_id`.

    Returns:
        `transformers.GPT2Config`: the configuration.
    """
    from transformers import GPT2Config

    return GPT2Config(
        vocab_size=vocab_size,
        n_positions=positions,
        n_embd=width,
        n_layer=layers,
        n_head=heads,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=special_token_id,
        eos_token_id=special_token_id,
    )


def set_memory_bias(model: nn.Module, value: float) -> None:
    """Set the initial bias of every layer's "keep the memory" gate to `value`: the forget gate b_f of LSTM
    and peephole cells, the update gate b_z of GRU cells (h_t = (1 - z_t) h~_t + z_t h_{t-1}, so z near 1
    keeps h).
    The bias sits in `bias_ih` (and `bias_hh` is zeroed for that gate) so sigmoid(value) is the gate's
    starting level. Vanilla RNN cells have no such gate and are left alone."""
    for module in model.modules():
        if isinstance(module, (nn.LSTM, nn.GRU)):
            hidden = module.hidden_size
            rows = slice(hidden, 2 * hidden)  # f in the LSTM's (i, f, g, o), z in the GRU's (r, z, n)
            with torch.no_grad():
                for name, param in module.named_parameters():
                    if name.startswith("bias_ih"):
                        param[rows] = value
                    elif name.startswith("bias_hh"):
                        param[rows] = 0.0


def count_used_parameters(model: nn.Module) -> int:
    """The parameters a `SequenceRegressor` uses: all of them except the one-row token embedding of its body
    (hf_lstm's `embed_tokens`, GPT-2's `wte`), which a model fed through `inputs_embeds` never reads.

    Args:
        model (`nn.Module`):
            The model; a weight shared by two modules is counted once.

    Returns:
        `int`: the number of scalar parameters.
    """
    unused = ("embed_tokens.weight", "wte.weight")
    return sum(
        p.numel() for name, p in model.named_parameters() if not (name.endswith(unused) and p.shape[0] == 1)
    )
