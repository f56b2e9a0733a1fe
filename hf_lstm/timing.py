"""Timing shared by `bench` and `compare`: interleaved medians (so a busy neighbour slows both sides of a
comparison, not one), a clock that notes every decoding step of `generate()`, and the resident memory."""

from __future__ import annotations

import os
import statistics
import time

import torch


def interleaved(
    runs: dict, repeats: int, warmup: bool = True, rounds: dict[str, list[float]] | None = None
) -> dict[str, float]:
    """Run each callable of `runs` once per round, in alternation, for `repeats` rounds; each callable returns
    the seconds it wants counted (so set-up can be left out). Returns the median per name. With `warmup`, one
    untimed round first (first calls pay for allocation, oneDNN primitive creation and lazy imports).
    `rounds`, when given, receives every round's seconds per name (for a ratio's spread, `round_ratios`)."""
    times: dict[str, list[float]] = rounds if rounds is not None else {}
    times.update({name: [] for name in runs})
    if warmup:
        for fn in runs.values():
            fn()
    for _ in range(repeats):
        for name, fn in runs.items():
            times[name].append(fn())
    return {name: statistics.median(times[name]) for name in runs}


def round_ratios(rounds: dict[str, list[float]], numerator: str, denominator: str) -> str:
    """The lowest and highest of a ratio taken round by round (the two timed minutes apart at most), as
    "a-b": how far the host moved the median ratio a figure reports."""
    ratios = [a / b for a, b in zip(rounds[numerator], rounds[denominator])]
    return f"{min(ratios):.3g}-{max(ratios):.3g}"


def timed(fn, device: torch.device | None = None) -> float:
    """Seconds taken by `fn()`; on a CUDA `device`, with the device's queue drained before and after (its
    work is asynchronous)."""
    sync = torch.cuda.synchronize if device is not None and device.type == "cuda" else None
    if sync:
        sync(device)
    start = time.perf_counter()
    fn()
    if sync:
        sync(device)
    return time.perf_counter() - start


class StepClock:
    """A stopping criterion that never stops and notes the time of every decoding step (and, every
    `rss_every` steps, the process's resident memory), so a `generate()` call can be timed per token without
    its prefill and watched for memory growth."""

    def __init__(self, rss_every: int = 0):
        self.times: list[float] = []
        self.rss: list[int] = []
        self.rss_every = rss_every

    def __call__(self, input_ids, scores, **kwargs):
        self.times.append(time.perf_counter())
        if self.rss_every and len(self.times) % self.rss_every == 1:
            self.rss.append(resident_bytes())
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

    def seconds_per_step(self) -> float:
        """Mean wall time between consecutive steps (the first, which follows the prefill, is left out)."""
        if len(self.times) < 2:
            raise ValueError("time at least two steps")
        return (self.times[-1] - self.times[0]) / (len(self.times) - 1)


def resident_bytes() -> int:
    """The current resident set size of this process, in bytes (Linux /proc; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return 0
