"""`hf-lstm compare`: an hf_lstm language model against parameter-matched small Transformers, one table.

    hf-lstm compare --dataset_name ptb --models hf_lstm,gpt2,llama --target_params 4M --budget_minutes 5 \\
        --output_dir runs/compare-ptb

What one run does, in order:

1. **Data and tokenizer.** The corpus is loaded with the training script's data arguments (same names, same
   meaning); one tokenizer is trained on its training split (or `--tokenizer_name` is used) and saved to
   `OUTPUT_DIR/tokenizer`, then handed to every model's training run, so every model sees the same ids.
2. **Parameter matching.** For each family a small grid (depth, width on a step of 8) is searched for the
   configuration whose *total* parameter count is nearest `--target_params` (the vocabulary is shared, so
   the total is the fair count); counts are exact, taken from the very model `hf-lstm train` would build
   (constructed on the meta device). Non-embedding counts are reported too.
3. **Training**, each model through `hf_lstm.training.train` (the same script, nothing duplicated), with its
   family's usual recipe (`RECIPES`): hf_lstm with stream batching (state carried across `--bptt` windows),
   Transformers with shuffled blocks of `--block_size`. Budget: equal wall-clock (default) or equal tokens.
   The schedule rule is the same for all: cosine with 5% warm-up over `schedule_steps`; under a wall-clock
   budget that number is estimated from a short timed warm-up of real training steps (plus the cost of the
   validation curve points, which run inside the budget clock), inflated by `SCHEDULE_SLACK`, and the run is
   stopped by the clock, so if the estimate holds it stops at ~91% of the cosine, where the rate is ~2-3% of
   its peak. `schedule_completed` in the results says where each run really stopped.
4. **Generation speed and memory**, side by side in this process: greedy `generate()` at batch 1 and 8 for
   each prompt context, the models interleaved (A, B, C, A, B, C, ...) and the median of `--repeats` kept,
   so a neighbour stealing the CPU slows every model alike. Tokens/s is the steady decoding rate (the
   prompt's prefill is timed separately). A context that does not fit a model's positions is recorded as
   null with the reason. Cache bytes come from the cache that `generate()` returns; peak
   resident memory is the process's high-water mark, reset before each call (Linux `clear_refs`).
5. **Outputs**: `results.json` (one record per model), `REPORT.md` with tables, plots (PNG) and a reading
   generated from the numbers, and optionally each model's card copied to `--model_cards_dir` and the report
   published (with its plots) to `--publish_report`.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import math
import os
import platform
import shlex
import shutil
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .modeling_hf_lstm import cache_of

FAMILIES = ("hf_lstm", "gpt2", "llama")
# Depths tried for each family, in order of preference: the first depth whose best width lands within
# TIGHT_TOLERANCE of the target is taken; otherwise the best of all of them (if within --tolerance).
PREFERRED_DEPTHS = {"hf_lstm": (2, 3, 1), "gpt2": (4, 3, 5, 2, 6, 1), "llama": (4, 3, 5, 2, 6, 1)}
WIDTH_STEP = 8
MAX_WIDTH = 4096
TIGHT_TOLERANCE = 0.05
SCHEDULE_SLACK = 1.10
WARMUP_FRACTION = 0.05

# Each family's training recipe for a budget of minutes; the model shape is added by the parameter matching and
# everything can be overridden with --hf_lstm_train_args / --transformer_train_args (appended last, so they win).
# No dropout anywhere: at a budget of minutes on a CPU every model sees about one epoch of PTB, a regime where
# dropout only slows learning (GPT-2's default 0.1 is switched off; Llama and hf_lstm have none by default).
# Batch and rates come from a small sweep on PTB at 4M parameters and 5 minutes (docs/COMPARE.md, "Recipes"),
# the best of each family's runs; Llama was not swept and takes GPT-2's. Earlier reports (docs/COMPARE-ptb-4M-sgd.md
# and the git history) trained hf_lstm with SGD, or AdamW 3e-3, from embeddings initialised as small as the
# recurrent weights, which held it back (docs/TRAINING.md, "Initialisation").
RECIPES = {
    "hf_lstm": {
        "args": ["--batching", "stream", "--optimizer", "adamw", "--learning_rate", "6e-3"],
        "config": {"cell_type": "lstm", "tie_word_embeddings": True},
    },
    "gpt2": {"args": ["--batching", "blocks", "--optimizer", "adamw", "--learning_rate", "2e-3", "--weight_decay", "0.1"],
             "config": {"tie_word_embeddings": True, "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}},
    "llama": {"args": ["--batching", "blocks", "--optimizer", "adamw", "--learning_rate", "2e-3", "--weight_decay", "0.1"],
              "config": {"tie_word_embeddings": True}},
}


# ----------------------------------------------------------------------------------------------------------
# Parameter matching
# ----------------------------------------------------------------------------------------------------------


def parse_count(text: str | int) -> int:
    """`"5M"` -> 5_000_000, `"50k"` -> 50_000, `"1.5m"` -> 1_500_000, `"123456"` -> 123456."""
    if isinstance(text, int):
        return text
    raw = str(text).strip().replace("_", "").replace(",", "")
    scale = {"k": 1e3, "m": 1e6, "b": 1e9, "g": 1e9}.get(raw[-1:].lower(), 1)
    number = raw[:-1] if scale != 1 else raw
    try:
        value = float(number) * scale
    except ValueError:
        raise ValueError(f"cannot read {text!r} as a parameter count (examples: 4M, 50k, 1200000)") from None
    if value < 1:
        raise ValueError(f"a parameter count must be positive, got {text!r}")
    return int(round(value))


def attention_heads(width: int) -> int:
    """Heads for a Transformer of this width: as many as keep every head at least 32 wide (even widths only,
    which rotary embeddings need), at least one. 256 -> 8, 208 -> 4 (52 wide), 48 -> 1."""
    best = 1
    for heads in range(1, width + 1):
        if width % heads == 0 and (width // heads) % 2 == 0 and width // heads >= 32:
            best = heads
    return best


def llama_intermediate_size(width: int) -> int:
    """Llama's MLP width rule (8/3 of the model width), rounded up to a multiple of 8."""
    return WIDTH_STEP * math.ceil(8 * width / 3 / WIDTH_STEP)


def shape_overrides(model_type: str, layers: int, width: int, block_size: int = 128,
                    max_positions: int | None = None) -> dict:
    """The `--config_overrides` that give `model_type` this depth and width (recipe fields included).

    GPT-2 learns one embedding per position, so it gets exactly `block_size` positions (the ones it is trained
    on, and all its parameters are trained); Llama's rotary positions cost no parameters, so it is built with
    `max_position_embeddings = max_positions` to let generation reach long prompts (positions beyond the
    trained block are extrapolation: speed is meaningful there, quality is not).
    """
    overrides = dict(RECIPES.get(model_type, {}).get("config", {}))
    if model_type == "hf_lstm":
        overrides.update(hidden_size=width, num_hidden_layers=layers)
    elif model_type == "gpt2":
        overrides.update(n_embd=width, n_layer=layers, n_head=attention_heads(width), n_positions=block_size)
    elif model_type == "llama":
        heads = attention_heads(width)
        overrides.update(hidden_size=width, num_hidden_layers=layers, num_attention_heads=heads,
                         num_key_value_heads=heads, head_dim=width // heads,
                         intermediate_size=llama_intermediate_size(width),
                         max_position_embeddings=max(block_size, max_positions or block_size))
    else:
        raise ValueError(f"no parameter matching rule for model type {model_type!r}; choose from {', '.join(FAMILIES)}")
    return overrides


def format_overrides(overrides: dict) -> str:
    """A dict as the training script's `--config_overrides` text ("a=1,b=true")."""
    return ",".join(f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in overrides.items())


class _TokenizerStandIn:
    """What `hf_lstm.training.build_model` reads from a tokenizer: its length and special ids."""

    def __init__(self, vocab_size: int, pad_token_id: int = 0, eos_token_id: int = 1, bos_token_id: int | None = None):
        self.vocab_size, self.pad_token_id, self.eos_token_id, self.bos_token_id = (
            vocab_size, pad_token_id, eos_token_id, bos_token_id)

    def __len__(self) -> int:
        return self.vocab_size


def build_model_on_meta(model_type: str, overrides: dict, vocab_size: int, block_size: int = 128,
                        eval_window: int = 128):
    """The model `hf-lstm train --model_type ... --config_overrides ...` would build, on the meta device
    (no memory, no initialisation cost): what the parameter counts are taken from."""
    from .training import build_model

    args = argparse.Namespace(model_name_or_path=None, config_name=None, model_type=model_type,
                              config_overrides=format_overrides(overrides), trust_remote_code=False,
                              block_size=block_size, eval_window=eval_window)
    with torch.device("meta"):
        return build_model(args, _TokenizerStandIn(vocab_size))


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(total, non-embedding) parameter counts. Embedding parameters are the weights of every `nn.Embedding`
    (tokens and, for GPT-2, learned positions) and an untied output matrix; biases and norms are not."""
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    output_weight = getattr(output, "weight", None)
    input_weight = model.get_input_embeddings().weight if hasattr(model, "get_input_embeddings") else None
    # parameters() lists a tied weight once; transformers before 5.24 does not tie on the meta device, so a
    # weight the config ties but that is still separate here is counted as the one it will be
    untied_copy = (getattr(model.config, "tie_word_embeddings", False) and output_weight is not None
                   and output_weight is not input_weight)
    params = [p for p in model.parameters() if not (untied_copy and p is output_weight)]
    total = sum(p.numel() for p in params)
    embedding_ids = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    if output_weight is not None:
        embedding_ids.add(id(output_weight))
    embedding = sum(p.numel() for p in params if id(p) in embedding_ids)
    return total, total - embedding


@dataclass
class MatchedShape:
    """A family's configuration chosen for a target size, with its exact counts."""

    model_type: str
    layers: int
    width: int
    overrides: dict
    num_parameters: int
    num_non_embedding_parameters: int
    target_parameters: int
    relative_error: float = field(init=False)

    def __post_init__(self):
        self.relative_error = self.num_parameters / self.target_parameters - 1

    def describe(self) -> str:
        """One line: `2 x 256` for hf_lstm, `4 layers x 208 (4 heads)` for Transformers."""
        if self.model_type == "hf_lstm":
            return f"{self.layers} x {self.width} {self.overrides.get('cell_type', 'lstm')}"
        heads = self.overrides.get("n_head") or self.overrides.get("num_attention_heads")
        extra = f", MLP {self.overrides['intermediate_size']}" if "intermediate_size" in self.overrides else ""
        return f"{self.layers} layers x {self.width} ({heads} head{'s' if heads != 1 else ''}{extra})"


def match_parameters(model_type: str, target: int, vocab_size: int, tolerance: float = 0.10, block_size: int = 128,
                     max_positions: int | None = None, eval_window: int = 128) -> MatchedShape:
    """The configuration of `model_type` whose total parameter count is nearest `target`.

    Depths are tried in `PREFERRED_DEPTHS` order; for each, the width (a multiple of 8) is found by bisection
    on the exact count (it grows with the width). The first depth within 5% is taken; otherwise the nearest
    over all depths. Raises `ValueError` if even that is more than `tolerance` away (e.g. a target smaller than
    the embedding matrix alone).
    """
    cache: dict[tuple[int, int], tuple[int, int, dict]] = {}

    def counted(layers: int, width: int):
        if (layers, width) not in cache:
            # GPT-2 gets the positions the training script would give it: max(block, evaluation window)
            overrides = shape_overrides(model_type, layers, width, max(block_size, eval_window), max_positions)
            model = build_model_on_meta(model_type, overrides, vocab_size, block_size, eval_window)
            cache[layers, width] = (*count_parameters(model), overrides)
        return cache[layers, width]

    candidates = []
    for layers in PREFERRED_DEPTHS.get(model_type, (2,)):
        low, high = 1, MAX_WIDTH // WIDTH_STEP  # bisection for the first width whose count reaches the target
        while low < high:
            mid = (low + high) // 2
            if counted(layers, mid * WIDTH_STEP)[0] >= target:
                high = mid
            else:
                low = mid + 1
        widths = {max(1, low - 1) * WIDTH_STEP, low * WIDTH_STEP}
        best = min(widths, key=lambda w: abs(counted(layers, w)[0] - target))
        total, non_embedding, overrides = counted(layers, best)
        shape = MatchedShape(model_type, layers, best, overrides, total, non_embedding, target)
        candidates.append(shape)
        if abs(shape.relative_error) <= TIGHT_TOLERANCE:
            return shape
    shape = min(candidates, key=lambda s: abs(s.relative_error))
    if abs(shape.relative_error) > tolerance:
        raise ValueError(
            f"no {model_type} configuration on the grid comes within {tolerance:.0%} of {target:,} parameters "
            f"(nearest: {shape.describe()}, {shape.num_parameters:,}; vocabulary {vocab_size:,}): choose another "
            "--target_params"
        )
    return shape


# ----------------------------------------------------------------------------------------------------------
# Arguments
# ----------------------------------------------------------------------------------------------------------

DATA_ARGS = ("dataset_name", "dataset_config_name", "train_file", "validation_file", "test_file",
             "validation_split_percentage", "text_column", "preprocessing_num_workers", "tokenizer_type",
             "tokenizer_vocab_size")


def build_parser() -> argparse.ArgumentParser:
    """The `hf-lstm compare` arguments: the training script's data and tokenizer arguments, plus the
    comparison's own (models, size, budget, generation contexts)."""
    from . import data

    parser = argparse.ArgumentParser(
        prog="hf-lstm compare", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Train hf_lstm and parameter-matched small Transformers on the same data with the same "
                    "budget, then measure quality, speed and memory side by side.",
    )
    add = parser.add_argument_group("data (as in hf-lstm train)").add_argument
    add("--dataset_name", default="ptb",
        help="Hub dataset name, a local file or folder, or a built-in corpus: " + ", ".join(data.BUILTIN_CORPORA))
    add("--dataset_config_name", default=None, help="The Hub dataset's configuration.")
    add("--train_file", default=None, help="A .txt/.json/.jsonl/.csv file with the training text.")
    add("--validation_file", default=None, help="A file with the validation text.")
    add("--test_file", default=None, help="A file with the test text.")
    add("--validation_split_percentage", type=float, default=5,
        help="Percent of train held out for validation when the corpus has no validation split.")
    add("--text_column", default=None, help="Column holding the text, if not 'text'.")
    add("--preprocessing_num_workers", type=int, default=None, help="Processes for tokenization.")
    add("--tokenizer_name", default=None, help="Use this tokenizer for every model instead of training one.")
    add("--tokenizer_type", choices=data.TOKENIZER_KINDS, default=None,
        help="Kind of tokenizer to train once for all models: word (default for ptb), bpe or char.")
    add("--tokenizer_vocab_size", type=int, default=None, help="Vocabulary size of a trained bpe/word tokenizer.")
    add("--trust_remote_code", action="store_true", help="Allow datasets and tokenizers with remote code.")

    add = parser.add_argument_group("models and budget").add_argument
    add("--models", default="hf_lstm,gpt2,llama", help="Comma-separated families: " + ", ".join(FAMILIES))
    add("--target_params", default="4M", help="Total parameters per model (4M, 500k, ...); matched within --tolerance.")
    add("--tolerance", type=float, default=0.10, help="Largest accepted relative gap to the target.")
    add("--budget", choices=("wall_clock", "tokens"), default="wall_clock",
        help="Equal training wall-clock (--budget_minutes) or equal training tokens (--budget_tokens) per model.")
    add("--budget_minutes", type=float, default=10.0, help="Training minutes per model (wall_clock budget).")
    add("--budget_tokens", default=None, help="Training tokens per model (tokens budget), e.g. 5M.")
    add("--timing_seconds", type=float, default=15.0,
        help="Length of the timed warm-up that estimates each model's steps in the wall-clock budget.")
    add("--curve_points", type=int, default=6, help="Validation perplexity points along each run (curves).")
    add("--per_device_train_batch_size", type=int, default=16, help="Sequences per step, every model.")
    add("--bptt", type=int, default=64, help="hf_lstm's stream window (truncated backpropagation through time).")
    add("--block_size", type=int, default=128, help="Transformers' training block (and GPT-2's positions).")
    add("--eval_window", type=int, default=128, help="Window of the fixed-window perplexity protocol.")
    add("--hf_lstm_train_args", default="",
        help='Extra `hf-lstm train` arguments for hf_lstm, e.g. "--learning_rate 2e-3".')
    add("--transformer_train_args", default="", help="Extra `hf-lstm train` arguments for the Transformers.")
    add("--sample_max_new_tokens", type=int, default=20, help="Sample printed after each training run (0: none).")
    add("--seed", type=int, default=42, help="Random seed of every run.")

    add = parser.add_argument_group("speed and memory").add_argument
    add("--contexts", default="16,256,1024,4096", help="Prompt lengths for the generation measurements.")
    add("--generate_batch_sizes", default="1,8", help="Batch sizes for the generation measurements.")
    add("--new_tokens", type=int, default=64, help="Tokens generated per measurement.")
    add("--repeats", type=int, default=3, help="Interleaved repeats per measurement (the median is kept).")
    add("--num_threads", type=int, default=None,
        help="torch intra-op threads for everything (default: torch's own). On a shared CPU, 1 avoids thrashing.")

    add = parser.add_argument_group("output").add_argument
    add("--output_dir", default="runs/compare", help="Where results.json, REPORT.md, plots and the models go.")
    add("--model_cards_dir", default=None, help="Also copy each model's card to DIR/<run name>-<model>.md.")
    add("--publish_report", default=None,
        help="Also write the report to this .md path, with its plots and results.json in a folder of the same "
             "stem beside it.")
    add("--run_name", default=None, help="Name in titles and card file names (default: the output folder's name).")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse and check the arguments before any work starts."""
    parser = build_parser()
    args = parser.parse_args(argv)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in args.models if m not in FAMILIES]
    if unknown or not args.models:
        parser.error(f"--models: unknown {', '.join(unknown) or '(none given)'}; choose from {', '.join(FAMILIES)}")
    if len(set(args.models)) != len(args.models):
        parser.error("--models lists a family twice")
    try:
        args.target_params = parse_count(args.target_params)
        args.budget_tokens = parse_count(args.budget_tokens) if args.budget_tokens is not None else None
        args.contexts = sorted({int(c) for c in args.contexts.split(",") if c.strip()})
        args.generate_batch_sizes = sorted({int(b) for b in args.generate_batch_sizes.split(",") if b.strip()})
    except ValueError as error:
        parser.error(str(error))
    if args.budget == "tokens" and not args.budget_tokens:
        parser.error("--budget tokens needs --budget_tokens N")
    if args.budget == "wall_clock" and args.budget_minutes <= 0:
        parser.error("--budget_minutes must be positive")
    for name in ("curve_points", "per_device_train_batch_size", "bptt", "block_size", "eval_window", "new_tokens",
                 "repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if min(args.contexts, default=0) < 1 or min(args.generate_batch_sizes, default=0) < 1:
        parser.error("--contexts and --generate_batch_sizes must be positive integers")
    if 1 not in args.generate_batch_sizes:
        parser.error("--generate_batch_sizes must include 1 (results.json reports batch-1 speed)")
    if args.num_threads is not None and args.num_threads < 1:
        parser.error("--num_threads must be at least 1")
    args.run_name = args.run_name or Path(args.output_dir).resolve().name
    return args


# ----------------------------------------------------------------------------------------------------------
# Data, tokenizer and the training runs
# ----------------------------------------------------------------------------------------------------------


def prepare_tokenizer(args, output_dir: Path):
    """Load the corpus as the training script does, train one tokenizer (or load `--tokenizer_name`), save it
    to OUTPUT_DIR/tokenizer; return (tokenizer, its folder, the validation stream of ids)."""
    import datasets
    from transformers import AutoTokenizer

    from . import data

    corpus = data.load_corpus(
        dataset_name=None if args.train_file and args.dataset_name == "ptb" else args.dataset_name,
        dataset_config_name=args.dataset_config_name, train_file=args.train_file,
        validation_file=args.validation_file, test_file=args.test_file,
        validation_split_percentage=args.validation_split_percentage, text_column=args.text_column,
        trust_remote_code=args.trust_remote_code,
    )
    if args.tokenizer_name:
        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer_name, trust_remote_code=args.trust_remote_code)
    else:
        kind = args.tokenizer_type or data.default_tokenizer_kind(args.dataset_name)
        tokenizer = data.train_tokenizer(corpus["train"]["text"], kind=kind, vocab_size=args.tokenizer_vocab_size)
    if tokenizer.eos_token_id is None:
        raise ValueError(f"the tokenizer {args.tokenizer_name} has no eos token; rows of the corpus are ended with it")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    folder = output_dir / "tokenizer"
    tokenizer.save_pretrained(folder)
    validation = data.tokenize_corpus(datasets.DatasetDict(validation=corpus["validation"]), tokenizer)["validation"]
    return tokenizer, folder, validation


def base_train_argv(args, family: str, shape: MatchedShape, tokenizer_dir: Path, model_dir: Path) -> list[str]:
    """The `hf-lstm train` arguments of one model, before the budget is added."""
    argv = []
    for name in DATA_ARGS:
        value = getattr(args, name)
        if name == "dataset_name" and args.train_file and value == "ptb":
            continue  # the default corpus stands aside for --train_file, as in hf-lstm train
        if value is not None and name not in ("tokenizer_type", "tokenizer_vocab_size"):
            argv += [f"--{name}", str(value)]
    if args.trust_remote_code:
        argv.append("--trust_remote_code")
    argv += ["--tokenizer_name", str(tokenizer_dir), "--output_dir", str(model_dir), "--model_type", family,
             "--config_overrides", format_overrides(shape.overrides), "--seed", str(args.seed),
             "--per_device_train_batch_size", str(args.per_device_train_batch_size), "--bptt", str(args.bptt),
             "--block_size", str(args.block_size), "--eval_window", str(args.eval_window),
             "--lr_scheduler_type", "cosine", "--sample_max_new_tokens", str(args.sample_max_new_tokens),
             *RECIPES[family]["args"]]
    argv += shlex.split(args.hf_lstm_train_args if family == "hf_lstm" else args.transformer_train_args)
    return argv


def _optimizer_name(record: dict) -> str:
    """How a record's optimizer reads in the report (records from before the field existed used AdamW)."""
    return {"sgd": "SGD", "adamw": "AdamW"}.get(record.get("optimizer", "adamw"), record.get("optimizer"))


def _train_step(model, optimizer, inputs, recurrent: bool, max_grad_norm: float) -> None:
    out = model(input_ids=inputs, labels=inputs, **({} if recurrent else {"use_cache": False}))
    out.loss.backward()
    if max_grad_norm > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()
    optimizer.zero_grad()


def estimate_step_seconds(train_argv: list[str], tokenizer, seconds: float) -> dict:
    """Time real training steps (the training script's model and optimizer, random ids of the run's batch
    shape) for about `seconds`, after two untimed steps."""
    from .training import build_model, build_optimizer, parse_args as train_parse_args

    targs = train_parse_args(train_argv)
    torch.manual_seed(targs.seed)
    model = build_model(targs, tokenizer)
    model.train()
    recurrent = model.config.model_type == "hf_lstm"
    optimizer = build_optimizer(targs, model)
    length = targs.bptt if targs.batching == "stream" else targs.block_size
    inputs = torch.randint(0, len(tokenizer), (targs.per_device_train_batch_size, length))
    for _ in range(2):
        _train_step(model, optimizer, inputs, recurrent, targs.max_grad_norm)
    steps, start = 0, time.perf_counter()
    while steps < 3 or time.perf_counter() - start < seconds:
        _train_step(model, optimizer, inputs, recurrent, targs.max_grad_norm)
        steps += 1
    step_seconds = (time.perf_counter() - start) / steps
    return {"step_seconds": step_seconds, "timed_steps": steps, "tokens_per_step": inputs.numel()}


def plan_budget(args, timing: dict) -> dict:
    """Schedule length, curve spacing and hard limits for one run, by the rule every model shares."""
    if args.budget == "tokens":
        steps = max(1, math.ceil(args.budget_tokens / timing["tokens_per_step"]))
        expected_steps = steps
        extra = []
    else:
        seconds = 60 * args.budget_minutes
        expected_steps = max(1, int(seconds / timing["step_seconds"]))
        steps = max(1, math.ceil(SCHEDULE_SLACK * expected_steps))
        extra = ["--max_train_minutes", repr(args.budget_minutes)]
    eval_steps = max(1, math.ceil(expected_steps / args.curve_points))
    warmup = max(1, round(WARMUP_FRACTION * steps))
    # Curve points come from checkpoints evaluated after the run: saving one is inside the budget clock (a
    # fraction of a second), evaluating it is not, unlike `--eval_steps`, whose evaluations the clock counts.
    argv = ["--max_train_steps", str(steps), "--num_warmup_steps", str(warmup),
            "--checkpointing_steps", str(eval_steps), "--checkpoints_total_limit", str(2 * args.curve_points + 4),
            "--logging_steps", str(max(1, min(50, eval_steps))), *extra]
    return {"schedule_steps": steps, "expected_steps": expected_steps, "eval_steps": eval_steps,
            "warmup_steps": warmup, "argv": argv}


def train_one(args, family: str, shape: MatchedShape, tokenizer, tokenizer_dir: Path,
              validation: torch.LongTensor, output_dir: Path) -> dict:
    """Estimate the budget, train one model through `hf_lstm.training.train`, return its record."""
    from .training import parse_args as train_parse_args, train

    model_dir = output_dir / "models" / family
    if model_dir.exists():
        shutil.rmtree(model_dir)  # a stale folder would be taken for a checkpoint to resume
    argv = base_train_argv(args, family, shape, tokenizer_dir, model_dir)
    timing = estimate_step_seconds(argv, tokenizer, args.timing_seconds)
    plan = plan_budget(args, timing)
    argv = argv + plan["argv"]
    print(f"\n=== {family}: {shape.describe()}, {shape.num_parameters:,} parameters "
          f"({shape.relative_error:+.1%} of the target); {timing['step_seconds']:.3f} s/step in the warm-up, "
          f"schedule {plan['schedule_steps']} steps\n    hf-lstm train {shlex.join(argv)}", flush=True)
    targs = train_parse_args(argv)
    results = train(targs)
    log = json.loads((model_dir / "train_log.json").read_text())
    curve = checkpoint_curve(model_dir, validation, targs, tokenizer.eos_token_id)
    return {
        "name": family,
        "model_type": results["model_type"],
        "shape": shape.describe(),
        "config_overrides": shape.overrides,
        "num_parameters": results["num_parameters"],
        "num_non_embedding_parameters": shape.num_non_embedding_parameters,
        "target_parameters": shape.target_parameters,
        "parameter_match_error": shape.num_parameters / shape.target_parameters - 1,
        "batching": results["batching"],
        "batch_size": targs.per_device_train_batch_size,
        "sequence_length": targs.bptt if targs.batching == "stream" else targs.block_size,
        "optimizer": targs.optimizer,
        "learning_rate": targs.learning_rate,
        "weight_decay": targs.weight_decay,
        "train_argv": argv,
        "budget": args.budget,
        "warmup_timing": timing,
        "schedule_steps": plan["schedule_steps"],
        "schedule_completed": results["train_steps"] / plan["schedule_steps"],
        "train_steps": results["train_steps"],
        "train_tokens": results["train_tokens"],
        "train_seconds": results["train_seconds"],
        "train_tokens_per_second": results["train_tokens_per_second"],
        "model_flops_utilization_own_peak": results["model_flops_utilization"],
        "matmul_peak_flops_own": results["matmul_peak_flops"],
        "eval_perplexity": results["validation_perplexity_fixed_window"],
        "validation_perplexity_fixed_window": results["validation_perplexity_fixed_window"],
        "test_perplexity_fixed_window": results.get("test_perplexity_fixed_window"),
        "validation_perplexity_stateful": results.get("validation_perplexity_stateful"),
        "test_perplexity_stateful": results.get("test_perplexity_stateful"),
        "eval_window": results["eval_window"],
        "final_train_loss": results["final_train_loss"],
        "eval_curve": curve,
        "train_log": log,
        "model_dir": str(model_dir),
    }


def checkpoint_curve(model_dir: Path, validation: torch.LongTensor, targs, start_token_id: int,
                     keep: bool = False) -> list[dict]:
    """Validation perplexity (fixed windows, as at the end of the run) of every `step_N` checkpoint the run
    saved, with the step, tokens and training seconds it was saved at; the checkpoints are deleted afterwards
    unless `keep` (each holds the optimizer state too)."""
    from safetensors.torch import load_model
    from transformers import AutoModelForCausalLM

    from . import checkpointing
    from .evaluation import fixed_window_perplexity

    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    curve = []
    for folder in checkpointing.list_checkpoints(model_dir):
        state = checkpointing.read_trainer_state(folder)
        load_model(model, str(folder / "model.safetensors"), strict=False)
        metrics = fixed_window_perplexity(model, validation, window=targs.eval_window,
                                          batch_size=targs.per_device_eval_batch_size, start_token_id=start_token_id)
        curve.append({"step": state["completed_steps"], "tokens_seen": state["tokens_seen"],
                      "seconds": state["train_seconds"], "validation_perplexity_fixed_window": metrics["perplexity"]})
        if not keep:
            shutil.rmtree(folder)
    return sorted(curve, key=lambda p: p["step"])


# ----------------------------------------------------------------------------------------------------------
# Generation speed and memory
# ----------------------------------------------------------------------------------------------------------


def _resident() -> tuple[int | None, int | None]:
    """(current RSS, high-water mark) of this process in bytes, from /proc (None where unavailable)."""
    values = {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    values[line.split(":")[0]] = int(line.split()[1]) * 1024
    except OSError:
        return None, None
    return values.get("VmRSS"), values.get("VmHWM")


def _reset_peak_memory() -> bool:
    """Release freed heap memory to the system and reset the high-water mark to the current RSS (Linux >= 4.0:
    writing 5 to /proc/self/clear_refs), so the next reading is the peak of what follows. False if unsupported."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def cache_nbytes(cache) -> int | None:
    """Bytes held by a generation cache: `LSTMCache.nbytes`, or the keys and values of every layer of a
    transformers `Cache` (or a legacy tuple of tuples)."""
    if cache is None:
        return None
    if hasattr(cache, "nbytes"):
        return int(cache.nbytes)
    tensors = []
    if hasattr(cache, "layers"):
        for layer in cache.layers:
            tensors += [getattr(layer, name, None) for name in ("keys", "values")]
    elif isinstance(cache, (tuple, list)):
        tensors = [t for layer in cache for t in layer]
    return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))


def position_limit(model) -> int | None:
    """The longest sequence a model can represent (learned or configured positions); None for a recurrent one."""
    config = model.config
    if config.model_type == "hf_lstm":
        return None
    for name in ("n_positions", "max_position_embeddings"):
        if getattr(config, name, None):
            return int(getattr(config, name))
    return None


def prompt_ids(stream: torch.LongTensor, length: int, batch: int) -> torch.LongTensor:
    """`batch` prompts of `length` real tokens from the validation stream (different offsets; the stream is
    repeated if it is too short)."""
    need = length * batch + 1
    if stream.numel() < need:
        stream = stream.repeat(math.ceil(need / max(stream.numel(), 1)))
    return stream[: length * batch].view(batch, length).clone()


def generate_once(model, ids: torch.LongTensor, new_tokens: int) -> dict:
    """One greedy `generate()` of exactly `new_tokens` tokens: steady decoding tokens/s (the prefill and first
    token left out), prefill seconds, cache bytes and peak resident memory of the call."""
    from transformers import StoppingCriteriaList

    from .benchmark import StepClock

    clock = StepClock()
    tracked = _reset_peak_memory()
    before, _ = _resident()
    start = time.perf_counter()
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                             min_new_tokens=new_tokens, do_sample=False, pad_token_id=model.config.pad_token_id,
                             stopping_criteria=StoppingCriteriaList([clock]), return_dict_in_generate=True)
    total = time.perf_counter() - start
    _, peak = _resident()
    steps = len(clock.times)
    decode = (clock.times[-1] - clock.times[0]) / (steps - 1) if steps > 1 else float("nan")
    cache = cache_of(out)
    return {
        "tokens_per_second": ids.shape[0] / decode if steps > 1 else None,
        "prefill_seconds": clock.times[0] - start if steps else None,
        "end_to_end_tokens_per_second": ids.shape[0] * steps / total,
        "cache_bytes": cache_nbytes(cache),
        "cache_tokens": int(cache.get_seq_length()) if hasattr(cache, "get_seq_length") else None,
        "peak_rss_bytes": peak if tracked else None,
        "peak_rss_increase_bytes": (peak - before) if tracked and peak and before else None,
    }


def measure_generation(models: dict, stream: torch.LongTensor, contexts: list[int], batch_sizes: list[int],
                       new_tokens: int, repeats: int,
                       trained_positions: dict[str, int | None]) -> dict[str, list[dict]]:
    """Every (batch, context) cell for every model, models interleaved within each repeat, median kept.

    A cell whose prompt plus new tokens exceed a model's positions is a record with `tokens_per_second: null`
    and a `reason`; a cell beyond the positions a model was trained on gets a `note`. Errors (e.g. out of
    memory) are recorded as the reason instead of stopping the run.
    """
    records: dict[str, list[dict]] = {name: [] for name in models}
    for batch in batch_sizes:
        for context in contexts:
            ids = prompt_ids(stream, context, batch)
            runs: dict[str, list[dict]] = {name: [] for name in models}
            skipped: dict[str, str] = {}
            for name, model in models.items():
                limit = position_limit(model)
                if limit is not None and context + new_tokens > limit:
                    skipped[name] = (f"prompt {context} + {new_tokens} new tokens exceeds the model's "
                                     f"{limit} positions")
            for _ in range(repeats):
                for name, model in models.items():
                    if name in skipped:
                        continue
                    try:
                        runs[name].append(generate_once(model, ids, new_tokens))
                    except (RuntimeError, ValueError, MemoryError) as error:
                        skipped[name] = f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
            for name in models:
                record = {"batch_size": batch, "context": context, "new_tokens": new_tokens}
                if name in skipped:
                    record.update(tokens_per_second=None, reason=skipped[name])
                else:
                    for key in runs[name][0]:
                        values = [r[key] for r in runs[name] if r[key] is not None]
                        record[key] = statistics.median(values) if values else None
                    record["repeats"] = len(runs[name])
                    trained = trained_positions.get(name)
                    if trained is not None and context + new_tokens > trained:
                        record["note"] = (f"beyond the {trained} positions it was trained on: speed is meaningful, "
                                          "the text is extrapolation")
                records[name].append(record)
                print(f"generate {name:<8} batch {batch} context {context:>5}: "
                      + (f"{record['tokens_per_second']:.0f} tok/s" if record.get("tokens_per_second") else
                         f"skipped ({record.get('reason')})"), flush=True)
    return records


# ----------------------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------------------


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


def draw_plots(records: list[dict], output_dir: Path) -> list[str]:
    """curves.png (loss and validation perplexity against wall-clock and tokens), generation.png (tokens/s
    against context at each batch size) and memory.png (cache bytes and peak memory against context)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = []
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    for rec in records:
        seconds, tokens = step_axes(rec)
        loss = _smooth([l for _, l in rec["train_log"]], 0.9)
        label = f"{rec['name']} ({rec['batching']})"
        axes[0, 0].plot(seconds, loss, label=label)
        axes[0, 1].plot(tokens, loss, label=label)
        curve = rec["eval_curve"] + [{"seconds": rec["train_seconds"], "tokens_seen": rec["train_tokens"],
                                      "validation_perplexity_fixed_window": rec["eval_perplexity"]}]
        axes[1, 0].plot([p["seconds"] for p in curve], [p["validation_perplexity_fixed_window"] for p in curve],
                        marker="o", label=rec["name"])
        axes[1, 1].plot([p["tokens_seen"] for p in curve], [p["validation_perplexity_fixed_window"] for p in curve],
                        marker="o", label=rec["name"])
    axes[0, 0].set(xlabel="training wall-clock (s)", ylabel="training loss (nats, smoothed)")
    axes[0, 1].set(xlabel="training tokens", ylabel="training loss (nats, smoothed)")
    axes[1, 0].set(xlabel="training wall-clock (s)", ylabel="validation perplexity (fixed windows)", yscale="log")
    axes[1, 1].set(xlabel="training tokens", ylabel="validation perplexity (fixed windows)", yscale="log")
    for ax in axes.flat:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Training: loss and validation perplexity against wall-clock and tokens")
    fig.tight_layout()
    fig.savefig(output_dir / "curves.png", dpi=90)
    plt.close(fig)
    names.append("curves.png")

    batches = sorted({g["batch_size"] for rec in records for g in rec["generation"]})
    fig, axes = plt.subplots(1, len(batches), figsize=(5.5 * len(batches), 4), squeeze=False)
    for ax, batch in zip(axes[0], batches):
        for rec in records:
            points = [(g["context"], g["tokens_per_second"]) for g in rec["generation"]
                      if g["batch_size"] == batch and g.get("tokens_per_second")]
            if points:
                ax.plot(*zip(*points), marker="o", label=rec["name"])
        ax.set(xscale="log", xlabel="prompt context (tokens)", ylabel="decoded tokens/s (whole batch)",
               title=f"greedy generate(), batch {batch}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(output_dir / "generation.png", dpi=90)
    plt.close(fig)
    names.append("generation.png")

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for rec in records:
        cache = [(g["cache_tokens"] or g["context"], g["cache_bytes"]) for g in rec["generation"]
                 if g["batch_size"] == 1 and g.get("cache_bytes")]
        rss = [(g["context"], g["peak_rss_increase_bytes"] / 1e6) for g in rec["generation"]
               if g["batch_size"] == max(batches) and g.get("peak_rss_increase_bytes") is not None]
        if cache:
            axes[0].plot(*zip(*cache), marker="o", label=rec["name"])
        if rss:
            axes[1].plot(*zip(*rss), marker="o", label=rec["name"])
    axes[0].set(xscale="log", yscale="log", xlabel="tokens in the cache (prompt + generated)",
                ylabel="state / KV-cache bytes", title="cache size, batch 1")
    axes[1].set(xscale="log", xlabel="prompt context (tokens)", ylabel="MB",
                title=f"peak resident memory above the loaded model, batch {max(batches)}")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(output_dir / "memory.png", dpi=90)
    plt.close(fig)
    names.append("memory.png")
    return names


def _fmt(value, digits: int = 1, suffix: str = "") -> str:
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


def _cell(record: dict, batch: int, context: int) -> dict | None:
    return next((g for g in record["generation"] if g["batch_size"] == batch and g["context"] == context), None)


def reading(records: list[dict], summary: dict) -> list[str]:
    """The written reading: sentences built from the numbers only, each naming what it compares."""
    lines = []
    by_ppl = sorted(records, key=lambda r: r["eval_perplexity"])
    best, rest = by_ppl[0], by_ppl[1:]
    budget = (f"{summary['budget_minutes']:g} minutes of training each" if summary["budget"] == "wall_clock"
              else f"{summary['budget_tokens']:,} training tokens each")
    if rest:
        gaps = ", ".join(f"{r['name']} {r['eval_perplexity']:.1f}" for r in rest)
        ratios = ", ".join(f"{best['eval_perplexity'] / r['eval_perplexity']:.2f}x {r['name']}'s" for r in rest)
        lines.append(f"- **Quality at equal size and {budget}:** {best['name']} reached the lowest validation "
                     f"perplexity under the fixed-window protocol, {best['eval_perplexity']:.1f}, against {gaps}; "
                     f"its perplexity is {ratios}.")
    else:
        lines.append(f"- Only {best['name']} was trained: validation perplexity {best['eval_perplexity']:.1f}.")
    for rec in records:
        if rec.get("validation_perplexity_stateful"):
            lines.append(f"- {rec['name']} reading validation as one stream with its state carried (the RNN "
                         f"literature's protocol) scores {rec['validation_perplexity_stateful']:.1f}, against "
                         f"{rec['eval_perplexity']:.1f} in fixed windows; Transformers have no stateful number.")
    speeds = ", ".join(f"{r['name']} {r['train_tokens_per_second']:,.0f}" for r in records)
    lines.append(f"- **Training speed** (tokens/s, this machine, this run): {speeds}; so in the budget the models "
                 "saw " + ", ".join(f"{r['train_tokens']:,} ({r['name']})" for r in records) + " training tokens.")
    contexts = sorted({g["context"] for r in records for g in r["generation"]})
    batches = sorted({g["batch_size"] for r in records for g in r["generation"]})
    longest, shortest = contexts[-1], contexts[0]
    for batch in batches:
        cells = {r["name"]: _cell(r, batch, longest) for r in records}
        measured = {n: g for n, g in cells.items() if g and g.get("tokens_per_second")}
        if not measured:
            continue
        fastest = max(measured, key=lambda n: measured[n]["tokens_per_second"])
        top = measured[fastest]["tokens_per_second"]
        others = ", ".join(f"{n} {g['tokens_per_second']:,.0f} ({top / g['tokens_per_second']:.1f}x fewer)"
                           for n, g in measured.items() if n != fastest)
        missing = "; ".join(f"{n} not measured ({g['reason']})" for n, g in cells.items() if g and n not in measured)
        lines.append(f"- **Generation after a {longest}-token prompt, batch {batch}:** {fastest} decodes "
                     f"{top:,.0f} tokens/s" + (f", against {others}" if others else "")
                     + (f"; {missing}" if missing else "") + ".")
    if longest != shortest:
        for rec in records:
            short, long_ = _cell(rec, 1, shortest), _cell(rec, 1, longest)
            if short and long_ and short.get("tokens_per_second") and long_.get("tokens_per_second"):
                lines.append(f"  - {rec['name']}, batch 1: {short['tokens_per_second']:,.0f} tokens/s after "
                             f"{shortest} tokens, {long_['tokens_per_second']:,.0f} after {longest} "
                             f"({long_['tokens_per_second'] / short['tokens_per_second']:.2f}x); state/cache "
                             f"{_bytes(short.get('cache_bytes'))} -> {_bytes(long_.get('cache_bytes'))}.")
    return lines


def write_report(args, records: list[dict], summary: dict, output_dir: Path, plots: list[str],
                 image_prefix: str = "") -> str:
    """REPORT.md: setup, the main table, generation and memory tables, plots, the reading and the caveats."""
    budget = (f"equal wall-clock: {args.budget_minutes:g} min of training per model" if args.budget == "wall_clock"
              else f"equal training tokens: {args.budget_tokens:,} per model")
    lines = [
        f"# {args.run_name}: hf_lstm against parameter-matched small Transformers",
        "",
        f"Generated by `hf-lstm compare` on {summary['date']}. Command:",
        "",
        "```bash",
        "hf-lstm compare " + shlex.join(summary["argv"]),
        "```",
        "",
        "## Setup",
        "",
        f"- Data: `{summary['dataset']}`; one `{summary['tokenizer']}` tokenizer ({summary['vocab_size']:,} ids) "
        "trained once and used by every model.",
        f"- Size: target {args.target_params:,} total parameters (the vocabulary is shared, so the total is the "
        f"matched count), each family within {args.tolerance:.0%}; non-embedding counts exclude token and "
        "position embeddings (and an untied output matrix).",
        f"- Budget: {budget}. Schedule (same rule for every model, whatever its optimizer): cosine with "
        f"{WARMUP_FRACTION:.0%} warm-up "
        + (f"over the steps a timed warm-up predicts for the budget (x{SCHEDULE_SLACK:.2f}); the clock stops the run."
           if args.budget == "wall_clock" else "over exactly the budget's steps."),
        f"- Curves: about {args.curve_points} checkpoints per run, saved inside the training clock (a fraction of "
        "a second each) and evaluated after the run, so evaluation takes nothing from the budget.",
        "- Recipes: " + "; ".join(
            f"{r['name']}: {r['batching']} batching of {r['batch_size']} x {r['sequence_length']} tokens, "
            f"{_optimizer_name(r)} lr {r['learning_rate']:g}, weight decay {r['weight_decay']:g}, dropout "
            + (", ".join(f"{k} {v:g}" for k, v in r["dropout"].items()) or "none") for r in records)
        + ". hf_lstm's stream batching carries the state across windows; Transformers read independent shuffled "
        "blocks.",
        f"- Machine: {summary['machine']}; torch {summary['torch']}, {summary['num_threads']} thread(s); "
        f"fp32 matmul peak measured in this run: {summary['matmul_peak_flops'] / 1e9:.0f} GFLOP/s.",
        "",
        "## Result",
        "",
        "| model | shape | params (total) | non-embedding | vs target | batching | steps | tokens | train s "
        "| tokens/s | MFU | valid ppl (fixed) | test ppl (fixed) | valid ppl (stateful) | test ppl (stateful) |",
        "|---|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in records:
        lines.append(
            f"| {r['name']} | {r['shape']} | {r['num_parameters']:,} | {r['num_non_embedding_parameters']:,} | "
            f"{r['parameter_match_error']:+.1%} | {r['batching']} | {r['train_steps']:,} | {r['train_tokens']:,} | "
            f"{r['train_seconds']:.0f} | {r['train_tokens_per_second']:,.0f} | {r['model_flops_utilization']:.1%} | "
            f"{_fmt(r['validation_perplexity_fixed_window'])} | {_fmt(r['test_perplexity_fixed_window'])} | "
            f"{_fmt(r['validation_perplexity_stateful'])} | {_fmt(r['test_perplexity_stateful'])} |")
    lines += [
        "",
        f"Perplexity: *fixed* = every token scored once, in windows of {args.eval_window} tokens each read from a "
        "fresh state or empty context (the same protocol for every model: the fair comparison); *stateful* = the "
        "split read as one stream with the recurrent state carried (recurrent models only). MFU = matrix-product "
        "FLOPs per training token x tokens/s / the matmul peak above. "
        + " ".join(f"{r['name']} stopped at {r['schedule_completed']:.0%} of its cosine schedule." for r in records),
        "",
    ]
    target = summary.get("target_check")
    if target:
        lines += [f"Reference target ({target['rule']}): {target['verdict']}.", ""]
    lines += ["![training curves](" + image_prefix + "curves.png)", "",
              "Training loss is each family's own objective (hf_lstm: stream windows with carried state; "
              f"Transformers: independent {args.block_size}-token blocks) and is not comparable across families; "
              "the validation curves are. Seconds and tokens of the logged steps are interpolated between the "
              "points where the run recorded them (each validation point and the end).",
              "", "## Generation speed", "",
              f"Greedy `generate()`, {args.new_tokens} new tokens, steady decoding rate (prefill excluded; "
              f"median of {args.repeats} interleaved repeats), tokens/s summed over the batch.", ""]
    contexts = sorted({g["context"] for r in records for g in r["generation"]})
    for batch in sorted({g["batch_size"] for r in records for g in r["generation"]}):
        lines += [f"| batch {batch} | " + " | ".join(f"{c}" for c in contexts) + " |",
                  "|---|" + "---:|" * len(contexts)]
        for r in records:
            cells = []
            for c in contexts:
                g = next((x for x in r["generation"] if x["batch_size"] == batch and x["context"] == c), None)
                if g is None:
                    cells.append("-")
                elif g.get("tokens_per_second") is None:
                    cells.append("n/a")
                else:
                    cells.append(f"{g['tokens_per_second']:,.0f}" + ("*" if g.get("note") else ""))
            lines.append(f"| {r['name']} | " + " | ".join(cells) + " |")
        lines.append("")
    notes = {(r["name"], g["reason"]) for r in records for g in r["generation"] if g.get("reason")}
    lines += [f"- n/a, {name}: {reason}." for name, reason in sorted(notes)]
    if any(g.get("note") for r in records for g in r["generation"]):
        lines.append("- \\*: beyond the positions the model was trained on: speed only (the text is extrapolation).")
    lines += ["", "![generation speed](" + image_prefix + "generation.png)", "", "## Memory", "",
              "State or KV-cache bytes held after generation (batch 1; tokens in the cache = prompt + generated - 1) "
              "and the peak resident memory of each `generate()` call above the loaded model (high-water mark "
              "reset before the call).", "",
              "| model | " + " | ".join(f"cache @ {c}" for c in contexts) + " | "
              + " | ".join(f"peak RSS +, batch {max(args.generate_batch_sizes)} @ {c}" for c in contexts) + " |",
              "|---|" + "---:|" * (2 * len(contexts))]
    for r in records:
        cache, rss = [], []
        for c in contexts:
            g1 = next((x for x in r["generation"] if x["batch_size"] == 1 and x["context"] == c), {})
            gb = next((x for x in r["generation"] if x["batch_size"] == max(args.generate_batch_sizes)
                       and x["context"] == c), {})
            cache.append(_bytes(g1.get("cache_bytes")))
            rss.append(_bytes(gb.get("peak_rss_increase_bytes")))
        lines.append(f"| {r['name']} | " + " | ".join(cache + rss) + " |")
    lines += ["", "![memory](" + image_prefix + "memory.png)", "", "## Reading", ""]
    lines += reading(records, summary)
    lines += [
        "",
        "## Caveats",
        "",
        "- CPU only, one machine, one seed per model: differences of a few percent are within what another seed "
        "or a quieter machine could change. Timings on a shared CPU move with the neighbours' load; the "
        "generation figures are interleaved across models to share that noise, the training runs are not "
        "(they run one after another).",
        "- The budget is short: these are the models' quality after this budget, not at convergence; the "
        "recipes (batch, optimizer, rate) are the defaults of `hf-lstm compare`, chosen once from a small sweep "
        "(docs/COMPARE.md, \"Recipes\") and not tuned per model in this run.",
        "- The fixed-window protocol gives every model the same context (at most one window); the stateful number "
        "is reported for recurrent models because it is the protocol of the published RNN results, not "
        "because it compares with the Transformers' fixed-window number.",
        "- GPT-2 learns one embedding per position and is built with exactly the positions it trains on, so it "
        "cannot take longer prompts; Llama's rotary positions cost no parameters, so it is built with enough "
        "positions for the longest prompt, but beyond its training block its output is extrapolation.",
    ]
    return "\n".join(lines) + "\n"


def copy_model_cards(records: list[dict], cards_dir: Path, run_name: str, report_link: str | None) -> list[str]:
    """Copy each trained model's card (its folder's README.md) to CARDS_DIR/<run name>-<model>.md, with a
    closing section that points to the comparison report."""
    cards_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for rec in records:
        source = Path(rec["model_dir"]) / "README.md"
        if not source.is_file():
            continue
        target = cards_dir / f"{run_name}-{rec['name']}.md"
        text = source.read_text().rstrip() + "\n\n## In the comparison\n\n"
        text += (f"Trained by `hf-lstm compare` ({run_name}) as the `{rec['name']}` entry: {rec['shape']}, "
                 f"{rec['num_parameters']:,} parameters, matched to {rec['target_parameters']:,} "
                 f"({rec['parameter_match_error']:+.1%}). ")
        text += f"See [the report]({report_link}).\n" if report_link else "See REPORT.md beside results.json.\n"
        target.write_text(text)
        written.append(str(target))
    return written


def machine_summary() -> str:
    """CPU model, logical cores and OS, in one line."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} logical cores, {platform.system()}, no GPU used"


# ----------------------------------------------------------------------------------------------------------
# The command
# ----------------------------------------------------------------------------------------------------------


def run(args) -> list[dict]:
    """The whole comparison; returns the records written to results.json."""
    from transformers import AutoModelForCausalLM

    from .flops import flops_per_token, measure_matmul_peak

    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    started = time.strftime("%Y-%m-%d %H:%M %Z")
    tokenizer, tokenizer_dir, validation = prepare_tokenizer(args, output_dir)
    vocab_size = len(tokenizer)
    max_positions = max(args.contexts) + args.new_tokens
    shapes = {family: match_parameters(family, args.target_params, vocab_size, args.tolerance, args.block_size,
                                       max_positions, args.eval_window) for family in args.models}
    for family, shape in shapes.items():
        print(f"{family:<8} {shape.describe():<40} {shape.num_parameters:>12,} parameters "
              f"({shape.relative_error:+.1%}), {shape.num_non_embedding_parameters:,} non-embedding")
    peak_before = measure_matmul_peak(seconds=1.0)

    records = [train_one(args, family, shapes[family], tokenizer, tokenizer_dir, validation, output_dir)
               for family in args.models]

    peak = max(peak_before, measure_matmul_peak(seconds=1.0))
    models, trained_positions = {}, {}
    for rec in records:
        model = AutoModelForCausalLM.from_pretrained(rec["model_dir"]).eval()
        models[rec["name"]] = model
        trained_positions[rec["name"]] = None if rec["model_type"] == "hf_lstm" else args.block_size
        flops = flops_per_token(model, context_length=rec["sequence_length"], training=True)
        rec["flops_per_token_train"] = flops
        rec["model_flops_utilization"] = flops * rec["train_tokens_per_second"] / peak
        rec["max_positions"] = position_limit(model)
        rec["dropout"] = {k: v for k, v in sorted(model.config.to_dict().items())
                          if "drop" in k and not k.startswith(("summary", "classifier"))  # heads an LM never runs
                          and isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0}
    generation = measure_generation(models, validation, args.contexts, args.generate_batch_sizes, args.new_tokens,
                                    args.repeats, trained_positions)
    for rec in records:
        rec["generation"] = generation[rec["name"]]
        rec["generate_tokens_per_second"] = {str(g["context"]): g["tokens_per_second"] for g in rec["generation"]
                                             if g["batch_size"] == 1}
        for batch in args.generate_batch_sizes:
            if batch != 1:
                rec[f"generate_tokens_per_second_batch{batch}"] = {
                    str(g["context"]): g["tokens_per_second"] for g in rec["generation"] if g["batch_size"] == batch}
        rec["cache_bytes"] = {str(g["context"]): g.get("cache_bytes") for g in rec["generation"]
                              if g["batch_size"] == 1}
        rec["matmul_peak_flops"] = peak
        rec["num_threads"] = torch.get_num_threads()

    summary = {
        "date": started, "argv": summary_argv(args), "budget": args.budget, "budget_minutes": args.budget_minutes,
        "budget_tokens": args.budget_tokens, "dataset": args.dataset_name if not args.train_file else args.train_file,
        "tokenizer": args.tokenizer_name or (args.tokenizer_type or _default_kind(args)), "vocab_size": vocab_size,
        "machine": machine_summary(), "torch": torch.__version__, "num_threads": torch.get_num_threads(),
        "matmul_peak_flops": peak, "target_check": target_check(records),
    }
    (output_dir / "results.json").write_text(json.dumps(records, indent=1, default=_json_default))
    plots = draw_plots(records, output_dir)
    (output_dir / "REPORT.md").write_text(write_report(args, records, summary, output_dir, plots))
    report_link = None
    if args.publish_report:
        published = Path(args.publish_report)
        assets = published.parent / published.stem.lower()
        assets.mkdir(parents=True, exist_ok=True)
        for name in plots:
            shutil.copy(output_dir / name, assets / name)
        slim = [{k: v for k, v in r.items() if k != "train_log"} for r in records]
        (assets / "results.json").write_text(json.dumps(slim, indent=1, default=_json_default))
        published.write_text(write_report(args, records, summary, output_dir, plots, image_prefix=assets.name + "/"))
        report_link = os.path.relpath(published, Path(args.model_cards_dir)) if args.model_cards_dir else None
    if args.model_cards_dir:
        for path in copy_model_cards(records, Path(args.model_cards_dir), args.run_name, report_link):
            print(f"model card: {path}")
    print(f"\nwrote {output_dir / 'results.json'} and {output_dir / 'REPORT.md'}")
    for rec in records:
        print(f"  {rec['name']:<8} {rec['num_parameters']:>10,} params  "
              f"valid ppl (fixed) {rec['eval_perplexity']:8.1f}  "
              f"train {rec['train_tokens_per_second']:8,.0f} tok/s  generate@{args.contexts[-1]} "
              f"{_fmt(rec['generate_tokens_per_second'].get(str(args.contexts[-1])), 0)} tok/s")
    return records


def _default_kind(args) -> str:
    from . import data

    return data.default_tokenizer_kind(args.dataset_name) + "-level" if not args.tokenizer_name else "given"


def _json_default(value):
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def summary_argv(args) -> list[str]:
    """The command line as given (for the report)."""
    return list(getattr(args, "_argv", []) or [])


def target_check(records: list[dict]) -> dict | None:
    """The issue's reference target, checked when hf_lstm and gpt2 are both present: hf_lstm's fixed-window
    validation perplexity <= 200 and <= 0.75x the parameter-matched GPT-2's."""
    lstm = next((r for r in records if r["name"] == "hf_lstm"), None)
    gpt2 = next((r for r in records if r["name"] == "gpt2"), None)
    if lstm is None or gpt2 is None:
        return None
    ratio = lstm["eval_perplexity"] / gpt2["eval_perplexity"]
    met = lstm["eval_perplexity"] <= 200 and ratio <= 0.75
    return {"rule": "hf_lstm validation perplexity (fixed windows) <= 200 and <= 0.75x GPT-2's",
            "hf_lstm": lstm["eval_perplexity"], "ratio_to_gpt2": ratio, "met": met,
            "verdict": f"{'met' if met else 'not met'}: {lstm['eval_perplexity']:.1f}, {ratio:.2f}x GPT-2's "
                       f"{gpt2['eval_perplexity']:.1f}"}


def main(argv: list[str] | None = None) -> int:
    """`hf-lstm compare`: parse, run, and turn expected failures into one clear line and a non-zero exit."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    args._argv = argv
    try:
        run(args)
    except (ValueError, FileNotFoundError, FloatingPointError) as error:
        print(f"hf-lstm compare: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
