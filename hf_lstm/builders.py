"""What a training run is built from: the tokenizer, the model, the optimizer and the learning-rate schedule.

Each builder takes what it needs, not the whole run's settings, so `compare`, `bench` and tests call them
directly (`build_model("gpt2", vocab=TokenIds(500), config_overrides={"n_layer": 2})`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, get_scheduler

from . import data
from .configuration_hf_lstm import LSTMConfig


TOKENIZER_FIELDS = ("vocab_size", "pad_token_id", "eos_token_id", "bos_token_id")
"""Config fields a new model takes from its tokenizer, which `config_overrides` may not set."""


@dataclass(frozen=True)
class TokenIds:
    """What a new model needs to know of its tokenizer: the vocabulary size and the special ids."""

    vocab_size: int
    pad_token_id: int | None = 0
    eos_token_id: int | None = 1
    bos_token_id: int | None = None

    @classmethod
    def of(cls, tokenizer) -> TokenIds:
        bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        return cls(len(tokenizer), tokenizer.pad_token_id, tokenizer.eos_token_id, bos)


def build_tokenizer(
    texts,
    *,
    tokenizer_name: str | None = None,
    kind: str | None = None,
    vocab_size: int | None = None,
    dataset_name: str | None = None,
    min_frequency: int | None = None,
    trust_remote_code: bool = False,
):
    """`tokenizer_name` (a folder or Hub id), else a new tokenizer of `kind` trained on `texts`. Its pad token
    falls back to eos.

    The defaults suit any corpus a user brings: the built-in PTB (`dataset_name="ptb"`) gets the word
    tokenizer of the literature (its exact 10,000 words); every other corpus gets byte-level BPE, for which
    nothing is unknown, with a vocabulary sized to the corpus (`bpe_vocab_size_for`). A word tokenizer on
    another corpus leaves out words seen only once (`min_frequency=2`), so that `<unk>` is seen in training
    and keeps some probability for the unknown words of held-out text."""
    if tokenizer_name:
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_name, trust_remote_code=trust_remote_code)
    else:
        kind = kind or data.default_tokenizer_kind(dataset_name)
        builtin_ptb = dataset_name == "ptb"
        if kind == "bpe" and vocab_size is None:
            vocab_size = bpe_vocab_size_for(sum(len(text) for text in texts if text))
        if min_frequency is None:
            min_frequency = 2 if kind == "word" and not builtin_ptb else 1
        tokenizer = data.train_tokenizer(texts, kind=kind, vocab_size=vocab_size, min_frequency=min_frequency)
    if tokenizer.eos_token_id is None:
        raise ValueError(
            f"the tokenizer {tokenizer_name} has no eos token; rows of the corpus are ended with it"
        )
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def bpe_vocab_size_for(num_characters: int) -> int:
    """The default byte-level BPE vocabulary for a training split of `num_characters`: about one token type
    per 100 characters, rounded down to a power of two, between 512 and 8192 (GPT-2 uses 50,257 on 40 GB; a
    small corpus cannot fill a large vocabulary, and rare merges are tokens the model barely sees).
    PTB-sized text (5M characters) gets 8192, 150k characters get 1024."""
    if num_characters < 100 * 512:
        return 512
    return min(8192, 2 ** int(math.log2(num_characters / 100)))


def check_model_folder(path: str) -> None:
    """Fail fast, before any data work, on a local model folder that cannot load: a missing or non-JSON
    config.json, no safetensors weights (pickle-based `.bin` files are refused: unpickling a stranger's file
    can run code), or a truncated/corrupted `model.safetensors`. Hub ids (not local paths) pass through."""
    from safetensors import safe_open

    folder = Path(path)
    if not folder.exists():
        if folder.is_absolute() or path.startswith((".", "~")) or path.count("/") > 1:
            raise FileNotFoundError(
                f"--model_name_or_path {path}: no such folder; give a folder written by "
                "save_pretrained (or `hf-lstm train --output_dir`), or a Hub id"
            )
        return  # a Hub id: transformers resolves it (and fails clearly when offline)
    if not folder.is_dir():
        raise ValueError(
            f"--model_name_or_path {path} is a file; give the folder that holds config.json and "
            "model.safetensors"
        )
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise ValueError(
            f"--model_name_or_path {path} has no config.json; give a folder written by save_pretrained"
        )
    try:
        json.loads(config_file.read_text())
    except (UnicodeDecodeError, ValueError) as error:
        raise ValueError(
            f"{config_file} is not valid JSON ({error}); restore it from where the model came from, "
            "or re-save the model with save_pretrained"
        ) from None
    shards = sorted(folder.glob("model*.safetensors"))
    if not shards:
        pickled = sorted(
            p.name for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".pkl", ".ckpt")
        )
        raise ValueError(
            f"--model_name_or_path {path} has no model.safetensors"
            + (
                f" (only {', '.join(pickled)}, which hf-lstm refuses to unpickle: such files can run code)"
                if pickled
                else ""
            )
            + "; weights are read only from safetensors: save the model with save_pretrained (which writes "
            "safetensors), or convert the weights"
        )
    for shard in shards:
        try:
            with safe_open(str(shard), framework="pt") as handle:
                handle.keys()
        except (
            Exception
        ) as error:  # safetensors raises its own SafetensorError for truncated or garbled files
            raise ValueError(
                f"{shard} is truncated or corrupted ({error}); copy or download it again"
            ) from None


def load_model(path: str, vocab_size: int, trust_remote_code: bool = False):
    """A saved causal LM (safetensors only), checked against a tokenizer of `vocab_size` tokens."""
    check_model_folder(path)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            path, use_safetensors=True, trust_remote_code=trust_remote_code
        )
    except (OSError, ValueError) as error:
        raise ValueError(f"--model_name_or_path {path} does not load: {error}") from None
    except Exception as error:  # safetensors' own error type for damaged files
        raise ValueError(
            f"--model_name_or_path {path}: the weights are damaged or do not fit the config "
            f"({type(error).__name__}: {error})"
        ) from None
    if vocab_size > model.config.vocab_size:
        raise ValueError(
            f"the tokenizer has {vocab_size} tokens but the model {path} only {model.config.vocab_size}: "
            f"use the model's own tokenizer (--tokenizer_name {path}) or resize the model"
        )
    return model


def build_model(
    model_type: str = "hf_lstm",
    *,
    vocab: TokenIds,
    config_overrides: str | dict | None = None,
    config_name: str | None = None,
    min_positions: int = 0,
    trust_remote_code: bool = False,
):
    """A new causal LM: `model_type`'s default configuration (or `config_name`'s), changed by
    `config_overrides` (`"hidden_size=650,cell_type=gru"` or a dict), sized for `vocab`. A Transformer gets at
    least `min_positions` positions. Built on the current default device (`with torch.device("meta"):` counts
    without memory)."""
    if config_name:
        config = AutoConfig.from_pretrained(config_name, trust_remote_code=trust_remote_code)
    else:
        try:
            config = AutoConfig.for_model(model_type)
        except ValueError as error:
            raise ValueError(
                f"--model_type {model_type!r} is not a model type transformers knows: {error}"
            ) from None
    overrides = (
        parse_config_overrides(config_overrides) if isinstance(config_overrides, str) else config_overrides
    )
    overrides = overrides or {}
    from_tokenizer = sorted(k for k in overrides if k in TOKENIZER_FIELDS)
    if from_tokenizer:
        raise ValueError(
            f"--config_overrides: {', '.join(from_tokenizer)} come(s) from the tokenizer, not the config; "
            "choose the vocabulary with --tokenizer_vocab_size or --tokenizer_name instead"
        )
    unknown = sorted(k for k in overrides if not hasattr(config, k))
    if unknown:
        raise ValueError(f"--config_overrides: {type(config).__name__} has no field(s) {', '.join(unknown)}")
    for key, value in overrides.items():
        setattr(config, key, value)
    config.vocab_size = vocab.vocab_size
    config.pad_token_id, config.eos_token_id = vocab.pad_token_id, vocab.eos_token_id
    config.bos_token_id = vocab.bos_token_id if vocab.bos_token_id is not None else vocab.eos_token_id
    if isinstance(config, LSTMConfig):
        if "embedding_size" not in overrides and config.embedding_size != config.hidden_size:
            config.embedding_size = config.hidden_size
        config.validate_lstm_config()
    else:
        for name in ("n_positions", "max_position_embeddings"):
            if hasattr(config, name) and getattr(config, name) < min_positions:
                setattr(config, name, min_positions)
    return AutoModelForCausalLM.from_config(config)


def enable_activation_checkpointing(model, use_reentrant: bool = False) -> None:
    """`--gradient_checkpointing`: transformers' activation checkpointing, non-reentrant by default (torch's
    recommended variant, and transformers' default), through the name the installed transformers prefers."""
    if not model.supports_gradient_checkpointing:
        raise ValueError(
            f"--gradient_checkpointing: {type(model).__name__} does not support activation checkpointing; "
            "train without it"
        )
    options = {"use_reentrant": use_reentrant}
    if hasattr(model, "activation_checkpointing_enable"):  # the name since transformers 5.25
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=options)
    else:  # before (since then, a deprecated alias)
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=options)


def parse_config_overrides(text: str) -> dict:
    """`"hidden_size=650,cell_type=lstm,initializer_range=0.1,tie_word_embeddings=false"` -> a dict of typed
    values (int, float, true/false, none, else the string)."""
    overrides = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(
                f"--config_overrides: {item!r} is not of the form key=value (e.g. hidden_size=650)"
            )
        value: object = raw.strip()
        lowered = raw.strip().lower()
        if lowered in ("true", "false"):
            value = lowered == "true"
        elif lowered in ("none", "null"):
            value = None
        else:
            for cast in (int, float):
                try:
                    value = cast(raw)
                    break
                except ValueError:
                    continue
        overrides[key.strip()] = value
    return overrides


def build_optimizer(
    model, kind: str = "adamw", learning_rate: float = 1e-3, weight_decay: float = 0.0
) -> torch.optim.Optimizer:
    """AdamW (decoupled weight decay, none on biases and norms; betas 0.9, 0.99) or SGD."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if param.dim() < 2 or "norm" in name.lower() else decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if kind == "sgd":
        return torch.optim.SGD(groups, lr=learning_rate)
    return torch.optim.AdamW(groups, lr=learning_rate, betas=(0.9, 0.99))


class TimeBudget:
    """How much of a wall-clock training budget (`--max_train_minutes`) is spent: `used` is the training time
    (evaluation excluded) that every process agreed on at the last step; a time-aware schedule reads it."""

    def __init__(self, minutes: float | None):
        self.seconds = None if minutes is None else 60.0 * minutes
        self.used = 0.0

    def fraction(self) -> float:
        return 0.0 if self.seconds is None else min(1.0, self.used / self.seconds)


_DECAYS = {  # a schedule's factor at progress p in [0, 1], as transformers' linear and cosine schedules
    "linear": lambda p: max(0.0, 1.0 - p),
    "cosine": lambda p: max(0.0, 0.5 * (1.0 + math.cos(math.pi * p))),
}


def build_scheduler(
    optimizer,
    kind: str,
    total_steps: int,
    steps_per_epoch: int,
    warmup_steps: int = 0,
    decay: float = 0.5,
    decay_start_epoch: int = 5,
    budget: TimeBudget | None = None,
):
    """transformers' schedule `kind` (linear, cosine, ...), or `epoch_decay`: the rate times `decay` per epoch
    from the 1-based epoch `decay_start_epoch` on (Zaremba et al. 2014), after a linear warm-up.

    With a time `budget`, linear and cosine run over whichever ends first, the steps or the minutes: their
    progress is the larger of the two shares, so a run stopped by the clock ends at the schedule's end value
    instead of midway at a high rate. While the steps run out first, they are transformers' schedules."""
    if kind == "epoch_decay":

        def factor(step: int) -> float:
            epoch = step // max(steps_per_epoch, 1) + 1  # 1-based epoch of this step
            warm = min(1.0, (step + 1) / warmup_steps) if warmup_steps else 1.0
            return warm * decay ** max(0, epoch - decay_start_epoch + 1)

        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    if budget is not None and budget.seconds is not None and kind in _DECAYS:
        shape = _DECAYS[kind]

        def timed(step: int) -> float:
            if step < warmup_steps:
                return step / max(1, warmup_steps)
            steps = (step - warmup_steps) / max(1, total_steps - warmup_steps)
            return shape(min(1.0, max(steps, budget.fraction())))

        return torch.optim.lr_scheduler.LambdaLR(optimizer, timed)
    return get_scheduler(kind, optimizer, num_warmup_steps=warmup_steps, num_training_steps=total_steps)


def make_accelerator(settings) -> Accelerator:
    """The run's `Accelerator`: gradient accumulation, trackers, `--mixed_precision` (refused for fp16 without
    CUDA, where Accelerate would quietly compute in fp32), and CPU data parallelism where there is no GPU."""
    # Without an accelerator, say so: Accelerate then sets up CPU data parallelism (gloo) under a
    # multi-process launch instead of treating every process as a lone run.
    has_accelerator = (
        torch.cuda.is_available()
        or torch.backends.mps.is_available()
        or (hasattr(torch, "xpu") and torch.xpu.is_available())
    )
    if settings.mixed_precision == "fp16" and not torch.cuda.is_available():
        # Accelerate would quietly train in fp32 here: fp16 autocast with a loss scaler is CUDA's
        raise ValueError(
            "--mixed_precision fp16 needs a CUDA GPU (fp16 autocast with a loss scaler); this machine has "
            "none: use --mixed_precision bf16 or no"
        )
    return Accelerator(
        gradient_accumulation_steps=settings.gradient_accumulation_steps,
        mixed_precision=settings.mixed_precision,
        log_with=settings.report_to if settings.with_tracking else None,
        project_dir=settings.output_dir,
        cpu=not has_accelerator,
    )
