"""One report from several `hf-lstm compare` runs that differ only in their seeds (and, for the first seed,
the learning rates its sweep tried).

A comparison's runs need not all run at once: the reference tables in docs/COMPARE.md were trained seed by
seed, on a 2-core machine, one process per core with the families split between them. This script reads their
results.json files and writes what `hf-lstm compare --seeds N` would have written about the seeds: mean and
spread per family, every seed's numbers with its rank and the steps its budget gave it, and hf_lstm against
each peer; and the learning-rate sweep: the runs of a family's first seed at different rates, run together
(`--lr_sweep N`) or apart (`_assemble_sweeps`). Its other seeds must have run at the rate the sweep chose
(or be left out: `--drop_other_rates`). Under an equal-wall-clock budget a run's steps are the machine's speed
that day: combine runs of one day (docs/COMPARE.md shows what mixing days did).

    python scripts/combine_compare.py docs/compare-peers-ptb-4m/results.json runs/a/results.json \
        runs/b/results.json --title "peers-ptb-4M, seeds 42-44" --output docs/COMPARE-peers-ptb-4M-seeds.md \
        --save_results docs/compare-peers-ptb-4m-seeds/results.json
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from .plots import draw_seeds_and_sweep, swept_runs
from .report import copy_model_cards
from .tables import failures_section, lstm_versus_peers, runs_section, seeds_section, sweep_section

KEPT = (  # what the combined results.json keeps of each record: the numbers, not the curves or paths
    "name",
    "status",
    "stage",
    "reason",
    "role",
    "seed",
    "target_parameters",
    "budget",
    "learning_rate",
    "lr_candidates",
    "shape",
    "num_parameters",
    "num_non_embedding_parameters",
    "train_steps",
    "train_tokens",
    "train_seconds",
    "train_tokens_per_second",
    "eval_perplexity",
    "validation_perplexity_fixed_window",
    "test_perplexity_fixed_window",
    "validation_perplexity_stateful",
    "test_perplexity_stateful",
    "validation_bits_per_byte_fixed_window",
    "test_bits_per_byte_fixed_window",
)


def combine(
    paths: list[Path],
    models: list[str] | None = None,
    drop_other_rates: bool = False,
    seeds_of: dict[Path, set[int]] | None = None,
) -> tuple[list[dict], list[dict]]:
    """Every record of the files (of the families `models` only, in that order, if given; of the seeds
    `seeds_of[path]` only, for a file named there), each tagged with the file it came from, and the runs left
    out (`drop_other_rates`, see `_assemble_sweeps`); a run present twice (the same family, size, budget,
    learning rate and seed) is an error, since it would count twice in the means."""
    records, seen, seeds_of = [], {}, seeds_of or {}
    for path in paths:
        for record in json.loads(Path(path).read_text()):
            if models and record.get("name") not in models:
                continue
            if path in seeds_of and record.get("seed") not in seeds_of[path]:
                continue
            key = tuple(
                record.get(k) for k in ("name", "target_parameters", "budget", "learning_rate", "seed")
            )
            if record.get("status") == "ok":  # a failed run may be given again with its retry
                if key in seen:
                    raise ValueError(f"{key} is in both {seen[key]} and {path}: give each run once")
                seen[key] = path
            records.append({**{k: record[k] for k in KEPT if k in record}, "source": str(path)})
    dropped = _assemble_sweeps(records, drop_other_rates)
    if models:  # the report's tables list the families in this order
        records.sort(key=lambda r: models.index(r["name"]))
    left_out = {id(r) for r in dropped}
    return [r for r in records if id(r) not in left_out], dropped


def _assemble_sweeps(records: list[dict], drop_other_rates: bool = False) -> list[dict]:
    """Each family's learning-rate sweep, wherever its runs came from: the completed runs of one family, size
    and budget at its first seed and different learning rates are the sweep, whether `hf-lstm compare
    --lr_sweep` ran them together or they were run apart (say, `--transformer_train_args "--learning_rate
    1e-3"`); the one with the lowest validation perplexity (`eval_perplexity`) is chosen (`role: "final"`),
    the others become `role: "sweep"`, and every run of the family records the rates tried. The family's
    other seeds must have run at the chosen rate: the means would otherwise mix rates. Seeds at another rate
    are an error, or, with `drop_other_rates`, returned to be left out (say, seeds trained at a family's
    recipe rate before its sweep chose another)."""
    groups: dict[tuple, list[dict]] = {}
    dropped = []
    for r in records:
        if r.get("status") == "ok" and r.get("role") in ("final", "sweep"):
            groups.setdefault((r["name"], r.get("target_parameters"), r.get("budget")), []).append(r)
    for (name, target, budget), runs in groups.items():
        first = min(r.get("seed") for r in runs)
        tried = [r for r in runs if r.get("seed") == first]
        chosen = min(tried, key=lambda r: r["eval_perplexity"])
        if len(tried) > 1:
            rates = sorted(r["learning_rate"] for r in tried)
            for r in runs:
                r["lr_candidates"] = rates
            for r in tried:
                r["role"] = "final" if r is chosen else "sweep"
        elsewhere = [
            r for r in runs if r.get("seed") != first and r["learning_rate"] != chosen["learning_rate"]
        ]
        if elsewhere and not drop_other_rates:
            raise ValueError(
                f"{name} ({target:,} parameters, {budget}): seed {first} chose learning rate "
                f"{chosen['learning_rate']:g}, but seeds {', '.join(str(r.get('seed')) for r in elsewhere)} "
                "ran at another: rerun them at the chosen rate, or leave them out (--drop_other_rates)"
            )
        dropped += elsewhere
    return dropped


def reference_cards(records: list[dict], cards_dir: Path, run_name: str, report_link: str) -> list[str]:
    """Copy the card of each family's reference model, the run at its first seed and chosen learning rate, to
    CARDS_DIR/<run name>-<family>.md (as `hf-lstm compare --model_cards_dir` does), read from the model folder
    its results file recorded. A family whose folder is gone gets none (the paths returned say which did)."""
    firsts: dict[str, dict] = {}
    for r in records:
        if r.get("status") != "ok" or r.get("role") != "final":
            continue
        known = firsts.get(r["name"])
        if known and (known["target_parameters"], known["budget"]) != (r["target_parameters"], r["budget"]):
            raise ValueError(
                f"{r['name']} ran at more than one size or budget: give --model_cards_dir the runs of one"
            )
        if not known or r["seed"] < known["seed"]:
            firsts[r["name"]] = r
    key = ("name", "target_parameters", "budget", "learning_rate", "seed")
    originals = [
        {**o, "main": True}
        for r in firsts.values()
        for o in json.loads(Path(r["source"]).read_text())
        if all(o.get(k) == r.get(k) for k in key) and o.get("status") == "ok"
    ]
    return copy_model_cards(originals, cards_dir, run_name, report_link)


def report(
    records: list[dict],
    title: str,
    sources: list[Path],
    dropped: list[dict] | None = None,
    plot_link: str | None = None,
) -> str:
    lines = [f"# {title}", "", "Combined by `scripts/combine_compare.py` from:", ""]
    for path in sources:
        mine = [r for r in records if r["source"] == str(path)]
        names = ", ".join(dict.fromkeys(r["name"] for r in mine))
        seeds = ", ".join(str(s) for s in sorted({r.get("seed") for r in mine}))
        lines.append(f"- `{path}`: {names}; seeds {seeds}" if mine else f"- `{path}`: nothing kept")
    if dropped:
        lines += [
            "",
            "Left out (`--drop_other_rates`): seeds that ran at a rate their family's sweep did not choose:",
            "",
        ]
        lines += [
            f"- {r['name']}, seed {r.get('seed')}, learning rate {r['learning_rate']:g} (`{r['source']}`)"
            for r in dropped
        ]
    lines.append("")
    if plot_link:
        sweep = ", and the learning-rate sweep" if swept_runs(records) else ""
        lines += [f"![each seed{sweep}]({plot_link})", ""]
    lines += failures_section(records) + runs_section(records) + seeds_section(records)
    lines += sweep_section(records)
    return "\n".join([*lines, *lstm_versus_peers(records), ""])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", type=Path, help="results.json files of `hf-lstm compare`.")
    parser.add_argument("--title", required=True)
    parser.add_argument("--output", required=True, type=Path, help="The Markdown report to write.")
    parser.add_argument("--save_results", type=Path, help="Also write the combined records (JSON) here.")
    parser.add_argument(
        "--models",
        default=None,
        help="Keep only these families (comma-separated), e.g. when some files hold more; the tables list "
        "them in this order.",
    )
    parser.add_argument(
        "--drop_other_rates",
        action="store_true",
        help="Leave out (and list) the seeds of a family that ran at a learning rate its sweep did not "
        "choose, instead of refusing them.",
    )
    parser.add_argument(
        "--seeds_of",
        action="append",
        default=[],
        metavar="FILE=SEEDS",
        help="Keep only these seeds of one of the results files, e.g. old.json=43,44 where its seed 42 was "
        "trained again (repeatable).",
    )
    parser.add_argument(
        "--model_cards_dir",
        type=Path,
        help="Also copy the card of each family's first seed at its chosen rate to DIR/<run name>-<model>.md",
    )
    parser.add_argument("--run_name", help="The cards' name prefix (with --model_cards_dir).")
    parser.add_argument(
        "--plot", type=Path, help="Also draw each family's seeds and sweep to this PNG, shown in the report."
    )
    args = parser.parse_args(argv)
    missing = [str(p) for p in args.results if not p.is_file()]
    if missing:
        parser.error(f"no such results file: {', '.join(missing)}")
    seeds_of = {}
    for given in args.seeds_of:
        path, _, seeds = given.rpartition("=")
        if Path(path) not in args.results or not all(s.strip().isdigit() for s in seeds.split(",")):
            parser.error(
                f"--seeds_of {given}: expected one of the results files, '=', and seeds, e.g. a.json=43,44"
            )
        seeds_of[Path(path)] = {int(s) for s in seeds.split(",")}
    if args.model_cards_dir and not args.run_name:
        parser.error("--model_cards_dir needs --run_name, the prefix of the cards' names")
    models = args.models.split(",") if args.models else None
    records, dropped = combine(args.results, models, args.drop_other_rates, seeds_of)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    link = None
    if args.plot:
        args.plot.parent.mkdir(parents=True, exist_ok=True)
        draw_seeds_and_sweep(records, args.plot)
        link = os.path.relpath(args.plot, args.output.parent)
    args.output.write_text(report(records, args.title, args.results, dropped, link))
    if args.save_results:
        args.save_results.parent.mkdir(parents=True, exist_ok=True)
        args.save_results.write_text(json.dumps(records, indent=1) + "\n")
    print(f"wrote {args.output} ({len(records)} runs)")
    if args.model_cards_dir:
        link = os.path.relpath(args.output, args.model_cards_dir)
        cards = reference_cards(records, args.model_cards_dir, args.run_name, link)
        print(f"wrote {len(cards)} model cards to {args.model_cards_dir}")
        families = dict.fromkeys(r["name"] for r in records if r.get("status") == "ok")
        gone = [f for f in families if not any(c.endswith(f"-{f.replace(':', '-')}.md") for c in cards)]
        if gone:
            print(f"no card for {', '.join(gone)}: the model folder its results file names is gone")
    return 0
