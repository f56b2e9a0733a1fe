"""Three ways to cut a token stream: carried-state windows for truncated backpropagation through time
(`StreamBatcher`), independent blocks (`group_texts_dataset`), and the fixed-window evaluation protocol
(`fixed_windows`)."""

from __future__ import annotations

import logging
import math
import operator
from collections.abc import Iterator
from dataclasses import dataclass

import torch

logger = logging.getLogger(__name__)


IGNORE_INDEX = -100
"""Target value that `torch.nn.functional.cross_entropy` (and every Hugging Face loss) skips."""


def _check_stream(ids: torch.Tensor, name: str = "ids") -> torch.LongTensor:
    if not isinstance(ids, torch.Tensor):
        raise ValueError(
            f"{name} must be a torch tensor of token ids (from tokenize_corpus), got {type(ids).__name__}."
        )
    if ids.dim() != 1 or ids.dtype.is_floating_point or ids.dtype == torch.bool:
        raise ValueError(
            f"{name} must be a 1-D tensor of integer token ids (one split from "
            f"tokenize_corpus), got shape {tuple(ids.shape)} and dtype {ids.dtype}."
        )
    return ids.long()


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}.")


# --------------------------------------------------------------------------------------------------------
# Batching 1: carried-state streams (truncated BPTT)
# --------------------------------------------------------------------------------------------------------


class StreamBatcher:
    """Windows over parallel token streams for truncated backpropagation through time (TBPTT).

    This is `batchify`/`get_batch` from PyTorch's word_language_model, batch-first and aware of
    distributed training. The token stream is cut into `batch_size * num_processes` contiguous pieces
    of equal length `stream_length` (trailing tokens that do not fill a row are dropped); process `k`
    owns rows `[k * batch_size, (k + 1) * batch_size)`. Iterating yields `(inputs, targets)` windows
    of shape `(batch_size, L)` walking along the rows: `L = bptt` except possibly for the last,
    shorter window, and `targets` are `inputs` shifted by one token along each row. Row `b` of a
    window continues row `b` of the previous one, so the recurrent state of the previous window is the
    right initial state for the next (detach it between windows).

    `len(batcher)` is the number of windows, the same on every process, so all processes step together.
    Windows are indexed (`batcher[n]`), so a run resumed after window `n - 1` continues exactly at
    `batcher[n]`.

    ```python
    batcher = StreamBatcher(streams["train"], batch_size=20, bptt=35)
    for inputs, targets in batcher:   # each (20, 35); 1,328 windows on PTB train
        ...
    ```
    """

    def __init__(
        self,
        ids: torch.LongTensor,
        batch_size: int,
        bptt: int,
        process_index: int = 0,
        num_processes: int = 1,
    ):
        ids = _check_stream(ids)
        _check_positive(batch_size=batch_size, bptt=bptt, num_processes=num_processes)
        if not isinstance(process_index, int) or not 0 <= process_index < num_processes:
            raise ValueError(
                f"process_index must be in [0, num_processes={num_processes}), got {process_index!r}."
            )
        rows = batch_size * num_processes
        needed = rows * (bptt + 1)
        if ids.numel() < needed:
            raise ValueError(
                f"The token stream has {ids.numel():,} tokens, fewer than one window needs: batch_size "
                f"{batch_size} x {num_processes} process(es) x (bptt {bptt} + 1 target) = {needed:,}. "
                "Use a smaller batch size or bptt (or more text)."
            )
        self.batch_size = batch_size
        self.bptt = bptt
        self.process_index = process_index
        self.num_processes = num_processes
        self.stream_length = ids.numel() // rows
        """Tokens per row (every row of every process has this many)."""
        all_rows = ids[: rows * self.stream_length].view(rows, self.stream_length)
        self.streams = all_rows[process_index * batch_size : (process_index + 1) * batch_size]
        """This process's rows, shape `(batch_size, stream_length)`."""

    def __len__(self) -> int:
        return math.ceil((self.stream_length - 1) / self.bptt)

    @property
    def num_targets(self) -> int:
        """Target tokens this process predicts in one pass: `batch_size * (stream_length - 1)`."""
        return self.batch_size * (self.stream_length - 1)

    def __getitem__(self, window: int) -> tuple[torch.LongTensor, torch.LongTensor]:
        """The `window`-th `(inputs, targets)` pair (negative indices count from the end)."""
        try:
            window = operator.index(window)
        except TypeError:
            raise ValueError(f"Window index must be an integer, got {type(window).__name__}.") from None
        if window < 0:
            window += len(self)
        if not 0 <= window < len(self):
            raise IndexError(f"Window {window} out of range: this batcher has {len(self)} windows.")
        start = window * self.bptt
        length = min(self.bptt, self.stream_length - 1 - start)
        inputs = self.streams[:, start : start + length].contiguous()
        targets = self.streams[:, start + 1 : start + 1 + length].contiguous()
        return inputs, targets

    def __iter__(self) -> Iterator[tuple[torch.LongTensor, torch.LongTensor]]:
        return (self[window] for window in range(len(self)))

    def __repr__(self) -> str:
        return (
            f"StreamBatcher(batch_size={self.batch_size}, bptt={self.bptt}, process_index="
            f"{self.process_index}, num_processes={self.num_processes}, stream_length="
            f"{self.stream_length}, windows={len(self)})"
        )


# --------------------------------------------------------------------------------------------------------
# Batching 2: independent blocks (run_clm's group_texts)
# --------------------------------------------------------------------------------------------------------


class BlockDataset(torch.utils.data.Dataset):
    """Consecutive, non-overlapping blocks of `block_size` tokens cut from a token stream.

    Item `i` is `{"input_ids": ids[i*block_size:(i+1)*block_size], "labels": the same}`: labels equal
    the inputs because Hugging Face causal-LM models shift them inside `forward`. Works with
    `torch.utils.data.DataLoader` + `transformers.default_data_collator` and with `Trainer`.
    """

    def __init__(self, ids: torch.LongTensor, block_size: int):
        ids = _check_stream(ids)
        _check_positive(block_size=block_size)
        n_blocks = ids.numel() // block_size
        if n_blocks == 0:
            raise ValueError(
                f"The token stream has {ids.numel():,} tokens, fewer than one block of "
                f"block_size={block_size}; use a smaller --block_size (or more text)."
            )
        self.block_size = block_size
        self.blocks = ids[: n_blocks * block_size].view(n_blocks, block_size)

    def __len__(self) -> int:
        return self.blocks.shape[0]

    def __getitem__(self, index: int) -> dict[str, torch.LongTensor]:
        block = self.blocks[index]
        return {"input_ids": block.clone(), "labels": block.clone()}


def group_texts_dataset(ids: torch.LongTensor, block_size: int) -> BlockDataset:
    """Cut a token stream into blocks of `block_size` tokens, the way run_clm's `group_texts` does.

    The stream (from `tokenize_corpus`) is cut at every `block_size` tokens and the final partial
    block is dropped. Each item is `{"input_ids": LongTensor(block_size), "labels": LongTensor(block_size)}`
    with labels equal to input_ids (the model shifts them). Blocks are independent: shuffle them freely;
    a recurrent model starts each block from a zero state.
    """
    return BlockDataset(ids, block_size)


class EpochBatches:
    """The training batches of one process for one epoch, addressable by index (so a resume can skip to where
    it stopped): carried-state windows (`batching="stream"`, a `StreamBatcher`), or blocks of `block_size`
    tokens shuffled with `seed` and shared out among the processes (`"blocks"`, each batch its own labels)."""

    def __init__(
        self,
        ids: torch.LongTensor,
        batching: str,
        batch_size: int,
        bptt: int,
        block_size: int,
        seed: int = 0,
        process_index: int = 0,
        num_processes: int = 1,
    ):
        self.stream = batching == "stream"
        if self.stream:
            self.batcher = StreamBatcher(ids, batch_size, bptt, process_index, num_processes)
            self.length = len(self.batcher)
            return
        self.blocks = group_texts_dataset(ids, block_size)
        order = torch.randperm(len(self.blocks), generator=torch.Generator().manual_seed(seed))
        per_process = len(order) // num_processes
        mine = order[process_index * per_process : (process_index + 1) * per_process]
        self.length = per_process // batch_size
        if self.length == 0:
            raise ValueError(
                f"the training split has {len(self.blocks)} blocks of {block_size} tokens, fewer "
                f"than one batch of {batch_size} per process: lower --block_size or "
                "--per_device_train_batch_size, or use a larger corpus"
            )
        self.order = mine[: self.length * batch_size].view(self.length, -1)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[torch.LongTensor, torch.LongTensor]:
        if self.stream:
            return self.batcher[index]
        block = torch.stack([self.blocks[int(i)]["input_ids"] for i in self.order[index]])
        return block, block


# --------------------------------------------------------------------------------------------------------
# Fixed-window evaluation
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FixedWindows:
    """Inputs and targets of the fixed-window evaluation protocol (see `fixed_windows`).

    Attributes:
        inputs: `(num_windows, window)` token ids to feed, each row from a fresh state/empty context.
        targets: `(num_windows, window)`; `targets[j, t]` is the token that follows `inputs[j, t]`,
            or `IGNORE_INDEX` (-100) past the end of the split in the last row.
        num_scored_tokens: how many targets are real (not -100): the denominator of the perplexity.
    """

    inputs: torch.LongTensor
    targets: torch.LongTensor
    num_scored_tokens: int

    def __len__(self) -> int:
        return self.inputs.shape[0]


def fixed_windows(
    ids: torch.LongTensor, window: int, start_token_id: int | None = None, pad_token_id: int = 0
) -> FixedWindows:
    """Cut a split into the windows of the fixed-window evaluation protocol.

    The protocol, identical for any model (recurrent or Transformer):

    * The split's stream `x_0 .. x_{n-1}` is scored as `n - 1` next-token predictions
      (`x_1 .. x_{n-1}`), or `n` if `start_token_id` is given: it is placed before `x_0` as
      context (use the eos id: the split then begins like any sentence after an end-of-sentence), so every
      token of the split is scored, matching the token counts of the literature.
    * Window `j` holds positions `[j*W, j*W + W + 1)` of that stream: the model reads the first `W`
      of them (`inputs[j]`) from a fresh state and is scored on predicting the last `W`
      (`targets[j]`). Consecutive windows overlap by one token, the last target of one window being the
      first input of the next, so every scored token is predicted exactly once, with between 1 and `W`
      tokens of context.
    * The last window may be partial: its inputs are right-padded with `pad_token_id` and its targets
      with `IGNORE_INDEX` (-100). Right padding cannot change the earlier predictions of a causal or
      recurrent model, and -100 is ignored by `cross_entropy`.

    Score with `cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100,
    reduction="sum")` summed over batches of windows, divided by `num_scored_tokens`; the exponential
    of that mean is the perplexity. Batch the windows as you like: they are independent.

    Args:
        ids: one split's stream from `tokenize_corpus`.
        window: `W`, the number of inputs (and targets) per window.
        start_token_id: optional context token placed before the first token so that it is scored too.
        pad_token_id: id filling the unused inputs of the last window (any valid id does).

    Returns:
        A `FixedWindows` with `inputs`, `targets` and `num_scored_tokens`.
    """
    ids = _check_stream(ids)
    _check_positive(window=window)
    if start_token_id is not None:
        ids = torch.cat([torch.tensor([start_token_id], dtype=torch.long), ids])
    num_scored = ids.numel() - 1
    if num_scored < 1:
        raise ValueError(
            "The token stream has fewer than 2 tokens, so there is nothing to predict; "
            "evaluate on a longer split (or pass start_token_id)."
        )
    num_windows = math.ceil(num_scored / window)
    padded_length = num_windows * window + 1
    inputs_stream = torch.full((padded_length,), pad_token_id, dtype=torch.long)
    targets_stream = torch.full((padded_length,), IGNORE_INDEX, dtype=torch.long)
    inputs_stream[: ids.numel()] = ids
    targets_stream[: ids.numel()] = ids
    inputs = inputs_stream[:-1].view(num_windows, window)
    targets = targets_stream[1:].view(num_windows, window)
    return FixedWindows(inputs=inputs, targets=targets, num_scored_tokens=num_scored)
