"""The `hf-lstm compare` command line: its parser, `run` (the whole comparison) and `main`."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

from .. import data
from ..machine import machine_summary
from ..settings import TrainingSettings
from .families import ATTENTION, FAMILIES, code_path, get_family
from .generation import measure_generation, position_limit
from .matching import parse_count
from .plots import draw_plots
from .report import (
    copy_model_cards,
    format_value,
    publish_report,
    quality_target_check,
    write_report,
    write_results,
)
from .runs import DATA_OPTIONS, TOKENIZER_OPTIONS, Shared, prepare_tokenizer, settings_given
from .sweeps import failure_record, is_main, train_all


def build_parser() -> argparse.ArgumentParser:
    """The `hf-lstm compare` arguments: the training script's data and tokenizer arguments, plus the
    comparison's own (models, size, budget, generation contexts)."""
    parser = argparse.ArgumentParser(
        prog="hf-lstm compare",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Train hf_lstm and parameter-matched peers (small Transformers and the recurrent models "
        "transformers ships) on the same data with the same budget, then measure quality, speed and memory "
        "side by side.",
    )
    TrainingSettings.add_arguments(
        parser.add_argument_group(
            "data (as in hf-lstm train)", "One tokenizer is trained (or loaded) once and used by every model."
        ),
        DATA_OPTIONS + TOKENIZER_OPTIONS,
    )
    _add_model_and_budget_options(parser.add_argument_group("models and budget").add_argument)
    add = parser.add_argument_group("speed and memory").add_argument
    add("--contexts", default="16,256,1024,4096", help="Prompt lengths for the generation measurements.")
    add("--generate_batch_sizes", default="1,8", help="Batch sizes for the generation measurements.")
    add("--new_tokens", type=int, default=64, help="Tokens generated per measurement.")
    add("--repeats", type=int, default=3, help="Interleaved repeats per measurement (the median is kept).")
    add(
        "--num_threads",
        type=int,
        default=None,
        help="torch intra-op threads for everything (default: torch's own). On a shared CPU, 1 avoids "
        "thrashing.",
    )
    add = parser.add_argument_group("output").add_argument
    add(
        "--output_dir", default="runs/compare", help="Where results.json, REPORT.md, plots and the models go."
    )
    add("--model_cards_dir", default=None, help="Also copy each model's card to DIR/<run name>-<model>.md.")
    add(
        "--publish_report",
        default=None,
        help="Also write the report to this .md path, with its plots and results.json in a folder of the "
        "same stem beside it.",
    )
    add(
        "--run_name",
        default=None,
        help="Name in titles and card file names (default: the output folder's name).",
    )
    return parser


def _add_model_and_budget_options(add) -> None:
    add(
        "--models",
        default="hf_lstm,gpt2,llama",
        help="Comma-separated families: "
        + ", ".join(FAMILIES)
        + "; hf_lstm:CELL for another hf_lstm cell (hf_lstm:gru, hf_lstm:rnn, hf_lstm:peephole).",
    )
    add(
        "--target_params",
        default="4M",
        help="Total parameters per model (4M, 500k, ...), or a list (1M,4M) for quality against size; "
        "matched within --tolerance.",
    )
    add("--tolerance", type=float, default=0.10, help="Largest accepted relative gap to the target.")
    add(
        "--budget",
        choices=("wall_clock", "tokens", "both"),
        default="wall_clock",
        help="Equal training wall-clock (--budget_minutes) or equal training tokens (--budget_tokens) per "
        "model; both: every run twice, once under each, reported side by side.",
    )
    add(
        "--lr_sweep",
        type=int,
        default=1,
        help="Learning rates tried per family (the same number for every family), spaced by 2x around the "
        "family's recipe; the one with the lowest validation perplexity is kept (1: the recipe's only).",
    )
    add(
        "--seeds",
        type=int,
        default=1,
        help="Seeds per family at the chosen rate (--seed, --seed + 1, ...): mean and spread reported.",
    )
    add("--budget_minutes", type=float, default=10.0, help="Training minutes per model (wall_clock budget).")
    add("--budget_tokens", default=None, help="Training tokens per model (tokens budget), e.g. 5M.")
    add(
        "--timing_seconds",
        type=float,
        default=15.0,
        help="Length of the timed warm-up that estimates each model's steps in the wall-clock budget.",
    )
    add("--curve_points", type=int, default=6, help="Validation perplexity points along each run (curves).")
    add("--per_device_train_batch_size", type=int, default=16, help="Sequences per step, every model.")
    add(
        "--bptt",
        type=int,
        default=64,
        help="hf_lstm's stream window (truncated backpropagation through time).",
    )
    add("--block_size", type=int, default=128, help="Transformers' training block (and GPT-2's positions).")
    add("--eval_window", type=int, default=128, help="Window of the fixed-window perplexity protocol.")
    add(
        "--hf_lstm_train_args",
        default="",
        help='Extra `hf-lstm train` arguments for hf_lstm, e.g. "--learning_rate 2e-3".',
    )
    add(
        "--transformer_train_args",
        default="",
        help="Extra `hf-lstm train` arguments for every family but hf_lstm (Transformers, recurrent peers).",
    )
    add(
        "--sample_max_new_tokens",
        type=int,
        default=20,
        help="Sample printed after each training run (0: none).",
    )
    add("--seed", type=int, default=42, help="Random seed of every run.")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse and check the arguments before any work starts: lists and counts are read into numbers, and the
    extra `hf-lstm train` arguments are parsed (a bad one exits as `hf-lstm train` would)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    if not args.models:
        parser.error(f"--models: none given; choose from {', '.join(FAMILIES)}")
    for name in args.models:
        try:
            get_family(name)
        except ValueError as error:
            parser.error(f"--models: {error}")
    if len(set(args.models)) != len(args.models):
        parser.error("--models lists a family twice")
    try:
        args.target_params = sorted({parse_count(t) for t in str(args.target_params).split(",") if t.strip()})
        args.budget_tokens = parse_count(args.budget_tokens) if args.budget_tokens is not None else None
        args.contexts = sorted({int(c) for c in args.contexts.split(",") if c.strip()})
        args.generate_batch_sizes = sorted(
            {int(b) for b in args.generate_batch_sizes.split(",") if b.strip()}
        )
    except ValueError as error:
        parser.error(str(error))
    if not args.target_params:
        parser.error("--target_params: none given")
    args.budgets = ["wall_clock", "tokens"] if args.budget == "both" else [args.budget]
    if "tokens" in args.budgets and not args.budget_tokens:
        parser.error(f"--budget {args.budget} needs --budget_tokens N")
    if "wall_clock" in args.budgets and args.budget_minutes <= 0:
        parser.error("--budget_minutes must be positive")
    for name in (
        "curve_points",
        "per_device_train_batch_size",
        "bptt",
        "block_size",
        "eval_window",
        "new_tokens",
        "repeats",
        "lr_sweep",
        "seeds",
    ):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if min(args.contexts, default=0) < 1 or min(args.generate_batch_sizes, default=0) < 1:
        parser.error("--contexts and --generate_batch_sizes must be positive integers")
    if 1 not in args.generate_batch_sizes:
        parser.error("--generate_batch_sizes must include 1 (results.json reports batch-1 speed)")
    if args.num_threads is not None and args.num_threads < 1:
        parser.error("--num_threads must be at least 1")
    settings_given(args.hf_lstm_train_args)
    settings_given(args.transformer_train_args)
    args.run_name = args.run_name or Path(args.output_dir).resolve().name
    return args


def load_trained(records: list[dict], peak: float, keep=lambda record: True) -> dict:
    """Load every trained model; add to its record the training FLOPs per token, the MFU against `peak`, its
    position limit, the dropout it was trained with and the code path that runs it. A model that does not
    load turns its record into a failure (stage "loading").

    Args:
        records (`list[dict]`): the records; only completed runs (`status: "ok"`) are loaded.
        peak (`float`): the matmul peak the MFU is measured against.
        keep (`callable`, *optional*): which records' models to return (the others are released).

    Returns:
        `dict`: name to loaded model (in evaluation mode), for the records `keep` accepts.
    """
    from transformers import AutoModelForCausalLM

    models = {}
    for rec in records:
        if rec.get("status") != "ok":
            continue
        try:
            model = AutoModelForCausalLM.from_pretrained(rec["model_dir"]).eval()
        except Exception as error:  # reported, not dropped
            rec.update(failure_record(rec["name"], "loading", error))
            continue
        _describe_model(rec, model, peak)
        if keep(rec):
            models[rec["name"]] = model
    return models


def _describe_model(rec: dict, model, peak: float) -> None:
    """A loaded model's FLOPs, MFU, position limit, dropout and code path, added to its record."""
    from ..flops import flops_per_token

    # the attention term only for families with attention (scans and recurrences are not matrix products)
    context = rec["sequence_length"] if rec["model_type"] in ATTENTION else 0
    flops = flops_per_token(model, context_length=context, training=True)
    rec["flops_per_token_train"] = flops
    rec["model_flops_utilization"] = flops * rec["train_tokens_per_second"] / peak
    rec["max_positions"] = position_limit(model)
    rec["dropout"] = {
        k: v
        for k, v in sorted(model.config.to_dict().items())
        if "drop" in k
        and not k.startswith(("summary", "classifier"))  # heads an LM never runs
        and isinstance(v, (int, float))
        and not isinstance(v, bool)
        and v > 0
    }
    rec["code_path"] = code_path(model)


def add_generation(
    records: list[dict], generation: dict[str, list[dict]], batch_sizes: list[int], peak: float
) -> None:
    """Add each model's generation measurements to its record, with the batch-1 (and each larger batch's)
    tokens/s and cache bytes by context."""
    for rec in records:
        rec["generation"] = generation[rec["name"]]
        rec["generate_tokens_per_second"] = {
            str(g["context"]): g["tokens_per_second"] for g in rec["generation"] if g["batch_size"] == 1
        }
        for batch in batch_sizes:
            if batch != 1:
                rec[f"generate_tokens_per_second_batch{batch}"] = {
                    str(g["context"]): g["tokens_per_second"]
                    for g in rec["generation"]
                    if g["batch_size"] == batch
                }
        rec["cache_bytes"] = {
            str(g["context"]): g.get("cache_bytes") for g in rec["generation"] if g["batch_size"] == 1
        }
        rec["matmul_peak_flops"] = peak
        rec["num_threads"] = torch.get_num_threads()


def tokenizer_description(options: argparse.Namespace) -> str:
    """The shared tokenizer as the report names it: the one given, the kind asked for, or the default kind."""
    if options.tokenizer_name:
        return options.tokenizer_name
    return options.tokenizer_type or data.default_tokenizer_kind(options.dataset_name) + "-level"


def run_summary(
    options: argparse.Namespace,
    argv: list[str],
    started: str,
    vocab_size: int,
    peak: float,
    records: list[dict],
) -> dict:
    """What the report says about the run as a whole: date, command line, budget, data, machine, target."""
    return {
        "date": started,
        "argv": list(argv),
        "budget": options.budget,
        "budgets": options.budgets,
        "target_params": options.target_params,
        "lr_sweep": options.lr_sweep,
        "seeds": options.seeds,
        "load_average": _load_average(),
        "budget_minutes": options.budget_minutes,
        "budget_tokens": options.budget_tokens,
        "dataset": options.dataset_name if not options.train_file else options.train_file,
        "tokenizer": tokenizer_description(options),
        "vocab_size": vocab_size,
        "machine": machine_summary(),
        "torch": torch.__version__,
        "num_threads": torch.get_num_threads(),
        "matmul_peak_flops": peak,
        "target_check": quality_target_check(records),
    }


def _load_average() -> list[float] | None:
    """The machine's 1, 5 and 15-minute load averages (a shared CPU: speeds move with them)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def write_outputs(options: argparse.Namespace, records: list[dict], summary: dict, output_dir: Path) -> None:
    """results.json, the plots and REPORT.md in `output_dir`; the published report and the model cards where
    asked."""
    write_results(records, output_dir / "results.json")
    (output_dir / "options.json").write_text(json.dumps(vars(options), indent=1, default=str))
    (output_dir / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    draw_plots(records, output_dir)
    (output_dir / "REPORT.md").write_text(write_report(options, records, summary))
    report_link = None
    if options.publish_report:
        published = publish_report(options, records, summary, output_dir)
        report_link = (
            os.path.relpath(published, Path(options.model_cards_dir)) if options.model_cards_dir else None
        )
    if options.model_cards_dir:
        for path in copy_model_cards(records, Path(options.model_cards_dir), options.run_name, report_link):
            print(f"model card: {path}")


def _print_results(options: argparse.Namespace, records: list[dict], output_dir: Path) -> None:
    print(f"\nwrote {output_dir / 'results.json'} and {output_dir / 'REPORT.md'}")
    longest = str(options.contexts[-1])
    for rec in records:
        if rec.get("status") != "ok":
            print(f"  {rec['name']:<16} FAILED at {rec['stage']}: {rec['reason']}")
            continue
        if not rec.get("main"):
            continue
        print(
            f"  {rec['name']:<16} {rec['num_parameters']:>10,} params  "
            f"valid ppl (fixed) {rec['eval_perplexity']:8.1f}  "
            f"train {rec['train_tokens_per_second']:8,.0f} tok/s  generate@{longest} "
            f"{format_value(rec['generate_tokens_per_second'].get(longest), 0)} tok/s"
        )


def run(options: argparse.Namespace, argv: list[str] | None = None) -> list[dict]:
    """The whole comparison: tokenizer, parameter matching, the trainings, generation measurements, outputs.

    Args:
        options (`argparse.Namespace`): what `parse_args` returns.
        argv (`list[str]`, *optional*): the command line as given, shown in the report.

    Returns:
        `list[dict]`: the records written to results.json.
    """
    from ..flops import measure_matmul_peak

    if options.num_threads:
        torch.set_num_threads(options.num_threads)
    output_dir = Path(options.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    started = time.strftime("%Y-%m-%d %H:%M %Z")
    tokenizer, tokenizer_dir, validation = prepare_tokenizer(options, output_dir)
    peak_before = measure_matmul_peak(seconds=1.0)
    shared = Shared(tokenizer, tokenizer_dir, validation, output_dir)
    records = train_all(options, shared, len(tokenizer))
    peak = max(peak_before, measure_matmul_peak(seconds=1.0))
    models = load_trained(records, peak, keep=lambda r: is_main(r, options))
    for rec in records:  # after loading, which may have turned a run into a failure
        rec["main"] = is_main(rec, options)
    main_records = [r for r in records if r["main"]]
    trained_positions = {
        r["name"]: None if get_family(r["name"]).recurrent else options.block_size for r in main_records
    }
    generation = measure_generation(
        models,
        validation,
        options.contexts,
        options.generate_batch_sizes,
        options.new_tokens,
        options.repeats,
        trained_positions,
    )
    add_generation(main_records, generation, options.generate_batch_sizes, peak)
    summary = run_summary(options, argv or [], started, len(tokenizer), peak, main_records)
    write_outputs(options, records, summary, output_dir)
    _print_results(options, records, output_dir)
    return records


def main(argv: list[str] | None = None) -> int:
    """`hf-lstm compare`: parse, run, and turn expected failures into one clear line and a non-zero exit."""
    argv = list(sys.argv[1:] if argv is None else argv)
    options = parse_args(argv)
    try:
        run(options, argv)
    except (ValueError, FileNotFoundError, FloatingPointError) as error:
        print(f"hf-lstm compare: error: {error}", file=sys.stderr)
        return 1
    return 0
