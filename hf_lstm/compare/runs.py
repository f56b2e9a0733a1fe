"""Running the trainings: one tokenizer for every model, each family's `TrainingSettings`, the budget plan,
the training itself through `hf_lstm.training.train`, and the validation curve from the run's checkpoints."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shlex
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..configuration_hf_lstm import is_hf_lstm
from ..settings import TrainingSettings
from .families import FAMILIES, get_family
from .matching import MatchedShape, format_overrides

SCHEDULE_SLACK = 1.10
WARMUP_FRACTION = 0.05

# The `hf-lstm train` options `compare` takes over unchanged, declared once in `TrainingSettings`: every data
# option, and the tokenizer options (one tokenizer is trained, or loaded, once and given to every model).
DATA_OPTIONS = tuple(f.name for f in dataclasses.fields(TrainingSettings) if f.metadata["group"] == "data")
TOKENIZER_OPTIONS = ("tokenizer_name", "tokenizer_type", "tokenizer_vocab_size", "trust_remote_code")

# Each family's training recipe (`families.Family.recipe`), as `TrainingSettings` fields; the model shape
# comes from the parameter matching (tied embeddings, no dropout), and everything can be overridden with
# --hf_lstm_train_args / --transformer_train_args (applied last, so they win). Earlier reports
# (docs/COMPARE-ptb-4M-sgd.md and the git history) trained hf_lstm with SGD, or AdamW 3e-3, from embeddings
# initialised as small as the recurrent weights, which held it back (docs/TRAINING.md, "Initialisation").
RECIPES = {name: get_family(name).recipe for name in FAMILIES}


def prepare_tokenizer(options: argparse.Namespace, output_dir: Path):
    """Load the corpus as the training script does, train one tokenizer (or load `--tokenizer_name`) and save
    it to OUTPUT_DIR/tokenizer.

    Returns:
        `tuple`: the tokenizer, its folder, and the validation split as one stream of ids.
    """
    import datasets

    from .. import data
    from ..builders import build_tokenizer

    corpus_options = {
        name: getattr(options, name) for name in DATA_OPTIONS if name != "preprocessing_num_workers"
    }
    if options.train_file and options.dataset_name == "ptb":
        corpus_options["dataset_name"] = None  # the default corpus stands aside for --train_file
    corpus = data.load_corpus(**corpus_options, trust_remote_code=options.trust_remote_code)
    tokenizer = build_tokenizer(
        corpus["train"]["text"],
        tokenizer_name=options.tokenizer_name,
        kind=options.tokenizer_type,
        vocab_size=options.tokenizer_vocab_size,
        dataset_name=None if options.train_file else options.dataset_name,
        trust_remote_code=options.trust_remote_code,
    )
    folder = output_dir / "tokenizer"
    tokenizer.save_pretrained(folder)
    validation = data.tokenize_corpus(datasets.DatasetDict(validation=corpus["validation"]), tokenizer)
    return tokenizer, folder, validation["validation"]


def settings_given(train_args: str) -> dict:
    """The `TrainingSettings` fields an `hf-lstm train` command line sets, and only those.

    Args:
        train_args (`str`): options as one shell-quoted string, e.g. `"--learning_rate 2e-3 --optimizer sgd"`.

    Returns:
        `dict`: field name to parsed value; an unknown option or a bad value exits as `hf-lstm train` would.
    """
    unset = object()  # argparse fills in a default only where the namespace has no value yet
    namespace = argparse.Namespace(**{f.name: unset for f in dataclasses.fields(TrainingSettings)})
    parsed = TrainingSettings.parser().parse_args(shlex.split(train_args), namespace)
    return {name: value for name, value in vars(parsed).items() if value is not unset}


@dataclass(frozen=True)
class BudgetPlan:
    """One run's schedule length, curve spacing and limits under the budget, by the rule every model shares.

    Args:
        schedule_steps (`int`): the steps the cosine schedule spans.
        expected_steps (`int`): the steps the budget is expected to allow.
        eval_steps (`int`): steps between two checkpoints of the validation curve.
        warmup_steps (`int`): linear warm-up steps.
        checkpoints_total_limit (`int`): checkpoints kept on disk until the curve is measured.
        logging_steps (`int`): steps between two logged training losses.
        max_train_minutes (`float`, *optional*): the clock that stops a wall-clock run; `None` under a token
            budget.
    """

    schedule_steps: int
    expected_steps: int
    eval_steps: int
    warmup_steps: int
    checkpoints_total_limit: int
    logging_steps: int
    max_train_minutes: float | None = None

    def settings_fields(self) -> dict:
        """The plan as `TrainingSettings` fields (no clock under a token budget)."""
        fields = {
            "max_train_steps": self.schedule_steps,
            "num_warmup_steps": self.warmup_steps,
            "checkpointing_steps": str(self.eval_steps),
            "checkpoints_total_limit": self.checkpoints_total_limit,
            "logging_steps": self.logging_steps,
        }
        if self.max_train_minutes is not None:
            fields["max_train_minutes"] = self.max_train_minutes
        return fields


def plan_budget(options: argparse.Namespace, timing: dict, budget: str | None = None) -> BudgetPlan:
    """Plan one run's budget: equal tokens (exactly the budget's steps), or equal wall-clock (the steps the
    warm-up predicts, x `SCHEDULE_SLACK`, the clock stopping the run).

    Curve points come from checkpoints evaluated after the run: saving one is inside the budget clock (a
    fraction of a second), evaluating it is not, unlike `--eval_steps`, whose evaluations the clock counts.

    Args:
        options (`argparse.Namespace`): `hf-lstm compare`'s options (budget, budget_minutes, budget_tokens,
            curve_points).
        timing (`dict`): `estimate_step_seconds`'s measurement (step_seconds, tokens_per_step).
        budget (`str`, *optional*): `"wall_clock"` or `"tokens"` (default: `options.budget`).
    """
    minutes = None
    if (budget or options.budget) == "tokens":
        steps = max(1, math.ceil(options.budget_tokens / timing["tokens_per_step"]))
        expected_steps = steps
    else:
        minutes = options.budget_minutes
        expected_steps = max(1, int(60 * minutes / timing["step_seconds"]))
        steps = max(1, math.ceil(SCHEDULE_SLACK * expected_steps))
    eval_steps = max(1, math.ceil(expected_steps / options.curve_points))
    return BudgetPlan(
        schedule_steps=steps,
        expected_steps=expected_steps,
        eval_steps=eval_steps,
        warmup_steps=max(1, round(WARMUP_FRACTION * steps)),
        checkpoints_total_limit=2 * options.curve_points + 4,
        logging_steps=max(1, min(50, eval_steps)),
        max_train_minutes=minutes,
    )


def family_settings(
    options: argparse.Namespace,
    shape: MatchedShape,
    tokenizer_dir: Path,
    model_dir: Path,
    plan: BudgetPlan | None = None,
    learning_rate: float | None = None,
    seed: int | None = None,
) -> TrainingSettings:
    """The settings of one family's training run.

    In order, later fields winning: the data options of `hf-lstm compare`, the shared tokenizer, the matched
    shape, the batch and windows every model shares, the family's `RECIPES` entry, the user's extra
    `--hf_lstm_train_args` or `--transformer_train_args` (the latter for every family but hf_lstm), the
    budget `plan` (none: the settings the warm-up is timed with), and the `learning_rate` and `seed` of this
    run (a point of the learning-rate sweep, a seed of several).

    Args:
        options (`argparse.Namespace`): `hf-lstm compare`'s options.
        shape (`MatchedShape`): the family's matched configuration (`name` is the family).
        tokenizer_dir (`Path`): the folder of the shared tokenizer.
        model_dir (`Path`): where the run writes its model.
        plan (`BudgetPlan`, *optional*): the budget of the run.
        learning_rate (`float`, *optional*): overrides the recipe and the extra arguments.
        seed (`int`, *optional*): overrides `--seed`.
    """
    family = get_family(shape.name)
    fields = {name: getattr(options, name) for name in DATA_OPTIONS}
    fields.update(
        trust_remote_code=options.trust_remote_code,
        tokenizer_name=str(tokenizer_dir),
        output_dir=str(model_dir),
        model_type=family.model_type,
        config_overrides=format_overrides(shape.overrides),
        seed=options.seed if seed is None else seed,
        per_device_train_batch_size=options.per_device_train_batch_size,
        bptt=options.bptt,
        block_size=options.block_size,
        eval_window=options.eval_window,
        lr_scheduler_type="cosine",
        # every corpus's result is the model at the budget's end, as on PTB; hf-lstm train's default for
        # another corpus would evaluate ten times and keep the best on validation
        load_best_model_at_end=False,
        sample_max_new_tokens=options.sample_max_new_tokens,
        **family.recipe,
    )
    extra = options.hf_lstm_train_args if is_hf_lstm(family.model_type) else options.transformer_train_args
    fields.update(settings_given(extra))
    if plan is not None:
        fields.update(plan.settings_fields())
    if learning_rate is not None:
        fields["learning_rate"] = learning_rate
    return TrainingSettings(**fields)


def _train_step(model, optimizer, inputs, recurrent: bool, max_grad_norm: float) -> None:
    out = model(input_ids=inputs, labels=inputs, **({} if recurrent else {"use_cache": False}))
    out.loss.backward()
    if max_grad_norm > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()
    optimizer.zero_grad()


def estimate_step_seconds(settings: TrainingSettings, tokenizer, seconds: float) -> dict:
    """Time real training steps (the training script's model and optimizer, random ids of the run's batch
    shape) for about `seconds`, after two untimed steps.

    Returns:
        `dict`: `step_seconds`, `timed_steps` and `tokens_per_step` (recorded as the run's `warmup_timing`).
    """
    from ..builders import TokenIds, build_model, build_optimizer

    torch.manual_seed(settings.seed)
    model = build_model(
        settings.model_type,
        vocab=TokenIds.of(tokenizer),
        config_overrides=settings.config_overrides,
        min_positions=max(settings.block_size, settings.eval_window),
    )
    model.train()
    recurrent = is_hf_lstm(model)
    optimizer = build_optimizer(model, settings.optimizer, settings.learning_rate, settings.weight_decay)
    inputs = torch.randint(0, len(tokenizer), (settings.per_device_train_batch_size, settings.context_length))
    for _ in range(2):
        _train_step(model, optimizer, inputs, recurrent, settings.max_grad_norm)
    steps, start = 0, time.perf_counter()
    while steps < 3 or time.perf_counter() - start < seconds:
        _train_step(model, optimizer, inputs, recurrent, settings.max_grad_norm)
        steps += 1
    step_seconds = (time.perf_counter() - start) / steps
    return {"step_seconds": step_seconds, "timed_steps": steps, "tokens_per_step": inputs.numel()}


@dataclass(frozen=True)
class Shared:
    """What every training run of a comparison shares: the tokenizer (and its folder), the validation stream
    the curves are measured on, and the output folder."""

    tokenizer: object
    tokenizer_dir: Path
    validation: torch.LongTensor
    output_dir: Path


@dataclass(frozen=True)
class RunSpec:
    """One training run of a family: its budget, learning rate (None: the recipe's), seed (None: `--seed`),
    the folder name under OUTPUT_DIR/models and its role (`"final"`: a run the results count; `"sweep"`: a
    learning rate the sweep tried and did not choose)."""

    budget: str
    learning_rate: float | None = None
    seed: int | None = None
    folder: str | None = None
    role: str = "final"


def train_one(
    options: argparse.Namespace,
    shape: MatchedShape,
    tokenizer,
    tokenizer_dir: Path,
    validation: torch.LongTensor,
    output_dir: Path,
    spec: RunSpec | None = None,
) -> dict:
    """Estimate the budget, train one family's model through `hf_lstm.training.train`, measure its validation
    curve, and return its record of results.json (without the generation measurements)."""
    from ..training import train
    from .generation import reset_peak_memory, resident_and_peak_bytes

    spec = spec or RunSpec(options.budget)
    model_dir = output_dir / "models" / (spec.folder or get_family(shape.name).slug)
    if model_dir.exists():
        shutil.rmtree(model_dir)  # a stale folder would be taken for a checkpoint to resume
    timing = estimate_step_seconds(
        family_settings(options, shape, tokenizer_dir, model_dir, None, spec.learning_rate, spec.seed),
        tokenizer,
        options.timing_seconds,
    )
    plan = plan_budget(options, timing, spec.budget)
    settings = family_settings(options, shape, tokenizer_dir, model_dir, plan, spec.learning_rate, spec.seed)
    print(
        f"\n=== {shape.name}: {shape.describe()}, {shape.num_parameters:,} parameters "
        f"({shape.relative_error:+.1%} of the target); {timing['step_seconds']:.3f} s/step in the warm-up, "
        f"schedule {plan.schedule_steps} steps\n    hf-lstm train {shlex.join(settings.to_argv())}",
        flush=True,
    )
    tracked = reset_peak_memory()
    results = train(settings)
    peak = resident_and_peak_bytes()[1] if tracked else None
    record = training_record(shape, settings, results, spec.budget, timing, plan)
    record.update(seed=settings.seed, role=spec.role, train_peak_rss_bytes=peak)
    record["eval_curve"] = checkpoint_curve(model_dir, validation, settings, tokenizer.eos_token_id)
    record["train_log"] = json.loads((model_dir / "train_log.json").read_text())
    record["model_dir"] = str(model_dir)
    return record


def training_record(
    shape: MatchedShape,
    settings: TrainingSettings,
    results: dict,
    budget: str,
    timing: dict,
    plan: BudgetPlan,
) -> dict:
    """A model's results.json fields about its shape and training: the match, the settings (with the command
    line that reruns it), the budget, and `hf_lstm.training.train`'s results."""
    return {
        "name": shape.name,
        "status": "ok",
        "model_type": results["model_type"],
        "shape": shape.describe(),
        "config_overrides": shape.overrides,
        "num_parameters": results["num_parameters"],
        "num_non_embedding_parameters": shape.num_non_embedding_parameters,
        "target_parameters": shape.target_parameters,
        "parameter_match_error": shape.relative_error,
        "batching": results["batching"],
        "batch_size": settings.per_device_train_batch_size,
        "sequence_length": settings.context_length,
        "optimizer": settings.optimizer,
        "learning_rate": settings.learning_rate,
        "weight_decay": settings.weight_decay,
        "train_argv": settings.to_argv(),
        "budget": budget,
        "warmup_timing": timing,
        "schedule_steps": plan.schedule_steps,
        "schedule_completed": results["train_steps"] / plan.schedule_steps,
        "train_steps": results["train_steps"],
        "train_tokens": results["train_tokens"],
        "train_seconds": results["train_seconds"],
        "train_tokens_per_second": results["train_tokens_per_second"],
        "model_flops_utilization_own_peak": results["model_flops_utilization"],
        "matmul_peak_flops_own": results["matmul_peak_flops"],
        "eval_perplexity": results["validation_perplexity_fixed_window"],
        **{key: results.get(key) for key in RESULT_KEYS},
        "eval_window": results["eval_window"],
        "final_train_loss": results["final_train_loss"],
    }


RESULT_KEYS = tuple(
    f"{split}_{metric}_{protocol}"
    for metric in ("perplexity", "bits_per_byte")
    for protocol in ("fixed_window", "stateful")
    for split in ("validation", "test")
)
"""The quality numbers a record takes from `hf_lstm.training.train`'s results (None where not measured)."""


def checkpoint_curve(
    model_dir: Path,
    validation: torch.LongTensor,
    settings: TrainingSettings,
    start_token_id: int,
    keep: bool = False,
) -> list[dict]:
    """Validation perplexity (fixed windows, as at the end of the run) of every `step_N` checkpoint the run
    saved, with the step, tokens and training seconds it was saved at.

    The checkpoints are deleted afterwards unless `keep` (each holds the optimizer state too).
    """
    from transformers import AutoModelForCausalLM

    from .. import checkpointing
    from ..evaluation import fixed_window_perplexity

    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    curve = []
    for folder in checkpointing.list_checkpoints(model_dir):
        state = checkpointing.read_trainer_state(folder)
        checkpointing.load_model_tensors(model, str(folder / "model.safetensors"))
        metrics = fixed_window_perplexity(
            model,
            validation,
            window=settings.eval_window,
            batch_size=settings.per_device_eval_batch_size,
            start_token_id=start_token_id,
        )
        curve.append(
            {
                "step": state["completed_steps"],
                "tokens_seen": state["tokens_seen"],
                "seconds": state["train_seconds"],
                "validation_perplexity_fixed_window": metrics["perplexity"],
            }
        )
        if not keep:
            shutil.rmtree(folder)
    return sorted(curve, key=lambda p: p["step"])
