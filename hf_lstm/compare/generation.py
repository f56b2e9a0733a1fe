"""Generation speed and memory: greedy `generate()` of every model at every batch size and prompt context, the
models interleaved within each repeat so a neighbour stealing the CPU slows every model alike."""

from __future__ import annotations

import ctypes
import gc
import math
import statistics
import time

import torch

from ..configuration_hf_lstm import is_hf_lstm
from ..modeling_hf_lstm import cache_of


def resident_and_peak_bytes() -> tuple[int | None, int | None]:
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


def reset_peak_memory() -> bool:
    """Release freed heap memory to the system and reset the high-water mark to the current RSS (Linux >= 4.0:
    writing 5 to /proc/self/clear_refs), so the next reading is the peak of what follows.

    Returns:
        `bool`: whether the high-water mark could be reset.
    """
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


def _tensors_in(value, found: dict, depth: int = 0) -> None:
    """Every tensor reachable from `value` (tensors, lists, tuples, dicts, and the attributes of objects such
    as transformers' `Cache` and its layers), by identity of its storage."""
    if isinstance(value, torch.Tensor):
        if value.device.type != "meta":
            found[(value.untyped_storage().data_ptr(), value.storage_offset(), value.shape)] = value
        return
    if depth > 6 or value is None or isinstance(value, (int, float, str, bool, torch.nn.Module)):
        return
    if isinstance(value, (list, tuple, set)):
        items = value
    elif isinstance(value, dict):
        items = value.values()
    elif hasattr(value, "__dict__"):
        items = vars(value).values()
    else:
        return
    for item in items:
        _tensors_in(item, found, depth + 1)


def model_held_state(model) -> list[torch.Tensor]:
    """Tensors a model keeps on its modules, outside its parameters and buffers, under a name that says state:
    the recurrent state some models hold there instead of in the cache (RecurrentGemma's `recurrent_states`
    and `conv1d_state`)."""
    held = []
    for module in model.modules():
        for name, value in vars(module).items():
            if isinstance(value, torch.Tensor) and "state" in name:
                held.append(value)
    return held


def cache_nbytes(cache, model=None) -> int | None:
    """Bytes of the state a model decodes from: `LSTMCache.nbytes`, else every tensor the cache object holds
    (transformers' `Cache` layers: keys and values, or Mamba's convolution and SSM states; xLSTM's matrix
    memory; RWKV's state list), plus the state tensors `model` keeps on its own modules, each counted once.
    Measured on the actual tensors, not computed from the configuration."""
    if cache is None and model is None:
        return None
    if hasattr(cache, "nbytes") and not isinstance(cache, torch.Tensor):
        return int(cache.nbytes)
    found: dict = {}
    _tensors_in(cache, found)
    for tensor in model_held_state(model) if model is not None else []:
        _tensors_in(tensor, found)
    if not found:
        return None
    return sum(t.numel() * t.element_size() for t in found.values())


def cache_length(cache) -> int | None:
    """Tokens in a cache that counts them (`get_seq_length`); None for a recurrent state, which does not."""
    try:
        return int(cache.get_seq_length()) if hasattr(cache, "get_seq_length") else None
    except (ValueError, TypeError, AttributeError):  # transformers' linear-attention caches refuse
        return None


def position_limit(model) -> int | None:
    """The longest sequence a model can represent (learned or configured positions); None for a recurrent
    one (RWKV's `context_length` only sizes its CUDA kernel) and for RecurrentGemma (local attention over a
    sliding window, rotary positions)."""
    config = model.config
    if is_hf_lstm(config) or config.model_type in ("rwkv", "recurrent_gemma", "mamba", "mamba2", "xlstm"):
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
    """One greedy `generate()` of exactly `new_tokens` tokens.

    Returns:
        `dict`: the steady decoding tokens/s (the prefill and first token left out), prefill seconds,
        end-to-end tokens/s, cache bytes and tokens, and the peak resident memory of the call (absolute and
        above the memory before it).
    """
    from transformers import StoppingCriteriaList

    from ..timing import StepClock

    clock = StepClock()
    tracked = reset_peak_memory()
    before, _ = resident_and_peak_bytes()
    start = time.perf_counter()
    with torch.no_grad():
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=model.config.pad_token_id,
            stopping_criteria=StoppingCriteriaList([clock]),
            return_dict_in_generate=True,
        )
    total = time.perf_counter() - start
    _, peak = resident_and_peak_bytes()
    steps = len(clock.times)
    decode = (clock.times[-1] - clock.times[0]) / (steps - 1) if steps > 1 else float("nan")
    cache = cache_of(out)
    return {
        "tokens_per_second": ids.shape[0] / decode if steps > 1 else None,
        "prefill_seconds": clock.times[0] - start if steps else None,
        "end_to_end_tokens_per_second": ids.shape[0] * steps / total,
        "cache_bytes": cache_nbytes(cache, model),
        "cache_tokens": cache_length(cache),
        "peak_rss_bytes": peak if tracked else None,
        "peak_rss_increase_bytes": (peak - before) if tracked and peak and before else None,
    }


def _too_long(models: dict, context: int, new_tokens: int) -> dict[str, str]:
    """Why each model that cannot hold `context + new_tokens` positions is skipped, by name."""
    reasons = {}
    for name, model in models.items():
        limit = position_limit(model)
        if limit is not None and context + new_tokens > limit:
            reasons[name] = (
                f"prompt {context} + {new_tokens} new tokens exceeds the model's {limit} positions"
            )
    return reasons


def _median_of(runs: list[dict]) -> dict:
    """Each measurement of `generate_once` as the median of its repeats (None where no repeat measured it)."""
    record = {}
    for key in runs[0]:
        values = [r[key] for r in runs if r[key] is not None]
        record[key] = statistics.median(values) if values else None
    record["repeats"] = len(runs)
    return record


def measure_generation(
    models: dict,
    stream: torch.LongTensor,
    contexts: list[int],
    batch_sizes: list[int],
    new_tokens: int,
    repeats: int,
    trained_positions: dict[str, int | None],
) -> dict[str, list[dict]]:
    """Every (batch, context) cell for every model, models interleaved within each repeat, median kept.

    A cell whose prompt plus new tokens exceed a model's positions is a record with `tokens_per_second: null`
    and a `reason`; a cell beyond the positions a model was trained on gets a `note`. Errors (e.g. out of
    memory) are recorded as the reason instead of stopping the run.

    Args:
        models (`dict`): name to loaded model.
        stream (`torch.LongTensor`): the validation ids the prompts are cut from.
        contexts (`list[int]`): prompt lengths.
        batch_sizes (`list[int]`): prompts per `generate()` call.
        new_tokens (`int`): tokens generated per call.
        repeats (`int`): interleaved repeats per cell.
        trained_positions (`dict`): name to the positions the model was trained on (None: recurrent).

    Returns:
        `dict[str, list[dict]]`: name to its cells, each with `batch_size`, `context` and `new_tokens`.
    """
    records: dict[str, list[dict]] = {name: [] for name in models}
    for batch in batch_sizes:
        for context in contexts:
            ids = prompt_ids(stream, context, batch)
            runs: dict[str, list[dict]] = {name: [] for name in models}
            skipped = _too_long(models, context, new_tokens)
            for _ in range(repeats):
                for name, model in models.items():
                    if name in skipped:
                        continue
                    try:
                        runs[name].append(generate_once(model, ids, new_tokens))
                    except Exception as error:  # any crash is this cell's reason, not the run's end
                        skipped[name] = f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
            for name in models:
                record = {"batch_size": batch, "context": context, "new_tokens": new_tokens}
                if name in skipped:
                    record.update(tokens_per_second=None, reason=skipped[name])
                else:
                    record.update(_median_of(runs[name]))
                    trained = trained_positions.get(name)
                    if trained is not None and context + new_tokens > trained:
                        record["note"] = (
                            f"beyond the {trained} positions it was trained on: speed is "
                            "meaningful, the text is extrapolation"
                        )
                records[name].append(record)
                print(
                    f"generate {name:<8} batch {batch} context {context:>5}: "
                    + (
                        f"{record['tokens_per_second']:.0f} tok/s"
                        if record.get("tokens_per_second")
                        else f"skipped ({record.get('reason')})"
                    ),
                    flush=True,
                )
    return records
