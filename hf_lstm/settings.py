"""The settings of one training run: a dataclass the command line fills and code builds directly.

`TrainingSettings` is to `hf-lstm train` what transformers' `TrainingArguments` is to `Trainer`: every field
is one command-line option of the same name (the names of transformers' `run_clm_no_trainer.py` wherever the
meaning is the same), with its help text and group as field metadata. Defaults that depend on other fields
(the batching and learning rate depend on the model; the clipping on the optimizer) are filled when the
settings are made, and every inconsistency is a `ValueError` that names the field and the fix, before any
work starts.

    settings = TrainingSettings(
        train_file="train.txt", config_overrides="hidden_size=128", max_train_steps=200
    )
    settings = TrainingSettings.from_argv(["--train_file", "train.txt", "--max_train_steps", "200"])
    subprocess.run(["hf-lstm", "train", *settings.to_argv()])   # the same run in another process
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path

from .configuration_hf_lstm import is_hf_lstm
from .data import BUILTIN_CORPORA, TOKENIZER_KINDS

SCHEDULERS = ("linear", "cosine", "constant", "constant_with_warmup", "epoch_decay")


class OneLineErrorParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (the problem, and where the options are listed) and exit
    code 1, like every other refusal of the CLI; `--help` still prints the whole usage."""

    def error(self, message: str):
        self.exit(1, f"{self.prog}: error: {message} (`{self.prog} --help` lists the options)\n")


@dataclass(frozen=True)
class Range:
    """The values a numeric option accepts: finite, an integer if `integer`, and between `low` and `high`
    (each bound included unless `open_low`/`open_high`)."""

    low: float | None = None
    high: float | None = None
    integer: bool = False
    open_low: bool = False
    open_high: bool = False

    def describe(self) -> str:
        kind = "an integer" if self.integer else "a finite number"
        low, high = _number(self.low), _number(self.high)
        if self.low is not None and self.high is not None:
            left, right = "(" if self.open_low else "[", ")" if self.open_high else "]"
            return f"{kind} in {left}{low}, {high}{right}"
        if self.low is not None:
            return f"{kind} {'>' if self.open_low else '>='} {low}"
        return kind

    def check(self, name: str, value) -> None:
        ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
        ok = ok and (not self.integer or float(value).is_integer())
        if ok and self.low is not None:
            ok = value > self.low if self.open_low else value >= self.low
        if ok and self.high is not None:
            ok = value < self.high if self.open_high else value <= self.high
        if not ok:
            raise ValueError(f"--{name} must be {self.describe()}, got {value!r}")


def _number(value: float | None) -> str:
    if value is None:
        return ""
    return f"{int(value)}" if float(value).is_integer() and abs(value) < 1e16 else f"{value:g}"


COUNT = Range(low=1, integer=True)  # a number of things: 1 or more
RANGES = {
    "validation_split_percentage": Range(0, 100, open_low=True, open_high=True),
    "preprocessing_num_workers": COUNT,
    "tokenizer_vocab_size": COUNT,
    "tokenizer_min_frequency": COUNT,
    "bptt": COUNT,
    "block_size": COUNT,
    "per_device_train_batch_size": COUNT,
    "per_device_eval_batch_size": COUNT,
    "learning_rate": Range(0, 1e38, open_low=True, open_high=True),
    "weight_decay": Range(low=0),
    "num_train_epochs": COUNT,
    "max_train_steps": COUNT,
    "max_train_minutes": Range(low=0, open_low=True),
    "gradient_accumulation_steps": COUNT,
    "num_warmup_steps": Range(low=0, integer=True),
    "lr_decay": Range(0, 1, open_low=True),
    "lr_decay_start_epoch": COUNT,
    "max_grad_norm": Range(low=0),  # 0: no clipping
    "seed": Range(0, 2**32 - 1, integer=True),
    "eval_window": COUNT,
    "eval_steps": COUNT,
    "early_stopping_patience": COUNT,
    "logging_steps": COUNT,
    "checkpoints_total_limit": COUNT,
    "sample_max_new_tokens": Range(low=0, integer=True),
}
"""The allowed values of every numeric option (None, where a field allows it, means "not set")."""


# The regularisation a new hf_lstm model gets on a user's corpus (`--regularization auto`): the winner of the
# sweep in docs/TRAINING.md ("A recipe for small corpora": 1.0M characters of Shakespeare, plays held out,
# default model and budget), 0.060 bits per byte better on validation than none; 0.1 and an AWD-style recipe
# (0.1-0.4 plus DropConnect 0.3) were worse.
SMALL_CORPUS_RECIPE = {"input_dropout": 0.2, "hidden_dropout": 0.2, "output_dropout": 0.2}


def option(default, help: str, group: str, choices: tuple | None = None):
    """A field that is also a command-line option: its default, help text, argparse group and choices."""
    return field(default=default, metadata={"help": help, "group": group, "choices": choices})


@dataclass
class TrainingSettings:
    """Everything one run of `hf-lstm train` reads. See `hf-lstm train --help` for the same list as
    options."""

    # -- data ---------------------------------------------------------------------------------------------
    dataset_name: str | None = option(
        "ptb",
        "Hub dataset name, a local file or folder, or a built-in corpus: " + ", ".join(BUILTIN_CORPORA),
        "data",
    )
    dataset_config_name: str | None = option(
        None, "The Hub dataset's configuration (e.g. wikitext-2-raw-v1).", "data"
    )
    train_file: str | None = option(None, "A .txt/.json/.jsonl/.csv file with the training text.", "data")
    validation_file: str | None = option(None, "A file with the validation text.", "data")
    test_file: str | None = option(None, "A file with the test text.", "data")
    validation_split_percentage: float = option(
        5, "Percent of train held out for validation when the corpus has no validation split.", "data"
    )
    text_column: str | None = option(None, "Column holding the text, if not 'text'.", "data")
    preprocessing_num_workers: int | None = option(None, "Processes for tokenization.", "data")

    # -- model and tokenizer --------------------------------------------------------------------------------
    model_name_or_path: str | None = option(None, "Start from this saved model folder (or Hub id).", "model")
    config_name: str | None = option(None, "Configuration folder or Hub id, if not the model's own.", "model")
    model_type: str = option(
        "hf_lstm", "hf_lstm, or any causal-LM type transformers knows (gpt2, llama, ...).", "model"
    )
    config_overrides: str | None = option(
        None,
        'Comma-separated config changes for a new model, e.g. "hidden_size=650,num_hidden_layers=2,'
        'cell_type=lstm".',
        "model",
    )
    regularization: str = option(
        "auto",
        "Dropouts of a new hf_lstm model: small_corpus (the recipe measured on a small corpus, "
        "SMALL_CORPUS_RECIPE; docs/TRAINING.md), none, or auto: small_corpus for your own corpus, none for "
        "the built-in PTB (its published recipes set their own). --config_overrides wins over either.",
        "model",
        choices=("auto", "small_corpus", "none"),
    )
    tokenizer_name: str | None = option(
        None, "Use this tokenizer (folder or Hub id) instead of training one.", "model"
    )
    tokenizer_type: str | None = option(
        None,
        "Kind of tokenizer to train: word (default for ptb), bpe (default otherwise) or char.",
        "model",
        choices=TOKENIZER_KINDS,
    )
    tokenizer_min_frequency: int | None = option(
        None,
        "Leave out words (or merges) seen fewer times in training (default: 2 for a word tokenizer on your "
        "own corpus, so <unk> is learned; 1 otherwise).",
        "model",
    )
    tokenizer_vocab_size: int | None = option(
        None,
        "Vocabulary size of a trained bpe/word tokenizer (bpe default: sized to the corpus, 512 to 8192).",
        "model",
    )
    trust_remote_code: bool = option(False, "Allow models, configs and datasets with remote code.", "model")

    # -- training ------------------------------------------------------------------------------------------
    batching: str | None = option(
        None,
        "stream: contiguous streams with state carried across windows (default for hf_lstm); blocks: "
        "independent shuffled blocks of --block_size tokens (run_clm's group_texts; default for "
        "Transformers).",
        "training",
        choices=("stream", "blocks"),
    )
    bptt: int = option(
        35, "Window length of stream batching (truncated backpropagation through time).", "training"
    )
    block_size: int = option(128, "Block length of blocks batching.", "training")
    per_device_train_batch_size: int = option(20, "Sequences (streams or blocks) per process.", "training")
    per_device_eval_batch_size: int = option(16, "Evaluation windows per forward pass.", "training")
    optimizer: str = option(
        "adamw",
        "adamw, or sgd: plain SGD with a large rate and tight clipping, as Zaremba et al. 2014 train "
        "LSTM LMs.",
        "training",
        choices=("adamw", "sgd"),
    )
    learning_rate: float | None = option(
        None,
        "Peak learning rate (default: 20 for sgd; for adamw 6e-3 for hf_lstm, 1e-3 for Transformers).",
        "training",
    )
    weight_decay: float = option(0.0, "Weight decay (decoupled for AdamW; none on biases).", "training")
    num_train_epochs: int = option(3, "Passes over the training split.", "training")
    max_train_steps: int | None = option(
        None, "Stop after this many optimizer steps (overrides epochs).", "training"
    )
    max_train_minutes: float | None = option(
        None, "Stop after this much wall-clock training time (evaluation excluded).", "training"
    )
    schedule_by: str = option(
        "steps",
        "What a linear or cosine schedule runs over: the steps, or with `time` whichever runs out first, "
        "the steps or --max_train_minutes (the rate reaches its end value when the clock stops the run).",
        "training",
        choices=("steps", "time"),
    )
    gradient_accumulation_steps: int = option(1, "Micro-batches per optimizer step.", "training")
    lr_scheduler_type: str = option(
        "cosine",
        "Learning-rate schedule; epoch_decay multiplies by --lr_decay each epoch from "
        "--lr_decay_start_epoch.",
        "training",
        choices=SCHEDULERS,
    )
    num_warmup_steps: int = option(0, "Linear warm-up steps.", "training")
    lr_decay: float = option(0.5, "Factor per epoch for epoch_decay.", "training")
    lr_decay_start_epoch: int = option(
        5, "First epoch (1-based) with a decayed rate, for epoch_decay.", "training"
    )
    max_grad_norm: float | None = option(
        None, "Clip the gradient norm (0: no clipping; default 0.25 for sgd, 1.0 for adamw).", "training"
    )
    seed: int = option(42, "Random seed (weights, dropout, data order).", "training")
    mixed_precision: str | None = option(
        None,
        "Accelerate's mixed precision: no, bf16 (autocast; on a CPU too) or fp16 (autocast with a loss "
        "scaler; CUDA only). Default: what `accelerate launch --mixed_precision` or `accelerate config` set, "
        "else no.",
        "training",
        choices=("no", "bf16", "fp16"),
    )
    gradient_checkpointing: bool = option(
        False,
        "Keep only each layer's input during the forward pass and recompute the rest in the backward pass: "
        "less activation memory for about one more forward pass of compute (transformers' activation "
        "checkpointing; hf_lstm and most Transformers support it).",
        "training",
    )
    nonfinite_loss: str = option(
        "stop",
        "On a NaN/inf loss: stop (keeping the last good checkpoint) or skip the batch.",
        "training",
        choices=("stop", "skip"),
    )

    # -- evaluation and output ----------------------------------------------------------------------------
    output_dir: str = option("runs/hf-lstm", "Where the model folder and checkpoints go.", "output")
    eval_window: int = option(128, "Window of the fixed-window perplexity protocol.", "output")
    load_best_model_at_end: bool | None = option(
        None,
        "Evaluate every --eval_steps, keep the weights with the best validation --metric_for_best_model, and "
        "save those (default: on for your own corpus with a validation split, off for the built-in PTB).",
        "output",
    )
    metric_for_best_model: str = option(
        "loss",
        "Validation metric (fixed windows) that decides the best model: loss, perplexity or bits_per_byte "
        "(lower is better for all three).",
        "output",
        choices=("loss", "perplexity", "bits_per_byte"),
    )
    early_stopping_patience: int | None = option(
        None, "Stop after this many evaluations in a row without a better --metric_for_best_model.", "output"
    )
    eval_steps: int | None = option(
        None, "Also measure validation perplexity every N steps (curves).", "output"
    )
    logging_steps: int = option(50, "Log training loss every N steps.", "output")
    checkpointing_steps: str | None = option(None, "Save a checkpoint every N steps, or 'epoch'.", "output")
    checkpoints_total_limit: int = option(2, "Keep only the newest N checkpoints.", "output")
    overwrite_output_dir: bool = option(
        False,
        "Replace what --output_dir holds (another run's model and checkpoints); without it, a folder "
        "that holds files is refused unless the run resumes it.",
        "output",
    )
    resume_from_checkpoint: str | None = option(
        None, "A checkpoint folder, or 'latest' (the newest in --output_dir).", "output"
    )
    with_tracking: bool = option(False, "Log metrics to the trackers of --report_to.", "output")
    report_to: str = option(
        "tensorboard", "Trackers for --with_tracking (tensorboard, wandb, all, ...).", "output"
    )
    push_to_hub: bool = option(False, "Upload the output folder to the Hub when done.", "output")
    hub_model_id: str | None = option(
        None, "Repository id for --push_to_hub (default: the output folder's name).", "output"
    )
    hub_token: str | None = option(None, "Token for --push_to_hub (default: the logged-in one).", "output")
    sample_prompt: str = option(
        "the", "Prompt of the sample generated from the saved folder at the end.", "output"
    )
    sample_max_new_tokens: int = option(40, "Length of that sample (0: no sample).", "output")
    write_space_app: bool = option(
        False,
        "Also write app.py, requirements.txt and microscope/ into the output folder: the LSTM microscope, "
        "ready for a Hugging Face Space (docs/MICROSCOPE.md).",
        "output",
    )

    def __post_init__(self):
        self.checkpointing_steps = None if self.checkpointing_steps is None else str(self.checkpointing_steps)
        if self.early_stopping_patience is not None and self.load_best_model_at_end is None:
            self.load_best_model_at_end = True  # stopping early means keeping the best, as Trainer does
        recurrent = self.trains_hf_lstm
        self.batching = self.batching or ("stream" if recurrent else "blocks")
        if self.batching == "stream" and not recurrent:
            raise ValueError(
                "--batching stream carries a recurrent state across batches; a Transformer has none: "
                "use --batching blocks"
            )
        if self.max_grad_norm is None:
            self.max_grad_norm = 0.25 if self.optimizer == "sgd" else 1.0
        if self.learning_rate is None:
            # SGD's rate is for the mean loss per token: 20 here is Zaremba et al.'s rate 1 on a loss summed
            # over 20 time steps. AdamW at 6e-3 for hf_lstm is the README's PTB recipe and the compare sweep's
            # best rate (docs/TRAINING.md, "Initialisation, and the optimizer it decided"); 1e-3 is the
            # Transformers'.
            self.learning_rate = 20.0 if self.optimizer == "sgd" else 6e-3 if recurrent else 1e-3
        self._check()

    def _check(self) -> None:
        """Every value in its allowed range, in one place; the message names the option and the range."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            choices = f.metadata.get("choices")
            if choices and value is not None and value not in choices:
                raise ValueError(f"--{f.name} must be one of {', '.join(choices)}, got {value!r}")
            if f.name in RANGES and value is not None:
                RANGES[f.name].check(f.name, value)
        steps = self.checkpointing_steps
        if steps is not None and steps != "epoch" and (not steps.isdigit() or int(steps) < 1):
            raise ValueError(f"--checkpointing_steps must be a positive integer or 'epoch', got {steps!r}")
        if self.schedule_by == "time" and (
            self.max_train_minutes is None or self.lr_scheduler_type not in ("linear", "cosine")
        ):
            raise ValueError(
                "--schedule_by time runs a linear or cosine schedule over --max_train_minutes: give both "
                f"(got --lr_scheduler_type {self.lr_scheduler_type}, --max_train_minutes "
                f"{self.max_train_minutes})"
            )
        if not self.dataset_name and not self.train_file:
            raise ValueError(
                "give a corpus: --dataset_name (Hub name, local path, or ptb/shakespeare) or --train_file"
            )
        if Path(self.output_dir).exists() and not Path(self.output_dir).is_dir():
            raise ValueError(
                f"--output_dir {self.output_dir} is a file; give a folder (new, or one to resume)"
            )

    @property
    def trains_hf_lstm(self) -> bool:
        """Whether the run trains an hf_lstm model: a new one of `model_type` hf_lstm, or a saved hf_lstm
        folder."""
        if self.model_name_or_path is None:
            return is_hf_lstm(self.model_type)
        try:
            return is_hf_lstm(json.loads((Path(self.model_name_or_path) / "config.json").read_text()))
        except (OSError, ValueError):
            return False

    def best_model_plan(self, has_validation: bool, total_steps: int) -> tuple[bool, int | None]:
        """Whether the run keeps its best model, and every how many steps it evaluates:
        `--load_best_model_at_end` (by default on for a user's corpus with a validation split, off for the
        built-in PTB, whose published numbers are for the last model), every `--eval_steps` or, by default,
        ten times in the run."""
        keep = self.load_best_model_at_end
        if keep is None:
            keep = not self.uses_builtin_ptb and has_validation
        return bool(keep), self.eval_steps or (max(1, total_steps // 10) if keep else None)

    def regularization_overrides(self) -> dict:
        """The config fields `--regularization` sets on a new hf_lstm model (under `--config_overrides`, which
        win): `SMALL_CORPUS_RECIPE`, or nothing (a saved model or `--config_name` keeps its own)."""
        if self.model_name_or_path or self.config_name or not self.trains_hf_lstm:
            return {}
        kind = self.regularization
        if kind == "auto":
            kind = "none" if self.uses_builtin_ptb else "small_corpus"
        return dict(SMALL_CORPUS_RECIPE) if kind == "small_corpus" else {}

    @property
    def uses_builtin_ptb(self) -> bool:
        """`--dataset_name ptb` is the default: it stands aside when the user gives --train_file."""
        return self.dataset_name == "ptb" and not self.train_file

    @property
    def context_length(self) -> int:
        """Tokens a training sequence holds: the truncated-BPTT window, or the block."""
        return self.bptt if self.batching == "stream" else self.block_size

    # -- the command line ------------------------------------------------------------------------------------

    @classmethod
    def parser(cls) -> argparse.ArgumentParser:
        """`hf-lstm train`'s argument parser: one option per field, in the field's group."""
        parser = OneLineErrorParser(
            prog="hf-lstm train",
            description="Train a causal language model (hf_lstm or a Transformer) with Accelerate.",
            formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        )
        groups = {}
        for f in dataclasses.fields(cls):
            group = groups.setdefault(f.metadata["group"], parser.add_argument_group(f.metadata["group"]))
            cls.add_arguments(group, (f.name,))
        return parser

    @classmethod
    def add_arguments(cls, parser, names: tuple[str, ...]) -> None:
        """Declare these fields as command-line options, as `hf-lstm train` declares them (name, type,
        default, choices, help), so another command that takes some of them (`hf-lstm compare`) cannot
        drift apart.

        Args:
            parser (`argparse.ArgumentParser` or an argument group): where the options go.
            names (`tuple[str, ...]`): field names; they are declared in the fields' order.
        """
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.name not in names:
                continue
            kind = next(t for t in typing.get_args(hints[f.name]) or (hints[f.name],) if t is not type(None))
            if kind is bool:  # a flag; a field whose default is None ("decide for me") also takes --no-NAME
                action = argparse.BooleanOptionalAction if f.default is None else "store_true"
                parser.add_argument(f"--{f.name}", action=action, default=f.default, help=f.metadata["help"])
                continue
            parser.add_argument(
                f"--{f.name}",
                type=kind,
                default=f.default,
                choices=f.metadata["choices"],
                help=f.metadata["help"],
            )

    @classmethod
    def from_argv(cls, argv: list[str] | None = None) -> TrainingSettings:
        """Parse a command line; a bad value exits with argparse's usage line and the settings' message."""
        parser = cls.parser()
        namespace = parser.parse_args(argv)
        try:
            return cls(**vars(namespace))
        except ValueError as error:
            parser.error(str(error))

    def to_argv(self, with_token: bool = False) -> list[str]:
        """The command line that makes these settings again: what differs from the defaults, and the Hub token
        only when asked (model cards and logs show this)."""
        argv = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value == f.default or value is None or (f.name == "hub_token" and not with_token):
                continue
            if isinstance(value, bool):
                argv.append(f"--{f.name}" if value else f"--no-{f.name}")
            else:
                argv += [f"--{f.name}", str(value)]
        return argv

    def public(self) -> dict:
        """The settings as a dict, without the Hub token (for model cards, checkpoints and trackers)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "hub_token"}
