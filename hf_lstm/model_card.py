"""The model card (`README.md`) of a trained folder, built with huggingface_hub's card tools.

It states what a reader needs to trust the numbers: the metrics with their protocol, the dataset, the
training arguments, the hardware and the measured speed.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import torch
from huggingface_hub import EvalResult, ModelCard, ModelCardData

from .configuration_hf_lstm import is_hf_lstm
from .flops import mfu_text
from .machine import machine_summary

PROTOCOLS = {
    "fixed_window": "fixed windows: every token scored once, each window of {window} read from a fresh state",
    "stateful": "stateful full stream: the whole split read as one stream, state carried, batch 1",
}


def build_model_card(
    name: str, results: dict, dataset: str, dataset_config: str | None = None, command: list[str] = ()
) -> ModelCard:
    """A `ModelCard` for the model `name` trained on `dataset`, with model-index metrics for every split and
    protocol present in `results` (what `hf-lstm train` writes to all_results.json), and `command`, the
    `hf-lstm train` options that reproduce the run."""
    card_data = _card_data(name, results, dataset, dataset_config)
    content = f"""---
{card_data.to_yaml()}
---

# {name}

A `{results["model_type"]}` causal language model with {results["num_parameters"]:,} parameters, trained with
`hf_lstm`'s `hf-lstm train` on `{dataset}`
(batching: `{results["batching"]}`).

{_use_section(results["model_type"])}

{_evaluation_section(results)}

{_training_section(results, command)}"""
    return ModelCard(content)


def _card_data(name: str, results: dict, dataset: str, dataset_config: str | None) -> ModelCardData:
    """The card's metadata: library, task, tags, and the model index (a perplexity per split and protocol)."""
    eval_results = [
        EvalResult(
            task_type="text-generation",
            dataset_type=str(dataset),
            dataset_name=str(dataset),
            dataset_config=dataset_config,
            dataset_split=split,
            metric_type="perplexity",
            metric_value=round(results[f"{split}_perplexity_{protocol}"], 2),
            metric_name=f"perplexity ({protocol.replace('_', ' ')})",
        )
        for split, protocol in _measured(results)
    ]
    return ModelCardData(
        library_name="transformers",
        pipeline_tag="text-generation",
        tags=["hf_lstm", results["model_type"], "custom_code"],
        model_name=name,
        eval_results=eval_results or None,
    )


def _measured(results: dict) -> list[tuple[str, str]]:
    """The (split, protocol) pairs that `results` holds a perplexity for."""
    return [
        (split, protocol)
        for split in ("validation", "test")
        for protocol in ("fixed_window", "stateful")
        if results.get(f"{split}_perplexity_{protocol}") is not None
    ]


def _use_section(model_type: str) -> str:
    if is_hf_lstm(model_type):
        remote_code_note = (
            "`trust_remote_code=True` runs the two Python files in this folder (`modeling_hf_lstm.py`,\n"
            "`configuration_hf_lstm.py`); read them first, and pin a `revision` when loading from the Hub. "
            "With the\n`hf_lstm` package installed (`import hf_lstm`), the installed code is used instead."
        )
    else:
        remote_code_note = (
            f"`{model_type}` is built into transformers: `trust_remote_code` is not needed "
            "for the model (it does no harm)."
        )
    return f"""## Use

```python
from transformers import pipeline

generator = pipeline("text-generation", model="PATH_OR_REPO_ID", trust_remote_code=True)
print(generator("the", max_new_tokens=30)[0]["generated_text"])
```

{remote_code_note}"""


def _evaluation_section(results: dict) -> str:
    def bits(split, protocol):
        value = results.get(f"{split}_bits_per_byte_{protocol}")
        return f"{value:.3f}" if value is not None else "-"

    rows = "\n".join(
        f"| {split} | {protocol.replace('_', ' ')} | {results[f'{split}_perplexity_{protocol}']:.2f} | "
        f"{bits(split, protocol)} |"
        for split, protocol in _measured(results)
    )
    baselines = "\n".join(
        f"| {split} | baseline: {name} | - | {bits(split, name)} |"
        for split in ("validation", "test")
        for name in ("unigram", "uniform")
        if results.get(f"{split}_bits_per_byte_{name}") is not None
    )
    rows = rows + ("\n" + baselines if baselines else "")
    notes = "\n".join(f"- {v.format(window=results.get('eval_window'))}" for v in PROTOCOLS.values())
    return f"""## Evaluation

| split | protocol | perplexity | bits per byte |
|---|---|---:|---:|
{rows}

{notes}

Perplexity is the exponential of the mean next-token cross-entropy over every scored token \
(token-weighted). Bits per byte is the same cross-entropy in bits over the UTF-8 bytes of the text, so it \
compares across tokenizers; the baselines are the training split's unigram frequencies and a uniform \
distribution over the vocabulary."""


_CHECKPOINTING = "; activation checkpointing on: the FLOPs of its recomputation are not counted"


def _ending(results: dict) -> str:
    """Why training stopped and at which learning rate (results written before 2026-12-07 have neither)."""
    if "stopped_by" not in results:
        return ""
    return f"\n- ended by: {results['stopped_by']}; final learning rate {results['final_learning_rate']:.3g}"


def _training_section(results: dict, command: list[str]) -> str:
    lines = []  # one option per line, values quoted: a command that runs when pasted
    for token in command:
        if token.startswith("--"):
            lines.append(f"    {token}")
        else:
            lines[-1] += " " + shlex.quote(token)
    options = " \\\n".join(lines)
    return f"""## Training

- steps: {results["train_steps"]:,}; tokens: {results["train_tokens"]:,}; \
wall-clock: {results["train_seconds"]:.0f} s{_ending(results)}
- speed: {results["train_tokens_per_second"]:.0f} tokens/s, \
{mfu_text(results["model_flops_utilization"])}
  (matrix-product FLOPs against a {results.get("matmul_peak_dtype", "fp32")} matmul peak of \
{results["matmul_peak_flops"] / 1e9:.0f} GFLOP/s measured in the run on that device; mixed precision: \
{results.get("mixed_precision", "no")}{_CHECKPOINTING if results.get("gradient_checkpointing") else ""})
- hardware: {results.get("device") or "CPU " + machine_summary()}, {torch.get_num_threads()} torch threads, \
{results["num_processes"]} process(es);
  torch {torch.__version__}

```
hf-lstm train \\
{options}
```
"""


def write_model_card(output_dir: Path, results: dict, **card) -> Path:
    """Write `build_model_card(**card)` as the folder's README.md."""
    path = Path(output_dir) / "README.md"
    build_model_card(results=results, **card).save(path)
    return path
