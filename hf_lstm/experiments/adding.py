"""The adding problem of Hochreiter & Schmidhuber (1997, section 5.4, experiment 4), for every cell type.

    hf-lstm experiment adding --output_dir runs/adding --seq_lens 100,500 --budget_minutes 5

The task, as we read the paper: each step's input is a pair (value, marker). Values are drawn uniformly from
[-1, 1]. Exactly two steps carry the marker 1.0: the first among the first 10 steps, the second among the
first T/2 - 1 steps that are still unmarked. The first and the last step carry the marker -1.0 unless they are
marked with 1.0; every other marker is 0. With X1 and X2 the values at the two marked steps, the target,
given only at the last step, is 0.5 + (X1 + X2) / 4, which lies in [0, 1]. In the rare case where the very
first step is marked, X1 is taken as 0 (we also zero that step's value, so input and target agree). A
sequence's length is uniform in [T, T + T/10]. A prediction is correct when its absolute error is below
0.04; the paper tests on 2560 fresh sequences.

Our deviations, all stated in results.json and docs/SCIENCE.md: Adam with gradient clipping instead of the
paper's online gradient descent; minibatches of 64 sequences (all sequences of a minibatch share one length
drawn from [T, T + T/10], so every sequence's length keeps the paper's distribution); one recurrent layer of
64 units for every cell type (the paper's LSTM had 93 weights); the gate that keeps memory (forget gate,
GRU update gate) starts with bias 3 (`--memory_bias`; sigmoid(3) = 0.95), not the library's 1; training
stops when 99.5 % of a fixed validation set of 512 sequences is correct, or when the wall-clock budget is
spent, whichever comes first.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F

from .runner import (
    CELL_COLOURS,
    RECURRENT_CELLS,
    TRANSFORMER,
    Budget,
    Experiment,
    SequenceRegressor,
    add_memory_bias_argument,
    count_used_parameters,
    environment,
    parse_cell_types,
    pyplot,
    recorded_settings,
    save_figure,
)

NAME = "adding"
TOLERANCE = 0.04  # the paper's success criterion: absolute error below 0.04
TEST_SEQUENCES = 2560  # the paper's test-set size
PAPER_RESULTS = {  # Hochreiter & Schmidhuber 1997, table 7: LSTM on the adding problem
    100: {"wrong_of_2560": 1, "training_sequences": 74_000, "minimal_lag": 50},
    500: {"wrong_of_2560": 0, "training_sequences": 209_000, "minimal_lag": 250},
    1000: {"wrong_of_2560": 1, "training_sequences": 853_000, "minimal_lag": 500},
}


def adding_batch(batch_size: int, seq_len: int, generator: torch.Generator, length: int | None = None):
    """One minibatch of the adding problem for nominal length T = `seq_len` (T >= 22).

    Positions follow the paper: the first marker among the first 10 steps, the second among the first T/2 - 1
    steps still unmarked (so at most step T/2, 1-based).

    Args:
        batch_size (`int`):
            Sequences in the minibatch.
        seq_len (`int`):
            The nominal length T, at least 22.
        generator (`torch.Generator`):
            The source of every random draw.
        length (`int`, *optional*):
            The sequences' length L; drawn uniformly from [T, T + T // 10] (one length for the whole
            minibatch) when `None`.

    Returns:
        `tuple[torch.Tensor, torch.Tensor]`: x of shape (batch, L, 2) holding (value, marker) pairs, and y of
        shape (batch,) holding the value to predict, 0.5 + (X1 + X2) / 4.
    """
    if seq_len < 22:
        raise ValueError(
            f"the adding problem needs T >= 22 (the first marker is among the first 10 steps), got {seq_len}"
        )
    if length is None:
        length = seq_len + int(torch.randint(0, seq_len // 10 + 1, (1,), generator=generator))
    values = torch.rand(batch_size, length, generator=generator) * 2 - 1
    markers = torch.zeros(batch_size, length)
    markers[:, 0] = -1.0
    markers[:, -1] = -1.0
    choices = max(1, seq_len // 2 - 1)  # the second marker: one of the first T/2 - 1 still unmarked steps
    first = torch.randint(0, 10, (batch_size,), generator=generator)
    second = torch.randint(0, choices, (batch_size,), generator=generator)
    second = second + (second >= first).long()  # k-th unmarked step: skip over the first marker
    rows = torch.arange(batch_size)
    values[rows[first == 0], 0] = 0.0  # the paper's rare case: X1 = 0 when the first step is marked
    markers[rows, first] = 1.0
    markers[rows, second] = 1.0
    y = 0.5 + (values[rows, first] + values[rows, second]) / 4.0
    return torch.stack([values, markers], dim=-1), y


def fixed_set(num_sequences: int, seq_len: int, seed: int, batch_size: int = 64):
    """A reproducible validation or test set: `num_sequences` sequences of nominal length `seq_len` as a list
    of (x, y) minibatches of at most `batch_size`, drawn by `adding_batch` from a generator seeded with
    `seed`."""
    generator = torch.Generator().manual_seed(seed)
    batches, left = [], num_sequences
    while left > 0:
        n = min(batch_size, left)
        batches.append(adding_batch(n, seq_len, generator))
        left -= n
    return batches


@torch.no_grad()
def evaluate(model: torch.nn.Module, batches) -> dict:
    """Score a model on a list of (x, y) minibatches.

    Args:
        model (`torch.nn.Module`):
            A model mapping x (batch, L, 2) to predictions (batch,); left in training mode afterwards.
        batches (`list[tuple[torch.Tensor, torch.Tensor]]`):
            The minibatches, e.g. from `fixed_set`.

    Returns:
        `dict`: `success_rate` (absolute error below 0.04), `wrong`, `sequences`, `mean_abs_error` and `mse`.
    """
    model.eval()
    errors = torch.cat([(model(x) - y).abs() for x, y in batches])
    model.train()
    return {
        "success_rate": float((errors < TOLERANCE).float().mean()),
        "wrong": int((errors >= TOLERANCE).sum()),
        "sequences": int(errors.numel()),
        "mean_abs_error": float(errors.mean()),
        "mse": float(errors.pow(2).mean()),
    }


def constant_baseline(batches) -> dict:
    """What always answering 0.5 (the mean target) scores: the floor every model must beat."""
    errors = torch.cat([(y - 0.5).abs() for _, y in batches])
    return {
        "success_rate": float((errors < TOLERANCE).float().mean()),
        "mean_abs_error": float(errors.mean()),
    }


def validation_entry(
    model: torch.nn.Module, validation, steps: int, batch_size: int, budget: Budget, losses: list[float]
) -> dict:
    """One point of a training run's validation history: where training stands (steps, sequences, seconds),
    the mean training loss since the last point (`losses`) and the validation scores."""
    scores = evaluate(model, validation)
    return {
        "step": steps,
        "training_sequences": steps * batch_size,
        "seconds": round(budget.elapsed(), 2),
        "train_mse": sum(losses) / len(losses),
        "val_success_rate": scores["success_rate"],
        "val_mean_abs_error": scores["mean_abs_error"],
    }


def train_adding(
    cell_type: str,
    seq_len: int,
    budget_minutes: float,
    seed: int = 0,
    hidden_size: int = 64,
    batch_size: int = 64,
    learning_rate: float = 1e-3,
    clip: float = 1.0,
    target_success: float = 0.995,
    eval_every: int = 100,
    validation_sequences: int = 512,
    max_steps: int | None = None,
    max_positions: int | None = None,
    memory_bias: float | None = None,
    log=print,
):
    """Train one model on the adding problem with nominal length `seq_len` until the validation success rate
    reaches `target_success` or `budget_minutes` of wall-clock pass.

    Args:
        cell_type (`str`):
            A recurrent cell (`"rnn"`, `"gru"`, `"lstm"`, `"peephole"`) or `"transformer"`.
        seq_len (`int`), budget_minutes (`float`), seed (`int`, *optional*, defaults to 0):
            The nominal length T, the wall-clock budget and the seed of initialisation and data.
        max_positions (`int`, *optional*):
            A Transformer's position table (default: the longest training sequence); recurrent cells ignore
            it.
        others (*optional*):
            As the experiment's arguments of the same names (`hf-lstm experiment adding --help`); `clip` is
            the gradient-norm threshold, `validation_sequences` the validation set's size, `log` the printer.

    Returns:
        `tuple[SequenceRegressor, dict]`: the model and its record: training sequences seen, steps, seconds
        spent, `stopped_because` ("validation solved" or "budget spent"), parameters and validation history.
    """
    torch.manual_seed(seed)
    model = SequenceRegressor(
        cell_type,
        input_size=2,
        hidden_size=hidden_size,
        max_positions=max_positions or seq_len + seq_len // 10 + 2,
        memory_bias=memory_bias,
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate)
    generator = torch.Generator().manual_seed(seed + 1000 * seq_len)
    validation = fixed_set(validation_sequences, seq_len, seed=seed + 1)
    budget = Budget(budget_minutes)
    steps, running, history, solved = 0, [], [], False
    while not budget.expired() and (max_steps is None or steps < max_steps):
        x, y = adding_batch(batch_size, seq_len, generator)
        loss = F.mse_loss(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        steps += 1
        running.append(loss.item())
        if steps % eval_every == 0:
            history.append(validation_entry(model, validation, steps, batch_size, budget, running))
            running = []
            solved = history[-1]["val_success_rate"] >= target_success
            if len(history) % 10 == 0 or solved:
                log(
                    f"  {cell_type:>11} T={seq_len}: {steps * batch_size:>9,} sequences, "
                    f"{budget.elapsed():6.0f} s, val success {history[-1]['val_success_rate']:.3f}, "
                    f"|err| {history[-1]['val_mean_abs_error']:.4f}"
                )
            if solved:
                break
    record = {
        "training_sequences": steps * batch_size,
        "steps": steps,
        "seconds": round(budget.elapsed(), 2),
        "stopped_because": "validation solved" if solved else "budget spent",
        "parameters": count_used_parameters(model),
        "history": history,
    }
    return model, record


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The experiment's own arguments (after the shared ones of `runner.base_parser`)."""
    parser.add_argument("--seq_lens", default="100", help="comma-separated nominal lengths T (default: 100)")
    parser.add_argument("--hidden_size", type=int, default=64, help="recurrent units (default: 64)")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--learning_rate", type=float, default=1e-3)
    parser.add_argument(
        "--target_success",
        type=float,
        default=0.995,
        help="stop early once this fraction of the 512 validation sequences is correct",
    )
    parser.add_argument("--eval_every", type=int, default=100, help="steps between validation checks")
    parser.add_argument("--test_sequences", type=int, default=TEST_SEQUENCES)
    parser.add_argument(
        "--max_steps", type=int, default=None, help="also stop after this many steps (for tests)"
    )
    add_memory_bias_argument(parser)
    parser.add_argument(
        "--save_models",
        action="store_true",
        help="save each trained model under OUTPUT_DIR/models (the vanishing-gradient experiment "
        "can measure them with --trained_models_dir)",
    )


def run(args: argparse.Namespace, output_dir: Path) -> dict:
    """Train and test every (cell type, T); return the results dictionary."""
    cells = parse_cell_types(args.cell_types, (*RECURRENT_CELLS, TRANSFORMER))
    seq_lens = [int(t) for t in args.seq_lens.split(",") if t.strip()]
    results = {
        "experiment": NAME,
        "task": {
            "definition": "Hochreiter & Schmidhuber 1997, experiment 4 (see hf_lstm/experiments/adding.py)",
            "tolerance": TOLERANCE,
            "test_sequences": args.test_sequences,
            "length_range": "uniform in [T, T + T/10], one length per minibatch of 64",
        },
        "settings": recorded_settings(
            args,
            "hidden_size",
            "batch_size",
            "learning_rate",
            "target_success",
            "eval_every",
            "max_steps",
            "memory_bias",
        ),
        "optimizer": "Adam, gradient-norm clipping at 1.0, MSE loss on the last step",
        "paper_lstm": {str(t): v for t, v in PAPER_RESULTS.items()},
        "environment": environment(),
        "baseline_predict_0.5": {},
        "runs": {},
    }
    for seq_len in seq_lens:
        test = fixed_set(args.test_sequences, seq_len, seed=args.seed + 2)
        results["baseline_predict_0.5"][str(seq_len)] = constant_baseline(test)
        for cell in cells:
            print(f"adding T={seq_len} {cell}: budget {args.budget_minutes} min")
            model, record = train_adding(
                cell,
                seq_len,
                args.budget_minutes,
                seed=args.seed,
                hidden_size=args.hidden_size,
                batch_size=args.batch_size,
                learning_rate=args.learning_rate,
                target_success=args.target_success,
                eval_every=args.eval_every,
                max_steps=args.max_steps,
                memory_bias=args.memory_bias,
            )
            scores = evaluate(model, test)
            record = {**scores, **record}
            print(
                f"  -> {cell} T={seq_len}: test success {scores['success_rate']:.4f} "
                f"({scores['wrong']} wrong of {scores['sequences']}), "
                f"{record['training_sequences']:,} sequences, {record['seconds']:.0f} s"
            )
            results["runs"].setdefault(cell, {})[str(seq_len)] = record
            if args.save_models:
                models = output_dir / "models"
                models.mkdir(exist_ok=True)
                torch.save(
                    {
                        "cell_type": cell,
                        "seq_len": seq_len,
                        "hidden_size": args.hidden_size,
                        "state_dict": model.state_dict(),
                        "test_success_rate": scores["success_rate"],
                    },
                    models / f"{cell}_T{seq_len}.pt",
                )
    return results


def load_trained(path: Path) -> tuple[SequenceRegressor, dict]:
    """Load a model saved by `--save_models` (returns the model and its metadata)."""
    saved = torch.load(path, map_location="cpu", weights_only=True)
    model = SequenceRegressor(
        saved["cell_type"],
        input_size=2,
        hidden_size=saved["hidden_size"],
        max_positions=max(1024, saved["seq_len"] * 2 + 2),
    )
    state = saved["state_dict"]
    for key in [
        k for k in state if k.endswith("wpe.weight")
    ]:  # a Transformer's position table, grown if needed
        grown = model.state_dict()[key].clone()
        grown[: state[key].shape[0]] = state[key]
        state[key] = grown
    model.load_state_dict(state)
    model.eval()
    return model, {k: v for k, v in saved.items() if k != "state_dict"}


def plot(results: dict, output_dir: Path) -> list[Path]:
    """Validation success rate against training sequences seen, one panel per T, one line per cell type."""
    plt = pyplot()
    seq_lens = sorted({int(t) for runs in results["runs"].values() for t in runs})
    fig, axes = plt.subplots(1, len(seq_lens), figsize=(5.2 * len(seq_lens), 3.8), squeeze=False)
    for ax, seq_len in zip(axes[0], seq_lens):
        for cell, runs in results["runs"].items():
            record = runs.get(str(seq_len))
            if not record or not record["history"]:
                continue
            xs = [h["training_sequences"] for h in record["history"]]
            ys = [h["val_success_rate"] for h in record["history"]]
            ax.plot(
                xs,
                ys,
                color=CELL_COLOURS.get(cell),
                label=f"{cell} (test {record['success_rate']:.3f})",
                lw=1.4,
            )
        base = results["baseline_predict_0.5"][str(seq_len)]["success_rate"]
        ax.axhline(base, color="k", ls=":", lw=1, label=f"always 0.5 ({base:.3f})")
        paper = PAPER_RESULTS.get(seq_len)
        if paper:
            ax.axvline(
                paper["training_sequences"],
                color="tab:blue",
                ls="--",
                lw=0.8,
                label=f"1997 LSTM solved after {paper['training_sequences']:,}",
            )
        ax.set_xscale("log")
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("training sequences seen")
        ax.set_ylabel("validation success rate (|error| < 0.04)")
        ax.set_title(f"adding problem, T = {seq_len} (minimal lag {seq_len // 2})")
        ax.legend(fontsize=7, loc="upper left")
        ax.grid(alpha=0.3)
    return [save_figure(fig, output_dir / "adding_success.png")]


EXPERIMENT = Experiment.from_module(
    globals(), default_cells=(*RECURRENT_CELLS, TRANSFORMER), default_budget=2.0
)
