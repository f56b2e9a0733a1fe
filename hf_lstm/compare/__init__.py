"""`hf-lstm compare`: an hf_lstm language model against parameter-matched peers, one table: small Transformers
(GPT-2, Llama) and the recurrent models transformers ships (Mamba, Mamba-2, xLSTM, RWKV, RecurrentGemma).

    hf-lstm compare --dataset_name ptb --models hf_lstm,gpt2,llama --target_params 4M --budget_minutes 5 \\
        --output_dir runs/compare-ptb

What one run does, in order, and the module that does it:

1. **Data and tokenizer** (`runs`). The corpus is loaded with the training script's data options (declared
   once, in `hf_lstm.settings.TrainingSettings`); one tokenizer is trained on its training split (or
   `--tokenizer_name` is used) and saved to `OUTPUT_DIR/tokenizer`, then handed to every model's training run,
   so every model sees the same ids.
2. **Parameter matching** (`matching`, with each family's shape rule from `families`). For each family a
   small grid (its preferred depths, widths on its step, e.g. 8; Mamba-2's 32 for heads of 64) is searched
   for the configuration whose *total* parameter count is nearest `--target_params` (the vocabulary is shared,
   so the total is the fair count); counts are exact, taken from the very model `hf-lstm train` would build
   (constructed on the meta device). Non-embedding counts are reported too.
3. **Training** (`runs`), each model through `hf_lstm.training.train` with the `TrainingSettings` of its
   family (`runs.family_settings`): its usual recipe (`runs.RECIPES`), hf_lstm with stream batching (state
   carried across `--bptt` windows), Transformers with shuffled blocks of `--block_size`. Budget: equal
   wall-clock (default) or equal tokens. The schedule rule is the same for all: cosine with 5% warm-up over
   `schedule_steps`; under a wall-clock budget that number is estimated from a short timed warm-up of real
   training steps, inflated by `runs.SCHEDULE_SLACK`, and the run is stopped by the clock, so if the estimate
   holds it stops at ~91% of the cosine, where the rate is ~2-3% of its peak. `schedule_completed` in the
   results says where each run really stopped. Each record keeps the `hf-lstm train` command line that reruns
   its model (`train_argv`). `sweeps` repeats this for every size (`--target_params 1M,4M`), budget
   (`--budget both`), learning rate of the sweep (`--lr_sweep N`, the same N for every family, chosen on
   validation) and seed (`--seeds N`); a family that cannot be matched, trained or loaded is kept as a record
   with the stage and the reason.
4. **Generation speed and memory** (`generation`), side by side in this process: greedy `generate()` at batch
   1 and 8 for each prompt context, the models interleaved (A, B, C, A, B, C, ...) and the median of
   `--repeats` kept, so a neighbour stealing the CPU slows every model alike. Tokens/s is the steady decoding
   rate (the prompt's prefill is timed separately). A context that does not fit a model's positions is
   recorded as null with the reason. Cache bytes come from the cache that `generate()` returns; peak resident
   memory is the process's high-water mark, reset before each call (Linux `clear_refs`).
5. **Outputs** (`report`, `tables`, `plots`): `results.json` (one record per run, failures included; each
   family's main run, the one generation is measured on, has `main: true`), `REPORT.md` with tables (code
   path beside speed; mean and spread over seeds), plots (PNG) and a
   reading generated from the numbers, and optionally each model's card copied to `--model_cards_dir` and the
   report published (with its plots) to `--publish_report`.

The command line itself (parser, `run`, `main`) is `cli`.
"""

from .cli import build_parser, main, parse_args, run
from .generation import cache_nbytes, generate_once, measure_generation
from .families import FAMILIES, PEERS, Family, code_path, get_family
from .matching import (
    MatchedShape,
    build_model_on_meta,
    count_parameters,
    match_parameters,
    parse_count,
)
from .runs import RECIPES, BudgetPlan, RunSpec, family_settings, plan_budget
from .sweeps import sweep_rates

__all__ = [
    "FAMILIES",
    "PEERS",
    "Family",
    "RunSpec",
    "code_path",
    "get_family",
    "sweep_rates",
    "RECIPES",
    "BudgetPlan",
    "MatchedShape",
    "build_model_on_meta",
    "build_parser",
    "cache_nbytes",
    "count_parameters",
    "family_settings",
    "generate_once",
    "main",
    "match_parameters",
    "measure_generation",
    "parse_args",
    "parse_count",
    "plan_budget",
    "run",
]
