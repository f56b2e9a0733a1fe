"""The report of a comparison: plots (PNG), REPORT.md built section by section, the published copy of the
report, and each model's card copied with a pointer to the report."""

from __future__ import annotations

import argparse
import json
import math
import shlex
import shutil
from pathlib import Path

from ..configuration_hf_lstm import is_hf_lstm
from .plots import PLOTS, SIZE_PLOT
from .runs import SCHEDULE_SLACK, WARMUP_FRACTION
from .tables import code_path_lines, failures_section, lstm_versus_peers, runs_section, sweep_section


def write_results(records: list[dict], path: Path) -> None:
    """results.json: the records, NaN written as null."""
    path.write_text(json.dumps(records, indent=1, default=_json_default))


def _json_default(value):
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def quality_target_check(records: list[dict]) -> dict | None:
    """Whether hf_lstm met the quality target this comparison checks, when hf_lstm and gpt2 are both present:
    a fixed-window validation perplexity of at most 200, and at most 0.75x the parameter-matched GPT-2's.

    Returns:
        `dict`: the `rule`, hf_lstm's perplexity, its `ratio_to_gpt2`, whether it is `met`, and a one-line
        `verdict`; `None` without both models.
    """
    lstm = next((r for r in records if is_hf_lstm(r["model_type"])), None)
    gpt2 = next((r for r in records if r["name"] == "gpt2"), None)
    if lstm is None or gpt2 is None:
        return None
    ratio = lstm["eval_perplexity"] / gpt2["eval_perplexity"]
    met = lstm["eval_perplexity"] <= 200 and ratio <= 0.75
    return {
        "rule": "hf_lstm validation perplexity (fixed windows) <= 200 and <= 0.75x GPT-2's",
        "hf_lstm": lstm["eval_perplexity"],
        "ratio_to_gpt2": ratio,
        "met": met,
        "verdict": f"{'met' if met else 'not met'}: {lstm['eval_perplexity']:.1f}, {ratio:.2f}x GPT-2's "
        f"{gpt2['eval_perplexity']:.1f}",
    }


# -- REPORT.md -----------------------------------------------------------------------------------------------


def format_value(value, digits: int = 1, suffix: str = "") -> str:
    """A number for a table: thousands separated, floats to `digits` decimals, "-" for None or NaN."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}{suffix}"
    return f"{value:,}{suffix}"


def _bytes(value) -> str:
    if value is None:
        return "-"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if value >= scale:
            return f"{value / scale:.1f} {unit}"
    return f"{value} B"


def _optimizer_name(record: dict) -> str:
    """How a record's optimizer reads in the report."""
    return {"sgd": "SGD", "adamw": "AdamW"}.get(record["optimizer"], record["optimizer"])


def generation_at(record: dict, batch: int, context: int) -> dict | None:
    """A model's generation measurement at one batch size and prompt context (one cell of the generation
    tables), or `None` if it was not measured there."""
    return next(
        (g for g in record["generation"] if g["batch_size"] == batch and g["context"] == context), None
    )


def _contexts(records: list[dict]) -> list[int]:
    return sorted({g["context"] for r in records for g in r["generation"]})


def _batch_sizes(records: list[dict]) -> list[int]:
    return sorted({g["batch_size"] for r in records for g in r["generation"]})


def reading(records: list[dict], summary: dict) -> list[str]:
    """The written reading: sentences built from the numbers only, each naming what it compares."""
    lines = [_quality_sentence(records, summary)]
    for rec in records:
        if rec.get("validation_perplexity_stateful"):
            lines.append(
                f"- {rec['name']} reading validation as one stream with its state carried (the RNN "
                f"literature's protocol) scores {rec['validation_perplexity_stateful']:.1f}, against "
                f"{rec['eval_perplexity']:.1f} in fixed windows (the only protocol the other families get)."
            )
    speeds = ", ".join(f"{r['name']} {r['train_tokens_per_second']:,.0f}" for r in records)
    lines.append(
        f"- **Training speed** (tokens/s, this machine, this run): {speeds}; so in the budget the models "
        "saw " + ", ".join(f"{r['train_tokens']:,} ({r['name']})" for r in records) + " training tokens."
    )
    return lines + _generation_sentences(records)


def _quality_sentence(records: list[dict], summary: dict) -> str:
    by_ppl = sorted(records, key=lambda r: r["eval_perplexity"])
    best, rest = by_ppl[0], by_ppl[1:]
    if not rest:
        return f"- Only {best['name']} was trained: validation perplexity {best['eval_perplexity']:.1f}."
    budget = (
        f"{summary['budget_minutes']:g} minutes of training each"
        if best.get("budget", summary["budget"]) == "wall_clock"
        else f"{summary['budget_tokens']:,} training tokens each"
    )
    gaps = ", ".join(f"{r['name']} {r['eval_perplexity']:.1f}" for r in rest)
    ratios = ", ".join(f"{best['eval_perplexity'] / r['eval_perplexity']:.2f}x {r['name']}'s" for r in rest)
    return (
        f"- **Quality at equal size and {budget}:** {best['name']} reached the lowest validation "
        f"perplexity under the fixed-window protocol, {best['eval_perplexity']:.1f}, against {gaps}; "
        f"its perplexity is {ratios}."
    )


def _generation_sentences(records: list[dict]) -> list[str]:
    lines = []
    contexts = _contexts(records)
    longest, shortest = contexts[-1], contexts[0]
    for batch in _batch_sizes(records):
        cells = {r["name"]: generation_at(r, batch, longest) for r in records}
        measured = {n: g for n, g in cells.items() if g and g.get("tokens_per_second")}
        if not measured:
            continue
        fastest = max(measured, key=lambda n: measured[n]["tokens_per_second"])
        top = measured[fastest]["tokens_per_second"]
        others = ", ".join(
            f"{n} {g['tokens_per_second']:,.0f} ({top / g['tokens_per_second']:.1f}x fewer)"
            for n, g in measured.items()
            if n != fastest
        )
        missing = "; ".join(
            f"{n} not measured ({g['reason']})" for n, g in cells.items() if g and n not in measured
        )
        lines.append(
            f"- **Generation after a {longest}-token prompt, batch {batch}:** {fastest} decodes "
            f"{top:,.0f} tokens/s"
            + (f", against {others}" if others else "")
            + (f"; {missing}" if missing else "")
            + "."
        )
    if longest != shortest:
        for rec in records:
            short, long_ = generation_at(rec, 1, shortest), generation_at(rec, 1, longest)
            if short and long_ and short.get("tokens_per_second") and long_.get("tokens_per_second"):
                lines.append(
                    f"  - {rec['name']}, batch 1: {short['tokens_per_second']:,.0f} tokens/s after "
                    f"{shortest} tokens, {long_['tokens_per_second']:,.0f} after {longest} "
                    f"({long_['tokens_per_second'] / short['tokens_per_second']:.2f}x); state/cache "
                    f"{_bytes(short.get('cache_bytes'))} -> {_bytes(long_.get('cache_bytes'))}."
                )
    return lines


def _title_section(options: argparse.Namespace, summary: dict) -> list[str]:
    return [
        f"# {options.run_name}: hf_lstm against parameter-matched peers",
        "",
        f"Generated by `hf-lstm compare` on {summary['date']}. Command:",
        "",
        "```bash",
        "hf-lstm compare " + shlex.join(summary["argv"]),
        "```",
        "",
    ]


def _recipe(record: dict) -> str:
    dropout = ", ".join(f"{k} {v:g}" for k, v in record["dropout"].items()) or "none"
    return (
        f"{record['name']}: {record['batching']} batching of {record['batch_size']} x "
        f"{record['sequence_length']} tokens, {_optimizer_name(record)} lr {record['learning_rate']:g}, "
        f"weight decay {record['weight_decay']:g}, dropout {dropout}"
    )


def _setup_section(options: argparse.Namespace, records: list[dict], summary: dict) -> list[str]:
    texts = {
        "wall_clock": f"equal wall-clock, {options.budget_minutes:g} min of training per model",
        "tokens": f"equal training tokens, {options.budget_tokens or 0:,} per model",
    }
    budget = "; and, as a second set of runs, ".join(texts[b] for b in options.budgets)
    schedule = {
        "wall_clock": f"over the steps a timed warm-up predicts for the budget (x{SCHEDULE_SLACK:.2f}), the "
        "clock stopping the run",
        "tokens": "over exactly the budget's steps",
    }
    schedule = " (wall-clock) / ".join(schedule[b] for b in options.budgets) + "."
    tuning = (
        f"{options.lr_sweep} learning rates per family (spaced by 2x around its recipe's), chosen on "
        "validation perplexity"
        if options.lr_sweep > 1
        else "none: each family's recipe rate"
    )
    return [
        "## Setup",
        "",
        f"- Data: `{summary['dataset']}`; one `{summary['tokenizer']}` tokenizer "
        f"({summary['vocab_size']:,} ids) trained once and used by every model.",
        f"- Size: target {max(options.target_params):,} total parameters in the main tables (the "
        "vocabulary is shared, so the total is the matched count), each family within "
        f"{options.tolerance:.0%}; non-embedding counts exclude token and position embeddings (and an "
        "untied output matrix).",
        f"- Budget: {budget}. Schedule (same rule for every model, whatever its optimizer): cosine with "
        f"{WARMUP_FRACTION:.0%} warm-up " + schedule,
        f"- Curves: about {options.curve_points} checkpoints per run, saved inside the training clock (a "
        "fraction of a second each) and evaluated after the run, so evaluation takes nothing from the "
        "budget. Every result is the model at the end of its budget, on every corpus (no checkpoint chosen "
        "on validation).",
        "- Recipes: "
        + "; ".join(_recipe(r) for r in records)
        + ". hf_lstm's stream batching carries the state across windows; every other family reads "
        "independent shuffled blocks.",
        f"- Tuning, the same for every family: {tuning}. Seeds: {options.seeds} per family "
        f"({options.seed}..{options.seed + options.seeds - 1}) at the chosen rate.",
        "- Sizes: "
        + ", ".join(f"{t:,}" for t in options.target_params)
        + " total parameters; the tables below the next one show every size, budget and seed, the "
        "main tables the largest size, the first budget and the first seed.",
        f"- Machine: {summary['machine']}; torch {summary['torch']}, {summary['num_threads']} thread(s); "
        f"fp32 matmul peak measured in this run: {summary['matmul_peak_flops'] / 1e9:.0f} GFLOP/s; load "
        f"average at the end of the run (1, 5, 15 min): {summary.get('load_average')}.",
        "",
    ]


PERPLEXITIES = (
    "validation_perplexity_fixed_window",
    "test_perplexity_fixed_window",
    "validation_perplexity_stateful",
    "test_perplexity_stateful",
    "validation_bits_per_byte_fixed_window",
)


def _result_row(r: dict) -> str:
    cells = [
        r["name"],
        r["shape"],
        f"{r['num_parameters']:,}",
        f"{r['num_non_embedding_parameters']:,}",
        f"{r['parameter_match_error']:+.1%}",
        r["batching"],
        f"{r['train_steps']:,}",
        f"{r['train_tokens']:,}",
        f"{r['train_seconds']:.0f}",
        f"{r['train_tokens_per_second']:,.0f}",
        f"{mfu:.1%}" if (mfu := r["model_flops_utilization"]) <= 1 else "not known (peak measured low)",
        *(format_value(r.get(key), digits=3 if "bits" in key else 1) for key in PERPLEXITIES),
    ]
    return "| " + " | ".join(cells) + " |"


def _result_section(options: argparse.Namespace, records: list[dict], summary: dict, image_prefix: str):
    lines = [
        "## Result",
        "",
        "| model | shape | params (total) | non-embedding | vs target | batching | steps | tokens "
        "| train s | tokens/s | MFU | valid ppl (fixed) | test ppl (fixed) | valid ppl (stateful) "
        "| test ppl (stateful) | valid bits/byte (fixed) |",
        "|---|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        *(_result_row(r) for r in records),
        "",
        f"Perplexity: *fixed* = every token scored once, in windows of {options.eval_window} tokens each "
        "read from a fresh state or empty context (the same protocol for every model: the fair comparison); "
        "*stateful* = the split read as one stream with the recurrent state carried (recurrent models only). "
        "MFU = matrix-product FLOPs per training token x tokens/s / the matmul peak above. "
        + " ".join(
            f"{r['name']} stopped at {r['schedule_completed']:.0%} of its cosine schedule." for r in records
        ),
        "",
    ]
    target = summary.get("target_check")
    if target:
        lines += [f"Reference target ({target['rule']}): {target['verdict']}.", ""]
    return [
        *lines,
        f"![training curves]({image_prefix}curves.png)",
        "",
        "Training loss is each family's own objective (hf_lstm: stream windows with carried state; "
        f"Transformers: independent {options.block_size}-token blocks) and is not comparable across "
        "families; the validation curves are. Seconds and tokens of the logged steps are interpolated "
        "between the points where the run recorded them (each validation point and the end).",
        "",
    ]


def _speed_cell(record: dict, batch: int, context: int) -> str:
    """One cell of a generation speed table: tokens/s ("*" beyond the trained positions), "n/a" where the
    model could not run, "-" where it was not measured."""
    g = generation_at(record, batch, context)
    if g is None:
        return "-"
    if g.get("tokens_per_second") is None:
        return "n/a"
    return f"{g['tokens_per_second']:,.0f}" + ("*" if g.get("note") else "")


def _generation_section(options: argparse.Namespace, records: list[dict], image_prefix: str) -> list[str]:
    lines = [
        "## Generation speed",
        "",
        f"Greedy `generate()`, {options.new_tokens} new tokens, steady decoding rate (prefill excluded; "
        f"median of {options.repeats} interleaved repeats), tokens/s summed over the batch. The code path "
        "that ran each model, beside its training speed (what is importable here and what its model file "
        "selects on this device):",
        "",
        *code_path_lines(records),
    ]
    contexts = _contexts(records)
    for batch in _batch_sizes(records):
        lines += [
            f"| batch {batch} | " + " | ".join(f"{c}" for c in contexts) + " |",
            "|---|" + "---:|" * len(contexts),
        ]
        lines += [
            f"| {r['name']} | " + " | ".join(_speed_cell(r, batch, c) for c in contexts) + " |"
            for r in records
        ]
        lines.append("")
    notes = {(r["name"], g["reason"]) for r in records for g in r["generation"] if g.get("reason")}
    lines += [f"- n/a, {name}: {reason}." for name, reason in sorted(notes)]
    if any(g.get("note") for r in records for g in r["generation"]):
        lines.append(
            "- \\*: beyond the positions the model was trained on: speed only (the text is extrapolation)."
        )
    return [*lines, "", f"![generation speed]({image_prefix}generation.png)", ""]


def _memory_section(options: argparse.Namespace, records: list[dict], image_prefix: str) -> list[str]:
    contexts = _contexts(records)
    largest = max(options.generate_batch_sizes)
    lines = [
        "## Memory",
        "",
        "State or KV-cache bytes held after generation (batch 1; tokens in the cache = prompt + generated "
        "- 1), measured on the actual tensors: every tensor the returned cache holds (keys and values; "
        "Mamba's convolution and SSM states; xLSTM's matrix memory; RWKV's state) plus the state a model "
        "keeps on its own modules (RecurrentGemma's RG-LRU and convolution states). Then the peak resident "
        "memory of each `generate()` call above the loaded model (high-water mark reset before the call), "
        "and the process's peak resident memory during the model's training run (data, model, optimizer, "
        "activations; the process also holds the tokenizer and the corpus).",
        "",
        "| model | "
        + " | ".join(f"cache @ {c}" for c in contexts)
        + " | "
        + " | ".join(f"peak RSS +, batch {largest} @ {c}" for c in contexts)
        + " | peak RSS, training |",
        "|---|" + "---:|" * (2 * len(contexts) + 1),
    ]
    for r in records:
        cache = [_bytes((generation_at(r, 1, c) or {}).get("cache_bytes")) for c in contexts]
        rss = [_bytes((generation_at(r, largest, c) or {}).get("peak_rss_increase_bytes")) for c in contexts]
        train = _bytes(r.get("train_peak_rss_bytes"))
        lines.append(f"| {r['name']} | " + " | ".join([*cache, *rss, train]) + " |")
    return [*lines, "", f"![memory]({image_prefix}memory.png)", ""]


def caveats(options: argparse.Namespace) -> list[str]:
    """The caveats section, worded for what this run did (seeds, sweep, families)."""
    seeds = (
        f"{options.seeds} seeds per family (mean and spread in the tables)"
        if options.seeds > 1
        else "one seed per model: differences of a few percent are within what another seed could change"
    )
    tuning = (
        f"each family's learning rate was chosen from {options.lr_sweep} (the same number for every family); "
        "batch, optimizer and schedule are the recipes' and were not swept"
        if options.lr_sweep > 1
        else "the recipes (batch, optimizer, rate) are the defaults of `hf-lstm compare`, hf_lstm's and "
        'GPT-2\'s chosen once from a small sweep (docs/COMPARE.md, "Recipes"), every other family taking '
        "GPT-2's untuned: run with --lr_sweep N for the same tuning budget everywhere"
    )
    return [
        "## Caveats",
        "",
        f"- CPU only, one machine, {seeds}. Timings on a shared CPU move with the neighbours' load; the "
        "generation figures are interleaved across models to share that noise, the training runs are not "
        "(they run one after another).",
        "- The budget is short: these are the models' quality after this budget, not at convergence; "
        f"{tuning}.",
        "- The fixed-window protocol gives every model the same context (at most one window); the stateful "
        "number is reported for hf_lstm because it is the protocol of the published RNN results, not "
        "because it compares with the other models' fixed-window number.",
        "- GPT-2 learns one embedding per position and is built with exactly the positions it trains on, so "
        "it cannot take longer prompts; Llama's rotary positions cost no parameters, so it is built with "
        "enough positions for the longest prompt, but beyond its training block its output is extrapolation "
        "(so is RecurrentGemma's local attention beyond the block).",
        "- Mamba, Mamba-2, xLSTM, RWKV and RecurrentGemma run transformers' pure-PyTorch paths here (see the "
        "code paths): their fused GPU kernels would change their speeds, not their quality.",
    ]


def write_report(
    options: argparse.Namespace, records: list[dict], summary: dict, image_prefix: str = ""
) -> str:
    """REPORT.md: setup, the result table, generation and memory tables, plots, every size/budget/seed, the
    learning-rate sweep, the families that did not complete, the reading and the caveats.

    Args:
        options (`argparse.Namespace`): `hf-lstm compare`'s options.
        records (`list[dict]`): the records of results.json (every run; the main ones have `main: true`).
        summary (`dict`): the run's date, command line, data, tokenizer, machine and quality target check.
        image_prefix (`str`, *optional*): the folder of the plots, relative to the report ("" beside it).
    """
    main = [r for r in records if r.get("main")]
    size = [f"![quality against size]({image_prefix}{SIZE_PLOT})", ""] if _has_sizes(records) else []
    sections = [
        *_title_section(options, summary),
        *failures_section(records),
    ]
    if main:
        sections += [
            *_setup_section(options, main, summary),
            *_result_section(options, main, summary, image_prefix),
            *_generation_section(options, main, image_prefix),
            *_memory_section(options, main, image_prefix),
        ]
    sections += [*runs_section(records), *size, *sweep_section(records)]
    sections += ["## Reading", "", *(reading(main, summary) if main else []), *lstm_versus_peers(records)]
    return "\n".join([*sections, "", *caveats(options)]) + "\n"


def _has_sizes(records: list[dict]) -> bool:
    done = [r for r in records if r.get("status") == "ok" and r.get("role") == "final"]
    return len({r["target_parameters"] for r in done}) > 1


def publish_report(options: argparse.Namespace, records: list[dict], summary: dict, output_dir: Path) -> Path:
    """Write the report to `--publish_report`, with its plots and a results.json without the training logs in
    a folder of the same stem (lower case) beside it.

    Returns:
        `Path`: the published report.
    """
    published = Path(options.publish_report)
    assets = published.parent / published.stem.lower()
    assets.mkdir(parents=True, exist_ok=True)
    for name in (*PLOTS, SIZE_PLOT):
        if (output_dir / name).is_file():
            shutil.copy(output_dir / name, assets / name)
    write_results(
        [{k: v for k, v in r.items() if k != "train_log"} for r in records], assets / "results.json"
    )
    published.write_text(write_report(options, records, summary, image_prefix=assets.name + "/"))
    return published


def copy_model_cards(
    records: list[dict], cards_dir: Path, run_name: str, report_link: str | None
) -> list[str]:
    """Copy each trained model's card (its folder's README.md) to CARDS_DIR/<run name>-<model>.md, with a
    closing section that points to the comparison report.

    Returns:
        `list[str]`: the cards written.
    """
    cards_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for rec in records:
        if not rec.get("main"):
            continue  # one card per family: its main run
        source = Path(rec["model_dir"]) / "README.md"
        if not source.is_file():
            continue
        target = cards_dir / f"{run_name}-{rec['name'].replace(':', '-')}.md"
        text = source.read_text().rstrip() + "\n\n## In the comparison\n\n"
        text += (
            f"Trained by `hf-lstm compare` ({run_name}) as the `{rec['name']}` entry: {rec['shape']}, "
            f"{rec['num_parameters']:,} parameters, matched to {rec['target_parameters']:,} "
            f"({rec['parameter_match_error']:+.1%}). "
        )
        text += (
            f"See [the report]({report_link}).\n" if report_link else "See REPORT.md beside results.json.\n"
        )
        target.write_text(text)
        written.append(str(target))
    return written
