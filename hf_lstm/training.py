"""Train a causal language model with Accelerate: an hf_lstm model, or any Transformer transformers knows.

`train(settings)` reads top to bottom like a nanoGPT loop: set up (`_set_up`: data, tokenizer, model,
optimizer, schedule, resume), the step (`_step`), the periodic work after a step (`_after_step`: log,
evaluate, checkpoint, decide whether to stop), and the finish (`_finish`: evaluation in both protocols and the
output folder, which is a Hub model repository: weights, config with `auto_map`, generation config,
tokenizer, model card). It runs as `hf-lstm train ...`, `python scripts/train.py ...` or
`accelerate launch scripts/train.py ...`; the options are the fields of `TrainingSettings`.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm.auto import tqdm
from transformers import GenerationConfig

from . import checkpointing, data
from .builders import (
    TimeBudget,
    TokenIds,
    build_model,
    build_optimizer,
    build_scheduler,
    build_tokenizer,
    check_model_folder,
    enable_activation_checkpointing,
    load_model,
    make_accelerator,
    parse_config_overrides,
)
from .checkpointing import StopSignal
from .configuration_hf_lstm import is_hf_lstm
from .evaluation import baseline_bits_per_byte, bits_per_byte, evaluate_splits, fixed_window_perplexity
from .flops import compute_dtype, flops_per_token, measure_matmul_peak
from .microscope.space import write_space_app
from .machine import gpu_name, machine_summary
from .model_folder import print_sample, print_summary, write_model_folder
from .modeling_hf_lstm import LSTMCache
from .settings import TrainingSettings


def _epoch_batches(settings: TrainingSettings, ids, rank: int, world: int, epoch: int) -> data.EpochBatches:
    return data.EpochBatches(
        ids,
        settings.batching,
        settings.per_device_train_batch_size,
        settings.bptt,
        settings.block_size,
        seed=settings.seed + epoch,
        process_index=rank,
        num_processes=world,
    )


@dataclass
class Run:
    """Everything one training run holds while it runs."""

    settings: TrainingSettings
    accelerator: Accelerator
    output_dir: Path
    tokenizer: object
    streams: dict
    split_bytes: dict  # UTF-8 bytes of each split's text: the denominator of bits per byte
    model: torch.nn.Module  # as Accelerate prepared it
    unwrapped: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object
    total_steps: int
    steps_per_epoch: int
    num_epochs: int
    train_flops: float
    peak: float  # FLOP/s of a large matrix product on the run's device, in the type its products compute in
    peak_dtype: str  # that type: fp32, tf32, bf16 or fp16 (`flops.compute_dtype`)
    state: dict = field(
        default_factory=lambda: {
            "completed_steps": 0,
            "epoch": 0,
            "batch_in_epoch": 0,
            "tokens_seen": 0,
            "train_seconds": 0.0,
            "log": [],
            "eval_curve": [],
            "skipped_batches": 0,
        }
    )
    eval_every: int | None = None  # steps between validation evaluations (None: none during training)
    keep_best: bool = False  # keep the weights with the best validation metric and save those at the end
    best_weights: dict | None = None  # a CPU copy of the best weights so far (written into every checkpoint)
    budget: TimeBudget | None = None  # --max_train_minutes as spent so far (read by --schedule_by time)
    stopped_by: str = ""  # why training ended: the schedule's last step, the clock, early stopping
    cache: LSTMCache | None = None  # the recurrent state carried from batch to batch (stream batching)
    carried_on_resume: LSTMCache | None = None
    run_start: float = 0.0
    window_start: float = 0.0
    window_tokens: int = 0

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process


def train(settings: TrainingSettings) -> dict:
    """Run the whole job; return the final metrics (also written to OUTPUT_DIR/all_results.json)."""
    created = not Path(settings.output_dir).exists()
    try:
        run = _set_up(settings)
    except BaseException:
        folder = Path(settings.output_dir)
        if created and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()  # a refused run leaves nothing behind
        raise
    stop_reason = _train_loop(run)
    _handle_early_stop(run, stop_reason)
    run.stopped_by = stop_reason or f"end of schedule ({run.total_steps:,} steps)"
    if stop_reason and not stop_reason.startswith("end of schedule"):
        run.accelerator.print(f"stopped at step {run.state['completed_steps']:,}: {stop_reason}")
    run.accelerator.wait_for_everyone()
    results = _finish(run) if run.main else {}
    run.accelerator.wait_for_everyone()
    if settings.with_tracking:
        run.accelerator.log(
            {f"eval/{k}": v for k, v in results.items() if isinstance(v, (int, float))},
            step=run.state["completed_steps"],
        )
        run.accelerator.end_training()
    return results


# -- set-up ----------------------------------------------------------------------------------------------


def _set_up(settings: TrainingSettings) -> Run:
    accelerator = make_accelerator(settings)
    output_dir = Path(settings.output_dir)
    if settings.model_name_or_path:  # before any data work: a damaged folder fails at once
        check_model_folder(settings.model_name_or_path)
    _claim_output_dir(settings, output_dir, accelerator)
    resume = settings.resume_from_checkpoint
    resume_dir = checkpointing.resolve(resume, output_dir) if resume else None
    if settings.resume_from_checkpoint and resume_dir is None:
        accelerator.print(f"no checkpoint in {output_dir} yet: starting from scratch")
    set_seed(settings.seed)
    tokenizer, streams, split_bytes = _load_data(settings, accelerator, output_dir)
    model = _model_for(settings, tokenizer)
    optimizer = build_optimizer(model, settings.optimizer, settings.learning_rate, settings.weight_decay)
    rank, world = accelerator.process_index, accelerator.num_processes
    scheduler, budget, total_steps, steps_per_epoch = _schedule(settings, optimizer, streams, rank, world)
    state, carried = None, None
    if resume_dir is not None:
        state, carried = checkpointing.resume(resume_dir, model, optimizer, scheduler, rank)
        accelerator.print(f"resumed from {resume_dir} at step {state['completed_steps']}")
    if accelerator.is_main_process:
        # only now that model and checkpoint are known good: a refused run overwrites nothing
        if settings.overwrite_output_dir and not settings.resume_from_checkpoint:
            for old in checkpointing.list_checkpoints(output_dir):
                checkpointing.delete_checkpoint(old)
        tokenizer.save_pretrained(output_dir)
    prepared, optimizer = accelerator.prepare(model, optimizer)
    unwrapped = accelerator.unwrap_model(prepared)
    peak_dtype = compute_dtype(accelerator.device, accelerator.mixed_precision, unwrapped.dtype)
    run = Run(
        settings,
        accelerator,
        output_dir,
        tokenizer,
        streams,
        split_bytes,
        prepared,
        unwrapped,
        optimizer,
        scheduler,
        total_steps,
        steps_per_epoch,
        math.ceil(total_steps / steps_per_epoch),
        flops_per_token(unwrapped, context_length=settings.context_length, training=True),
        measure_matmul_peak(seconds=0.3, dtype=peak_dtype, device=accelerator.device),
        peak_dtype,
    )
    run.keep_best, run.eval_every = settings.best_model_plan("validation" in streams, total_steps)
    run.budget = budget
    if state is not None:
        run.state, budget.used = state, state["train_seconds"]
        if accelerator.scaler is not None and "grad_scaler" in state:
            accelerator.scaler.load_state_dict(state["grad_scaler"])
    if resume_dir is not None:
        run.best_weights = checkpointing.load_best_weights(resume_dir)
    if carried is not None:
        run.carried_on_resume = LSTMCache(
            [tuple(t.to(accelerator.device) for t in layer) for layer in carried]
        )
    if settings.with_tracking:
        accelerator.init_trackers(
            "hf_lstm", {k: v for k, v in settings.public().items() if isinstance(v, (int, float, str, bool))}
        )
    n_params = sum(p.numel() for p in unwrapped.parameters())
    accelerator.print(
        f"{type(unwrapped).__name__}: {n_params / 1e6:.2f}M parameters, vocab {len(tokenizer)}, batching "
        f"{settings.batching}, {world} process(es), {total_steps} steps ({steps_per_epoch} per epoch), "
        f"{run.peak_dtype} matmul peak {run.peak / 1e9:.0f} GFLOP/s on {accelerator.device.type}"
    )
    return run


def _schedule(settings: TrainingSettings, optimizer, streams: dict, rank: int, world: int) -> tuple:
    """The learning-rate schedule over the run's steps, or with `--schedule_by time` over the steps or the
    minutes, whichever runs out first."""
    batches = len(_epoch_batches(settings, streams["train"], rank, world, 0))
    steps_per_epoch = math.ceil(batches / settings.gradient_accumulation_steps)
    total_steps = settings.max_train_steps or steps_per_epoch * settings.num_train_epochs
    budget = TimeBudget(settings.max_train_minutes if settings.schedule_by == "time" else None)
    scheduler = build_scheduler(
        optimizer,
        settings.lr_scheduler_type,
        total_steps,
        steps_per_epoch,
        settings.num_warmup_steps,
        settings.lr_decay,
        settings.lr_decay_start_epoch,
        budget,
    )
    return scheduler, budget, total_steps, steps_per_epoch


def _claim_output_dir(settings: TrainingSettings, output_dir: Path, accelerator: Accelerator) -> None:
    """Make `output_dir` this run's. A folder that already holds files is another run's (or the user's): it
    is refused unless this run resumes it (`--resume_from_checkpoint`) or replaces it
    (`--overwrite_output_dir`: the old run's checkpoints are removed once this run's model and data have
    loaded, so `latest` cannot find them and a refused run changes nothing)."""
    if accelerator.is_main_process:
        held = sorted(p.name for p in output_dir.iterdir()) if output_dir.is_dir() else []
        if held and not (settings.resume_from_checkpoint or settings.overwrite_output_dir):
            shown = ", ".join(held[:4]) + (", ..." if len(held) > 4 else "")
            raise ValueError(
                f"--output_dir {output_dir} already holds {len(held)} file(s) or folder(s) ({shown}); "
                "continue that run with --resume_from_checkpoint latest, replace it with "
                "--overwrite_output_dir, or choose a new --output_dir"
            )
        output_dir.mkdir(parents=True, exist_ok=True)
        checkpointing.remove_leftovers(output_dir)
    accelerator.wait_for_everyone()


def _load_data(settings: TrainingSettings, accelerator: Accelerator, output_dir: Path):
    """The corpus, its tokenizer (see `_tokenizer_source`) and every split as one stream of token ids."""
    with accelerator.main_process_first():
        corpus = data.load_corpus(
            dataset_name=None
            if settings.train_file and settings.dataset_name == "ptb"
            else settings.dataset_name,
            dataset_config_name=settings.dataset_config_name,
            train_file=settings.train_file,
            validation_file=settings.validation_file,
            test_file=settings.test_file,
            validation_split_percentage=settings.validation_split_percentage,
            text_column=settings.text_column,
            trust_remote_code=settings.trust_remote_code,
        )
    with accelerator.main_process_first():
        tokenizer = build_tokenizer(
            corpus["train"]["text"],
            tokenizer_name=_tokenizer_source(settings, output_dir),
            kind=settings.tokenizer_type,
            vocab_size=settings.tokenizer_vocab_size,
            dataset_name=None if settings.train_file else settings.dataset_name,
            min_frequency=settings.tokenizer_min_frequency,
            trust_remote_code=settings.trust_remote_code,
        )
        streams = data.tokenize_corpus(corpus, tokenizer, num_proc=settings.preprocessing_num_workers)
    _warn_about_unknown_words(tokenizer, streams, accelerator)
    split_bytes = {split: data.text_bytes(corpus[split]["text"]) for split in corpus}
    return tokenizer, streams, split_bytes


def _warn_about_unknown_words(tokenizer, streams: dict, accelerator: Accelerator) -> None:
    """One warning when more than 5% of the validation tokens are unknown to the tokenizer: the model gives
    all of them one probability, and held-out perplexity suffers for it."""
    rate = data.unknown_token_rate(tokenizer, streams["validation"]) if "validation" in streams else None
    if rate is not None and rate > 0.05:
        accelerator.print(
            f"warning: {rate:.1%} of the validation tokens are unknown to the tokenizer: use "
            "--tokenizer_type bpe (nothing is unknown to it), a larger training split, or a smaller "
            "--tokenizer_min_frequency"
        )


def _tokenizer_source(settings: TrainingSettings, output_dir: Path) -> str | None:
    """Where the run's tokenizer comes from: `--tokenizer_name`; else the one a resumed run saved; else the
    model's own (a model folder's tokenizer is part of the model: fine-tuning keeps it); else None, and a new
    one is trained on the training split."""
    if settings.tokenizer_name:
        return settings.tokenizer_name
    if settings.resume_from_checkpoint and (output_dir / "tokenizer.json").is_file():
        return str(output_dir)
    model = settings.model_name_or_path
    if model is None:
        return None
    if Path(model).is_dir() and not any(
        (Path(model) / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json")
    ):
        raise ValueError(
            f"--model_name_or_path {model} has no tokenizer (tokenizer.json); a model needs the tokenizer "
            "it was trained with: pass it with --tokenizer_name"
        )
    return model


def _model_for(settings: TrainingSettings, tokenizer):
    if settings.model_name_or_path:
        model = load_model(settings.model_name_or_path, len(tokenizer), settings.trust_remote_code)
    else:
        model = build_model(
            settings.model_type,
            vocab=TokenIds.of(tokenizer),
            config_overrides={
                **settings.regularization_overrides(),
                **parse_config_overrides(settings.config_overrides or ""),
            },
            config_name=settings.config_name,
            trust_remote_code=settings.trust_remote_code,
            min_positions=max(settings.block_size, settings.eval_window),
        )
    if settings.batching == "stream" and not is_hf_lstm(model):
        raise ValueError("--batching stream needs a recurrent (hf_lstm) model; use --batching blocks")
    if settings.gradient_checkpointing:
        enable_activation_checkpointing(model)
    return model


# -- the loop --------------------------------------------------------------------------------------------


def _train_loop(run: Run) -> str | None:
    """Train until the schedule ends or something stops the run; return why it stopped early (or None)."""
    state = run.state
    run.window_start, run.window_tokens = time.perf_counter(), 0
    run.run_start = time.perf_counter() - state["train_seconds"]
    # resumed from the run's last step (a kill during the final evaluation): nothing is left to train
    first_epoch = run.num_epochs if state["completed_steps"] >= run.total_steps else state["epoch"]
    progress = tqdm(
        total=run.total_steps,
        initial=state["completed_steps"],
        disable=not run.main,
        desc="train",
        dynamic_ncols=True,
    )
    with StopSignal() as stop_signal, progress:
        for epoch in range(first_epoch, run.num_epochs):
            stop_reason = _train_epoch(run, epoch, stop_signal, progress)
            if stop_reason:
                return stop_reason
            state["epoch"], state["batch_in_epoch"] = epoch + 1, 0
            if run.settings.checkpointing_steps == "epoch":
                _save_checkpoint(run, f"epoch_{epoch + 1}", with_cache=False)
    return None


def _train_epoch(run: Run, epoch: int, stop_signal: StopSignal, progress) -> str | None:
    state, world = run.state, run.accelerator.num_processes
    batches = _epoch_batches(run.settings, run.streams["train"], run.accelerator.process_index, world, epoch)
    resuming_this_epoch = epoch == state["epoch"]
    run.cache = run.carried_on_resume if resuming_this_epoch else None  # the state restarts with every epoch
    run.carried_on_resume = None
    run.model.train()
    for index in range(state["batch_in_epoch"] if resuming_this_epoch else 0, len(batches)):
        inputs, targets = (t.to(run.accelerator.device) for t in batches[index])
        loss = _step(run, inputs, targets)
        if not math.isfinite(loss):
            step = state["completed_steps"] + 1
            if run.settings.nonfinite_loss == "stop":
                return (
                    f"non-finite loss ({loss}) at step {step} (epoch {epoch + 1}, batch {index}); the last "
                    "checkpoint is kept"
                )
            run.accelerator.print(
                f"skipped batch {index} of epoch {epoch + 1} (step {step}): non-finite loss {loss}"
            )
        run.window_tokens += inputs.numel() * world
        state["tokens_seen"] += inputs.numel() * world
        state["batch_in_epoch"], state["epoch"] = index + 1, epoch
        if not run.accelerator.sync_gradients:
            continue
        stop_reason = _after_step(run, loss, stop_signal, progress)
        if stop_reason:
            return stop_reason
    return None


def _step(run: Run, inputs: torch.LongTensor, targets: torch.LongTensor) -> float:
    """One forward and backward pass (and an optimizer step when accumulation is complete); returns the loss.
    A non-finite loss changes neither the weights nor the carried state (the caller stops, or skips the batch
    under `--nonfinite_loss skip`)."""
    settings, accelerator = run.settings, run.accelerator
    with accelerator.accumulate(run.model):
        if settings.batching == "stream":
            # a copy of the carried state, cut from the previous batch's graph: the forward updates it in
            # place
            past = run.cache.detach() if run.cache is not None else None
            out = run.model(input_ids=inputs, shift_labels=targets, cache=past, use_cache=True)
        else:
            no_cache = {} if is_hf_lstm(run.unwrapped) else {"use_cache": False}
            out = run.model(input_ids=inputs, labels=targets, **no_cache)
        loss = out.loss
        if not bool(torch.isfinite(loss)):
            if settings.nonfinite_loss == "stop":
                return loss.item()
            run.state["skipped_batches"] = run.state.get("skipped_batches", 0) + 1  # the caller reports it
        else:
            if settings.batching == "stream":
                run.cache = out.cache  # truncated BPTT: its values go on, its history is cut at the next step
            accelerator.backward(loss)
            if accelerator.sync_gradients and settings.max_grad_norm > 0:
                accelerator.clip_grad_norm_(run.model.parameters(), settings.max_grad_norm)
            run.optimizer.step()
        run.optimizer.zero_grad()
    return loss.item()


def _after_step(run: Run, loss: float, stop_signal: StopSignal, progress) -> str | None:
    """The periodic work once an optimizer step is complete: schedule, log, evaluate, checkpoint, stop?"""
    settings, state = run.settings, run.state
    run.scheduler.step()
    state["completed_steps"] += 1
    step = state["completed_steps"]
    progress.update(1)
    state["log"].append([step, round(loss, 5)])
    if step % settings.logging_steps == 0 or step == run.total_steps:
        _log(run, loss, progress)
    if run.eval_every and step % run.eval_every == 0 and run.main:
        paused = time.perf_counter()
        state["eval_curve"].append(_curve_point(run))
        if run.keep_best:
            _consider_best(run, state["eval_curve"][-1])
        run.model.train()
        paused = time.perf_counter() - paused  # evaluation does not count as training time
        run.run_start += paused
        run.window_start += paused
    state["train_seconds"] = time.perf_counter() - run.run_start
    stop_reason = _should_stop(run, stop_signal)
    if settings.checkpointing_steps not in (None, "epoch") and step % int(settings.checkpointing_steps) == 0:
        _save_checkpoint(run, f"step_{step}")
    return stop_reason


def _log(run: Run, loss: float, progress) -> None:
    elapsed = time.perf_counter() - run.window_start
    tokens_per_second = run.window_tokens / max(elapsed, 1e-9)
    mfu = run.train_flops * tokens_per_second / run.peak
    shown = f"{mfu:.0%}" if mfu <= 1 else "unknown (peak measured on a busier machine)"
    progress.set_postfix(loss=f"{loss:.3f}", tok_s=f"{tokens_per_second:.0f}", mfu=shown)
    if run.settings.with_tracking:
        record = {
            "loss": loss,
            "lr": run.scheduler.get_last_lr()[0],
            "tokens_seen": run.state["tokens_seen"],
            "tokens_per_second": tokens_per_second,
            "mfu": mfu,
            "seconds": time.perf_counter() - run.run_start,
        }
        run.accelerator.log({"train/" + k: v for k, v in record.items()}, step=run.state["completed_steps"])
    run.window_start, run.window_tokens = time.perf_counter(), 0


def _curve_point(run: Run) -> dict:
    metrics = fixed_window_perplexity(
        run.unwrapped,
        run.streams["validation"],
        window=run.settings.eval_window,
        batch_size=run.settings.per_device_eval_batch_size,
        start_token_id=run.tokenizer.eos_token_id,
    )
    return {
        "step": run.state["completed_steps"],
        "tokens_seen": run.state["tokens_seen"],
        # rounded as all_results.json rounds train_seconds, so that no point lies after the end of training
        "seconds": round(time.perf_counter() - run.run_start, 1),
        "validation_perplexity_fixed_window": metrics["perplexity"],
        "validation_loss_fixed_window": metrics["loss"],
        "validation_bits_per_byte_fixed_window": bits_per_byte(
            metrics["loss"], metrics["tokens"], run.split_bytes["validation"]
        ),
    }


def _consider_best(run: Run, point: dict) -> None:
    """Keep the weights of this evaluation if its metric beats every earlier one; count it otherwise."""
    state, metric = run.state, run.settings.metric_for_best_model
    value = point[f"validation_{metric}_fixed_window"]
    if state.get("best_metric") is None or value < state["best_metric"]:
        state["best_metric"], state["best_step"], state["evals_without_improvement"] = value, point["step"], 0
        run.best_weights = {k: v.detach().to("cpu", copy=True) for k, v in run.unwrapped.state_dict().items()}
    else:
        state["evals_without_improvement"] = state.get("evals_without_improvement", 0) + 1


def _should_stop(run: Run, stop_signal: StopSignal) -> str | None:
    """Every process must stop at the same step: the reasons are agreed on through one all-reduce."""
    settings, state = run.settings, run.state
    flags = torch.tensor(
        [
            float(state["completed_steps"] >= run.total_steps),
            float(
                settings.max_train_minutes is not None
                and state["train_seconds"] >= 60 * settings.max_train_minutes
            ),
            float(stop_signal.received is not None),
            float(
                settings.early_stopping_patience is not None
                and state.get("evals_without_improvement", 0) >= settings.early_stopping_patience
            ),
            state["train_seconds"],
        ],
        device=run.accelerator.device,
    )
    if run.accelerator.num_processes > 1:
        flags = run.accelerator.reduce(flags, reduction="sum")
    run.budget.used = float(flags[4]) / run.accelerator.num_processes  # the same on every process
    if flags[2] > 0:
        return f"signal {stop_signal.received or 'SIGTERM'} received"
    if flags[0] > 0:
        return f"end of schedule ({run.total_steps:,} steps)"
    if flags[1] > 0:
        return f"time budget of {settings.max_train_minutes} minutes reached"
    if flags[3] > 0:
        return (
            f"early stopping: no better validation {settings.metric_for_best_model} in "
            f"{settings.early_stopping_patience} evaluations"
        )
    return None


def _handle_early_stop(run: Run, stop_reason: str | None) -> None:
    """A non-finite loss ends the run with an error naming the checkpoint kept; a signal saves and exits
    143."""
    if stop_reason and stop_reason.startswith("non-finite"):
        kept = checkpointing.list_checkpoints(run.output_dir)
        stop_reason += f" ({kept[-1].name})" if kept else " (none was saved yet)"
        run.accelerator.print(f"stopped: {stop_reason}")
        raise FloatingPointError(stop_reason)
    if stop_reason and stop_reason.startswith("signal"):
        name = f"step_{run.state['completed_steps']}"
        _save_checkpoint(run, name)
        run.accelerator.print(f"{stop_reason}: saved {name}; resume with --resume_from_checkpoint latest")
        run.accelerator.end_training()
        sys.exit(143)


def _save_checkpoint(run: Run, name: str, with_cache: bool = True) -> None:
    if run.accelerator.scaler is not None:  # fp16's loss scale: a resumed run goes on with the same one
        run.state["grad_scaler"] = run.accelerator.scaler.state_dict()
    checkpointing.save_training_checkpoint(
        run.accelerator,
        run.output_dir,
        name,
        model=run.unwrapped,
        optimizer=run.optimizer,
        scheduler=run.scheduler,
        state=run.state,
        stream_state=run.cache.states if with_cache and run.cache is not None else None,
        best_weights=run.best_weights,
        settings=run.settings.public(),
        keep_last=run.settings.checkpoints_total_limit,
    )


# -- the finish ------------------------------------------------------------------------------------------


def _finish(run: Run) -> dict:
    """Evaluate, write the Hub folder (weights, config, generation config, tokenizer, card), print the
    summary."""
    settings = run.settings
    if run.keep_best and run.best_weights is not None:
        run.unwrapped.load_state_dict(run.best_weights)
    results = _evaluate(run)
    if run.keep_best:
        results.update(
            best_step=run.state.get("best_step"),
            best_metric=run.state.get("best_metric"),
            metric_for_best_model=f"validation_{settings.metric_for_best_model}_fixed_window",
        )
    run.unwrapped.generation_config = GenerationConfig(
        do_sample=True,
        top_k=50,
        max_new_tokens=50,
        pad_token_id=run.tokenizer.pad_token_id,
        eos_token_id=run.tokenizer.eos_token_id,
        bos_token_id=run.unwrapped.config.bos_token_id,
    )
    write_model_folder(
        run.output_dir,
        run.unwrapped,
        run.tokenizer,
        results,
        run.state["log"],
        card={
            "name": run.output_dir.name,
            "dataset": settings.train_file or settings.dataset_name,
            "dataset_config": settings.dataset_config_name,
            "command": settings.to_argv(),
        },
    )
    if settings.write_space_app:
        write_space_app(run.output_dir)
    ptb_words = (
        settings.uses_builtin_ptb
        and settings.tokenizer_type in (None, "word")
        and not settings.tokenizer_name
    )
    print_summary(results, settings.eval_window, with_ptb_references=ptb_words)
    if settings.sample_max_new_tokens > 0:
        print_sample(run.output_dir, settings.sample_prompt, settings.sample_max_new_tokens, settings.seed)
    if settings.push_to_hub:
        from .hub import push_folder

        url = push_folder(
            run.output_dir, settings.hub_model_id or run.output_dir.name, token=settings.hub_token
        )
        print(f"pushed to {url}")
    return results


def _evaluate(run: Run) -> dict:
    """Both protocols on validation and test, and the run's measured speed, as all_results.json holds them."""
    settings, state, model = run.settings, run.state, run.unwrapped
    eval_splits = {k: v for k, v in run.streams.items() if k in ("validation", "test")}
    eval_start = time.perf_counter()
    metrics = evaluate_splits(
        model,
        eval_splits,
        window=settings.eval_window,
        batch_size=settings.per_device_eval_batch_size,
        start_token_id=run.tokenizer.eos_token_id,
        split_bytes=run.split_bytes,
    )
    for split, ids in eval_splits.items():
        baselines = baseline_bits_per_byte(
            run.streams["train"], ids, len(run.tokenizer), run.split_bytes[split]
        )
        metrics.update({f"{split}_bits_per_byte_{name}": value for name, value in baselines.items()})
    seconds = max(state["train_seconds"], 1e-9)
    # A peak measured once at start is too low if the machine was busy just then (MFU above 100% is the tell):
    # measure again now and keep the better of the two.
    device = run.accelerator.device
    peak = max(run.peak, measure_matmul_peak(seconds=0.3, dtype=run.peak_dtype, device=device))
    return {
        "model_type": model.config.model_type,
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "batching": settings.batching,
        "train_steps": state["completed_steps"],
        "train_tokens": state["tokens_seen"],
        "train_seconds": round(state["train_seconds"], 1),
        "train_tokens_per_second": state["tokens_seen"] / seconds,
        "model_flops_utilization": run.train_flops * state["tokens_seen"] / seconds / peak,
        "matmul_peak_flops": peak,
        "matmul_peak_dtype": run.peak_dtype,
        "device": gpu_name() if device.type == "cuda" else f"CPU {machine_summary()}",
        "mixed_precision": run.accelerator.mixed_precision,
        "gradient_checkpointing": settings.gradient_checkpointing,
        "num_processes": run.accelerator.num_processes,
        "final_train_loss": state["log"][-1][1] if state["log"] else None,
        "final_learning_rate": run.scheduler.get_last_lr()[0],
        "stopped_by": run.stopped_by,
        "eval_seconds": round(time.perf_counter() - eval_start, 1),
        **metrics,
        "eval_curve": state["eval_curve"],
    }


def main(argv: list[str] | None = None) -> int:
    """`hf-lstm train`: parse, train, and turn expected failures into one clear line and a non-zero exit
    (1 for an error; 130 for Ctrl-C outside the training loop, where there is nothing to save yet)."""
    settings = TrainingSettings.from_argv(argv)
    try:
        train(settings)
    except (ValueError, OSError, FloatingPointError) as error:
        print(f"hf-lstm train: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(
            "hf-lstm train: interrupted outside the training loop (while loading or evaluating); checkpoints "
            "already saved are kept",
            file=sys.stderr,
        )
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
