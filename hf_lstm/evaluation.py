"""Perplexity, token-weighted, in the two protocols every result of this project names.

- **fixed windows** (`fixed_window_perplexity`): the split is cut into windows of `window + 1` tokens that
  overlap by one token (`hf_lstm.data.fixed_windows`), so every token is predicted exactly once; each window
  starts from a fresh state (or an empty context). Identical for any causal LM, recurrent or Transformer:
  the fair comparison.
- **stateful full stream** (`stateful_perplexity`): a recurrent model reads the whole split as one stream,
  its state carried from window to window, as in the RNN language-modelling literature (Zaremba et al. 2014;
  Merity et al. 2017). Every token is predicted, with all of the split before it as context. With
  `batch_size > 1` the split is read as that many parallel streams (`hf_lstm.data.StreamBatcher`), as
  `hf-lstm bench` does to measure what int8 quantisation costs in perplexity.

Both return the mean negative log-likelihood per scored token (nats), its exponential, and the count.

Perplexity per token depends on the tokenizer; **bits per byte** does not: the same total negative
log-likelihood, in bits, divided by the UTF-8 bytes of the text scored (`hf_lstm.data.text_bytes`: the rows,
and one line break per row, which the row's `<eos>` stands for). It is what lm-eval reports for
`loglikelihood_rolling` tasks, and it lets a word, a BPE and a character model be compared. Two baselines put
it in scale: a uniform distribution over the vocabulary, and the unigram frequencies of the training split.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .configuration_hf_lstm import is_hf_lstm
from .data import IGNORE_INDEX, StreamBatcher, fixed_windows


def _result(total_nll: float, tokens: int) -> dict:
    loss = total_nll / max(tokens, 1)
    return {"loss": loss, "perplexity": math.exp(min(loss, 700.0)), "tokens": tokens}


@torch.no_grad()
def fixed_window_perplexity(
    model, ids: torch.LongTensor, window: int = 128, batch_size: int = 16, start_token_id: int | None = None
) -> dict:
    """Perplexity under the fixed-window protocol of `hf_lstm.data.fixed_windows`: windows of `window`
    targets, overlapping by one token, each read from a fresh state (or empty context), so every token is
    predicted exactly once. With `start_token_id` (the eos id) the first token of the split is scored too."""
    windows = fixed_windows(ids, window, start_token_id=start_token_id)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total = 0.0
    for k in range(0, len(windows), batch_size):
        inputs = windows.inputs[k : k + batch_size].to(device)
        targets = windows.targets[k : k + batch_size].to(device)
        logits = model(input_ids=inputs, **_no_cache(model)).logits
        total += F.cross_entropy(
            logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE_INDEX, reduction="sum"
        ).item()
    model.train(was_training)
    return _result(total, windows.num_scored_tokens)


@torch.no_grad()
def stateful_perplexity(
    model, ids: torch.LongTensor, bptt: int = 256, start_token_id: int | None = None, batch_size: int = 1
) -> dict:
    """Perplexity of a recurrent model reading the split as a stream, its state carried across windows of
    `bptt` tokens.

    With `batch_size=1` (the default, the protocol of this project's reports) the whole split is one stream:
    every token is scored with the entire split before it as context. With `batch_size=b` the split is cut
    into `b` contiguous streams read side by side (`hf_lstm.data.StreamBatcher`, as training reads it; the
    trailing tokens that do not fill a row are dropped), each from a fresh state: faster, and the protocol of
    the batched evaluations in the RNN literature (e.g. PyTorch's word_language_model, batch 10).

    Args:
        model: an hf_lstm causal LM.
        ids (`torch.LongTensor` of shape `(num_tokens,)`): the split as one stream of token ids.
        bptt (`int`, *optional*, defaults to 256): tokens per window (the last window may be shorter).
        start_token_id (`int`, *optional*): an id (the eos id) placed before the split, so that its first
            token is scored too.
        batch_size (`int`, *optional*, defaults to 1): streams read side by side.

    Returns:
        `dict`: `loss` (mean negative log-likelihood per scored token, nats), `perplexity` and `tokens` (the
        number scored: `num_tokens - 1` at batch 1, `batch_size * (num_tokens // batch_size - 1)` otherwise).
    """
    if not is_hf_lstm(model):
        raise ValueError(
            "the stateful full-stream protocol needs a recurrent (hf_lstm) model; use fixed windows"
        )
    if start_token_id is not None:
        ids = torch.cat([torch.tensor([start_token_id], dtype=torch.long), ids])
    if ids.dim() != 1 or ids.numel() < 2 * batch_size:
        raise ValueError(
            f"need a 1-D stream of at least 2 token ids per stream ({batch_size} stream(s)) to "
            f"evaluate, got shape {tuple(ids.shape)}"
        )
    # a window never needs to be longer than a row: one window then covers the whole row
    batcher = StreamBatcher(ids, batch_size=batch_size, bptt=min(bptt, ids.numel() // batch_size - 1))
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    cache, total = None, 0.0
    for inputs, targets in batcher:
        out = model(input_ids=inputs.to(device), cache=cache, use_cache=True)
        cache = out.cache
        total += F.cross_entropy(
            out.logits.flatten(0, 1).float(), targets.flatten().to(device), reduction="sum"
        ).item()
    model.train(was_training)
    return _result(total, batcher.num_targets)


def _no_cache(model) -> dict:
    return {} if is_hf_lstm(model) else {"use_cache": False}


def bits_per_byte(loss: float, tokens: int, num_bytes: int) -> float:
    """Mean loss (nats per token) over `tokens` tokens as bits per byte of a text of `num_bytes` bytes."""
    return loss * tokens / math.log(2) / max(num_bytes, 1)


@torch.no_grad()
def document_bits_per_byte(model, tokenizer, texts: list[str], bptt: int = 1024) -> dict:
    """Bits per byte of `texts` scored one document at a time, each from a fresh state after the tokenizer's
    eos (or bos) token, its tokens read in windows of `bptt` with the state carried: the protocol of lm-eval's
    `loglikelihood_rolling` tasks for documents shorter than its window (2048 tokens by default). The bytes
    are those of the documents' UTF-8 text."""
    prefix = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    total_nll, total_bytes, total_tokens = 0.0, 0, 0
    for text in texts:
        ids = torch.tensor([prefix, *tokenizer(text, add_special_tokens=False).input_ids])
        result = stateful_perplexity(model, ids, bptt=bptt)
        total_nll += result["loss"] * result["tokens"]
        total_tokens += result["tokens"]
        total_bytes += len(text.encode("utf-8"))
    return {
        "bits_per_byte": total_nll / math.log(2) / max(total_bytes, 1),
        "tokens": total_tokens,
        "bytes": total_bytes,
    }


def baseline_bits_per_byte(
    train_ids: torch.LongTensor, ids: torch.LongTensor, vocab_size: int, num_bytes: int
) -> dict:
    """What `ids` costs, in bits per byte, under a uniform distribution over the vocabulary and under the
    unigram frequencies of `train_ids` (add-one smoothed, so no token has probability zero)."""
    counts = torch.bincount(train_ids, minlength=vocab_size).double() + 1.0
    nll = -(counts / counts.sum()).log()[ids].sum().item()
    return {
        "uniform": bits_per_byte(math.log(vocab_size), ids.numel(), num_bytes),
        "unigram": nll / math.log(2) / max(num_bytes, 1),
    }


def evaluate_splits(
    model,
    splits: dict[str, torch.LongTensor],
    window: int = 128,
    batch_size: int = 16,
    stateful: bool | None = None,
    start_token_id: int | None = None,
    split_bytes: dict[str, int] | None = None,
) -> dict:
    """Both protocols on every given split, as flat metric names (`validation_perplexity_fixed_window`, ...),
    and bits per byte for the splits whose size in bytes `split_bytes` gives.

    `stateful` defaults to "if the model is recurrent"; Transformers get the fixed-window protocol only.
    """
    stateful = is_hf_lstm(model) if stateful is None else stateful
    metrics = {}
    for split, ids in splits.items():
        fixed = fixed_window_perplexity(
            model, ids, window=window, batch_size=batch_size, start_token_id=start_token_id
        )
        metrics[f"{split}_perplexity_fixed_window"] = fixed["perplexity"]
        metrics[f"{split}_loss_fixed_window"] = fixed["loss"]
        metrics[f"{split}_tokens_scored"] = fixed["tokens"]
        num_bytes = (split_bytes or {}).get(split)
        if num_bytes:
            metrics[f"{split}_bits_per_byte_fixed_window"] = bits_per_byte(
                fixed["loss"], fixed["tokens"], num_bytes
            )
        if stateful:
            full = stateful_perplexity(model, ids, start_token_id=start_token_id)
            metrics[f"{split}_perplexity_stateful"] = full["perplexity"]
            metrics[f"{split}_loss_stateful"] = full["loss"]
            if num_bytes:
                metrics[f"{split}_bits_per_byte_stateful"] = bits_per_byte(
                    full["loss"], full["tokens"], num_bytes
                )
    metrics["eval_window"] = window
    return metrics
