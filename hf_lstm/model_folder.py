"""What a finished training run leaves: its Hub model folder, the printed perplexity summary and a sample."""

from __future__ import annotations

import copy
import json
import os
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError

from . import checkpointing
from .flops import mfu_text
from .model_card import write_model_card

# Published Penn Treebank word-level perplexities (validation, test), for the summary printed after training.
PTB_REFERENCES = [
    ("Zaremba et al. 2014, small (2x200, no dropout)", 120.7, 114.5),
    ("Zaremba et al. 2014, medium (2x650, dropout)", 86.2, 82.7),
    ("Zaremba et al. 2014, large (2x1500, dropout)", 82.2, 78.4),
    ("Merity et al. 2017, AWD-LSTM (24M params)", 60.0, 57.3),
]


def write_model_folder(output_dir: Path, model, tokenizer, results: dict, log: list, card: dict) -> None:
    """The folder a finished run leaves: weights, config, generation config, tokenizer, `all_results.json`,
    `train_log.json` and the model card (`card`: `build_model_card`'s arguments). Written to a temporary
    folder, then each file moved into place atomically: a failure (disk full) never leaves a half-written
    model.safetensors over the one a previous run saved."""
    staging = checkpointing.temporary_path(output_dir, "final")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / "all_results.json").write_text(json.dumps(results, indent=2))
        (staging / "train_log.json").write_text(json.dumps(log))
        write_model_card(staging, results, **card)
        for path in sorted(staging.iterdir()):
            os.replace(path, output_dir / path.name)
    except (OSError, SafetensorError) as error:
        raise checkpointing.CheckpointWriteError(
            f"could not write the model folder {output_dir} ({checkpointing.failure_reason(error)}); "
            "files already there were not overwritten. Free space and run again with "
            "--resume_from_checkpoint latest"
        ) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def print_summary(results: dict, eval_window: int, with_ptb_references: bool = False) -> None:
    """The run's perplexities in both protocols, and the published PTB numbers when they compare (the built-in
    PTB with its word vocabulary)."""
    lines = [
        f"\ntrained {results['train_steps']} steps, {results['train_tokens']:,} tokens in "
        f"{results['train_seconds']:.0f} s ({results['train_tokens_per_second']:.0f} tokens/s, "
        f"{mfu_text(results['model_flops_utilization'])}), batching: {results['batching']}",
        f"{'perplexity':<52}{'validation':>12}{'test':>10}",
    ]

    def row(label, valid, test):
        fmt = lambda v: f"{v:.1f}" if isinstance(v, (int, float)) else "-"  # noqa: E731
        lines.append(f"{label:<52}{fmt(valid):>12}{fmt(test):>10}")

    row(
        f"this run, fixed windows of {eval_window}",
        results.get("validation_perplexity_fixed_window"),
        results.get("test_perplexity_fixed_window"),
    )
    if "validation_perplexity_stateful" in results:
        row(
            "this run, stateful full stream",
            results.get("validation_perplexity_stateful"),
            results.get("test_perplexity_stateful"),
        )
    if with_ptb_references:
        lines.append("published (stateful full stream, the same 10k-word vocabulary):")
        for label, valid, test in PTB_REFERENCES:
            row("  " + label, valid, test)
    if "validation_bits_per_byte_fixed_window" in results:
        lines.append(f"{'bits per byte (any tokenizer; lower is better)':<52}{'validation':>12}{'test':>10}")
        for protocol, label in (
            ("fixed_window", f"this run, fixed windows of {eval_window}"),
            ("stateful", "this run, stateful full stream"),
            ("unigram", "baseline: unigram frequencies of the training split"),
            ("uniform", "baseline: uniform over the vocabulary"),
        ):
            if f"validation_bits_per_byte_{protocol}" in results:
                valid, test = (
                    results.get(f"{split}_bits_per_byte_{protocol}") for split in ("validation", "test")
                )
                lines.append(f"{label:<52}{_three(valid):>12}{_three(test):>10}")
    print("\n".join(lines))


def _three(value) -> str:
    return f"{value:.3f}" if isinstance(value, (int, float)) else "-"


def print_sample(folder: Path, prompt: str, max_new_tokens: int, seed: int) -> None:
    """A sample from `pipeline("text-generation")` on the saved folder, as a user would load it."""
    from transformers import pipeline

    generator = pipeline("text-generation", model=str(folder))
    # the folder's sampling settings with this run's length, as one object (transformers 5.0 deprecates a
    # generation_config and loose generation arguments together, and the pipeline always passes the former)
    sampling = copy.deepcopy(generator.model.generation_config)
    sampling.update(max_new_tokens=max_new_tokens, do_sample=True, top_k=40)
    torch.manual_seed(seed)
    text = generator(prompt, generation_config=sampling)
    print(f"\nsample from pipeline('text-generation', model={str(folder)!r}):\n  {text[0]['generated_text']}")
