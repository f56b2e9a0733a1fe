"""How strongly does a loss at the last step reach back to an input d steps earlier?

    hf-lstm experiment vanishing-gradient --output_dir runs/vg [--trained_models_dir runs/adding/models]

For each cell type we feed adding-problem sequences of length `max_distance + 1`, take the squared error of
the last-step prediction, and measure ||dL / dx_{T-d}||, the norm of its gradient with respect to the input
d steps before the end, for every d from 0 to `max_distance`, averaged over random sequences. This is the
quantity the vanishing-gradient argument is about: by the chain rule it is a product of d step Jacobians, so
it shrinks (or grows) exponentially with d unless the steps multiply to about one. The measurement runs in
float64 so that tiny gradients are measured, not rounded to zero.

It is done twice: at initialisation, and after training on the adding problem (T = 100 by default; either
trained here for `--budget_minutes` per cell type, or loaded from the adding experiment's `--save_models`).
For the LSTM and the peephole LSTM it also records the forget gates: the product f_{T-d+1} ... f_T is exactly
dC_T / dC_{T-d} along the cell state's direct path (the "f_t near 1" case of the article this project started
from, "LSTM: Why It Was Born, How It Fixes RNN, and Why It Changed Sequence Learning" (Towards AI)), so the
forget gates explain the LSTM's curve.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch

from .adding import adding_batch, evaluate, fixed_set, load_trained, train_adding
from .runner import (
    CELL_COLOURS,
    RECURRENT_CELLS,
    TRANSFORMER,
    Experiment,
    SequenceRegressor,
    add_memory_bias_argument,
    environment,
    parse_cell_types,
    pyplot,
    save_figure,
)

NAME = "vanishing-gradient"


def gradient_by_distance(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict:
    """||dL/dx_{T-d}|| for d = 0 .. T-1, where L is the squared last-step error of each sequence.

    Runs in float64 on a copy-free cast of the model (the model is cast back afterwards).

    Args:
        model (`torch.nn.Module`):
            A `SequenceRegressor`.
        x (`torch.Tensor` of shape `(batch, T, 2)`), y (`torch.Tensor` of shape `(batch,)`):
            Adding-problem inputs and targets.

    Returns:
        `dict`: lists indexed by d: the mean over sequences (`mean`), the mean of log10 norms (`mean_log10`,
        robust to a few large sequences) and the fraction of sequences whose gradient is exactly zero
        (`zero_fraction`).
    """
    model.double()
    try:
        x = x.double().clone().requires_grad_(True)
        prediction = model(x)
        loss = (prediction - y.double()).pow(2).sum()  # a sum, so each sequence's gradient is its own loss's
        (grad,) = torch.autograd.grad(loss, x)
    finally:
        model.float()
    norms = grad.norm(dim=-1).flip(1)  # (batch, T), column d = distance from the last step
    logs = torch.log10(norms.clamp(min=1e-300))
    return {
        "mean": norms.mean(0).tolist(),
        "mean_log10": logs.mean(0).tolist(),
        "zero_fraction": (norms == 0).double().mean(0).tolist(),
    }


@torch.no_grad()
def forget_gate_statistics(model: SequenceRegressor, x: torch.Tensor) -> dict:
    """Forget-gate summary of an LSTM or peephole model on inputs x (batch, T, 2).

    `histogram` counts f over 50 equal bins of [0, 1]; `cell_path_mean[d]` is the mean over sequences and
    units of the product of the last d forget gates (d = 0 gives 1), i.e. dC_T/dC_{T-d} along the direct cell
    path; `cell_path_best_unit[d]` is the same for the unit whose product stays largest at the longest
    distance.
    """
    _, gates = model.hidden_states(x.float(), output_gates=True)
    f = gates[0]["forget"].double()  # (batch, T, H)
    flat = f.flatten()
    reversed_f = f.flip(1)
    cumulative = torch.log(reversed_f).cumsum(1)
    log_products = torch.cat([torch.zeros_like(reversed_f[:, :1]), cumulative], dim=1)[:, :-1]
    products = log_products.exp()  # (batch, T, H): column d = product of the last d forget gates
    per_unit = products.mean(0)  # (T, H)
    best = int(per_unit[-1].argmax())
    return {
        "mean": float(flat.mean()),
        "median": float(flat.median()),
        "fraction_above_0.9": float((flat > 0.9).double().mean()),
        "fraction_above_0.99": float((flat > 0.99).double().mean()),
        "histogram": torch.histc(flat, bins=50, min=0.0, max=1.0).tolist(),
        "cell_path_mean": per_unit.mean(1).tolist(),
        "cell_path_best_unit": per_unit[:, best].tolist(),
        "best_unit": best,
        "best_unit_mean_forget": float(f[:, :, best].mean()),
    }


def summarise(curve: list[float]) -> dict:
    """Headline numbers of one gradient curve: ratios to d = 0 at a few distances and the fitted decay per
    step."""
    values = torch.tensor(curve, dtype=torch.float64)
    out = {}
    for d in (10, 50, 100, 200):
        if d < len(values) and values[0] > 0:
            out[f"ratio_d{d}_to_d0"] = float(values[d] / values[0])
    d = torch.arange(len(values), dtype=torch.float64)
    keep = (d >= 5) & (values > 0)
    if int(keep.sum()) >= 2:
        slope = torch.linalg.lstsq(
            torch.stack([d[keep], torch.ones_like(d[keep])], 1), torch.log(values[keep]).unsqueeze(1)
        ).solution[0, 0]
        out["fitted_factor_per_step"] = float(math.exp(float(slope)))
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The experiment's own arguments (after the shared ones of `runner.base_parser`)."""
    parser.add_argument(
        "--max_distance", type=int, default=256, help="largest distance d measured (default 256)"
    )
    parser.add_argument("--num_sequences", type=int, default=64, help="random sequences averaged over")
    parser.add_argument("--hidden_size", type=int, default=64)
    parser.add_argument("--train_seq_len", type=int, default=100, help="T of the adding problem trained on")
    parser.add_argument(
        "--trained_models_dir",
        default=None,
        help="use the models saved by `hf-lstm experiment adding --save_models` (files "
        "CELL_T{train_seq_len}.pt) instead of training here",
    )
    parser.add_argument(
        "--max_steps", type=int, default=None, help="also stop training after this many steps (tests)"
    )
    add_memory_bias_argument(parser)


def run(args: argparse.Namespace, output_dir: Path) -> dict:
    """Measure every cell type at initialisation and after training; return the results dictionary (nothing
    is written to `output_dir` here)."""
    cells = parse_cell_types(args.cell_types, (*RECURRENT_CELLS, TRANSFORMER))
    length = args.max_distance + 1
    x, y = adding_batch(
        args.num_sequences, length, torch.Generator().manual_seed(args.seed + 7), length=length
    )
    results = {
        "experiment": NAME,
        "measure": "mean over sequences of ||dL/dx_{T-d}||_2, "
        "L = squared error of the last-step prediction, float64",
        "distances": list(range(length)),
        "settings": {
            "seed": args.seed,
            "max_distance": args.max_distance,
            "num_sequences": args.num_sequences,
            "hidden_size": args.hidden_size,
            "train_seq_len": args.train_seq_len,
            "budget_minutes": args.budget_minutes,
            "trained_models_dir": args.trained_models_dir,
            "memory_bias": args.memory_bias,
        },
        "environment": environment(),
        "cells": {},
    }
    for cell in cells:
        print(f"vanishing-gradient {cell}")
        torch.manual_seed(args.seed)
        initial = SequenceRegressor(
            cell,
            input_size=2,
            hidden_size=args.hidden_size,
            max_positions=max(1024, length + 1),
            memory_bias=args.memory_bias,
        )
        entry = {"init": gradient_by_distance(initial, x, y)}
        if cell in ("lstm", "peephole"):
            entry["forget_gate_init"] = forget_gate_statistics(initial, x)
        if args.trained_models_dir:
            trained, meta = load_trained(Path(args.trained_models_dir) / f"{cell}_T{args.train_seq_len}.pt")
            entry["training"] = {
                "source": str(args.trained_models_dir),
                "test_success_rate": meta.get("test_success_rate"),
            }
        else:
            trained, record = train_adding(
                cell,
                args.train_seq_len,
                args.budget_minutes,
                seed=args.seed,
                hidden_size=args.hidden_size,
                max_steps=args.max_steps,
                max_positions=max(1024, length + 1),
                memory_bias=args.memory_bias,
            )
            trained.eval()
            scores = evaluate(trained, fixed_set(512, args.train_seq_len, seed=args.seed + 2))
            entry["training"] = {
                "source": "trained here",
                "test_success_rate": scores["success_rate"],
                "training_sequences": record["training_sequences"],
                "seconds": record["seconds"],
            }
        entry["trained"] = gradient_by_distance(trained, x, y)
        if cell in ("lstm", "peephole"):
            entry["forget_gate_trained"] = forget_gate_statistics(trained, x)
        entry["summary"] = {
            "init": summarise(entry["init"]["mean"]),
            "trained": summarise(entry["trained"]["mean"]),
        }
        s = entry["summary"]
        print(
            f"  init    |g(100)/g(0)| = {s['init'].get('ratio_d100_to_d0', float('nan')):.3g}   "
            f"trained = {s['trained'].get('ratio_d100_to_d0', float('nan')):.3g}  "
            f"(adding success {entry['training']['test_success_rate']})"
        )
        results["cells"][cell] = entry
    return results


def plot(results: dict, output_dir: Path) -> list[Path]:
    """Two figures: gradient norm against distance (at init, after training), and the forget-gate evidence."""
    plt = pyplot()
    paths = []
    fig, axes = plt.subplots(1, 2, figsize=(10.5, 4.0), sharey=True)
    for ax, phase in zip(axes, ("init", "trained")):
        for cell, entry in results["cells"].items():
            curve = torch.tensor(entry[phase]["mean"], dtype=torch.float64).clamp(min=1e-300)
            label = cell
            if phase == "trained":
                trained_on = results["settings"]["train_seq_len"]
                label += f" (adding T={trained_on}: {entry['training']['test_success_rate']:.2f})"
            ax.semilogy(
                results["distances"], curve.tolist(), color=CELL_COLOURS.get(cell), label=label, lw=1.4
            )
        ax.set_xlabel("distance d from the last step")
        ax.set_title("at initialisation" if phase == "init" else "after training on the adding problem")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    axes[0].set_ylabel("mean ||dL / dx_(T-d)||  (log scale)")
    paths.append(save_figure(fig, output_dir / "gradient_vs_distance.png"))

    gated = {c: e for c, e in results["cells"].items() if "forget_gate_init" in e}
    if gated:
        fig, axes = plt.subplots(1, 2, figsize=(10.5, 4.0))
        centres = [(k + 0.5) / 50 for k in range(50)]
        for cell, entry in gated.items():
            for phase, ls in (("init", ":"), ("trained", "-")):
                stats = entry[f"forget_gate_{phase}"]
                total = sum(stats["histogram"]) or 1.0
                axes[0].plot(
                    centres,
                    [h / total for h in stats["histogram"]],
                    ls=ls,
                    color=CELL_COLOURS.get(cell),
                    label=f"{cell} {phase} (mean f = {stats['mean']:.2f})",
                )
                axes[1].semilogy(
                    results["distances"],
                    torch.tensor(stats["cell_path_mean"]).clamp(min=1e-300).tolist(),
                    ls=ls,
                    color=CELL_COLOURS.get(cell),
                    label=f"{cell} {phase}: mean over units",
                )
                if phase == "trained":
                    axes[1].semilogy(
                        results["distances"],
                        torch.tensor(stats["cell_path_best_unit"]).clamp(min=1e-300).tolist(),
                        ls="--",
                        color=CELL_COLOURS.get(cell),
                        label=f"{cell} trained: most persistent unit",
                    )
        axes[0].set_xlabel("forget gate value f")
        axes[0].set_ylabel("fraction of (step, unit) pairs")
        axes[0].set_title("forget gates on adding-problem sequences")
        axes[0].legend(fontsize=7)
        axes[1].set_xlabel("distance d")
        axes[1].set_ylabel("product of the last d forget gates = dC_T/dC_(T-d)")
        axes[1].set_title("the cell state's direct path")
        axes[1].legend(fontsize=7)
        for ax in axes:
            ax.grid(alpha=0.3)
        paths.append(save_figure(fig, output_dir / "forget_gates.png"))
    return paths


EXPERIMENT = Experiment.from_module(
    globals(), default_cells=(*RECURRENT_CELLS, TRANSFORMER), default_budget=1.0
)
