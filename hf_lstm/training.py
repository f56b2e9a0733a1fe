"""Train a causal language model with Accelerate: an hf_lstm model, or any Transformer transformers knows.

The arguments are those of transformers' `run_clm_no_trainer.py` wherever the meaning is the same, plus what
a recurrent model needs (`--batching`, `--bptt`, `--max_grad_norm`, `--optimizer`, tokenizer options). It runs
as `hf-lstm train ...`, `python scripts/train.py ...` or `accelerate launch scripts/train.py ...`.

The loop reads top to bottom: arguments, data, tokenizer, model, optimizer and schedule, (resume), the
training loop with its checkpoints, evaluation in both protocols, and the output folder, which is a Hub
model repository (weights, config with `auto_map`, generation config, tokenizer, model card).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import shutil
import signal
import sys
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from safetensors import SafetensorError
from tqdm.auto import tqdm
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig, get_scheduler

from . import checkpointing, data
from .configuration_hf_lstm import LSTMConfig
from .evaluation import evaluate_splits
from .flops import flops_per_token, measure_matmul_peak

# Published Penn Treebank word-level perplexities (validation, test), for the summary printed after training.
PTB_REFERENCES = [
    ("Zaremba et al. 2014, small (2x200, no dropout)", 120.7, 114.5),
    ("Zaremba et al. 2014, medium (2x650, dropout)", 86.2, 82.7),
    ("Zaremba et al. 2014, large (2x1500, dropout)", 82.2, 78.4),
    ("Merity et al. 2017, AWD-LSTM (24M params)", 60.0, 57.3),
]

SCHEDULERS = ("linear", "cosine", "constant", "constant_with_warmup", "epoch_decay")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hf-lstm train",
        description="Train a causal language model (hf_lstm or a Transformer) with Accelerate.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add = parser.add_argument_group("data").add_argument
    add("--dataset_name", default="ptb",
        help="Hub dataset name, a local file or folder, or a built-in corpus: " + ", ".join(data.BUILTIN_CORPORA))
    add("--dataset_config_name", default=None, help="The Hub dataset's configuration (e.g. wikitext-2-raw-v1).")
    add("--train_file", default=None, help="A .txt/.json/.jsonl/.csv file with the training text.")
    add("--validation_file", default=None, help="A file with the validation text.")
    add("--test_file", default=None, help="A file with the test text.")
    add("--validation_split_percentage", type=float, default=5,
        help="Percent of train held out for validation when the corpus has no validation split.")
    add("--text_column", default=None, help="Column holding the text, if not 'text'.")
    add("--preprocessing_num_workers", type=int, default=None, help="Processes for tokenization.")

    add = parser.add_argument_group("model").add_argument
    add("--model_name_or_path", default=None, help="Start from this saved model folder (or Hub id).")
    add("--config_name", default=None, help="Configuration folder or Hub id, if not the model's own.")
    add("--model_type", default="hf_lstm", help="hf_lstm, or any causal-LM type transformers knows (gpt2, llama, ...).")
    add("--config_overrides", default=None,
        help='Comma-separated config changes for a new model, e.g. "hidden_size=650,num_hidden_layers=2,cell_type=lstm".')
    add("--tokenizer_name", default=None, help="Use this tokenizer (folder or Hub id) instead of training one.")
    add("--tokenizer_type", choices=data.TOKENIZER_KINDS, default=None,
        help="Kind of tokenizer to train: word (default for ptb), bpe (default otherwise) or char.")
    add("--tokenizer_vocab_size", type=int, default=None, help="Vocabulary size of a trained bpe/word tokenizer.")
    add("--trust_remote_code", action="store_true", help="Allow models, configs and datasets with remote code.")

    add = parser.add_argument_group("training").add_argument
    add("--batching", choices=("stream", "blocks"), default=None,
        help="stream: contiguous streams with state carried across windows (default for hf_lstm); "
             "blocks: independent shuffled blocks of --block_size tokens (run_clm's group_texts; default for Transformers).")
    add("--bptt", type=int, default=35, help="Window length of stream batching (truncated backpropagation through time).")
    add("--block_size", type=int, default=128, help="Block length of blocks batching.")
    add("--per_device_train_batch_size", type=int, default=20, help="Sequences (streams or blocks) per process.")
    add("--per_device_eval_batch_size", type=int, default=16, help="Evaluation windows per forward pass.")
    add("--optimizer", choices=("adamw", "sgd"), default="adamw",
        help="adamw, or sgd: plain SGD with a large rate and tight clipping, as Zaremba et al. 2014 train LSTM LMs.")
    add("--learning_rate", type=float, default=None,
        help="Peak learning rate (default: 20 for sgd; for adamw 6e-3 for hf_lstm, 1e-3 for Transformers).")
    add("--weight_decay", type=float, default=0.0, help="Weight decay (decoupled for AdamW; none on biases).")
    add("--num_train_epochs", type=int, default=3, help="Passes over the training split.")
    add("--max_train_steps", type=int, default=None, help="Stop after this many optimizer steps (overrides epochs).")
    add("--max_train_minutes", type=float, default=None, help="Stop after this much wall-clock training time.")
    add("--gradient_accumulation_steps", type=int, default=1, help="Micro-batches per optimizer step.")
    add("--lr_scheduler_type", choices=SCHEDULERS, default="cosine",
        help="Learning-rate schedule; epoch_decay multiplies by --lr_decay each epoch from --lr_decay_start_epoch.")
    add("--num_warmup_steps", type=int, default=0, help="Linear warm-up steps.")
    add("--lr_decay", type=float, default=0.5, help="Factor per epoch for epoch_decay.")
    add("--lr_decay_start_epoch", type=int, default=5, help="First epoch (1-based) with a decayed rate, for epoch_decay.")
    add("--max_grad_norm", type=float, default=None,
        help="Clip the gradient norm (0: no clipping; default 0.25 for sgd, 1.0 for adamw).")
    add("--seed", type=int, default=42, help="Random seed (weights, dropout, data order).")
    add("--nonfinite_loss", choices=("stop", "skip"), default="stop",
        help="On a NaN/inf loss: stop (keeping the last good checkpoint) or skip the batch.")

    add = parser.add_argument_group("evaluation and output").add_argument
    add("--output_dir", default="runs/hf-lstm", help="Where the model folder and checkpoints go.")
    add("--eval_window", type=int, default=128, help="Window of the fixed-window perplexity protocol.")
    add("--eval_steps", type=int, default=None, help="Also measure validation perplexity every N steps (curves).")
    add("--logging_steps", type=int, default=50, help="Log training loss every N steps.")
    add("--checkpointing_steps", default=None, help="Save a checkpoint every N steps, or 'epoch'.")
    add("--checkpoints_total_limit", type=int, default=2, help="Keep only the newest N checkpoints.")
    add("--resume_from_checkpoint", default=None, help="A checkpoint folder, or 'latest' (the newest in --output_dir).")
    add("--with_tracking", action="store_true", help="Log metrics to the trackers of --report_to.")
    add("--report_to", default="tensorboard", help="Trackers for --with_tracking (tensorboard, wandb, all, ...).")
    add("--push_to_hub", action="store_true", help="Upload the output folder to the Hub when done.")
    add("--hub_model_id", default=None, help="Repository id for --push_to_hub (default: the output folder's name).")
    add("--hub_token", default=None, help="Token for --push_to_hub (default: the logged-in one).")
    add("--sample_prompt", default="the", help="Prompt of the sample generated from the saved folder at the end.")
    add("--sample_max_new_tokens", type=int, default=40, help="Length of that sample (0: no sample).")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse and check the arguments; every inconsistency is a clear error before any work starts."""
    parser = build_parser()
    args = parser.parse_args(argv)
    recurrent = args.model_type == "hf_lstm" and args.model_name_or_path is None or _folder_is_hf_lstm(args)
    args.batching = args.batching or ("stream" if recurrent else "blocks")
    if args.batching == "stream" and not recurrent:
        parser.error("--batching stream carries a recurrent state across batches; a Transformer has none: use "
                     "--batching blocks")
    if args.max_grad_norm is None:
        args.max_grad_norm = 0.25 if args.optimizer == "sgd" else 1.0
    if args.learning_rate is None:
        # SGD's rate is for the mean loss per token: 20 here is Zaremba et al.'s rate 1 on a loss summed over 20
        # time steps. AdamW at 6e-3 for hf_lstm is the README's main job and the compare sweep's best rate
        # (docs/TRAINING.md, "Initialisation, and the optimizer it decided"); 1e-3 is the Transformers' usual one.
        args.learning_rate = 20.0 if args.optimizer == "sgd" else 6e-3 if recurrent else 1e-3
    if not (math.isfinite(args.learning_rate) and 0 < args.learning_rate < 1e38):
        parser.error(f"--learning_rate must be a positive number below 1e38, got {args.learning_rate}")
    for name in ("bptt", "block_size", "per_device_train_batch_size", "per_device_eval_batch_size",
                 "gradient_accumulation_steps", "num_train_epochs", "eval_window", "logging_steps"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1, got {getattr(args, name)}")
    if args.checkpointing_steps is not None and args.checkpointing_steps != "epoch":
        if not args.checkpointing_steps.isdigit() or int(args.checkpointing_steps) < 1:
            parser.error(f"--checkpointing_steps must be a positive integer or 'epoch', got {args.checkpointing_steps!r}")
    if not args.dataset_name and not args.train_file:
        parser.error("give a corpus: --dataset_name (Hub name, local path, or ptb/shakespeare) or --train_file")
    return args


def _folder_is_hf_lstm(args) -> bool:
    if args.model_name_or_path is None:
        return False
    config_file = Path(args.model_name_or_path) / "config.json"
    try:
        return json.loads(config_file.read_text()).get("model_type") == "hf_lstm"
    except (OSError, ValueError):
        return False


# ----------------------------------------------------------------------------------------------------------


def load_tokenizer(args, corpus, accelerator: Accelerator, output_dir: Path):
    """`--tokenizer_name`, the one a resumed run saved, or a new one trained on the training split."""
    if args.tokenizer_name:
        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer_name, trust_remote_code=args.trust_remote_code)
    elif (output_dir / "tokenizer.json").is_file() and args.resume_from_checkpoint:
        tokenizer = AutoTokenizer.from_pretrained(output_dir)
    else:
        with accelerator.main_process_first():
            kind = args.tokenizer_type or data.default_tokenizer_kind(args.dataset_name)
            tokenizer = data.train_tokenizer(corpus["train"]["text"], kind=kind, vocab_size=args.tokenizer_vocab_size)
    if tokenizer.eos_token_id is None:
        raise ValueError(f"the tokenizer {args.tokenizer_name} has no eos token; rows of the corpus are ended with it")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def check_model_folder(path: str) -> None:
    """Fail fast, before any data work, on a local `--model_name_or_path` folder that cannot load: a missing or
    non-JSON config.json, no safetensors weights (pickle-based `.bin` files are refused: unpickling a stranger's
    file can run code), or a truncated/corrupted `model.safetensors`. Hub ids (not local paths) pass through."""
    from safetensors import safe_open

    folder = Path(path)
    if not folder.exists():
        if folder.is_absolute() or path.startswith((".", "~")) or path.count("/") > 1:
            raise FileNotFoundError(f"--model_name_or_path {path}: no such folder; give a folder written by "
                                    "save_pretrained (or `hf-lstm train --output_dir`), or a Hub id")
        return  # a Hub id: transformers resolves it (and fails clearly when offline)
    if not folder.is_dir():
        raise ValueError(f"--model_name_or_path {path} is a file; give the folder that holds config.json and "
                         "model.safetensors")
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise ValueError(f"--model_name_or_path {path} has no config.json; give a folder written by save_pretrained")
    try:
        json.loads(config_file.read_text())
    except (UnicodeDecodeError, ValueError) as error:
        raise ValueError(f"{config_file} is not valid JSON ({error}); restore it from where the model came from, "
                         "or re-save the model with save_pretrained") from None
    shards = sorted(folder.glob("model*.safetensors"))
    if not shards:
        pickled = sorted(p.name for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".pkl", ".ckpt"))
        raise ValueError(
            f"--model_name_or_path {path} has no model.safetensors"
            + (f" (only {', '.join(pickled)}, which hf-lstm refuses to unpickle: such files can run code)"
               if pickled else "")
            + "; weights are read only from safetensors: save the model with save_pretrained (which writes "
              "safetensors), or convert the weights"
        )
    for shard in shards:
        try:
            with safe_open(str(shard), framework="pt") as handle:
                handle.keys()
        except Exception as error:  # safetensors raises its own SafetensorError for truncated or garbled files
            raise ValueError(f"{shard} is truncated or corrupted ({error}); copy or download it again") from None


def build_model(args, tokenizer):
    """A new model from `--model_type`/`--config_name` + `--config_overrides`, or a saved one (safetensors only)."""
    if args.model_name_or_path:
        check_model_folder(args.model_name_or_path)
        try:
            model = AutoModelForCausalLM.from_pretrained(args.model_name_or_path, use_safetensors=True,
                                                         trust_remote_code=args.trust_remote_code)
        except (OSError, ValueError) as error:
            raise ValueError(f"--model_name_or_path {args.model_name_or_path} does not load: {error}") from None
        except Exception as error:  # safetensors' own error type for damaged files
            raise ValueError(f"--model_name_or_path {args.model_name_or_path}: the weights are damaged or do not fit "
                             f"the config ({type(error).__name__}: {error})") from None
        if len(tokenizer) > model.config.vocab_size:
            raise ValueError(
                f"the tokenizer has {len(tokenizer)} tokens but the model {args.model_name_or_path} only "
                f"{model.config.vocab_size}: use the model's own tokenizer (--tokenizer_name "
                f"{args.model_name_or_path}) or resize the model"
            )
        return model
    if args.config_name:
        config = AutoConfig.from_pretrained(args.config_name, trust_remote_code=args.trust_remote_code)
    else:
        try:
            config = AutoConfig.for_model(args.model_type)
        except ValueError as error:
            raise ValueError(f"--model_type {args.model_type!r} is not a model type transformers knows: {error}") from None
    if args.config_overrides:
        overrides = parse_config_overrides(args.config_overrides)
        unknown = sorted(k for k in overrides if not hasattr(config, k))
        if unknown:
            raise ValueError(f"--config_overrides: {type(config).__name__} has no field(s) {', '.join(unknown)}")
        for key, value in overrides.items():
            setattr(config, key, value)
    config.vocab_size = len(tokenizer)
    config.pad_token_id = tokenizer.pad_token_id
    config.eos_token_id = tokenizer.eos_token_id
    config.bos_token_id = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if isinstance(config, LSTMConfig):
        if "embedding_size" not in (args.config_overrides or "") and config.embedding_size != config.hidden_size:
            config.embedding_size = config.hidden_size
        config.validate_lstm_config()
    else:
        needed = max(args.block_size, args.eval_window)
        for name in ("n_positions", "max_position_embeddings"):
            if hasattr(config, name) and getattr(config, name) < needed:
                setattr(config, name, needed)
    return AutoModelForCausalLM.from_config(config)


def parse_config_overrides(text: str) -> dict:
    """`"hidden_size=650,cell_type=lstm,initializer_range=0.1,tie_word_embeddings=false"` -> a dict of typed
    values (int, float, true/false, none, else the string)."""
    overrides = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--config_overrides: {item!r} is not of the form key=value (e.g. hidden_size=650)")
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


def build_optimizer(args, model) -> torch.optim.Optimizer:
    """AdamW (decoupled weight decay, none on biases and norms) or SGD."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.dim() < 2 or "norm" in name.lower() else decay).append(param)
    groups = [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if args.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=args.learning_rate)
    return torch.optim.AdamW(groups, lr=args.learning_rate, betas=(0.9, 0.99))


def build_scheduler(args, optimizer, total_steps: int, steps_per_epoch: int):
    """The learning-rate schedule of `--lr_scheduler_type` (transformers' schedules, or per-epoch decay)."""
    if args.lr_scheduler_type == "epoch_decay":
        def factor(step: int) -> float:
            epoch = step // max(steps_per_epoch, 1) + 1  # 1-based epoch of this step
            warm = min(1.0, (step + 1) / args.num_warmup_steps) if args.num_warmup_steps else 1.0
            return warm * args.lr_decay ** max(0, epoch - args.lr_decay_start_epoch + 1)
        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    return get_scheduler(args.lr_scheduler_type, optimizer, num_warmup_steps=args.num_warmup_steps,
                         num_training_steps=total_steps)


class Batches:
    """The training batches of one process for one epoch, addressable by index (so a resume can skip)."""

    def __init__(self, args, ids: torch.LongTensor, rank: int, world: int, epoch: int):
        self.stream = args.batching == "stream"
        if self.stream:
            self.batcher = data.StreamBatcher(ids, args.per_device_train_batch_size, args.bptt, rank, world)
            self.length = len(self.batcher)
        else:
            self.blocks = data.group_texts_dataset(ids, args.block_size)
            generator = torch.Generator().manual_seed(args.seed + epoch)
            order = torch.randperm(len(self.blocks), generator=generator)
            per_process = len(order) // world
            mine = order[rank * per_process : (rank + 1) * per_process]
            self.length = per_process // args.per_device_train_batch_size
            if self.length == 0:
                raise ValueError(
                    f"the training split has {len(self.blocks)} blocks of {args.block_size} tokens, fewer than one "
                    f"batch of {args.per_device_train_batch_size} per process: lower --block_size or "
                    "--per_device_train_batch_size, or use a larger corpus"
                )
            self.order = mine[: self.length * args.per_device_train_batch_size].view(self.length, -1)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[torch.LongTensor, torch.LongTensor]:
        if self.stream:
            return self.batcher[index]
        block = torch.stack([self.blocks[int(i)]["input_ids"] for i in self.order[index]])
        return block, block


class StopSignal:
    """Turns SIGTERM (and SIGINT) into a flag the loop checks after each step, so it can save and exit."""

    def __init__(self):
        self.received = None
        self._previous = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.received = signal.Signals(signum).name

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


# ----------------------------------------------------------------------------------------------------------


def train(args: argparse.Namespace) -> dict:
    """Run the whole job; return the final metrics (also written to OUTPUT_DIR/all_results.json)."""
    log_with = None
    if args.with_tracking:
        log_with = args.report_to
    # Without an accelerator, say so: Accelerate then sets up CPU data parallelism (gloo) under a multi-process
    # launch instead of treating every process as a lone run.
    has_accelerator = torch.cuda.is_available() or torch.backends.mps.is_available() or (
        hasattr(torch, "xpu") and torch.xpu.is_available())
    accelerator = Accelerator(gradient_accumulation_steps=args.gradient_accumulation_steps, log_with=log_with,
                              project_dir=args.output_dir, cpu=not has_accelerator)
    rank, world, main = accelerator.process_index, accelerator.num_processes, accelerator.is_main_process
    output_dir = Path(args.output_dir)
    if main:
        output_dir.mkdir(parents=True, exist_ok=True)
        checkpointing.remove_leftovers(output_dir)
    accelerator.wait_for_everyone()
    if args.model_name_or_path:
        check_model_folder(args.model_name_or_path)  # before any data work: a damaged folder fails at once
    resume_dir = None
    if args.resume_from_checkpoint:
        resume_dir = checkpointing.resolve(args.resume_from_checkpoint, output_dir)
        if resume_dir is None:
            accelerator.print(f"no checkpoint in {output_dir} yet: starting from scratch")
    set_seed(args.seed)

    # -- data and tokenizer -------------------------------------------------------------------------------
    with accelerator.main_process_first():
        corpus = data.load_corpus(
            dataset_name=None if args.train_file and args.dataset_name == "ptb" else args.dataset_name,
            dataset_config_name=args.dataset_config_name, train_file=args.train_file,
            validation_file=args.validation_file, test_file=args.test_file,
            validation_split_percentage=args.validation_split_percentage, text_column=args.text_column,
            trust_remote_code=args.trust_remote_code,
        )
    tokenizer = load_tokenizer(args, corpus, accelerator, output_dir)
    with accelerator.main_process_first():
        streams = data.tokenize_corpus(corpus, tokenizer, num_proc=args.preprocessing_num_workers)

    # -- model, optimizer, schedule -------------------------------------------------------------------------
    model = build_model(args, tokenizer)
    recurrent = getattr(model.config, "model_type", None) == "hf_lstm"
    if not recurrent and args.batching == "stream":
        raise ValueError("--batching stream needs a recurrent (hf_lstm) model; use --batching blocks")
    optimizer = build_optimizer(args, model)
    steps_per_epoch = math.ceil(len(Batches(args, streams["train"], rank, world, 0)) / args.gradient_accumulation_steps)
    total_steps = args.max_train_steps or steps_per_epoch * args.num_train_epochs
    num_epochs = math.ceil(total_steps / steps_per_epoch)
    scheduler = build_scheduler(args, optimizer, total_steps, steps_per_epoch)

    state = {"completed_steps": 0, "epoch": 0, "batch_in_epoch": 0, "tokens_seen": 0, "train_seconds": 0.0,
             "log": [], "eval_curve": [], "skipped_batches": 0}
    carried = None
    if resume_dir is not None:
        state, carried = _resume(resume_dir, model, optimizer, scheduler, rank, args)
        accelerator.print(f"resumed from {resume_dir} at step {state['completed_steps']}")
    if main:  # only now that model and checkpoint are known good: a refused run overwrites nothing
        tokenizer.save_pretrained(output_dir)
    model, optimizer = accelerator.prepare(model, optimizer)
    unwrapped = accelerator.unwrap_model(model)

    n_params = sum(p.numel() for p in unwrapped.parameters())
    context = args.bptt if args.batching == "stream" else args.block_size
    train_flops = flops_per_token(unwrapped, context_length=context, training=True)
    peak = measure_matmul_peak(seconds=0.3)
    if args.with_tracking:
        accelerator.init_trackers("hf_lstm", {k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool))})
    accelerator.print(
        f"{type(unwrapped).__name__}: {n_params / 1e6:.2f}M parameters, vocab {len(tokenizer)}, batching "
        f"{args.batching}, {world} process(es), {total_steps} steps ({steps_per_epoch} per epoch), "
        f"matmul peak {peak / 1e9:.0f} GFLOP/s"
    )

    # -- the loop ---------------------------------------------------------------------------------------------
    progress = tqdm(total=total_steps, initial=state["completed_steps"], disable=not main, desc="train",
                    dynamic_ncols=True)
    stop_reason = None
    window_start, window_tokens = time.perf_counter(), 0
    run_start = time.perf_counter() - state["train_seconds"]
    with StopSignal() as stop_signal:
        # resumed from the run's last step (a kill during the final evaluation): nothing is left to train
        first_epoch = num_epochs if state["completed_steps"] >= total_steps else state["epoch"]
        for epoch in range(first_epoch, num_epochs):
            batches = Batches(args, streams["train"], rank, world, epoch)
            cache = carried if epoch == state["epoch"] else None  # the state restarts with every epoch
            carried = None
            model.train()
            for index in range(state["batch_in_epoch"] if epoch == state["epoch"] else 0, len(batches)):
                inputs, targets = (t.to(accelerator.device) for t in batches[index])
                with accelerator.accumulate(model):
                    if args.batching == "stream":
                        past = _to_cache(cache, unwrapped) if cache is not None else None
                        out = model(input_ids=inputs, shift_labels=targets, cache=past, use_cache=True)
                        before = cache
                        cache = [tuple(t.detach() for t in s) for s in out.cache.states]
                    else:
                        out = model(input_ids=inputs, labels=targets, **({} if recurrent else {"use_cache": False}))
                    loss = out.loss
                    finite = bool(torch.isfinite(loss))
                    if not finite and args.nonfinite_loss == "stop":
                        stop_reason = (f"non-finite loss ({loss.item()}) at step {state['completed_steps'] + 1} "
                                       f"(epoch {epoch + 1}, batch {index}); the last checkpoint is kept")
                        break
                    if not finite:  # skipped: no update, and the carried state is the one before the batch
                        if args.batching == "stream":
                            cache = before
                        state["skipped_batches"] = state.get("skipped_batches", 0) + 1
                        accelerator.print(f"skipped batch {index} of epoch {epoch + 1} (step "
                                          f"{state['completed_steps'] + 1}): non-finite loss {loss.item()}")
                    if finite:
                        accelerator.backward(loss)
                        if accelerator.sync_gradients and args.max_grad_norm > 0:
                            accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                        optimizer.step()
                    optimizer.zero_grad()
                window_tokens += inputs.numel() * world
                state["tokens_seen"] += inputs.numel() * world
                state["batch_in_epoch"], state["epoch"] = index + 1, epoch
                if not accelerator.sync_gradients:
                    continue
                scheduler.step()
                state["completed_steps"] += 1
                step = state["completed_steps"]
                progress.update(1)
                loss_value = loss.item()
                state["log"].append([step, round(loss_value, 5)])
                if step % args.logging_steps == 0 or step == total_steps:
                    elapsed = time.perf_counter() - window_start
                    tokens_per_second = window_tokens / max(elapsed, 1e-9)
                    mfu = train_flops * tokens_per_second / peak
                    progress.set_postfix(loss=f"{loss_value:.3f}", tok_s=f"{tokens_per_second:.0f}", mfu=f"{mfu:.0%}")
                    record = {"step": step, "loss": loss_value, "lr": scheduler.get_last_lr()[0],
                              "tokens_seen": state["tokens_seen"], "tokens_per_second": tokens_per_second,
                              "mfu": mfu, "seconds": time.perf_counter() - run_start}
                    if args.with_tracking:
                        accelerator.log({"train/" + k: v for k, v in record.items() if k != "step"}, step=step)
                    window_start, window_tokens = time.perf_counter(), 0
                if args.eval_steps and step % args.eval_steps == 0 and main:
                    eval_start = time.perf_counter()
                    state["eval_curve"].append(_curve_point(unwrapped, streams, args, state, run_start, tokenizer))
                    model.train()
                    paused = time.perf_counter() - eval_start  # evaluation does not count as training time
                    run_start += paused
                    window_start += paused
                state["train_seconds"] = time.perf_counter() - run_start
                stop_reason = _should_stop(args, state, total_steps, stop_signal, accelerator)
                if args.checkpointing_steps not in (None, "epoch") and step % int(args.checkpointing_steps) == 0:
                    _save_checkpoint(accelerator, unwrapped, optimizer, scheduler, state, cache, f"step_{step}", args)
                if stop_reason:
                    break
            if stop_reason:
                break
            state["epoch"], state["batch_in_epoch"] = epoch + 1, 0
            if args.checkpointing_steps == "epoch":
                _save_checkpoint(accelerator, unwrapped, optimizer, scheduler, state, None, f"epoch_{epoch + 1}", args)
    progress.close()
    if stop_reason and stop_reason.startswith("non-finite"):
        kept = checkpointing.list_checkpoints(output_dir)
        stop_reason += f" ({kept[-1].name})" if kept else " (none was saved yet)"
        accelerator.print(f"stopped: {stop_reason}")
        raise FloatingPointError(stop_reason)
    if stop_reason and stop_reason.startswith("signal"):
        _save_checkpoint(accelerator, unwrapped, optimizer, scheduler, state, cache,
                         f"step_{state['completed_steps']}", args)
        accelerator.print(f"{stop_reason}: saved step_{state['completed_steps']}; resume with "
                          "--resume_from_checkpoint latest")
        accelerator.end_training()
        sys.exit(143)

    # -- evaluation and the output folder ---------------------------------------------------------------------
    accelerator.wait_for_everyone()
    results = {}
    if main:
        results = _finish(args, unwrapped, tokenizer, streams, state, n_params, train_flops, peak, world)
    accelerator.wait_for_everyone()
    if args.with_tracking:
        accelerator.log({f"eval/{k}": v for k, v in results.items() if isinstance(v, (int, float))},
                        step=state["completed_steps"])
        accelerator.end_training()
    return results


def _is_builtin_ptb(args) -> bool:
    """`--dataset_name ptb` is the default: it stands aside when the user gives --train_file."""
    return args.dataset_name == "ptb" and not args.train_file


def _to_cache(states, model):
    from .modeling_hf_lstm import LSTMCache

    return LSTMCache([tuple(states_k) for states_k in states])


def _should_stop(args, state, total_steps, stop_signal, accelerator) -> str | None:
    """Every process must stop at the same step: the reasons are agreed on through one all-reduce."""
    flags = torch.tensor([
        float(state["completed_steps"] >= total_steps),
        float(args.max_train_minutes is not None and state["train_seconds"] >= 60 * args.max_train_minutes),
        float(stop_signal.received is not None),
    ], device=accelerator.device)
    if accelerator.num_processes > 1:
        flags = accelerator.reduce(flags, reduction="sum")
    if flags[2] > 0:
        return f"signal {stop_signal.received or 'SIGTERM'} received"
    if flags[0] > 0:
        return "max_train_steps reached"
    if flags[1] > 0:
        return f"time budget of {args.max_train_minutes} minutes reached"
    return None


def _resume(folder, model, optimizer, scheduler, rank, args):
    state = checkpointing.read_trainer_state(folder)
    expected = _fingerprint(model)
    if state.get("model_fingerprint") != expected:
        raise checkpointing.CheckpointError(
            f"{folder} was saved from a different model ({state.get('model_fingerprint')}), not this one "
            f"({expected}); resume with the same --model_type/--config_overrides, or start a new --output_dir"
        )
    checkpointing.load_model_and_optimizer(folder, model, optimizer)
    scheduler.load_state_dict(state["scheduler"])
    carried = checkpointing.load_process_state(folder, rank)
    return state, carried


def _fingerprint(model) -> str:
    config = model.config
    fields = ("model_type", "vocab_size", "hidden_size", "num_hidden_layers", "cell_type", "embedding_size", "n_embd",
              "n_layer", "intermediate_size")
    described = ",".join(f"{k}={getattr(config, k)}" for k in fields if hasattr(config, k))
    return f"{type(model).__name__}({described}, params={sum(p.numel() for p in model.parameters())})"


def _save_checkpoint(accelerator, model, optimizer, scheduler, state, cache, name, args) -> None:
    """Write checkpoint `name` atomically. Weights that are no longer finite are never saved (the last good
    checkpoint stays the newest); a failed write (disk full, ...) removes its temporary folder and raises
    `CheckpointWriteError`, leaving the checkpoints saved before untouched."""
    output_dir = Path(args.output_dir)
    bad = [n for n, p in model.named_parameters() if not bool(torch.isfinite(p).all())]
    if bad:
        kept = [p.name for p in checkpointing.list_checkpoints(output_dir)]
        raise FloatingPointError(
            f"the weights became non-finite by step {state['completed_steps']} ({', '.join(bad[:3])}"
            f"{', ...' if len(bad) > 3 else ''}); checkpoint {name} was not written, the last good one is kept "
            f"({kept[-1] if kept else 'none saved yet'}): lower --learning_rate or --max_grad_norm"
        )
    tmp = checkpointing.temporary_path(output_dir, name)
    accelerator.wait_for_everyone()
    try:
        if accelerator.is_main_process:
            checkpointing.write_model_and_optimizer(tmp, model, optimizer)
        accelerator.wait_for_everyone()
        checkpointing.write_process_state(tmp, accelerator.process_index, cache)
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            saved = dict(state, scheduler=scheduler.state_dict(), model_fingerprint=_fingerprint(model),
                         args={k: v for k, v in vars(args).items()})
            checkpointing.write_trainer_state(tmp, saved)
            checkpointing.publish(output_dir, name, keep_last=args.checkpoints_total_limit)
    except (OSError, SafetensorError) as error:  # safetensors reports ENOSPC as its own error type
        checkpointing.discard(output_dir, name)
        kept = [p.name for p in checkpointing.list_checkpoints(output_dir)]
        raise checkpointing.CheckpointWriteError(
            f"could not write checkpoint {name} in {output_dir} ({_reason(error)}); its partial copy was "
            f"removed and the earlier checkpoints are kept ({', '.join(kept) if kept else 'none saved yet'}): free "
            "space (or fix the folder) and resume with --resume_from_checkpoint latest"
        ) from None
    accelerator.wait_for_everyone()


def _reason(error: Exception) -> str:
    """The operating system's words for a failed write ("No space left on device"), whoever raised it."""
    return getattr(error, "strerror", None) or str(error).split(": ")[-1] or type(error).__name__


def _curve_point(model, streams, args, state, run_start, tokenizer) -> dict:
    from .evaluation import fixed_window_perplexity

    ids = streams["validation"]
    metrics = fixed_window_perplexity(model, ids, window=args.eval_window, batch_size=args.per_device_eval_batch_size,
                                      start_token_id=tokenizer.eos_token_id)
    return {"step": state["completed_steps"], "tokens_seen": state["tokens_seen"],
            "seconds": time.perf_counter() - run_start, "validation_perplexity_fixed_window": metrics["perplexity"]}


def _finish(args, model, tokenizer, streams, state, n_params, train_flops, peak, world) -> dict:
    """Evaluate, write the Hub folder (weights, config, generation config, tokenizer, card), print the summary."""
    from .model_card import write_model_card

    output_dir = Path(args.output_dir)
    eval_splits = {k: v for k, v in streams.items() if k in ("validation", "test")}
    eval_start = time.perf_counter()
    metrics = evaluate_splits(model, eval_splits, window=args.eval_window, batch_size=args.per_device_eval_batch_size,
                              start_token_id=tokenizer.eos_token_id)
    seconds = max(state["train_seconds"], 1e-9)
    # A peak measured once at start is too low if the machine was busy just then (MFU above 100% is the tell):
    # measure again now and keep the better of the two.
    peak = max(peak, measure_matmul_peak(seconds=0.3))
    results = {
        "model_type": model.config.model_type,
        "num_parameters": n_params,
        "batching": args.batching,
        "train_steps": state["completed_steps"],
        "train_tokens": state["tokens_seen"],
        "train_seconds": round(state["train_seconds"], 1),
        "train_tokens_per_second": state["tokens_seen"] / seconds,
        "model_flops_utilization": train_flops * state["tokens_seen"] / seconds / peak,
        "matmul_peak_flops": peak,
        "num_processes": world,
        "final_train_loss": state["log"][-1][1] if state["log"] else None,
        "eval_seconds": round(time.perf_counter() - eval_start, 1),
        **metrics,
        "eval_curve": state["eval_curve"],
    }
    model.generation_config = GenerationConfig(
        do_sample=True, top_k=50, max_new_tokens=50, pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id, bos_token_id=model.config.bos_token_id,
    )
    # Written to a temporary folder, then each file moved into place atomically: a failure (disk full) never
    # leaves a half-written model.safetensors over the one a previous run saved.
    staging = checkpointing.temporary_path(output_dir, "final")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / "all_results.json").write_text(json.dumps(results, indent=2))
        (staging / "train_log.json").write_text(json.dumps(state["log"]))
        write_model_card(staging, args, results)
        for path in sorted(staging.iterdir()):
            os.replace(path, output_dir / path.name)
    except (OSError, SafetensorError) as error:
        raise checkpointing.CheckpointWriteError(
            f"could not write the model folder {output_dir} ({_reason(error)}); files already there were "
            "not overwritten. Free space and run again with --resume_from_checkpoint latest"
        ) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    _print_summary(args, results)
    if args.sample_max_new_tokens > 0:
        _print_sample(args, output_dir)
    if args.push_to_hub:
        from .hub import push_folder

        url = push_folder(output_dir, args.hub_model_id or output_dir.name, token=args.hub_token)
        print(f"pushed to {url}")
    return results


def _print_summary(args, results) -> None:
    lines = [
        f"\ntrained {results['train_steps']} steps, {results['train_tokens']:,} tokens in {results['train_seconds']:.0f} s "
        f"({results['train_tokens_per_second']:.0f} tokens/s, MFU {results['model_flops_utilization']:.0%}), "
        f"batching: {results['batching']}",
        f"{'perplexity':<52}{'validation':>12}{'test':>10}",
    ]

    def row(label, valid, test):
        fmt = lambda v: f"{v:.1f}" if isinstance(v, (int, float)) else "-"  # noqa: E731
        lines.append(f"{label:<52}{fmt(valid):>12}{fmt(test):>10}")

    row(f"this run, fixed windows of {args.eval_window}", results.get("validation_perplexity_fixed_window"),
        results.get("test_perplexity_fixed_window"))
    if "validation_perplexity_stateful" in results:
        row("this run, stateful full stream", results.get("validation_perplexity_stateful"),
            results.get("test_perplexity_stateful"))
    if _is_builtin_ptb(args) and args.tokenizer_type in (None, "word") and not args.tokenizer_name:
        lines.append("published (stateful full stream, the same 10k-word vocabulary):")
        for label, valid, test in PTB_REFERENCES:
            row("  " + label, valid, test)
    print("\n".join(lines))


def _print_sample(args, output_dir: Path) -> None:
    from transformers import pipeline

    generator = pipeline("text-generation", model=str(output_dir))
    # the folder's sampling settings with this run's length, as one object (transformers 5.0 deprecates a
    # generation_config and loose generation arguments together, and the pipeline always passes the former)
    sampling = copy.deepcopy(generator.model.generation_config)
    sampling.update(max_new_tokens=args.sample_max_new_tokens, do_sample=True, top_k=40)
    torch.manual_seed(args.seed)
    text = generator(args.sample_prompt, generation_config=sampling)
    print(f"\nsample from pipeline('text-generation', model={str(output_dir)!r}):\n  {text[0]['generated_text']}")


def main(argv: list[str] | None = None) -> int:
    """`hf-lstm train`: parse, train, and turn expected failures into one clear line and a non-zero exit
    (1 for an error; 130 for Ctrl-C outside the training loop, where there is nothing to save yet)."""
    args = parse_args(argv)
    try:
        train(args)
    except (ValueError, OSError, FloatingPointError) as error:
        print(f"hf-lstm train: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("hf-lstm train: interrupted outside the training loop (while loading or evaluating); checkpoints "
              "already saved are kept", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
