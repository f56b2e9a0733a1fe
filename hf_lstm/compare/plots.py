"""The plots of a comparison (PNG, matplotlib's Agg backend): training curves (quality against training time
and tokens, every family on one plot), generation speed against the prompt, cache and peak memory, and quality
against size when several target sizes were run."""

from __future__ import annotations

from pathlib import Path

PLOTS = ("curves.png", "generation.png", "memory.png")
SIZE_PLOT = "size.png"


def _interp(x: float, xs: list[float], ys: list[float]) -> float:
    if x <= xs[0]:
        return ys[0]
    for (x0, y0), (x1, y1) in zip(zip(xs, ys), zip(xs[1:], ys[1:])):
        if x <= x1:
            return y0 + (y1 - y0) * (x - x0) / max(x1 - x0, 1e-12)
    return ys[-1]


def step_axes(record: dict) -> tuple[list[float], list[float]]:
    """Seconds and tokens at each logged step, interpolated between the points where the run recorded them
    (start, every validation point, the end): `train_log.json` holds (step, loss) only."""
    anchors = [(0, 0.0, 0)] + [(p["step"], p["seconds"], p["tokens_seen"]) for p in record["eval_curve"]]
    anchors.append((record["train_steps"], record["train_seconds"], record["train_tokens"]))
    anchors = sorted(set(anchors))
    steps = [a[0] for a in anchors]
    seconds = [_interp(s, steps, [a[1] for a in anchors]) for s, _ in record["train_log"]]
    tokens = [_interp(s, steps, [a[2] for a in anchors]) for s, _ in record["train_log"]]
    return seconds, tokens


def _smooth(values: list[float], weight: float) -> list[float]:
    out, avg = [], None
    for v in values:
        avg = v if avg is None else weight * avg + (1 - weight) * v
        out.append(avg)
    return out


def _finish(plt, fig, axes, path: Path) -> None:
    """Grid and legend on every panel, then save the figure to `path` and close it."""
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _plot_training(plt, records: list[dict], path: Path) -> None:
    """Training loss and validation perplexity against wall-clock and tokens."""
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    for rec in records:
        seconds, tokens = step_axes(rec)
        loss = _smooth([loss for _, loss in rec["train_log"]], 0.9)
        label = f"{rec['name']} ({rec['batching']})"
        axes[0, 0].plot(seconds, loss, label=label)
        axes[0, 1].plot(tokens, loss, label=label)
        curve = [
            *rec["eval_curve"],
            {
                "seconds": rec["train_seconds"],
                "tokens_seen": rec["train_tokens"],
                "validation_perplexity_fixed_window": rec["eval_perplexity"],
            },
        ]
        perplexity = [p["validation_perplexity_fixed_window"] for p in curve]
        axes[1, 0].plot([p["seconds"] for p in curve], perplexity, marker="o", label=rec["name"])
        axes[1, 1].plot([p["tokens_seen"] for p in curve], perplexity, marker="o", label=rec["name"])
    axes[0, 0].set(xlabel="training wall-clock (s)", ylabel="training loss (nats, smoothed)")
    axes[0, 1].set(xlabel="training tokens", ylabel="training loss (nats, smoothed)")
    axes[1, 0].set(
        xlabel="training wall-clock (s)", ylabel="validation perplexity (fixed windows)", yscale="log"
    )
    axes[1, 1].set(xlabel="training tokens", ylabel="validation perplexity (fixed windows)", yscale="log")
    fig.suptitle("Training: loss and validation perplexity against wall-clock and tokens")
    _finish(plt, fig, axes.flat, path)


def _plot_generation(plt, records: list[dict], path: Path) -> None:
    """Decoded tokens/s against the prompt's context, one panel per batch size."""
    batches = sorted({g["batch_size"] for rec in records for g in rec["generation"]})
    fig, axes = plt.subplots(1, len(batches), figsize=(5.5 * len(batches), 4), squeeze=False)
    for ax, batch in zip(axes[0], batches):
        for rec in records:
            points = [
                (g["context"], g["tokens_per_second"])
                for g in rec["generation"]
                if g["batch_size"] == batch and g.get("tokens_per_second")
            ]
            if points:
                ax.plot(*zip(*points), marker="o", label=rec["name"])
        ax.set(
            xscale="log",
            xlabel="prompt context (tokens)",
            ylabel="decoded tokens/s (whole batch)",
            title=f"greedy generate(), batch {batch}",
        )
    _finish(plt, fig, axes[0], path)


def _plot_memory(plt, records: list[dict], path: Path) -> None:
    """Cache bytes at batch 1 and the peak resident memory at the largest batch, against the context."""
    largest = max(g["batch_size"] for rec in records for g in rec["generation"])
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for rec in records:
        cache = [
            (g["cache_tokens"] or g["context"], g["cache_bytes"])
            for g in rec["generation"]
            if g["batch_size"] == 1 and g.get("cache_bytes")
        ]
        rss = [
            (g["context"], g["peak_rss_increase_bytes"] / 1e6)
            for g in rec["generation"]
            if g["batch_size"] == largest and g.get("peak_rss_increase_bytes") is not None
        ]
        if cache:
            axes[0].plot(*zip(*cache), marker="o", label=rec["name"])
        if rss:
            axes[1].plot(*zip(*rss), marker="o", label=rec["name"])
    axes[0].set(
        xscale="log",
        yscale="log",
        xlabel="tokens in the cache (prompt + generated)",
        ylabel="state / KV-cache bytes",
        title="cache size, batch 1",
    )
    axes[1].set(
        xscale="log",
        xlabel="prompt context (tokens)",
        ylabel="MB",
        title=f"peak resident memory above the loaded model, batch {largest}",
    )
    _finish(plt, fig, axes, path)


def _plot_size(plt, records: list[dict], path: Path) -> None:
    """Validation perplexity and bits per byte (fixed windows; the mean over seeds, error bars the spread)
    against total parameters, one line per family and budget."""
    from .tables import aggregate

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    groups: dict[tuple[str, str], list[dict]] = {}
    for row in aggregate(records):
        groups.setdefault((row["name"], row["budget"]), []).append(row)
    budgets = {budget for _, budget in groups}
    for (name, budget), rows in groups.items():
        rows = sorted(rows, key=lambda r: r["num_parameters"])
        label = name if len(budgets) == 1 else f"{name} ({budget})"
        for ax, key in zip(
            axes, ("validation_perplexity_fixed_window", "validation_bits_per_byte_fixed_window")
        ):
            points = [(r["num_parameters"], r[key]) for r in rows if r[key]["mean"] is not None]
            if points:
                ax.errorbar(
                    [p for p, _ in points],
                    [v["mean"] for _, v in points],
                    yerr=[v["std"] or 0 for _, v in points],
                    marker="o",
                    capsize=3,
                    label=label,
                )
    axes[0].set(xscale="log", yscale="log", xlabel="total parameters", ylabel="validation perplexity (fixed)")
    axes[1].set(xscale="log", xlabel="total parameters", ylabel="validation bits per byte (fixed)")
    fig.suptitle("Quality against size (mean over seeds; bars: standard deviation)")
    _finish(plt, fig, axes, path)


def _plain_numbers(axis) -> None:
    """Label a log axis 200, 300, 1,000 instead of 2x10^2: major ticks, and minor ones led by 2, 3 or 5."""
    from matplotlib.ticker import FuncFormatter

    def label(value, _):
        return f"{value:,.0f}" if value >= 1 else f"{value:g}"

    def minor(value, _):
        return label(value, _) if f"{value:e}"[0] in "235" else ""

    axis.set_major_formatter(FuncFormatter(label))
    axis.set_minor_formatter(FuncFormatter(minor))


def swept_runs(records: list[dict]) -> list[dict]:
    """The completed runs that were part of a learning-rate sweep (more than one rate tried)."""
    return [r for r in records if r.get("status") == "ok" and len(r.get("lr_candidates") or []) > 1]


def draw_seeds_and_sweep(records: list[dict], path: Path) -> None:
    """One PNG of a combined comparison (`scripts/combine_compare.py`): on the left each family's validation
    perplexity at every seed of its chosen rate (dots) with the mean and standard deviation, best family on
    top; on the right, where the families were swept, validation perplexity against the learning rate at the
    first seed, the chosen rate ringed. A family has one colour in both."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .tables import aggregate

    colour = {name: f"C{i % 10}" for i, name in enumerate(dict.fromkeys(r["name"] for r in records))}
    rows = sorted(
        (r for r in aggregate(records) if r["validation_perplexity_fixed_window"]["mean"] is not None),
        key=lambda r: -r["validation_perplexity_fixed_window"]["mean"],
    )
    swept = swept_runs(records)
    fig, axes = plt.subplots(1, 2 if swept else 1, figsize=(12 if swept else 6.5, 0.45 * len(rows) + 1.8))
    left = axes[0] if swept else axes
    for y, row in enumerate(rows):
        runs = [
            r
            for r in records
            if r.get("status") == "ok" and r.get("role") == "final" and r["name"] == row["name"]
            if (r["target_parameters"], r["budget"]) == (row["target_parameters"], row["budget"])
        ]
        stats = row["validation_perplexity_fixed_window"]
        left.errorbar(stats["mean"], y, xerr=stats["std"] or 0, fmt="s", color="black", capsize=4)
        left.scatter(
            [r["eval_perplexity"] for r in runs], [y] * len(runs), color=colour[row["name"]], zorder=3
        )
    left.set_yticks(range(len(rows)), [r["name"] for r in rows])
    left.set(xlabel="validation perplexity (fixed windows)")
    left.set_title("Each seed at the chosen rate (dots); mean ± sd (black)", fontsize=10)
    left.grid(alpha=0.3)
    if swept:
        right = axes[1]
        for name in dict.fromkeys(r["name"] for r in swept):
            first = min(r.get("seed") for r in swept if r["name"] == name)
            tried = sorted(
                (r for r in swept if r["name"] == name and r.get("seed") == first),
                key=lambda r: r["learning_rate"],
            )
            rates, perplexity = [r["learning_rate"] for r in tried], [r["eval_perplexity"] for r in tried]
            right.plot(rates, perplexity, marker="o", color=colour[name], label=name)
            chosen = [r for r in tried if r.get("role") == "final"]
            right.scatter(
                [r["learning_rate"] for r in chosen],
                [r["eval_perplexity"] for r in chosen],
                s=160,
                facecolors="none",
                edgecolors=colour[name],
            )
        right.set(xscale="log", yscale="log", xlabel="learning rate", ylabel="validation perplexity (fixed)")
        _plain_numbers(right.xaxis)
        _plain_numbers(right.yaxis)
        right.set_title("The sweep at the first seed (chosen rate ringed)", fontsize=10)
        right.legend(fontsize=8)
        right.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def draw_plots(records: list[dict], output_dir: Path) -> list[str]:
    """Draw the plots into `output_dir` from the records of results.json: curves.png (loss and validation
    perplexity against wall-clock and tokens), generation.png (tokens/s against context at each batch size)
    and memory.png (cache bytes and peak memory against context), from the main run of each family; size.png
    (quality against parameters) when the runs cover more than one target size.

    Returns:
        `list[str]`: the file names written.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    main = [r for r in records if r.get("main")]
    written = []
    if main:  # none when every family failed: the report lists the reasons instead
        for name, draw in zip(PLOTS, (_plot_training, _plot_generation, _plot_memory)):
            draw(plt, main, output_dir / name)
        written += PLOTS
    done = [r for r in records if r.get("status") == "ok" and r.get("role") == "final"]
    if len({r["target_parameters"] for r in done}) > 1:
        _plot_size(plt, done, output_dir / SIZE_PLOT)
        written.append(SIZE_PLOT)
    return written
