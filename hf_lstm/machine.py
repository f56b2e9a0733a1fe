"""The machine a measurement was taken on, described once for every report of this project.

`machine_facts()` is the dictionary a JSON report records; `machine_summary()` is the same machine in one
line of prose (what a Markdown report prints). `load_average()` is kept apart because it describes a moment,
not the machine: reports take it at the start and at the end of a run.
"""

from __future__ import annotations

import os
import platform

import torch


def cpu_name() -> str:
    """The CPU's model name (`model name` in Linux's /proc/cpuinfo), else what `platform` knows.

    Returns:
        `str`: e.g. `"AMD EPYC"`; `platform.processor()` or `platform.machine()` without /proc/cpuinfo.
    """
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            name = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), name)
    except OSError:
        pass
    return name


def load_average() -> tuple[float, float, float] | None:
    """The system load averages over 1, 5 and 15 minutes (`os.getloadavg`), or `None` where there are none.

    On a shared machine this says how much of it others were using while a measurement ran.
    """
    return os.getloadavg() if hasattr(os, "getloadavg") else None


def gpu_name() -> str | None:
    """The first CUDA device's name, or `None` where torch sees no GPU."""
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def machine_facts() -> dict:
    """What a report records about the machine and the software that measured.

    Returns:
        `dict`: `cpu` (model name), `cores` (logical cores), `os` (e.g. `"Linux"`), `gpu` (the first CUDA
        device's name, or `None`), `torch` (version), `torch_threads` (`torch.get_num_threads()` now),
        `python` (version) and `mkldnn` (whether oneDNN is available to torch).
    """
    return {
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "os": platform.system(),
        "gpu": gpu_name(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "mkldnn": torch.backends.mkldnn.is_available(),
    }


def machine_summary(facts: dict | None = None) -> str:
    """The machine in one line: CPU model, logical cores, OS, and the GPU if torch sees one.

    Args:
        facts (`dict`, *optional*): the output of `machine_facts()`; taken now if not given.

    Returns:
        `str`: e.g. `"AMD EPYC, 2 logical cores, Linux, no GPU"` or `"..., Linux, GPU NVIDIA H200"`.
    """
    facts = machine_facts() if facts is None else facts
    gpu = f"GPU {facts['gpu']}" if facts.get("gpu") else "no GPU"
    return f"{facts['cpu']}, {facts['cores']} logical cores, {facts['os']}, {gpu}"
