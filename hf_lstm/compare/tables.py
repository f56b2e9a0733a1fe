"""The report sections that read every run, not only each family's main one: seeds (mean and spread), both
budgets, several sizes, the learning-rate sweep, the code paths, and the families that could not run."""

from __future__ import annotations

import math
import statistics

QUALITY = (
    "validation_perplexity_fixed_window",
    "test_perplexity_fixed_window",
    "validation_bits_per_byte_fixed_window",
    "test_bits_per_byte_fixed_window",
    "validation_perplexity_stateful",
)
SPEED = ("train_tokens_per_second", "train_tokens", "train_seconds")


def _stats(values: list) -> dict:
    """Mean, sample standard deviation (None for one value), min, max and count of the finite values."""
    finite = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    if not finite:
        return {"mean": None, "std": None, "min": None, "max": None, "n": 0}
    return {
        "mean": statistics.fmean(finite),
        "std": statistics.stdev(finite) if len(finite) > 1 else None,
        "min": min(finite),
        "max": max(finite),
        "n": len(finite),
    }


def aggregate(records: list[dict]) -> list[dict]:
    """The final runs (`role: "final"`, completed) grouped by family, target size and budget, in the order
    they ran: the shape, the chosen learning rate, the seeds, and each quality and speed number as `_stats`.

    Returns:
        `list[dict]`: one row per group.
    """
    groups: dict[tuple, list[dict]] = {}
    for rec in records:
        if rec.get("status") == "ok" and rec.get("role") == "final":
            groups.setdefault((rec["name"], rec["target_parameters"], rec["budget"]), []).append(rec)
    rows = []
    for (name, target, budget), runs in groups.items():
        first = runs[0]
        row = {
            "name": name,
            "target_parameters": target,
            "budget": budget,
            "shape": first["shape"],
            "num_parameters": first["num_parameters"],
            "num_non_embedding_parameters": first["num_non_embedding_parameters"],
            "learning_rate": first["learning_rate"],
            # the sweep's rates, where only the first seed's run records them (seeds run apart, combined)
            "lr_candidates": max((r.get("lr_candidates") or [] for r in runs), key=len),
            "seeds": [r.get("seed") for r in runs],
        }
        row.update({key: _stats([r.get(key) for r in runs]) for key in QUALITY + SPEED})
        rows.append(row)
    return rows


def _mean_spread(stats: dict, digits: int) -> str:
    if stats["mean"] is None:
        return "-"
    text = f"{stats['mean']:,.{digits}f}"
    return text + (f" ± {stats['std']:,.{digits}f}" if stats["std"] is not None else "")


def _count(value: int) -> str:
    for unit, scale in (("M", 1e6), ("k", 1e3)):
        if value >= scale:
            return f"{value / scale:g}{unit}"
    return str(value)


def _rate(rate) -> str:
    return "-" if rate is None else f"{rate:.3g}"


def runs_section(records: list[dict]) -> list[str]:
    """Every family at every size and budget: mean ± standard deviation over the seeds."""
    rows = aggregate(records)
    if not rows:
        return []
    lines = [
        "## All sizes, budgets and seeds",
        "",
        "Mean ± sample standard deviation over the seeds at the chosen learning rate (no ± with one seed). "
        "Bits per byte = the loss in bits over the split's UTF-8 bytes, so corpora and tokenizers compare.",
        "",
        "| model | target | params (total / non-embedding) | budget | lr (of) | seeds | valid ppl (fixed) "
        "| test ppl (fixed) | valid bits/byte | test bits/byte | train tokens/s |",
        "|---|---:|---:|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        candidates = [c for c in row["lr_candidates"] or [] if c is not None]
        of = f" ({', '.join(_rate(c) for c in candidates)})" if len(candidates) > 1 else ""
        cells = [
            row["name"],
            _count(row["target_parameters"]),
            f"{row['num_parameters']:,} / {row['num_non_embedding_parameters']:,}",
            row["budget"],
            _rate(row["learning_rate"]) + of,
            str(len(row["seeds"])),
            _mean_spread(row["validation_perplexity_fixed_window"], 1),
            _mean_spread(row["test_perplexity_fixed_window"], 1),
            _mean_spread(row["validation_bits_per_byte_fixed_window"], 3),
            _mean_spread(row["test_bits_per_byte_fixed_window"], 3),
            _mean_spread(row["train_tokens_per_second"], 0),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return [*lines, ""]


def sweep_section(records: list[dict]) -> list[str]:
    """The learning-rate sweep of every family: each rate tried (first seed) and the one chosen."""
    tried = [r for r in records if len([c for c in r.get("lr_candidates") or [] if c is not None]) > 1]
    tried = [r for r in tried if r.get("seed") == min(x.get("seed", 0) for x in tried)]
    if not tried:
        return []
    families = list(dict.fromkeys(r["name"] for r in records))  # in the order they come
    tried.sort(  # family by family, then by size, budget and rate
        key=lambda r: (
            families.index(r["name"]),
            r.get("target_parameters") or 0,
            str(r.get("budget")),
            r.get("learning_rate") or 0,
        )
    )
    lines = [
        "## Learning-rate sweep",
        "",
        "The same number of rates for every family, spaced by 2x around its recipe's rate, each trained once "
        "(first seed) under the same budget; the lowest validation perplexity (fixed windows) is chosen. "
        "Choosing on validation makes the validation numbers slightly optimistic: the test columns are not.",
        "",
        "| model | target | budget | lr | valid ppl (fixed) | test ppl (fixed) | chosen |",
        "|---|---:|---|---:|---:|---:|---|",
    ]
    for r in tried:
        if r.get("status") != "ok":
            lines.append(
                f"| {r['name']} | {_count(r['target_parameters'])} | {r['budget']} | "
                f"{_rate(r.get('learning_rate'))} | failed | | {r.get('reason', '')[:80]} |"
            )
            continue
        lines.append(
            f"| {r['name']} | {_count(r['target_parameters'])} | {r['budget']} | "
            f"{_rate(r['learning_rate'])} | "
            f"{r['eval_perplexity']:,.1f} | {_fmt(r.get('test_perplexity_fixed_window'))} | "
            f"{'**yes**' if r.get('role') == 'final' else ''} |"
        )
    return [*lines, ""]


def _fmt(value, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def failures_section(records: list[dict]) -> list[str]:
    """Every family or run that could not run, with the stage and the reason (never silently dropped)."""
    failed = [r for r in records if r.get("status") != "ok"]
    lines = ["## Families or runs that did not complete", ""]
    if not failed:
        return [*lines, "None: every requested family was matched, trained, evaluated and loaded.", ""]
    for r in failed:
        where = ", ".join(
            f"{k} {_count(v) if k == 'target_parameters' else v}"
            for k, v in r.items()
            if k in ("target_parameters", "budget", "seed", "learning_rate") and v is not None
        )
        lines.append(f"- **{r['name']}** failed at {r['stage']} ({where}): {r['reason']}")
    return [*lines, ""]


def code_path_lines(main: list[dict]) -> list[str]:
    """Which implementation ran each family, beside its speeds, so no number is misread."""
    lines = ["| model | code path (this machine) | train tokens/s |", "|---|---|---:|"]
    lines += [
        f"| {r['name']} | {r.get('code_path', '-')} | {r['train_tokens_per_second']:,.0f} |" for r in main
    ]
    return [*lines, ""]


def lstm_versus_peers(records: list[dict]) -> list[str]:
    """For each size and budget, hf_lstm (the LSTM cell) against every other family: who wins, by how much
    (validation perplexity, fixed windows, mean over seeds)."""
    rows = aggregate(records)
    lines = []
    for lstm in (r for r in rows if r["name"] == "hf_lstm"):
        ours = lstm["validation_perplexity_fixed_window"]["mean"]
        if ours is None:
            continue
        peers = [
            r
            for r in rows
            if r["name"] != "hf_lstm"
            and r["target_parameters"] == lstm["target_parameters"]
            and r["budget"] == lstm["budget"]
            and r["validation_perplexity_fixed_window"]["mean"] is not None
        ]
        if not peers:
            continue
        beats = [r for r in peers if r["validation_perplexity_fixed_window"]["mean"] < ours]
        parts = [
            f"{r['name']} {r['validation_perplexity_fixed_window']['mean']:,.1f} "
            f"({ours / r['validation_perplexity_fixed_window']['mean']:.2f}x)"
            for r in peers
        ]
        verdict = "no peer beats it" if not beats else "beaten by " + ", ".join(r["name"] for r in beats)
        lines.append(
            f"- **hf_lstm against each peer** ({_count(lstm['target_parameters'])} parameters, "
            f"{lstm['budget']} budget): hf_lstm {ours:,.1f} validation perplexity; {', '.join(parts)} "
            f"(hf_lstm's perplexity as a multiple of each: below 1 = hf_lstm better); {verdict}."
        )
    return lines


def seeds_section(records: list[dict]) -> list[str]:
    """Each family's final runs seed by seed: validation perplexity, the steps and tokens/s its budget gave it
    (a slower machine at the time of one seed shows here, not only in the spread), and its rank among the
    families at that seed."""
    finals = [r for r in records if r.get("status") == "ok" and r.get("role") == "final"]
    seeds = sorted({r.get("seed") for r in finals})
    if len(seeds) < 2:
        return []
    by_seed = {
        s: sorted((r for r in finals if r.get("seed") == s), key=lambda r: r["eval_perplexity"])
        for s in seeds
    }
    rank = {(r["name"], s): k + 1 for s, runs in by_seed.items() for k, r in enumerate(runs)}
    names = list(dict.fromkeys(r["name"] for r in finals))
    per = " / ".join(str(s) for s in seeds)
    lines = [
        "## Seed by seed",
        "",
        f"Each cell lists seeds {per} in that order; rank 1 = the lowest validation perplexity among the "
        "families at that seed.",
        "",
        "| model | valid ppl (fixed) | rank | train steps | train tokens/s |",
        "|---|---:|---:|---:|---:|",
    ]
    for name in names:
        runs = {r.get("seed"): r for r in finals if r["name"] == name}
        ranks = " / ".join(str(rank[(name, s)]) if (name, s) in rank else "-" for s in seeds)
        quality, steps = (
            _per_seed(runs, seeds, "eval_perplexity", 1),
            _per_seed(runs, seeds, "train_steps", 0),
        )
        speed = _per_seed(runs, seeds, "train_tokens_per_second", 0)
        lines.append(f"| {name} | {quality} | {ranks} | {steps} | {speed} |")
    return [*lines, ""]


def _per_seed(runs: dict, seeds: list, key: str, digits: int) -> str:
    return " / ".join(_fmt(runs[s].get(key), digits) if s in runs else "-" for s in seeds)
