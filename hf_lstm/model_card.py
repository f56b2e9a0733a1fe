"""The model card (`README.md`) of a trained folder, built with huggingface_hub's card tools.

It states what a reader needs to trust the numbers: the metrics with their protocol, the dataset, the
training arguments, the hardware and the measured speed.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import torch
from huggingface_hub import EvalResult, ModelCard, ModelCardData

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
    eval_results = []
    for split in ("validation", "test"):
        for protocol in ("fixed_window", "stateful"):
            value = results.get(f"{split}_perplexity_{protocol}")
            if value is None:
                continue
            eval_results.append(
                EvalResult(
                    task_type="text-generation",
                    dataset_type=str(dataset),
                    dataset_name=str(dataset),
                    dataset_config=dataset_config,
                    dataset_split=split,
                    metric_type="perplexity",
                    metric_value=round(value, 2),
                    metric_name=f"perplexity ({protocol.replace('_', ' ')})",
                )
            )
    card_data = ModelCardData(
        library_name="transformers",
        pipeline_tag="text-generation",
        tags=["hf_lstm", results["model_type"], "custom_code"],
        model_name=name,
        eval_results=eval_results or None,
    )
    metric_rows = "\n".join(
        f"| {split} | {protocol.replace('_', ' ')} | {results[f'{split}_perplexity_{protocol}']:.2f} |"
        for split in ("validation", "test")
        for protocol in ("fixed_window", "stateful")
        if results.get(f"{split}_perplexity_{protocol}") is not None
    )
    protocol_notes = "\n".join(f"- {v.format(window=results.get('eval_window'))}" for v in PROTOCOLS.values())
    lines = []  # one option per line, values quoted: a command that runs when pasted
    for token in command:
        if token.startswith("--"):
            lines.append(f"    {token}")
        else:
            lines[-1] += " " + shlex.quote(token)
    arg_lines = " \\\n".join(lines)
    if results["model_type"] == "hf_lstm":
        remote_code_note = (
            "`trust_remote_code=True` runs the two Python files in this folder (`modeling_hf_lstm.py`,\n"
            "`configuration_hf_lstm.py`); read them first, and pin a `revision` when loading from the Hub. "
            "With the\n"
            "`hf_lstm` package installed (`import hf_lstm`), the installed code is used instead."
        )
    else:
        remote_code_note = (
            f"`{results['model_type']}` is built into transformers: `trust_remote_code` is not needed "
            "for the model (it does no harm)."
        )
    content = f"""---
{card_data.to_yaml()}
---

# {name}

A `{results["model_type"]}` causal language model with {results["num_parameters"]:,} parameters, trained with
`hf_lstm`'s `hf-lstm train` on `{dataset}`
(batching: `{results["batching"]}`).

## Use

```python
from transformers import pipeline

generator = pipeline("text-generation", model="PATH_OR_REPO_ID", trust_remote_code=True)
print(generator("the", max_new_tokens=30)[0]["generated_text"])
```

{remote_code_note}

## Evaluation

| split | protocol | perplexity |
|---|---|---:|
{metric_rows}

{protocol_notes}

Perplexity is the exponential of the mean next-token cross-entropy over every scored token (token-weighted).

## Training

- steps: {results["train_steps"]:,}; tokens: {results["train_tokens"]:,}; \
wall-clock: {results["train_seconds"]:.0f} s
- speed: {results["train_tokens_per_second"]:.0f} tokens/s, \
model FLOP utilisation {results["model_flops_utilization"]:.0%}
  (matrix-product FLOPs against a fp32 matmul peak of {results["matmul_peak_flops"] / 1e9:.0f} GFLOP/s \
measured in the run)
- hardware: CPU {machine_summary()}, {torch.get_num_threads()} torch threads, \
{results["num_processes"]} process(es);
  torch {torch.__version__}

```
hf-lstm train \\
{arg_lines}
```
"""
    return ModelCard(content)


def write_model_card(output_dir: Path, results: dict, **card) -> Path:
    """Write `build_model_card(**card)` as the folder's README.md."""
    path = Path(output_dir) / "README.md"
    build_model_card(results=results, **card).save(path)
    return path
