"""Every training run of a comparison, in one plan: for each target size, budget and family, the learning-rate
sweep (the same number of rates for every family, chosen on validation), then the further seeds at the chosen
rate. A run that fails is kept as a record with the stage and the reason, never dropped."""

from __future__ import annotations

import argparse
import math
import traceback

from .families import get_family
from .matching import MatchedShape, match_parameters
from .runs import RunSpec, Shared, family_settings, train_one

SWEEP_STEP = 2.0
"""Neighbouring learning rates of a sweep differ by this factor (3 rates: 0.5x, 1x, 2x the recipe's)."""


def sweep_rates(center: float, count: int) -> list[float]:
    """`count` learning rates spaced by `SWEEP_STEP` on a log scale, centred on `center` (for an even count,
    the centre lies between the middle two)."""
    return [center * SWEEP_STEP ** (i - (count - 1) / 2) for i in range(count)]


def count_label(count: int) -> str:
    """A parameter count as a short label: 4000000 -> 4M, 50000 -> 50k, 1500000 -> 1.5M."""
    for unit, scale in (("M", 1e6), ("k", 1e3)):
        if count >= scale:
            return f"{count / scale:g}{unit}"
    return str(count)


def failure_record(name: str, stage: str, error: BaseException, **where) -> dict:
    """A results.json record for a family (or one of its runs) that could not run: the stage, the reason in
    one line, and the last lines of the traceback."""
    reason = f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"
    tail = traceback.format_exception(type(error), error, error.__traceback__)[-3:]
    print(f"\n!!! {name} failed at {stage}: {reason}", flush=True)
    return {
        "name": name,
        "status": "failed",
        "stage": stage,
        "reason": reason[:500],
        "traceback_tail": "".join(tail)[-2000:],
        **where,
    }


def match_all(options: argparse.Namespace, vocab_size: int, target: int) -> tuple[dict, list[dict]]:
    """Each family's configuration nearest `target`, printed one line per family; a family that cannot be
    matched becomes a failure record.

    Returns:
        `tuple`: family name to `MatchedShape`, and the failure records.
    """
    max_positions = max(options.contexts) + options.new_tokens
    shapes, failures = {}, []
    for family in options.models:
        try:
            shape = match_parameters(
                family,
                target,
                vocab_size,
                options.tolerance,
                options.block_size,
                max_positions,
                options.eval_window,
            )
        except Exception as error:  # any family that cannot be built is reported, not dropped
            failures.append(failure_record(family, "parameter matching", error, target_parameters=target))
            continue
        shapes[family] = shape
        print(
            f"{family:<16} {shape.describe():<40} {shape.num_parameters:>12,} parameters "
            f"({shape.relative_error:+.1%}), {shape.num_non_embedding_parameters:,} non-embedding"
        )
    return shapes, failures


def _folder(options: argparse.Namespace, shape: MatchedShape, budget: str, rate: float | None, seed: int):
    """The run's folder under OUTPUT_DIR/models: the family, then only what varies in this comparison."""
    parts = [get_family(shape.name).slug]
    if len(options.target_params) > 1:
        parts.append(count_label(shape.target_parameters))
    if len(options.budgets) > 1:
        parts.append(budget)
    if options.lr_sweep > 1 and rate is not None:
        parts.append(f"lr{rate:.3g}")
    if options.seeds > 1:
        parts.append(f"seed{seed}")
    return "-".join(parts)


def _train(options, shape: MatchedShape, shared: Shared, budget: str, rate, seed: int, role: str) -> dict:
    spec = RunSpec(budget, rate, seed, _folder(options, shape, budget, rate, seed), role)
    where = {
        "target_parameters": shape.target_parameters,
        "budget": budget,
        "seed": seed,
        "learning_rate": rate,
    }
    try:
        record = train_one(
            options,
            shape,
            shared.tokenizer,
            shared.tokenizer_dir,
            shared.validation,
            shared.output_dir,
            spec,
        )
    except Exception as error:  # a crash of one family must not take the others with it
        return failure_record(shape.name, "training", error, **where)
    if not math.isfinite(record.get("eval_perplexity") or math.nan):
        record.update(status="failed", stage="evaluation", reason="validation perplexity is not finite")
    return record


def train_family(options: argparse.Namespace, shape: MatchedShape, shared: Shared, budget: str) -> list[dict]:
    """A family's runs at one size and budget: `--lr_sweep` rates around its recipe's (first seed), the one
    with the lowest validation perplexity (fixed windows) chosen, then `--seeds` - 1 more seeds at that rate.

    Returns:
        `list[dict]`: every run's record; the runs the results count have `role: "final"`, the other rates
        of the sweep `role: "sweep"`; each records `lr_candidates`.
    """
    seed = options.seed
    if options.lr_sweep > 1:
        center = family_settings(options, shape, shared.tokenizer_dir, shared.output_dir).learning_rate
        rates = sweep_rates(center, options.lr_sweep)
    else:
        rates = [None]
    sweep = [_train(options, shape, shared, budget, rate, seed, "sweep") for rate in rates]
    done = [r for r in sweep if r["status"] == "ok"]
    candidates = [r.get("learning_rate") for r in sweep]
    for record in sweep:
        record["lr_candidates"] = candidates
    if not done:
        return sweep
    chosen = min(done, key=lambda r: r["eval_perplexity"])
    chosen["role"] = "final"
    runs = list(sweep)
    for extra_seed in range(seed + 1, seed + options.seeds):
        record = _train(options, shape, shared, budget, chosen["learning_rate"], extra_seed, "final")
        record["lr_candidates"] = candidates
        runs.append(record)
    return runs


def train_all(options: argparse.Namespace, shared: Shared, vocab_size: int) -> list[dict]:
    """Every run of the comparison: for each target size (smallest first), each budget and each family, in
    `--models` order.

    Returns:
        `list[dict]`: the records, failures included (`status: "failed"`, with `stage` and `reason`).
    """
    records = []
    for target in options.target_params:
        shapes, failures = match_all(options, vocab_size, target)
        records += failures
        for budget in options.budgets:
            for family in options.models:
                if family in shapes:
                    records += train_family(options, shapes[family], shared, budget)
    return records


def is_main(record: dict, options: argparse.Namespace) -> bool:
    """Whether a record is the one run per family that generation is measured on and the main tables show:
    a completed final run at the largest target size, the first budget, the first seed."""
    return (
        record.get("status") == "ok"
        and record.get("role") == "final"
        and record.get("target_parameters") == max(options.target_params)
        and record.get("budget") == options.budgets[0]
        and record.get("seed") == options.seed
    )
