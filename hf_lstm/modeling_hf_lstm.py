"""The LSTM family as Hugging Face models: cells, the recurrent stack, its cache, and the task heads.

Read top to bottom: the gate equations (one function per cell), the recurrent state (`LSTMCache`), the
regularisers, one recurrent layer (fused kernel or step-by-step reference), the stack (`LSTMModel`), and
the heads (`LSTMForCausalLM`, `LSTMForSequenceClassification`, `LSTMForTokenClassification`).

This file travels with every saved model folder (`trust_remote_code=True` loads it without hf_lstm
installed), so it imports torch, transformers and its sibling configuration file only, and does no I/O.

Notation (the LSTM step users read in the docs), for layer input x_t and previous state (h_{t-1}, C_{t-1}),
with z_t = [h_{t-1}, x_t]:

    f_t  = sigmoid(z_t W_f + b_f)        forget gate
    i_t  = sigmoid(z_t W_i + b_i)        input gate
    C~_t = tanh(z_t W_c + b_c)           candidate
    C_t  = f_t * C_{t-1} + i_t * C~_t    cell state
    o_t  = sigmoid(z_t W_o + b_o)        output gate
    h_t  = o_t * tanh(C_t)

Parameters are stored in the layout of torch's fused kernels (`weight_ih_l0`, `weight_hh_l0`, `bias_ih_l0`,
`bias_hh_l0`, gate rows in the order i, f, g(=C~), o), so the fast path reads them as they are;
`gate_weights(layer)` returns the W_f, W_i, W_c, W_o, b_* view of the equations above.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import make_dataclass

import torch
import torch.nn.functional as F
import transformers
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from .configuration_hf_lstm import LSTMConfig

# Everything this file needs from transformers, in one place. A saved folder carries this file, so a future
# transformers that moves one of these names must fail here with a message that says what to do, not later
# with a TypeError deep inside generate().
_WRITTEN_FOR = "transformers 5.0 to 5.25"
_WHAT_TO_DO = (
    "Re-save the folder with a newer hf_lstm installed (import hf_lstm; "
    "AutoModelForCausalLM.from_pretrained(folder).save_pretrained(folder)), or install a transformers this "
    f"file was written for ({_WRITTEN_FOR})."
)
try:
    from transformers import GenerationMixin, PreTrainedModel
    from transformers import initialization as init
    from transformers.generation.utils import ALL_CACHE_NAMES
    from transformers.utils import ModelOutput
except ImportError as error:
    if error.name is not None and not error.name.startswith("transformers"):
        raise  # a dependency of transformers is broken (e.g. an accelerate too old for it), not this file
    raise ImportError(
        f"hf_lstm's model file cannot run on transformers {transformers.__version__}: {error}. {_WHAT_TO_DO}"
    ) from error

CACHE_NAME: str = ALL_CACHE_NAMES[0]
"""The name under which the installed transformers carries a model's cache through `generate()` and its
outputs: `"cache"` from transformers 5.24 on, `"past_key_values"` before. Read from transformers itself (the
first of the names `generate()` looks for), not from its version string. `forward` accepts both names; the
output classes store the state under this one (5.24 renames the other inside every `ModelOutput`) and answer
`.cache` on every version."""

# ----------------------------------------------------------------------------------------------------------
# The cells: one time step each, in plain PyTorch. `gx` is the input projection x_t W_ih^T + b_ih, computed
# for all time steps at once before the loop (it does not depend on the state), so a step costs one matrix
# product with the recurrent weights.
# ----------------------------------------------------------------------------------------------------------


def lstm_cell(gx, h, c, w_hh, b_hh, peephole=None):
    """One LSTM step. Returns (h_t, C_t, gates) with gates = (f_t, i_t, o_t, C~_t).

    `peephole`, if given, is a (3, H) tensor of diagonal weights (p_i, p_f, p_o): the input and forget gates
    also look at C_{t-1}, the output gate at C_t (Gers & Schmidhuber 2000).
    """
    i, f, g, o = (gx + F.linear(h, w_hh, b_hh)).chunk(4, dim=-1)
    if peephole is not None:
        i = i + peephole[0] * c
        f = f + peephole[1] * c
    i, f, g = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g)
    c = f * c + i * g  # the additive cell-state "highway"
    if peephole is not None:
        o = o + peephole[2] * c
    o = torch.sigmoid(o)
    return o * torch.tanh(c), c, (f, i, o, g)


def gru_cell(gx, h, w_hh, b_hh):
    """One GRU step in torch.nn.GRU's (and cuDNN's) convention: the reset gate multiplies the recurrent
    product, n_t = tanh(x W_in + b_in + r_t * (h W_hn + b_hn)). Returns (h_t, (z_t, r_t, n_t))."""
    x_r, x_z, x_n = gx.chunk(3, dim=-1)
    h_r, h_z, h_n = F.linear(h, w_hh, b_hh).chunk(3, dim=-1)
    r = torch.sigmoid(x_r + h_r)
    z = torch.sigmoid(x_z + h_z)
    n = torch.tanh(x_n + r * h_n)
    return (1 - z) * n + z * h, (z, r, n)


def rnn_cell(gx, h, w_hh, b_hh):
    """One vanilla RNN step: h_t = tanh(z_t W + b)."""
    return torch.tanh(gx + F.linear(h, w_hh, b_hh))


# The same three cells for a decoding step, from products a step has already computed (`_copy_product`): the
# same equations in fewer tensor operations, since at one token each operation's fixed cost is most of its
# time. `lstm_cell`, `gru_cell` and `rnn_cell` above stay the readable definitions, and the reference path.


def _lstm_update(gates, c):
    """h_t, C_t from the pre-activations z = x W_ih^T + b_ih + h W_hh^T + b_hh (gate order i, f, g, o)."""
    width = c.shape[-1]
    i, f, _, o = torch.sigmoid(gates).chunk(4, dim=-1)  # one sigmoid over all four (g's is unused)
    c = torch.addcmul(f * c, i, torch.tanh(gates[:, 2 * width : 3 * width]))  # f * C + i * C~
    return o * torch.tanh(c), c


def _gru_update(gx, gh, h):
    """h_t from the input product gx and the recurrent product gh (gate order r, z, n)."""
    width = h.shape[-1]
    r, z = torch.sigmoid(gx[:, : 2 * width] + gh[:, : 2 * width]).chunk(2, dim=-1)
    n = torch.tanh(torch.addcmul(gx[:, 2 * width :], r, gh[:, 2 * width :]))
    return torch.lerp(n, h, z)  # (1 - z) * n + z * h


def _input_product(copy: torch.Tensor, x: torch.Tensor, width: int) -> torch.Tensor:
    """x W_ih^T + b_ih from a recurrent layer's decode-time copy [W_ih | b_ih | W_hh | b_hh]."""
    return _copy_product(torch.cat((x, _ones(x.shape[0], x.dtype, x.device)), 1), copy, 0, width)


def _cell_update(cell_type: str, state: tuple, gates=None, gx=None, gh=None) -> tuple:
    """One recurrent layer's new state from the products a decoding step computed: the gates'
    pre-activations `gates` (one product of [x, 1, h, 1] with the layer's whole copy), or the input and
    recurrent products `gx` and `gh` apart (a GRU's reset gate needs them apart)."""
    if cell_type == "gru":
        return (_gru_update(gx, gh, state[0]),)
    if gates is None:
        gates = gx + gh
    return _lstm_update(gates, state[1]) if cell_type == "lstm" else (torch.tanh(gates),)


GATE_NAMES = {
    "lstm": ("forget", "input", "output", "candidate", "cell"),
    "peephole": ("forget", "input", "output", "candidate", "cell"),
    "gru": ("update", "reset", "candidate"),
    "rnn": (),
}
_NUM_GATES = {"lstm": 4, "peephole": 4, "gru": 3, "rnn": 1}
_HAS_CELL_STATE = {"lstm": True, "peephole": True, "gru": False, "rnn": False}


# ----------------------------------------------------------------------------------------------------------
# The recurrent state
# ----------------------------------------------------------------------------------------------------------


_NO_ROLLBACK = (
    "assisted and prompt-lookup decoding check draft tokens, then roll the cache back to the ones accepted, "
    "and a recurrent state cannot forget the last tokens it read, so an hf_lstm model can take part there "
    "neither as the model nor as the assistant. Use greedy search, sampling or beam search"
)
_NO_PAGES = (
    "transformers' continuous batching schedules its prompts over a paged attention key/value cache, and an "
    "hf_lstm model has neither attention nor keys and values: its state is one fixed-size (h, C) per layer "
    "and row. Batch the prompts with left padding and call generate(), or pipeline(..., batch_size=n)"
)
# generate() arguments that transformers hands on with the model's inputs (from 5.0 to 5.25, `tokenizer`, when
# `stop_strings` needs one): not the model's, and dropped before a step
_FOR_GENERATE_ONLY = ("tokenizer", "assistant_tokenizer")
# what asks generate() for assisted or prompt-lookup decoding, as an argument or a generation-config field
# (transformers marks the config it hands an assistant model with is_assistant=True)
_DRAFTING = ("assistant_model", "prompt_lookup_num_tokens", "assistant_early_exit", "is_assistant")


class LSTMCache:
    """The recurrent state of every layer: (h, C) for LSTM and peephole cells, (h,) for GRU and RNN cells,
    each of shape (batch, hidden_size).

    Unlike a Transformer's key/value cache it does not grow with the context: its size is fixed by the
    batch and the model (`nbytes`). It is what `generate()` carries between steps (under `CACHE_NAME`), and
    what truncated backpropagation through time carries between batches (`detach()`).

    It answers what `generate()` asks of a cache. Continuing from a returned cache must equal one long
    generation, so the state counts the positions it has read (`get_seq_length`) and says its layers are not
    "linear" (`is_linear`: transformers feeds such a cache the whole prompt again, since a Mamba-style state
    does not count tokens); ours does count, so `generate()` feeds only the tokens it has not read.
    """

    is_compileable = False  # its tensors are replaced, not updated in place: no static addresses to capture
    is_croppable = False  # a recurrent state cannot forget its last tokens (no assisted decoding rollback)

    def __init__(self, states: list[tuple[torch.Tensor, ...]] | None = None, seen_tokens: int = 0):
        self.states: list[tuple[torch.Tensor, ...]] = list(states) if states is not None else []
        self.seen_tokens = seen_tokens

    def __len__(self) -> int:
        return len(self.states)

    def __repr__(self) -> str:
        shapes = [tuple(t.shape) for t in self.states[0]] if self.states else []
        return f"LSTMCache(layers={len(self)}, seen_tokens={self.seen_tokens}, state_shapes={shapes})"

    def get_seq_length(self, layer_idx: int = 0) -> int:
        """Number of positions (padding included) the state has read; `generate()` uses it to feed only new
        tokens."""
        return self.seen_tokens

    def get_max_cache_shape(self, layer_idx: int = 0) -> int:
        """A recurrent state has no length limit."""
        return -1

    @property
    def is_linear(self) -> list[bool]:
        """Per layer, False: the state knows how many tokens it has read, so `generate()` slices them off."""
        return [False] * len(self.states)

    @property
    def is_sliding(self) -> list[bool]:
        return [False] * len(self.states)

    @property
    def batch_size(self) -> int:
        return self.states[0][0].shape[0] if self.states else 0

    @property
    def nbytes(self) -> int:
        """Memory held by the state, in bytes (constant in the context length)."""
        return sum(t.numel() * t.element_size() for state in self.states for t in state)

    def _map(self, fn) -> None:
        self.states = [tuple(fn(t) for t in state) for state in self.states]

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        """Select batch rows in place (beam search keeps the beams it chose)."""
        self._map(lambda t: t.index_select(0, beam_idx.to(t.device)))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._map(lambda t: t[indices])

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._map(lambda t: t.repeat_interleave(repeats, dim=0))

    def crop(self, max_length: int) -> None:
        if max_length < 0 or max_length < self.seen_tokens:
            raise ValueError(f"an LSTMCache cannot be cropped back: {_NO_ROLLBACK}")

    def detach(self) -> LSTMCache:
        """A copy cut from the autograd graph: truncated backpropagation through time carries the values of
        the state across batches, not its history."""
        return LSTMCache([tuple(t.detach() for t in state) for state in self.states], self.seen_tokens)

    def reset(self) -> None:
        self.states, self.seen_tokens = [], 0


# ----------------------------------------------------------------------------------------------------------
# Regularisers (AWD-LSTM style, each a small part with one job)
# ----------------------------------------------------------------------------------------------------------


class LockedDropout(nn.Module):
    """Variational dropout (Gal & Ghahramani 2016): one mask per sequence, reused at every time step."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        mask = x.new_empty(x.shape[0], 1, x.shape[2]).bernoulli_(1 - self.p) / (1 - self.p)
        return x * mask


def embedding_dropout(
    embeddings: torch.Tensor, input_ids: torch.Tensor, vocab_size: int, p: float
) -> torch.Tensor:
    """Drop whole word types for this forward pass (every occurrence of a dropped word becomes zero)."""
    keep = embeddings.new_empty(vocab_size).bernoulli_(1 - p) / (1 - p)
    return embeddings * keep[input_ids].unsqueeze(-1)


# ----------------------------------------------------------------------------------------------------------
# Decode-time weight copies: the same matrices, in the layout a one-token step reads fastest
# ----------------------------------------------------------------------------------------------------------


class ColumnMajorCopies:
    """Copies of some weight matrices stored column-major, in one column block per thread, for one-token
    steps; rebuilt when a weight or torch's thread count changes.

    Why: at batch 1 a decoding step multiplies one vector by every matrix once, so its time is the time to
    read the matrices from memory, and how fast a product streams a matrix depends on how it is stored. A
    copy of W (out, in) here is W^T (in, out) stored contiguous, with the bias as one more row, cut into as
    many column blocks as torch has threads (`_column_blocks`; one block on one thread). A batch-1 step sums
    its rows weighted by the input (`_copy_product`: ~3x faster than `F.linear` on the parameter as torch
    stores it, on the CPU measured), each thread one block; larger batches multiply it with one matrix
    product. Results agree with the parameters' up to rounding (the products sum in another order; see
    docs/PERFORMANCE.md, 1c-1d).

    The copies are a plain attribute of the module that owns the parameters, never a parameter or a buffer:
    `state_dict`, `save_pretrained` and training never see them. They cost one more copy of the matrices in
    memory (`LSTMConfig.decode_cache_weights=False` turns them off). A copy is rebuilt whenever its parameter
    is replaced or changed: another tensor, storage, dtype, device or shape, or an in-place update (the
    `_version` counter an optimizer step or `load_state_dict` bumps); `.to()`, `train()` and `eval()` drop
    them (`LSTMPreTrainedModel.drop_decode_copies`). A change made through `.data` bumps no counter: call
    `model.eval()` after one.
    """

    def __init__(self):
        self.clear()

    def clear(self) -> None:
        self.stamps, self.matrices = None, None

    def __getstate__(self) -> dict:
        return {}  # a pickled or deep-copied model carries no copies: its first one-token step makes them

    def __setstate__(self, state: dict) -> None:
        self.clear()

    def of(self, *groups: tuple[torch.Tensor | None, ...]) -> tuple[torch.Tensor, ...]:
        """One copy per group of tensors, made now if any of them or the thread count changed since the last
        call. A group is a matrix and the tensors its product adds to it: (W, b) for a linear layer,
        (W_ih, b_ih, W_hh, b_hh) for a recurrent layer (a None bias left out); its copy stacks them column by
        column, [W_ih | b_ih | W_hh | b_hh] (out, in), and stores that as `_column_blocks` of its transpose
        ((blocks, in, ceil(out / blocks))), so that one product (`_copy_product`) adds the biases too."""
        blocks = torch.get_num_threads()
        tensors = [t for group in groups for t in group if t is not None]
        stamps = (blocks, *_stamps(tensors))
        if stamps != self.stamps:
            self.clear()  # free the stale copies first: never more than one extra copy of the weights
            with torch.no_grad():
                self.matrices = tuple(_column_blocks(_side_by_side(group), blocks) for group in groups)
            self.stamps = stamps
        return self.matrices


def _side_by_side(group: tuple[torch.Tensor | None, ...]) -> torch.Tensor:
    """Matrices (out, k) and bias vectors (out,) of one product, as one (out, sum of k) matrix."""
    return torch.cat([t.detach() if t.dim() == 2 else t.detach()[:, None] for t in group if t is not None], 1)


def _column_blocks(w: torch.Tensor, blocks: int) -> torch.Tensor:
    """`w` (out, in) as `blocks` column blocks of W^T stacked, (blocks, in, ceil(out / blocks)), the last one
    padded with zero columns: torch computes the blocks' products (`_copy_product`) on its threads side by
    side, where one product over the whole matrix would use one thread (docs/PERFORMANCE.md, 1d)."""
    width = -(-w.shape[0] // blocks)
    padded = F.pad(w, (0, 0, 0, blocks * width - w.shape[0]))
    return padded.reshape(blocks, width, w.shape[1]).transpose(1, 2).contiguous()


def _copy_product(rows: torch.Tensor, copy: torch.Tensor, start: int, out_features: int) -> torch.Tensor:
    """`rows` (batch, k) times the rows start .. start + k - 1 of a decode-time copy (`ColumnMajorCopies`),
    the first `out_features` columns: `F.linear` from the copy, a bias included as a row that `rows` meets
    with a column of ones (`_ones`).

    At batch 1 the product is the sum of the copy's rows weighted by the vector's entries, torch's
    `embedding_bag` (mode "sum", `per_sample_weights`), one bag per column block, so on several threads the
    blocks are summed side by side. Why not `x @ W^T`: at batch 1 a product reads each weight once for one
    multiply-add, so its time is the time to stream the matrix, and on the CPUs measured `embedding_bag`
    streams rows about as fast as the memory delivers them (45 GB/s on this machine, one thread), the BLAS
    matrix-vector product `x @ W^T` calls at ~30 GB/s (docs/PERFORMANCE.md, 1d). Above batch 1, one (batched)
    matrix product. Same numbers, other order of summation: results agree with `F.linear`'s to rounding."""
    if rows.shape[0] == 1:
        return _bag_product(rows, *_bag_arguments(copy, start, rows.shape[1], out_features))
    blocks, k = copy.shape[0], rows.shape[1]
    if blocks == 1:
        y = rows @ copy[0, start : start + k]
    else:
        y = torch.matmul(rows, copy[:, start : start + k]).transpose(0, 1).reshape(rows.shape[0], -1)
    return y if y.shape[1] == out_features else y[:, :out_features]  # the last block's padding


def _bag_arguments(copy: torch.Tensor, start: int, k: int, out_features: int) -> tuple:
    """What `_bag_product` needs besides the vector, for the rows start .. start + k - 1 of `copy`: worked
    out once per step by `_copy_product`, once per `OneTokenPlan` by the batch-1 step."""
    blocks, height, width = copy.shape
    index, offsets = _bag_index(start, k, height, blocks, copy.device)
    kernel_key = ((blocks, k, width), copy.dtype, torch.get_num_threads())  # `_BATCH1_KERNEL`'s key
    flat, rows_of_copy = copy.view(blocks * height, width), copy[:, start : start + k]
    if blocks == 1:
        rows_of_copy = rows_of_copy[0]  # (k, width): `_block_products` then makes one product, no batch
    return flat, index, offsets, blocks, out_features, rows_of_copy, kernel_key


def _bag_product(rows, flat, index, offsets, blocks, out_features, rows_of_copy, kernel_key) -> torch.Tensor:
    """`_copy_product` at batch 1, with the kernel this machine runs faster for the copy's shape
    (`choose_batch1_kernel`): one bag of rows per column block, each row weighted by its entry of the
    vector `rows` (1, k), or a matrix product with the same rows of the copy (`rows_of_copy`, (blocks, k,
    width), or (k, width) for one block)."""
    if _BATCH1_KERNEL.get(kernel_key, "bag") == "bag":
        y = _weighted_rows(rows, flat, index, offsets, blocks)
    else:
        y = _block_products(rows, rows_of_copy)
    return y if y.shape[1] == out_features else y[:, :out_features]  # the last block's padding


def _weighted_rows(rows, flat, index, offsets, blocks: int) -> torch.Tensor:
    k = rows.shape[1]
    weights = rows.reshape(k) if blocks == 1 else rows.expand(blocks, k).reshape(blocks * k)
    # `torch.embedding_bag` is what `F.embedding_bag` calls after checking its arguments (in this order:
    # weight, indices, offsets, scale_grad_by_freq, mode 0 = "sum", sparse, per_sample_weights)
    return torch.embedding_bag(flat, index, offsets, False, 0, False, weights)[0].view(1, -1)


def _block_products(rows, rows_of_copy) -> torch.Tensor:
    if rows_of_copy.dim() == 2:
        return rows @ rows_of_copy
    return torch.matmul(rows, rows_of_copy).transpose(0, 1).reshape(1, -1)


def choose_batch1_kernel(bags: list[tuple]) -> None:
    """Record in `_BATCH1_KERNEL` which kernel the batch-1 products of one step run: weighted row sums
    ("bag", `_weighted_rows`, the default) or a matrix product on the same rows of the copy ("matmul",
    `_block_products`). Both read the same bytes; which streams them faster depends on the host
    (docs/PERFORMANCE.md, 1f: 52.7 against 32.0 GB/s one day, 11.4 against 19.6 on another host of the same
    description). Timed once per model shape and thread count, as one pass over every product of a step
    (`bags`: `_bag_arguments` results), so that the timing sees the step's whole working set, from memory
    or from cache as a step does; a product timed alone stays in cache and misleads. "matmul" is taken only
    when clearly (1.25x) faster, so that the choice, and with it the order of summation, does not flip from
    run to run on one machine."""
    keys = [bag[-1] for bag in bags]
    if all(key in _BATCH1_KERNEL for key in keys):
        return
    if sum(bag[5].numel() * bag[5].element_size() for bag in bags) < _TIMED_FROM_BYTES:
        _BATCH1_KERNEL.update(dict.fromkeys(keys, "bag"))  # a step this small is fast either way
        return
    # ones, not random numbers: the timing must not move the generator a seeded `generate()` samples from
    vectors = [torch.ones(1, bag[5].shape[-2], dtype=bag[0].dtype, device=bag[0].device) for bag in bags]

    def one_pass(kernel):
        for v, (flat, index, offsets, blocks, _, rows_of_copy, _) in zip(vectors, bags):
            if kernel == "bag":
                _weighted_rows(v, flat, index, offsets, blocks)
            else:
                _block_products(v, rows_of_copy)

    bag, matmul = _best_time(lambda: one_pass("bag")), _best_time(lambda: one_pass("matmul"))
    _BATCH1_KERNEL.update(dict.fromkeys(keys, "matmul" if matmul * 1.25 < bag else "bag"))


def _best_time(run, repeats: int = 5) -> float:
    run()  # warm: caches, the kernel's first-call set-up
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


_BATCH1_KERNEL: dict[tuple, str] = {}
_TIMED_FROM_BYTES = 4 << 20  # below this a step's copies are not timed: "bag" (the choice cannot matter much)


def _bag_index(start: int, k: int, height: int, blocks: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """`_copy_product`'s indices (the rows start .. start + k - 1 of every block of `height` rows, in order)
    and offsets (where each block's bag starts), made once per shape and device."""
    key = (start, k, height, blocks, device)
    if key not in _BAG_INDEX:
        with torch.inference_mode(False), torch.no_grad():
            first = torch.arange(blocks, device=device)
            index = (first[:, None] * height + torch.arange(start, start + k, device=device)).reshape(-1)
            _BAG_INDEX[key] = (index, first * k)
    return _BAG_INDEX[key]


_BAG_INDEX: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}


def _ones(batch: int, dtype: torch.dtype, device) -> torch.Tensor:
    """A (batch, 1) column of ones: what a product meets a copy's bias row with (`_copy_product`)."""
    key = (batch, dtype, device)
    if key not in _ONES:
        with torch.inference_mode(False), torch.no_grad():
            _ONES[key] = torch.ones(batch, 1, dtype=dtype, device=device)
    return _ONES[key]


_ONES: dict[tuple, torch.Tensor] = {}


class InputProductRows:
    """The first layer's input product x_t W_ih^T + b_ih for the tokens one-token steps have read lately, at
    batch 1 (eval mode, no gradient, CPU: where `ColumnMajorCopies` are read).

    Why: x_t is the token's embedding, so this product depends on the token alone, and a step that finds it
    here reads W_hh but not W_ih: 4.2 of the 37.3 MB the reference model's step reads per token
    (docs/PERFORMANCE.md, 1d). A row is computed the first time its token is read, by the very computation
    the step would do without it, so a step gives bit for bit what it gives without the rows. On Penn
    Treebank's validation text, 91% of tokens find their row (4,096 rows, from cold).

    Memory: one row of `gate_width` numbers per token kept (8 KB for the reference model's 4 x 512 LSTM gates
    in float32), at most `max_rows` tokens, the least recently read dropped first: 32 MB at most for the
    reference model. All rows are dropped whenever `OneTokenPlan` is made again (any weight the step reads
    or the thread count changed), with `.to()`, `train()` and `eval()`; `decode_cache_weights=False` turns
    them off with the copies.
    """

    max_rows = 4096

    def __init__(self):
        self.clear()

    def clear(self) -> None:
        self.rows = {}

    def __getstate__(self) -> dict:
        return {}

    def __setstate__(self, state: dict) -> None:
        self.clear()

    def product(self, token: int, compute) -> torch.Tensor:
        """The kept product for `token`, or `compute()`'s, kept. Its owner (`OneTokenPlan`) clears the rows
        when what they were computed from changes."""
        row = self.rows.pop(token, None)  # taken out and put back last: the dict is kept in order of use
        if row is None:
            row = compute()
            if len(self.rows) >= self.max_rows:
                del self.rows[next(iter(self.rows))]  # the least recently read
        self.rows[token] = row
        return row


def _stamps(tensors) -> tuple:
    """What identifies the values of `tensors` without reading them: each one's identity, storage, version
    counter (bumped by every in-place change: optimizer steps, `load_state_dict`), dtype, device and shape."""
    return tuple((id(w), w.data_ptr(), w._version, w.dtype, w.device, w.shape) for w in tensors)


class OneTokenPlan:
    """What the batch-1 decoding step on a CPU reads (`LSTMForCausalLM._one_token`), worked out once and
    checked at every token: per layer, its cell type, whether it fuses its two products, and the arguments of
    its products with its decode-time copy (`_bag_arguments`); the same for the output layers.

    Made again when any weight the step reads, torch's thread count or `decode_cache_weights` changes (the
    stamps `ColumnMajorCopies` uses, taken of every weight at once rather than matrix by matrix); the first
    layer's kept input products (`InputProductRows`) are dropped then. `layers` is None when the step does
    not read copies (they are off, or a weight is an inference tensor): the ordinary decoding step runs.
    """

    def __init__(self):
        self.clear()

    def clear(self) -> None:
        self.key, self.layers, self.outputs = None, None, None

    def __getstate__(self) -> dict:
        return {}

    def __setstate__(self, state: dict) -> None:
        self.clear()

    def ready(self, model, plan: tuple) -> bool:
        """Whether `model`'s one-token step at batch 1 reads copies; made again first if anything changed.
        `plan`: the model's `_decode_plan()`, checked by the caller."""
        weights = model._step_weights(plan)
        key = (torch.get_num_threads(), model.config.decode_cache_weights, *_stamps(weights))
        if key != self.key:
            self.clear()
            model.model.layers[0]._input_rows.clear()
            self.layers, self.outputs = model._one_token_copies()
            self.key = key
        return self.layers is not None


def _through_copies(hidden: torch.Tensor, outputs: list[tuple]) -> torch.Tensor:
    """Logits (batch, vocab) from the last layer's h_t (batch, width) and the output layers' decode-time
    copies [W | b] (`outputs`: (copy, has a bias, output width) per layer, the projection first)."""
    one = _ones(hidden.shape[0], hidden.dtype, hidden.device)
    for copy, has_bias, width in outputs:
        hidden = _copy_product(torch.cat((hidden, one), 1) if has_bias else hidden, copy, 0, width)
    return hidden


def _plain_linear(module: nn.Module) -> bool:
    """An `nn.Linear` exactly, with no hook: one whose product a step may compute itself (an int8 or adapter
    module, or a hooked one, runs as itself; so does one whose `forward` was replaced on the instance, as
    accelerate's hooks do, and every module while torch holds a global module hook)."""
    hooked = module._forward_hooks or module._forward_pre_hooks or any(_GLOBAL_HOOKS)
    return type(module) is nn.Linear and not (hooked or "forward" in module.__dict__)


def _reads_copies(enabled: bool, module: nn.Module, matrices: tuple[torch.Tensor, ...]) -> bool:
    """Whether a one-token step of `module` reads column-major copies of `matrices`: only when the config
    allows it, in eval mode with no gradient recorded (training and autograd read the parameters), on CPU
    (where the layout was measured), from ordinary tensors (an inference tensor has no version counter)."""
    return (
        enabled
        and not module.training
        and not torch.is_grad_enabled()
        and not torch.compiler.is_exporting()  # an exported program reads the parameters it holds
        and all(w.is_cpu and not w.is_inference() for w in matrices)
    )


class _StepBuffers:
    """The fixed tensors a captured decoding step reads and writes (`GraphedDecodeStep`)."""

    def __init__(self, batch: int, widths: list[list[int]], vocab_size: int, dtype, device):
        def flat(width):
            return torch.zeros(batch, width, dtype=dtype, device=device)

        self.ids = torch.zeros(batch, 1, dtype=torch.long, device=device)
        self.mask = torch.ones(batch, dtype=torch.float32, device=device)  # the new column of attention_mask
        self.mask_is_ones = True
        total = sum(map(sum, widths))
        self.state_in, self.state_out = flat(total), flat(total)
        self.spans, start = [], 0  # per layer, the (start, width) of each state tensor in the packed state
        for layer in widths:
            self.spans.append([(start + sum(layer[:k]), width) for k, width in enumerate(layer)])
            start += sum(layer)
        self.offsets = [start for layer in self.spans for start, _ in layer]
        self.state_in_views, self.state_out_views = self.views(self.state_in), self.views(self.state_out)
        self.logits = torch.zeros(batch, 1, vocab_size, dtype=dtype, device=device)
        # the smallest and largest token id, and how many mask values are neither 0 nor 1
        self.checks = torch.zeros(3, dtype=torch.float64, device=device)
        pinned = device.type == "cuda"
        self.host_checks = torch.zeros(3, dtype=torch.float64, pin_memory=pinned)
        self.returned = None  # the last state handed out: a cache holding its views is copied in one go

    def load_state(self, states: list[tuple[torch.Tensor, ...]]) -> None:
        """Copy a cache's states into `state_in`: one copy when they are the views of the last state handed
        out (a cache `generate()` carries from step to step), else one per tensor."""
        flat = [t for state in states for t in state]
        if self.returned is not None and all(
            t._base is self.returned and t.storage_offset() == self.returned.storage_offset() + offset
            for t, offset in zip(flat, self.offsets)
        ):
            self.state_in.copy_(self.returned)
            return
        for source, target in zip(states, self.state_in_views):
            for s, t in zip(source, target):
                t.copy_(s)

    def handed_out(self) -> tuple[torch.Tensor, list[tuple[torch.Tensor, ...]]]:
        """Copies of the logits and the new state (views of one tensor), so that the next replay, which
        overwrites the buffers, changes nothing a caller holds."""
        logits, state = self.logits.clone(), self.state_out.clone()
        self.returned = state
        return logits, self.views(state)

    def views(self, packed: torch.Tensor) -> list[tuple[torch.Tensor, ...]]:
        """Every layer's state tensors as views of one packed (batch, total width) tensor."""
        return [tuple(packed[:, start : start + width] for start, width in layer) for layer in self.spans]


class GraphedDecodeStep:
    """The one-token decoding step of `LSTMForCausalLM` on a CUDA device, captured once as CUDA graphs and
    replayed at every token.

    Why: on a GPU, a small model's decoding step is a few dozen tiny kernels (the embedding, two cell kernels
    and a matrix product per layer, the output layer), and launching them one by one from Python costs more
    than running them. A replay launches all of them at once (docs/PERFORMANCE.md, "On a GPU").

    How: the step reads and writes fixed buffers (`_StepBuffers`): the token ids, the new column of the
    attention mask, and every layer's state packed in one tensor. Each call copies its inputs into them and
    replays two graphs: `check` (the smallest and largest token id and any mask value other than 0 and 1,
    copied to the host) and `step` (the cells, reading clamped ids, so a bad id can never fault the device).
    It waits for `check` only, raises the same `ValueError` as the ordinary path for bad input, and hands out
    copies of the logits and the state. A padded row (mask 0) keeps its state, and its logits are read from
    that state, as on the ordinary path.

    The graphs are captured again when the batch size, device, dtype or any weight changes (the same stamps
    as `ColumnMajorCopies`); `train()`, `eval()` and `.to()` drop them (`drop_decode_copies`). `eager=True`
    runs the same buffers without capturing: what the tests check on a CPU.
    """

    def __init__(self, eager: bool = False):
        self.eager = eager
        self.clear()

    def clear(self) -> None:
        self.key, self.buffers, self.graphs, self.plan = None, None, None, None

    def __getstate__(self) -> dict:
        return {"eager": self.eager}  # a copied model captures its own graphs

    def __setstate__(self, state: dict) -> None:
        self.eager = state.get("eager", False)
        self.clear()

    def __call__(self, model, input_ids, attention_mask, states, weights):
        """(logits (batch, 1, vocab), the new state of every layer) after one token per row; `weights` are
        every tensor the step reads (a change in any of them means capturing again)."""
        key = (input_ids.shape[0], input_ids.device, states[0][0].dtype) + _stamps(weights)
        if key != self.key:
            self._capture(model, input_ids, states, key)
        b = self.buffers
        b.ids.copy_(input_ids)
        if attention_mask is not None:
            b.mask.copy_(attention_mask[:, -1])
            b.mask_is_ones = False
        elif not b.mask_is_ones:
            b.mask.fill_(1.0)
            b.mask_is_ones = True
        b.load_state(states)
        if self.eager:
            self._check(b)
            model._decode_step_into(b)
            low, high, bad_mask = b.checks.tolist()
        else:
            check, step, done = self.graphs
            with torch.cuda.device(input_ids.device):  # the streams of the model's GPU, whichever is current
                check.replay()
                b.host_checks.copy_(b.checks, non_blocking=True)
                done.record()
                step.replay()  # queued behind the check: the device does not wait for the host's verdict
                done.synchronize()
            low, high, bad_mask = b.host_checks.tolist()
        if low < 0 or high >= model.config.vocab_size:
            raise _token_id_error(int(low if low < 0 else high), model.config.vocab_size)
        if bad_mask:
            raise ValueError("attention_mask must contain only 0 (padding) and 1 (real token)")
        return b.handed_out()

    @staticmethod
    def _check(b: _StepBuffers) -> None:
        low, high = torch.aminmax(b.ids)
        b.checks[0].copy_(low)
        b.checks[1].copy_(high)
        b.checks[2].copy_(((b.mask != 0) & (b.mask != 1)).sum())

    def _capture(self, model, input_ids, states, key) -> None:
        self.clear()
        widths = [[t.shape[-1] for t in state] for state in states]
        b = _StepBuffers(
            input_ids.shape[0], widths, model.config.vocab_size, states[0][0].dtype, input_ids.device
        )
        if not self.eager:
            with torch.cuda.device(input_ids.device):  # capture on the model's GPU, whichever is current
                self.graphs = self._captured(model, b)
        self.buffers, self.key = b, key

    def _captured(self, model, b: _StepBuffers) -> tuple:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm up outside the capture: library handles, workspaces
            for _ in range(2):
                self._check(b)
                model._decode_step_into(b)
        torch.cuda.current_stream().wait_stream(side)
        check, step = torch.cuda.CUDAGraph(), torch.cuda.CUDAGraph()
        with torch.cuda.graph(check):
            self._check(b)
        with torch.cuda.graph(step, pool=check.pool()):
            model._decode_step_into(b)
        return check, step, torch.cuda.Event()


class _PatchedForward:
    """True while a module's attribute dictionary holds a `forward` of its own (a wrapper set on the instance,
    as accelerate's `add_hook_to_module` does), for `_decode_plan`'s list of reasons to take the ordinary
    path."""

    __slots__ = ("attributes",)

    def __init__(self, attributes: dict):
        self.attributes = attributes

    def __bool__(self) -> bool:
        return "forward" in self.attributes


def _token_id_error(bad: int, vocab_size: int) -> ValueError:
    return ValueError(
        f"input_ids contains token id {bad}, outside [0, vocab_size={vocab_size}); "
        "check that the tokenizer matches the model (len(tokenizer) must not exceed "
        "config.vocab_size)"
    )


# ----------------------------------------------------------------------------------------------------------
# One recurrent layer
# ----------------------------------------------------------------------------------------------------------

_TORCH_RNN = {"lstm": nn.LSTM, "peephole": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}
_TORCH_CELL = {
    "lstm": torch.lstm_cell,
    "gru": torch.gru_cell,
    "rnn": torch.rnn_tanh_cell,
}  # one step, no peephole


def _compact_bfloat16_weights(rnn: nn.RNNBase) -> None:
    """Lay a CUDA bfloat16 RNN's weights out in one block, as `flatten_parameters()` does for other dtypes.

    torch's `flatten_parameters()` (which `.to()` calls) skips bfloat16: it asks
    `torch.backends.cudnn.is_acceptable`, whose `CUDNN_TENSOR_DTYPES` lists float16, float32 and float64
    only (torch 2.11 to 2.13). cuDNN runs bfloat16 RNNs all the same, so after `model.to(torch.bfloat16)`
    every call warned that the weights are "not part of single contiguous chunk of memory" and copied them.
    This does the same flattening for bfloat16, through the same op; where this torch lacks it or refuses,
    nothing changes."""
    weights = rnn._flat_weights
    if not weights or not all(
        isinstance(w, torch.Tensor) and w.is_cuda and w.dtype == torch.bfloat16 for w in weights
    ):
        return
    flatten = getattr(torch, "_cudnn_rnn_flatten_weight", None)
    try:
        from torch.backends.cudnn.rnn import get_cudnn_mode

        if flatten is None or not torch.backends.cudnn.enabled or not torch._use_cudnn_rnn_flatten_weight():
            return
        if len({w.data_ptr() for w in weights}) != len(weights):
            return  # aliased weights (e.g. tied): torch's own path leaves these alone too
        with torch.cuda.device_of(weights[0]), torch.no_grad():
            flatten(
                weights,
                4 if rnn.bias else 2,
                rnn.input_size,
                get_cudnn_mode(rnn.mode),
                rnn.hidden_size,
                rnn.proj_size,
                rnn.num_layers,
                rnn.batch_first,
                bool(rnn.bidirectional),
            )
    except (ImportError, AttributeError, RuntimeError):
        return


class LSTMRecurrentLayer(nn.Module):
    """One recurrent layer (one or two directions) with two interchangeable implementations.

    - fused: torch's RNN kernel (`self.rnn`, an `nn.LSTM`/`nn.GRU`/`nn.RNN` of one layer), for whole
      sequences;
    - reference: the cell equations above, one step at a time, for peephole cells, gate introspection, and
      padded single-token steps (torch's kernel has a large fixed cost per call at sequence length 1);
    - decoding (one token, no padding, not peephole; `_decode_step`): in eval mode, the equations above on
      products read from decode-time copies of the matrices (`ColumnMajorCopies`), and torch's single-step
      cell op (the same equations in one call) on the parameters otherwise.

    Both read the same parameters (`self.rnn.weight_ih_l0`, ...). Padding is handled exactly: padded
    positions leave the state untouched, so a padded batch gives what each sequence gives alone.
    """

    def __init__(self, config: LSTMConfig, input_size: int, layer_idx: int):
        super().__init__()
        self.cell_type = config.cell_type
        self.hidden_size = config.hidden_size
        self.input_size = input_size
        self.layer_idx = layer_idx
        self.num_directions = 2 if config.bidirectional else 1
        self.weight_dropout = config.weight_dropout
        kwargs = {"nonlinearity": "tanh"} if self.cell_type == "rnn" else {}
        self.rnn = _TORCH_RNN[self.cell_type](
            input_size,
            self.hidden_size,
            num_layers=1,
            batch_first=True,
            bidirectional=config.bidirectional,
            **kwargs,
        )
        if self.cell_type == "peephole":
            self.peephole_weight = nn.Parameter(torch.empty(self.num_directions, 3, self.hidden_size))
        self._decode_copies = ColumnMajorCopies()  # plain attributes: no state_dict entry
        self._input_rows = InputProductRows()

    @property
    def has_cell_state(self) -> bool:
        return _HAS_CELL_STATE[self.cell_type]

    def _parameters_for_pass(self) -> dict[str, torch.Tensor]:
        """The fused kernel's parameters, with DropConnect applied to `weight_hh` while training: one mask per
        forward pass, shared by all time steps and by both implementations."""
        params = dict(self.rnn.named_parameters())
        if self.training and self.weight_dropout > 0:
            p = self.weight_dropout
            for name in [n for n in params if n.startswith("weight_hh")]:
                params[name] = F.dropout(params[name], p=p, training=True)
        return params

    def forward(
        self, x, mask=None, state=None, use_reference=False, output_gates=False, decode_cache_weights=False
    ):
        """`_forward` (the layer over x), with the recurrent module's weights in place when accelerate
        offloads them (`from_pretrained(..., device_map=..., offload_folder=...)`): its hook keeps them on the
        meta device except while the module's own `forward` runs, and the one-token step and the reference
        equations read them directly. The hook's own two calls (`pre_forward`, `post_forward`: accelerate's
        `ModelHook` interface) bring them in for the whole layer and send them back; decode-time copies are
        not made of weights loaded afresh at every call."""
        # accelerate's, set by `add_hook_to_module` (`__dict__`, not `vars()`: torch 2.15's compiler rejects
        # `vars()` of an RNN module)
        hook = self.rnn.__dict__.get("_hf_hook")
        offloaded = hook is not None and getattr(hook, "offload", False)
        if offloaded:
            hook.pre_forward(self.rnn)
        try:
            return self._forward(
                x, mask, state, use_reference, output_gates, decode_cache_weights and not offloaded
            )
        finally:
            if offloaded:
                hook.post_forward(self.rnn, None)

    def _forward(
        self, x, mask=None, state=None, use_reference=False, output_gates=False, decode_cache_weights=False
    ):
        """Run the layer over x (batch, T, input_size).

        Args:
            mask: (batch, T) bool, True at real tokens, or None (no padding).
            state: initial state, a tuple of (num_directions, batch, H) tensors ((h, C) or (h,)), or None for
                zeros.
            use_reference: run the step-by-step equations instead of the fused kernel.
            output_gates: also return the gate activations (reference path only).
            decode_cache_weights: let a one-token step read column-major copies of the matrices
                (`ColumnMajorCopies`; `LSTMConfig.decode_cache_weights`).

        Returns: (output (batch, T, num_directions * H), final state like `state`, gates dict or None).
        """
        batch, seq_len, _ = x.shape
        # torch.export cannot trace packed sequences (their shapes depend on the mask's values), which the
        # backward direction and a final state read on need: there, an exported layer runs the equations
        needs_packing = self.num_directions == 2 or state is not None
        if state is None:
            zeros = x.new_zeros(self.num_directions, batch, self.hidden_size)
            state = (zeros, zeros) if self.has_cell_state else (zeros,)
        one_step = seq_len == 1 and self.num_directions == 1
        if one_step and mask is None and not (use_reference or output_gates or self._drops_weights):
            if self.cell_type in _TORCH_CELL:
                final = self._decode_step(x[:, 0], tuple(s[0] for s in state), decode_cache_weights)
                return final[0].unsqueeze(1), tuple(s.unsqueeze(0) for s in final), None
        params = self._parameters_for_pass()
        use_reference = use_reference or output_gates or one_step
        exporting = torch.compiler.is_exporting()
        use_reference = use_reference or (exporting and mask is not None and needs_packing)
        run = self._run_reference if use_reference else self._run_fused
        if mask is None:
            return run(x, None, state, params, output_gates)
        pack = not exporting or use_reference
        return self._run_padded(run, x, mask, state, params, output_gates, pack)

    def _run_padded(self, run, x, mask, state, params, output_gates, pack: bool):
        """Padding anywhere (left, right, or in the middle): move each row's real tokens to the front, run
        them as variable-length sequences, then put every output back at its position. A padded position
        shows the state as it stood after the last real token before it (the initial state if there was
        none).

        `pack=False` (the fused kernel under torch.export): the rows are not packed, so the kernel runs on
        through each row's trailing padding. The outputs gathered back stop at the last real token; the final
        state does not, and is None (an exported model returns no state)."""
        lengths = mask.sum(dim=1)
        real = mask.long()
        to = torch.where(mask, real.cumsum(1) - 1, lengths.unsqueeze(1) + (1 - real).cumsum(1) - 1)
        x_packed = torch.zeros_like(x).scatter(1, to.unsqueeze(-1).expand_as(x), x)
        out, final, gates = run(x_packed, lengths if pack else None, state, params, output_gates)
        final = final if pack else None
        last_real = real.cumsum(dim=1) - 1  # index in the packed sequence of the newest real token
        out = out.gather(1, last_real.clamp(min=0).unsqueeze(-1).expand(-1, -1, out.shape[-1]))
        before_first = (last_real < 0).unsqueeze(-1)
        initial_h = state[0].permute(1, 0, 2).reshape(x.shape[0], 1, -1)
        out = torch.where(before_first, initial_h, out)
        if gates is not None:
            index = last_real.clamp(min=0).unsqueeze(-1)
            gates = {
                k: v.gather(1, index.expand(-1, -1, v.shape[-1])) * mask.unsqueeze(-1)
                for k, v in gates.items()
            }
        return out, final, gates

    @property
    def _drops_weights(self) -> bool:
        return self.training and self.weight_dropout > 0

    # -- decoding: one token, one call -------------------------------------------------------------------
    def _decode_step(self, x, state, decode_cache_weights=False):
        """One token, no padding: from x (batch, input_size) and the state, a tuple of (batch, H) tensors
        ((h, C) or (h,)), to the new state.

        Decoding is bound by reading the weights once per token, so in eval mode without gradients the step
        reads a decode-time copy of the layer's matrices and biases (`ColumnMajorCopies`: [W_ih | b_ih |
        W_hh | b_hh] in the layout read fastest, `_copy_product`) and applies the cell's equations to the
        products (`_cell_update`). An LSTM or RNN layer above the first computes its gates' pre-activations
        as one product of [x, 1, h, 1] with the whole copy. The first layer, whose input is a token's
        embedding, computes its input product apart (the batch-1 step keeps it per token, `InputProductRows`);
        a GRU layer needs the two products apart for its reset gate. Otherwise torch's single-step cell
        (`torch.lstm_cell`, `torch.gru_cell`, `torch.rnn_tanh_cell`: the same equations in one call) reads
        the parameters."""
        rnn = self.rnn
        w_ih, w_hh, b_ih, b_hh = rnn.weight_ih_l0, rnn.weight_hh_l0, rnn.bias_ih_l0, rnn.bias_hh_l0
        if not _reads_copies(decode_cache_weights, self, (w_ih, w_hh)):
            if not decode_cache_weights:
                self._decode_copies.clear()  # turned off: free their memory
                self._input_rows.clear()
            cell = _TORCH_CELL[self.cell_type]
            if self.has_cell_state:
                return cell(x, state, w_ih, w_hh, b_ih, b_hh)
            return (cell(x, state[0], w_ih, w_hh, b_ih, b_hh),)
        (copy,) = self._decode_copies.of((w_ih, b_ih, w_hh, b_hh))
        h, width, one = state[0], w_ih.shape[0], _ones(x.shape[0], x.dtype, x.device)
        if self.fuses_products:
            gates = _copy_product(torch.cat((x, one, h, one), 1), copy, 0, width)
            return _cell_update(self.cell_type, state, gates=gates)
        gh = _copy_product(torch.cat((h, one), 1), copy, x.shape[1] + 1, width)
        return _cell_update(self.cell_type, state, gx=_input_product(copy, x, width), gh=gh)

    @property
    def fuses_products(self) -> bool:
        """Whether a decoding step computes the input and recurrent products as one (`_cell_update`): in LSTM
        and RNN layers above the first. The first keeps its input product per token; a GRU's reset gate
        needs the two apart (`_cell_update`)."""
        return self.layer_idx > 0 and self.cell_type != "gru"

    # -- fused: torch's kernel --------------------------------------------------------------------------
    def _run_fused(self, x, lengths, state, params, output_gates):
        hx = state if self.has_cell_state else state[0]
        if lengths is not None:
            x = pack_padded_sequence(x, lengths.clamp(min=1).cpu(), batch_first=True, enforce_sorted=False)
        if self.training and self.weight_dropout > 0:
            out, hn = torch.func.functional_call(self.rnn, params, (x, hx))
        else:
            out, hn = self.rnn(x, hx)
        if lengths is not None:
            out, _ = pad_packed_sequence(out, batch_first=True, total_length=int(lengths.max().clamp(min=1)))
        final = hn if self.has_cell_state else (hn,)
        if lengths is not None and bool((lengths == 0).any()):
            empty = (lengths == 0).view(1, -1, 1)  # rows with no real token keep their initial state
            final = tuple(torch.where(empty, s0, s) for s0, s in zip(state, final))
        return out, final, None

    # -- reference: the equations, step by step -----------------------------------------------------------
    def _run_reference(self, x, lengths, state, params, output_gates):
        outputs, finals, all_gates = [], [], []
        for d in range(self.num_directions):
            suffix = "_reverse" if d == 1 else ""
            w_ih, w_hh = params[f"weight_ih_l0{suffix}"], params[f"weight_hh_l0{suffix}"]
            b_ih, b_hh = params[f"bias_ih_l0{suffix}"], params[f"bias_hh_l0{suffix}"]
            peephole = self.peephole_weight[d] if self.cell_type == "peephole" else None
            xd = x if d == 0 else _reverse_within_lengths(x, lengths)
            out, final, gates = self._scan(
                xd, lengths, tuple(s[d] for s in state), w_ih, w_hh, b_ih, b_hh, peephole, output_gates
            )
            if d == 1:
                out = _reverse_within_lengths(out, lengths)
                gates = {k: _reverse_within_lengths(v, lengths) for k, v in gates.items()} if gates else gates
            outputs.append(out)
            finals.append(final)
            all_gates.append(gates)
        out = outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=-1)
        final = tuple(torch.stack([f[k] for f in finals]) for k in range(len(finals[0])))
        gates = None
        if output_gates:
            gates = (
                all_gates[0]
                if len(all_gates) == 1
                else {k: torch.cat([g[k] for g in all_gates], dim=-1) for k in all_gates[0]}
            )
        return out, final, gates

    def _scan(self, x, lengths, state, w_ih, w_hh, b_ih, b_hh, peephole, output_gates):
        """The recurrence over time for one direction; `lengths` (or None) marks each row's real steps."""
        seq_len = x.shape[1]
        gx = F.linear(x, w_ih, b_ih)  # the input projection, hoisted out of the time loop
        valid = None
        if lengths is not None:
            valid = (torch.arange(seq_len, device=x.device).unsqueeze(0) < lengths.unsqueeze(1)).unsqueeze(-1)
        h = state[0]
        c = state[1] if self.has_cell_state else None
        outs, gate_steps = [], []
        # unbind, not gx[:, t]: the backward of an index allocates a zero tensor the size of all of gx per
        # step
        for t, gx_t in enumerate(gx.unbind(1)):
            if self.has_cell_state:
                h_new, c_new, g = lstm_cell(gx_t, h, c, w_hh, b_hh, peephole)
                g = (*g, c_new)
            elif self.cell_type == "gru":
                h_new, g = gru_cell(gx_t, h, w_hh, b_hh)
                c_new = None
            else:
                h_new, g, c_new = rnn_cell(gx_t, h, w_hh, b_hh), (), None
            if valid is not None:  # padded steps leave the state untouched
                keep = valid[:, t]
                h_new = torch.where(keep, h_new, h)
                c_new = torch.where(keep, c_new, c) if c_new is not None else None
            h, c = h_new, c_new
            outs.append(h)
            if output_gates:
                gate_steps.append(g)
        out = torch.stack(outs, dim=1)
        final = (h, c) if self.has_cell_state else (h,)
        gates = None
        if output_gates:
            names = GATE_NAMES[self.cell_type]
            gates = {
                name: torch.stack([step[k] for step in gate_steps], dim=1) for k, name in enumerate(names)
            }
        return out, final, gates


def _reverse_within_lengths(x: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
    """Reverse each row's first `lengths[b]` steps (all steps if lengths is None); the rest stay in place."""
    seq_len = x.shape[1]
    if lengths is None:
        return x.flip(1)
    t = torch.arange(seq_len, device=x.device).unsqueeze(0)
    index = torch.where(t < lengths.unsqueeze(1), lengths.unsqueeze(1) - 1 - t, t)
    return x.gather(1, index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


# ----------------------------------------------------------------------------------------------------------
# Outputs
# ----------------------------------------------------------------------------------------------------------


def _output_class(name: str, doc: str, fields: tuple[str, ...]) -> type[ModelOutput]:
    """A `ModelOutput` dataclass with these fields (all optional, in this order), where the field "cache" is
    spelled `CACHE_NAME`, the name the installed transformers reads. On transformers < 5.24 the class also
    answers `.cache`, so code written against either version reads the state the same way."""
    spelled = [CACHE_NAME if field == "cache" else field for field in fields]
    namespace: dict[str, object] = {"__doc__": doc, "__module__": __name__}
    if "cache" in fields and CACHE_NAME != "cache":
        namespace["cache"] = property(lambda self: getattr(self, CACHE_NAME))
    return make_dataclass(
        name, [(field, object, None) for field in spelled], bases=(ModelOutput,), namespace=namespace
    )


LSTMModelOutput = _output_class(
    "LSTMModelOutput",
    """Output of [`LSTMModel`].

    Args:
        last_hidden_state (`torch.FloatTensor` of shape `(batch, seq_len, num_directions * hidden_size)`):
            h_t of the last layer at every position (after the output dropout, when training).
        cache ([`LSTMCache`], *optional*):
            The recurrent state after the last position, returned when `use_cache=True` (stored under
            `CACHE_NAME`; `.cache` reads it on every transformers version).
        hidden_states (`tuple(torch.FloatTensor)`, *optional*):
            With `output_hidden_states=True`: (embeddings, layer 1 h_t, ..., layer N h_t).
        gates (`tuple(dict[str, torch.FloatTensor])`, *optional*):
            With `output_gates=True`: one dict per layer of `(batch, seq_len, hidden)` activations, keyed
            `forget, input, output, candidate, cell` (LSTM, peephole) or `update, reset, candidate` (GRU).
    """,
    ("last_hidden_state", "cache", "hidden_states", "gates"),
)

LSTMCausalLMOutput = _output_class(
    "LSTMCausalLMOutput",
    """Output of [`LSTMForCausalLM`].

    Args:
        loss (`torch.FloatTensor`, *optional*): mean next-token cross-entropy, when `labels` are given.
        logits (`torch.FloatTensor` of shape `(batch, seq_len, vocab_size)`): next-token scores.
        cache ([`LSTMCache`], *optional*): the recurrent state after the last position.
        hidden_states, gates: as in [`LSTMModelOutput`].
    """,
    ("loss", "logits", "cache", "hidden_states", "gates"),
)

LSTMClassifierOutput = _output_class(
    "LSTMClassifierOutput",
    """Output of the classification heads.

    Args:
        loss (`torch.FloatTensor`, *optional*): classification (or regression) loss, when `labels` are given.
        logits (`torch.FloatTensor`): `(batch, num_labels)` for sequences, `(batch, seq_len, num_labels)` for
            tokens.
        hidden_states, gates: as in [`LSTMModelOutput`].
    """,
    ("loss", "logits", "hidden_states", "gates"),
)


def cache_of(output: ModelOutput) -> LSTMCache | None:
    """The cache inside any model or `generate()` output, under whichever name the installed transformers
    uses."""
    return output.get(CACHE_NAME)


def _one_cache(cache: LSTMCache | None, past_key_values: LSTMCache | None) -> LSTMCache | None:
    """`forward` takes the state as `cache` (transformers >= 5.24) or `past_key_values` (before): one
    argument."""
    if cache is not None and past_key_values is not None:
        raise ValueError(
            "pass the recurrent state as cache or as past_key_values, not both (they are the same argument)"
        )
    return cache if cache is not None else past_key_values


# ----------------------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------------------

_GLOBAL_HOOKS = tuple(
    getattr(torch.nn.modules.module, name, {})
    for name in ("_global_forward_hooks", "_global_forward_pre_hooks")
)
"""torch's hooks on every module (`nn.modules.module.register_module_forward_hook` and its pre-hook twin),
dictionaries it fills in place; a one-token step that skips module calls checks them too (a test registers
one and counts its calls, so a change in torch shows)."""
_STEP_PARAMETERS = ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0")  # what a step reads per layer
_TOKEN_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)
_IGNORED_KWARGS = {"position_ids", "cache_position", "return_dict", "output_attentions"}

AUTO_MAP = {
    "AutoConfig": "configuration_hf_lstm.LSTMConfig",
    "AutoModel": "modeling_hf_lstm.LSTMModel",
    "AutoModelForCausalLM": "modeling_hf_lstm.LSTMForCausalLM",
    "AutoModelForSequenceClassification": "modeling_hf_lstm.LSTMForSequenceClassification",
    "AutoModelForTokenClassification": "modeling_hf_lstm.LSTMForTokenClassification",
}


def weights_readable_as(folder, reference: str) -> None:
    """Give every `.safetensors` file in `folder` the permission bits of `reference`, a file written beside
    them the ordinary way. safetensors 0.8 writes through a temporary file that is always created owner-only
    (0600, whatever the umask), so a saved folder's weights could not be read by the colleagues who can read
    its config (safetensors issue #782; it hits every model transformers saves). Nothing happens if
    `reference` is missing."""
    try:
        mode = os.stat(os.path.join(folder, reference)).st_mode & 0o777
    except FileNotFoundError:
        return
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.name.endswith(".safetensors") and entry.is_file(follow_symlinks=False):
                if entry.stat(follow_symlinks=False).st_mode & 0o777 != mode:
                    os.chmod(entry.path, mode)


class LSTMPreTrainedModel(PreTrainedModel):
    """Shared plumbing: configuration class, weight initialisation, the paper-notation weight view, and a
    complete `auto_map` in every saved folder."""

    config_class = LSTMConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True  # per recurrent layer (`LSTMModel.gradient_checkpointing`)
    _no_split_modules = ["LSTMRecurrentLayer"]
    _is_stateful = True  # no assisted decoding, which rewinds the state (read up to transformers 5.24)

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # the model makes its own LSTMCache; a Transformer's DynamicCache means nothing here

    def _init_weights(self, module):
        """Uniform U(-r, r) weights (r = initializer_range, or 1/sqrt(hidden_size) like nn.LSTM), zero biases,
        and the forget-gate bias b_f = forget_bias for LSTM and peephole cells. Token embeddings take U(-r, r)
        only when initializer_range is set; by default they start N(0, 1) like nn.Embedding, so that W x_t
        is of order one at the gates (see the config's docstring for why that matters)."""
        r = self.config.initializer_range or 1.0 / math.sqrt(self.config.hidden_size)
        # Dispatch on the modules that own the parameters: transformers skips, for remote code, any module
        # whose own (non-recursive) parameters are all already initialised, which a parameterless wrapper is.
        if isinstance(module, nn.RNNBase):
            hidden = module.hidden_size
            for name, param in module.named_parameters():
                if name.startswith("weight"):
                    init.uniform_(param, -r, r)
                elif name.startswith("bias_ih") and isinstance(module, nn.LSTM):
                    bias = torch.zeros_like(param)
                    bias[hidden : 2 * hidden] = (
                        self.config.forget_bias
                    )  # rows i, f, g, o: f is the second block
                    init.copy_(param, bias)
                else:
                    init.zeros_(param)
        elif isinstance(module, LSTMRecurrentLayer) and module.cell_type == "peephole":
            init.uniform_(module.peephole_weight, -r, r)
        elif isinstance(module, nn.Embedding):
            if self.config.initializer_range is None:
                init.normal_(module.weight, 0.0, 1.0)
            else:
                init.uniform_(module.weight, -r, r)
        elif isinstance(module, nn.Linear):
            init.uniform_(module.weight, -r, r)
            if module.bias is not None:
                init.zeros_(module.bias)

    def drop_decode_copies(self) -> None:
        """Free the decode-time weight copies (`ColumnMajorCopies`) and captured steps (`GraphedDecodeStep`)
        of every module; the next one-token step rebuilds what it needs. `train()`, `eval()` and `.to()` call
        it."""
        for module in self.modules():
            for name in ("_decode_copies", "_input_rows", "_decode_graph", "_one_token_plan"):
                held = module.__dict__.get(name)
                if held is not None:
                    held.clear()

    def train(self, mode: bool = True):
        self.drop_decode_copies()  # also catches weights changed through `.data`, which bumps no counter
        return super().train(mode)

    def _apply(self, fn, *args, **kwargs):
        # .to(), .float(), .cuda(): a converted weight may land at the address of the one it replaced, with
        # the same version counter, so the copies are dropped rather than trusted to notice
        self.drop_decode_copies()
        result = super()._apply(fn, *args, **kwargs)
        for module in self.modules():
            if isinstance(module, nn.RNNBase):
                _compact_bfloat16_weights(module)
        return result

    def save_pretrained(self, save_directory, *args, **kwargs):
        """`save_pretrained`, with every Auto class in `config.auto_map` (transformers records only the saved
        class), so the folder loads with any `AutoModel*` and `trust_remote_code=True`."""
        self.config.auto_map = {**(getattr(self.config, "auto_map", None) or {}), **AUTO_MAP}
        result = super().save_pretrained(save_directory, *args, **kwargs)
        weights_readable_as(save_directory, "config.json")
        return result

    def _recurrent_stack(self) -> LSTMModel:
        return self if isinstance(self, LSTMModel) else self.model

    def gate_weights(self, layer: int = 0, direction: str = "forward") -> dict[str, torch.Tensor]:
        """The weights of one layer in the notation of the equations, as detached copies.

        For LSTM and peephole cells: `W_f, W_i, W_c, W_o` of shape
        `(hidden_size + layer_input_size, hidden_size)`, acting on z_t = [h_{t-1}, x_t] (h first), and
        `b_f, b_i, b_c, b_o` of shape `(hidden_size,)` (the kernel's two biases summed). Peephole cells add
        the diagonal weights `p_i, p_f, p_o`.
        For GRU cells: `W_z, W_r, W_h` and `b_z, b_r, b_h`, plus `b_hn`, the recurrent bias inside the reset
        product: h~_t = tanh(x_t W_h[H:] + b_h + r_t * (h_{t-1} W_h[:H] + b_hn)),
        h_t = (1 - z_t) h~_t + z_t h_{t-1}.
        For RNN cells: `W` and `b`, with h_t = tanh(z_t W + b).
        For example, input size 4 and hidden size 3 give z_t of size 7 and every W of shape (7, 3).
        """
        stack = self._recurrent_stack()
        if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < len(stack.layers):
            raise ValueError(f"layer must be in [0, {len(stack.layers)}), got {layer!r}")
        if direction not in ("forward", "backward") or (
            direction == "backward" and not self.config.bidirectional
        ):
            allowed = (
                "'forward' or 'backward'"
                if self.config.bidirectional
                else "'forward' (the model is unidirectional)"
            )
            raise ValueError(f"direction must be {allowed}, got {direction!r}")
        module = stack.layers[layer]
        suffix = "_reverse" if direction == "backward" else ""
        rnn = module.rnn
        w_ih, w_hh = (
            getattr(rnn, f"weight_ih_l0{suffix}").detach(),
            getattr(rnn, f"weight_hh_l0{suffix}").detach(),
        )
        b_ih, b_hh = (
            getattr(rnn, f"bias_ih_l0{suffix}").detach(),
            getattr(rnn, f"bias_hh_l0{suffix}").detach(),
        )
        hidden = module.hidden_size

        def block(k):
            rows = slice(k * hidden, (k + 1) * hidden)
            return torch.cat([w_hh[rows], w_ih[rows]], dim=1).t().clone()

        def bias(k, both=True):
            rows = slice(k * hidden, (k + 1) * hidden)
            return (b_ih[rows] + b_hh[rows]).clone() if both else b_ih[rows].clone()

        if module.cell_type in ("lstm", "peephole"):  # kernel order i, f, g, o
            view = {
                "W_i": block(0),
                "W_f": block(1),
                "W_c": block(2),
                "W_o": block(3),
                "b_i": bias(0),
                "b_f": bias(1),
                "b_c": bias(2),
                "b_o": bias(3),
            }
            if module.cell_type == "peephole":
                p = module.peephole_weight[1 if suffix else 0].detach()
                view.update(p_i=p[0].clone(), p_f=p[1].clone(), p_o=p[2].clone())
            return view
        if module.cell_type == "gru":  # kernel order r, z, n
            return {
                "W_r": block(0),
                "W_z": block(1),
                "W_h": block(2),
                "b_r": bias(0),
                "b_z": bias(1),
                "b_h": bias(2, both=False),
                "b_hn": b_hh[2 * hidden :].clone(),
            }
        return {"W": block(0), "b": bias(0)}


class LSTMModel(LSTMPreTrainedModel):
    """Embeddings and a stack of recurrent layers; returns h_t of the last layer at every position."""

    def __init__(self, config: LSTMConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.embedding_size)
        self.input_dropout = LockedDropout(config.input_dropout)
        self.hidden_dropout = LockedDropout(config.hidden_dropout)
        self.output_dropout = LockedDropout(config.output_dropout)
        directions = 2 if config.bidirectional else 1
        self.layers = nn.ModuleList(
            LSTMRecurrentLayer(
                config, config.embedding_size if k == 0 else directions * config.hidden_size, k
            )
            for k in range(config.num_hidden_layers)
        )
        # Set by transformers' `gradient_checkpointing_enable()` (with `_gradient_checkpointing_func`): in
        # training, each layer keeps only its input and recomputes the rest during the backward pass.
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self):
        return self.embed_tokens

    def set_input_embeddings(self, value):
        self.embed_tokens = value

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        cache: LSTMCache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        output_gates: bool | None = None,
        past_key_values: LSTMCache | None = None,
        **kwargs,
    ) -> LSTMModelOutput:
        r"""
        Args:
            input_ids (`torch.LongTensor` of shape `(batch, seq_len)`): token ids in `[0, vocab_size)`.
            attention_mask (`torch.Tensor` of shape `(batch, past + seq_len)` or `(batch, seq_len)`,
                *optional*): 1 for real tokens, 0 for padding (anywhere: left, right or inside). Padded
                positions leave the state untouched. Only the last `seq_len` columns are read.
            cache ([`LSTMCache`], *optional*): the state to start from (updated in place). `past_key_values`
                is the same argument under the name transformers used before 5.24.
            inputs_embeds (`torch.FloatTensor` of shape `(batch, seq_len, embedding_size)`, *optional*):
                instead of `input_ids`.
            use_cache (`bool`, *optional*): return the final state as `cache` (unidirectional only).
            output_hidden_states (`bool`, *optional*): return (embeddings, layer 1 h_t, ..., layer N h_t).
            output_gates (`bool`, *optional*): return every layer's gate activations (runs the reference
                path).
            kwargs: `position_ids` and `cache_position` are accepted and ignored (a recurrent model reads
                positions from its state); anything else is an error.
        """
        config = self.config
        _check_kwargs(kwargs, allowed=_IGNORED_KWARGS)
        past = _one_cache(cache, past_key_values)
        use_cache = _cache_use_for_export(past, use_cache) if torch.compiler.is_exporting() else use_cache
        use_cache = config.use_cache if use_cache is None else use_cache
        output_hidden_states = (
            config.output_hidden_states if output_hidden_states is None else output_hidden_states
        )
        if config.bidirectional:
            if past is not None:
                raise ValueError("a bidirectional model reads whole sequences and takes no cache")
            use_cache = False

        hidden, batch, seq_len = self._embed(input_ids, inputs_embeds)
        _check_cache(past, self, batch)
        mask = _prepare_mask(attention_mask, batch, seq_len, past.seen_tokens if past is not None else 0)
        cache = None
        if use_cache:
            cache = past if past is not None else LSTMCache()

        all_hidden = (hidden,) if output_hidden_states else None
        all_gates = () if output_gates else None
        use_reference = not config.uses_fused_kernel
        x = self.input_dropout(hidden)
        checkpointed = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        new_states = []
        for k, layer in enumerate(self.layers):
            state = None
            if past is not None and len(past) > 0:
                state = tuple(s.unsqueeze(0) for s in past.states[k])
            args = (x, mask, state, use_reference, bool(output_gates), config.decode_cache_weights)
            if checkpointed:  # positional: the reentrant variant of torch's checkpoint takes no keywords
                out, final, gates = self._gradient_checkpointing_func(layer.__call__, *args)
            else:
                out, final, gates = layer(*args)
            if cache is not None:
                new_states.append(tuple(s.squeeze(0) for s in final))
            if output_hidden_states:
                all_hidden += (out,)
            if output_gates:
                all_gates += (gates,)
            x = self.hidden_dropout(out) if k < len(self.layers) - 1 else out
        if cache is not None:
            cache.states = new_states
            cache.seen_tokens += seq_len
        return LSTMModelOutput(
            last_hidden_state=self.output_dropout(x),
            **{CACHE_NAME: cache},
            hidden_states=all_hidden,
            gates=all_gates,
        )

    def _embed(self, input_ids, inputs_embeds):
        config = self.config
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        if input_ids is not None:
            if not isinstance(input_ids, torch.Tensor):
                raise ValueError(
                    f"input_ids must be a torch.Tensor of token ids, got {type(input_ids).__name__}"
                )
            if input_ids.dtype not in _TOKEN_DTYPES:
                raise ValueError(
                    f"input_ids must be an integer tensor (torch.long), got dtype {input_ids.dtype}"
                )
            if input_ids.dim() != 2:
                raise ValueError(
                    f"input_ids must have shape (batch, seq_len), got shape {tuple(input_ids.shape)}"
                    + ("; add a batch dimension with input_ids[None]" if input_ids.dim() == 1 else "")
                )
            if input_ids.shape[1] == 0 or input_ids.shape[0] == 0:
                raise ValueError(
                    f"input_ids is empty (shape {tuple(input_ids.shape)}); give at least one token"
                )
            if not torch.compiler.is_exporting():
                low, high = int(input_ids.min()), int(input_ids.max())
                if low < 0 or high >= config.vocab_size:
                    raise _token_id_error(low if low < 0 else high, config.vocab_size)
            hidden = self.embed_tokens(input_ids.long())
            if self.training and config.embedding_dropout > 0:
                hidden = embedding_dropout(hidden, input_ids, config.vocab_size, config.embedding_dropout)
        else:
            if not isinstance(inputs_embeds, torch.Tensor) or not inputs_embeds.is_floating_point():
                raise ValueError("inputs_embeds must be a floating-point torch.Tensor")
            if (
                inputs_embeds.dim() != 3
                or inputs_embeds.shape[-1] != config.embedding_size
                or 0 in inputs_embeds.shape[:2]
            ):
                raise ValueError(
                    "inputs_embeds must have shape "
                    f"(batch, seq_len, embedding_size={config.embedding_size}) with "
                    f"batch, seq_len >= 1; got {tuple(inputs_embeds.shape)}"
                )
            hidden = inputs_embeds
        return hidden, hidden.shape[0], hidden.shape[1]


def _cache_use_for_export(past, use_cache) -> bool | None:
    """Under `torch.export`, an `LSTMCache` can be neither an input nor an output of the exported program (it
    is a Python object). Without a cache, `use_cache` is off and asking for it is an error. A cache can only
    have been built inside the function being exported (`hf_lstm.export.RecurrentStep` builds one from
    tensors and returns its tensors), so it is used as usual."""
    if past is not None:
        return use_cache
    if use_cache:
        raise ValueError(
            "torch.export: an exported hf_lstm model returns no cache (an LSTMCache is a Python object an "
            "exported program cannot carry); export with use_cache=False, or export "
            "hf_lstm.export.RecurrentStep(model), which takes and returns the state as tensors"
        )
    return False


def _check_kwargs(kwargs: dict, allowed: set[str]) -> None:
    unknown = sorted(k for k in kwargs if k not in allowed)
    if unknown:
        raise ValueError(
            f"unexpected argument(s) {', '.join(unknown)}; an hf_lstm model takes input_ids or "
            "inputs_embeds, attention_mask, cache (or past_key_values), use_cache, output_hidden_states, "
            "output_gates (and labels for heads). If generate() passed it, this model file "
            f"(written for {_WRITTEN_FOR}) does not know what transformers {transformers.__version__} sends. "
            f"{_WHAT_TO_DO}"
        )
    if kwargs.get("output_attentions"):
        raise ValueError(
            "output_attentions=True: a recurrent model has no attention; use output_gates=True instead"
        )


def _check_labels(name: str, target, shape, vocab_size: int, ignore_index: int) -> None:
    """Labels are integer token ids in [0, vocab_size), or `ignore_index` for positions not scored."""
    if not isinstance(target, torch.Tensor) or target.is_floating_point() or target.is_complex():
        raise ValueError(
            f"{name} must be an integer tensor of token ids, got {getattr(target, 'dtype', type(target))}"
        )
    if target.shape != shape:
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(target.shape)}")
    outside = (target != ignore_index) & ((target < 0) | (target >= vocab_size))
    if bool(outside.any()):
        raise ValueError(
            f"{name} contains token id {int(target[outside][0])}, outside [0, vocab_size={vocab_size}); "
            f"mark positions that should not be scored with {ignore_index}"
        )


def _prepare_mask(attention_mask, batch: int, seq_len: int, past_len: int = 0) -> torch.Tensor | None:
    """The mask of the `seq_len` new positions, as bool; None when nothing is padded.

    The mask covers every position the state has read and the new ones: exactly `seq_len` columns without a
    cache, `past_len + seq_len` with one (what `generate()` passes). Any other width is an error, not a guess.
    """
    if attention_mask is None:
        return None
    _check_mask_shape(attention_mask, batch, seq_len, past_len)
    mask = attention_mask[:, -seq_len:]
    if torch.compiler.is_exporting():
        return mask != 0
    if mask.dtype != torch.bool:
        if mask.is_floating_point() or bool(((mask != 0) & (mask != 1)).any()):
            if not bool(((mask == 0) | (mask == 1)).all()):
                raise ValueError("attention_mask must contain only 0 (padding) and 1 (real token)")
        mask = mask != 0
    return None if bool(mask.all()) else mask


def _check_mask_shape(attention_mask, batch: int, seq_len: int, past_len: int) -> None:
    """A mask is a 2-D tensor with one row per sequence and one column per position it covers."""
    if attention_mask is None:
        return
    if not isinstance(attention_mask, torch.Tensor) or attention_mask.dim() != 2:
        shape = (
            tuple(attention_mask.shape)
            if isinstance(attention_mask, torch.Tensor)
            else type(attention_mask).__name__
        )
        raise ValueError(f"attention_mask must be a 2-D (batch, seq_len) tensor of 0 and 1, got {shape}")
    if attention_mask.shape[0] != batch or attention_mask.shape[1] != past_len + seq_len:
        covers = f"{seq_len} new" if past_len == 0 else f"{past_len} cached + {seq_len} new"
        raise ValueError(
            f"attention_mask has shape {tuple(attention_mask.shape)} but must be "
            f"({batch}, {past_len + seq_len}): one row per sequence and one column per position "
            f"({covers} tokens)"
        )


def _check_cache(cache, model: LSTMModel, batch: int) -> None:
    if cache is None:
        return
    if not isinstance(cache, LSTMCache):
        raise ValueError(
            f"cache must be an LSTMCache (from a previous output's .cache), got {type(cache).__name__}"
        )
    if len(cache) == 0:
        return
    config = model.config
    per_layer = 2 if model.layers[0].has_cell_state else 1
    expected = (batch, config.hidden_size)
    if len(cache) != config.num_hidden_layers or any(
        len(state) != per_layer or any(tuple(t.shape) != expected for t in state) for state in cache.states
    ):
        got = [[tuple(t.shape) for t in state] for state in cache.states]
        raise ValueError(
            f"the cache does not fit this model and batch: expected {config.num_hidden_layers} layers of "
            f"{per_layer} tensor(s) of shape {expected}, got {got}"
        )


class LSTMForCausalLM(LSTMPreTrainedModel, GenerationMixin):
    """A recurrent language model: the stack, an optional projection to `embedding_size`, and an output layer
    tied to the embedding by default. Works with `generate()` (greedy, sampling, beam search, streaming),
    `pipeline("text-generation")` and `Trainer`."""

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: LSTMConfig):
        if config.bidirectional:
            raise ValueError(
                "a causal language model cannot be bidirectional (it would read the tokens it must predict); "
                "use bidirectional=False, or LSTMForSequenceClassification / LSTMForTokenClassification"
            )
        super().__init__(config)
        self.model = LSTMModel(config)
        self.output_projection = (
            nn.Linear(config.hidden_size, config.embedding_size, bias=False)
            if config.embedding_size != config.hidden_size
            else None
        )
        self.lm_head = nn.Linear(config.embedding_size, config.vocab_size, bias=True)
        self._decode_copies = ColumnMajorCopies()  # of the output matrices; a plain attribute, not saved
        self._decode_graph = GraphedDecodeStep()  # the one-token step on a CUDA device; not saved either
        self._one_token_plan = OneTokenPlan()  # what the batch-1 step on a CPU reads; not saved either
        self.post_init()

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, new_embeddings):
        self.lm_head = new_embeddings

    def generate(self, inputs=None, *args, **kwargs):
        """`GenerationMixin.generate`, refusing up front what would otherwise fail inside transformers: an
        empty prompt (before 5.24, an IndexError in its own input preparation), assisted or prompt-lookup
        decoding (a RuntimeError saying a cache is required, when this model has one that cannot go back) and
        `cache_implementation="paged"`, continuous batching (an error about attention heads in the config)."""
        ids = inputs if inputs is not None else kwargs.get("input_ids")
        if (
            isinstance(ids, torch.Tensor)
            and ids.dim() == 2
            and ids.shape[1] == 0
            and kwargs.get("inputs_embeds") is None
        ):
            raise ValueError(f"input_ids is empty (shape {tuple(ids.shape)}); give at least one token")
        if kwargs.get("cache_implementation") == "paged":  # transformers' switch to continuous batching
            raise ValueError(f"cache_implementation='paged' means continuous batching: {_NO_PAGES}")
        config = kwargs.get("generation_config") or self.generation_config
        for name in _DRAFTING:  # set as an argument, or in the generation config transformers hands on
            if any(value not in (None, False) for value in (kwargs.get(name), getattr(config, name, None))):
                raise ValueError(f"{name} means assisted decoding: {_NO_ROLLBACK}")
        return super().generate(inputs, *args, **kwargs)

    def init_continuous_batching(self, *args, **kwargs):
        """Refused: `generate_batch` and `continuous_batching_context_manager` come here first (transformers
        5.0 to 5.25), and would fail inside transformers looking for attention heads in the config."""
        raise ValueError(f"continuous batching (generate_batch, init_continuous_batching): {_NO_PAGES}")

    _NOT_FOR_A_DECODING_STEP = frozenset(
        {"cache", "past_key_values", "cache_position", "position_ids", "next_sequence_length", "labels"}
        | {"is_first_iteration", "inputs_embeds", "token_type_ids"}
    )

    def prepare_inputs_for_generation(self, input_ids, *args, inputs_embeds=None, **kwargs):
        """The inputs of one `generate()` step. A decoding step (exactly one token the cache has not read, on
        the cache's device) is built here: that token, the cache, and `generate()`'s other arguments (the
        attention mask, `use_cache`, `logits_to_keep`, ...). Everything else (the prompt, `inputs_embeds`, a
        continued cache) goes through transformers' general version, which on a small model costs more than
        the step itself (it inspects `forward`'s signature at every step on 5.24), and gives the same inputs
        for a recurrent model: it ignores positions. The tokenizer `generate()` takes for `stop_strings` is
        not an input of the model: transformers passes it on with the model's arguments, and it stops here."""
        for name in _FOR_GENERATE_ONLY:
            kwargs.pop(name, None)
        cache = kwargs.get(CACHE_NAME)
        if (
            args
            or inputs_embeds is not None
            or not isinstance(cache, LSTMCache)
            or len(cache) == 0
            or kwargs.get("is_first_iteration")
            or input_ids.dim() != 2
            or input_ids.shape[1] != cache.seen_tokens + 1
            or cache.states[0][0].device != input_ids.device
        ):
            return super().prepare_inputs_for_generation(
                input_ids, *args, inputs_embeds=inputs_embeds, **kwargs
            )
        inputs = {k: v for k, v in kwargs.items() if k not in self._NOT_FOR_A_DECODING_STEP}
        inputs["input_ids"] = input_ids[:, -1:]
        inputs[CACHE_NAME] = cache
        return inputs

    def _output_layer(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits from the last layer's h_t: the output projection (if any), then the output layer. For one
        position in eval mode without gradients they read column-major copies of their matrices
        (`ColumnMajorCopies`), in one column block per thread when torch runs on several: the output layer
        (vocab x embedding) is most of the bytes a decoding step reads."""
        layers = [m for m in (self.output_projection, self.lm_head) if m is not None]
        enabled = (
            self.config.decode_cache_weights and hidden.shape[1] == 1 and all(map(_plain_linear, layers))
        )
        matrices = tuple(m.weight for m in layers) if enabled else ()
        if _reads_copies(enabled, self, matrices):
            logits = _through_copies(hidden.reshape(hidden.shape[0], -1), self._output_copies(layers))
            return logits.unsqueeze(1)
        if not self.config.decode_cache_weights:
            self._decode_copies.clear()  # turned off: free their memory
        for layer in layers:
            hidden = layer(hidden)
        return hidden

    def _output_copies(self, layers: list[nn.Module]) -> list[tuple]:
        """(decode-time copy [W | b], has a bias, output width) per output layer, for `_through_copies`."""
        copies = self._decode_copies.of(*((m.weight, m.bias) for m in layers))
        # the weight's row count, not `out_features`: transformers 5.0's `resize_token_embeddings` resizes the
        # output layer's weight and bias and leaves that attribute as it was
        return [(copy, m.bias is not None, m.weight.shape[0]) for m, copy in zip(layers, copies)]

    # -- decoding on a CUDA device: one captured step per token ------------------------------------------
    def _output_layers(self) -> list[nn.Module]:
        return [m for m in (self.output_projection, self.lm_head) if m is not None]

    def _decode_plan(self) -> tuple:
        """What a one-token step relies on, worked out again only when a module is swapped: (the modules
        themselves, whether they are the plain ones the step reimplements (`LSTMRecurrentLayer`s of LSTM, GRU
        or vanilla RNN cells, an `nn.Embedding`, `nn.Linear` output layers), the number of layers, the hook
        dictionaries of every module the step would not call, torch's global ones included, and a
        `_PatchedForward` per such module (while any of them holds a hook or a module's `forward` is replaced,
        the ordinary path runs, calling every module), and where each tensor the step reads is kept
        (`_step_weights`)).

        It runs at every step, so it reads the modules from their own dictionaries (`_modules`,
        `_parameters`, what `nn.Module.__getattr__` reads, at a twentieth of its cost) and compares them with
        the plan's by identity; the plan holds them, so a swapped module's address cannot be reused unseen."""
        stack = self._modules["model"]
        layers = tuple(stack._modules["layers"]._modules.values())
        rnns = tuple(layer._modules.get("rnn") for layer in layers)
        heads = (self._modules.get("output_projection"), self._modules["lm_head"])
        outputs = tuple(m for m in heads if m is not None)
        modules = (stack, stack._modules["embed_tokens"], *layers, *rnns, *outputs)
        plan = self._decode_graph.plan
        if plan is not None and plan[0] == modules:
            return plan
        plain = (
            type(modules[1]) is nn.Embedding
            and all(type(layer) is LSTMRecurrentLayer and layer.cell_type in _TORCH_CELL for layer in layers)
            and all(type(rnn) in (nn.LSTM, nn.GRU, nn.RNN) for rnn in rnns)
            and all(layer.num_directions == 1 for layer in layers)
            and all(type(m) is nn.Linear for m in outputs)
        )
        every = (self, *modules)
        hooks = _GLOBAL_HOOKS + tuple(d for m in every for d in (m._forward_hooks, m._forward_pre_hooks))
        # a `forward` set on the instance (accelerate's offloading and device hooks, or any wrapper) would be
        # skipped too: the modules' attribute dictionaries, checked at every step for that name
        hooks += tuple(_PatchedForward(m.__dict__) for m in modules)
        kept = [(modules[1]._parameters, "weight")]
        for rnn in rnns if plain else ():
            kept += [(rnn._parameters, name) for name in _STEP_PARAMETERS]
        kept += [(m._parameters, name) for m in outputs for name in ("weight", "bias")]
        self._decode_graph.plan = (modules, plain, len(layers), hooks, kept)
        return self._decode_graph.plan

    def _step_weights(self, plan: tuple | None = None) -> list[torch.Tensor]:
        """Every tensor a one-token step reads (`GraphedDecodeStep`'s and `OneTokenPlan`'s stamps), read from
        the modules now: the embedding, each layer's W_ih, W_hh, b_ih and b_hh, each output layer's weight
        and bias (where it has one). `plan`: `_decode_plan()`'s, when the caller has it."""
        kept = (plan or self._decode_plan())[4]
        return [w for w in (where.get(name) for where, name in kept) if w is not None]

    def _decode_route(self, input_ids, inputs_embeds, past, use_cache, extras: dict) -> str | None:
        """How a one-token decoding step runs, when this call is one: in eval mode without gradients, one
        token per row after a cache, with plain cells (LSTM, GRU, vanilla RNN), the fused implementation,
        plain modules without hooks and no extra outputs. "graph" on a CUDA device (`GraphedDecodeStep`,
        unless `decode_cuda_graph` is off), "direct" on a CPU (`_direct_step`); None otherwise: the ordinary
        path, which also explains any error. Cheap: it runs at every step."""
        if not (
            isinstance(input_ids, torch.Tensor)
            and input_ids.device.type in ("cuda", "cpu")
            and input_ids.dim() == 2
            and input_ids.shape[1] == 1
            and input_ids.dtype in _TOKEN_DTYPES
            and inputs_embeds is None
            and not self.training
            and not torch.is_grad_enabled()
            and not torch.compiler.is_exporting()  # an exported program holds no Python-side plan
            and isinstance(past, LSTMCache)
            and not any(extras.values())
        ):
            return None
        config, plan = self.config, self._decode_plan()
        _, plain, num_layers, hooks, kept = plan
        if not (plain and len(past) == num_layers and not any(hooks)):
            return None
        dtype, device = kept[0][0]["weight"].dtype, input_ids.device  # the embedding's
        expected = (input_ids.shape[0], plan[0][2].hidden_size)  # (batch, the first layer's width)
        if not (
            (config.use_cache if use_cache is None else use_cache)
            and not config.output_hidden_states
            and config.implementation != "reference"
            and all(
                t.shape == expected and t.dtype == dtype and t.device == device
                for state in past.states
                for t in state
            )
        ):
            return None
        if input_ids.is_cuda or self._decode_graph.eager:
            return "graph" if config.decode_cuda_graph else None
        return "direct"

    def _graph_step(self, input_ids, attention_mask, past: LSTMCache) -> LSTMCausalLMOutput:
        """A one-token decoding step on a CUDA device: `GraphedDecodeStep` replays it."""
        _check_cache(past, self.model, input_ids.shape[0])
        _check_mask_shape(attention_mask, input_ids.shape[0], 1, past.seen_tokens)
        weights = self._step_weights()
        logits, past.states = self._decode_graph(self, input_ids, attention_mask, past.states, weights)
        past.seen_tokens += 1
        return LSTMCausalLMOutput(logits=logits, **{CACHE_NAME: past})

    def _direct_step(self, input_ids, attention_mask, past: LSTMCache) -> LSTMCausalLMOutput | None:
        """A one-token decoding step on a CPU, with no more Python than it needs: at batch 1 `_one_token`,
        above it the embedding, each layer's `_decode_step` and the output layer. The same ops on the same
        tensors as the ordinary path (the same results, bit for bit), without the module calls, dropout
        layers and output classes a sequence needs. None when a row is padded at this position or the cache
        does not fit: the ordinary path handles or explains those."""
        batch = input_ids.shape[0]
        if attention_mask is not None:
            _check_mask_shape(attention_mask, batch, 1, past.seen_tokens)
            newest = attention_mask[:, -1]
            if not (newest.item() == 1 if batch == 1 else bool((newest == 1).all())):
                return None
        token = int(input_ids) if batch == 1 else None
        low, high = (token, token) if batch == 1 else map(int, torch.aminmax(input_ids))
        vocab_size = self.config.vocab_size
        if low < 0 or high >= vocab_size:
            raise _token_id_error(low if low < 0 else high, vocab_size)
        if batch == 1 and self._one_token_plan.ready(self, self._decode_graph.plan):  # `_decode_route`'s
            logits, past.states = self._one_token(token, past.states)
        else:
            stack = self.model
            x, states = F.embedding(input_ids[:, 0].long(), stack.embed_tokens.weight), []
            for layer, state in zip(stack.layers, past.states):
                states.append(layer._decode_step(x, state, self.config.decode_cache_weights))
                x = states[-1][0]
            logits, past.states = self._output_layer(x.unsqueeze(1)), states
        past.seen_tokens += 1
        return LSTMCausalLMOutput(logits=logits, **{CACHE_NAME: past})

    def _one_token_copies(self) -> tuple[list | None, list | None]:
        """`OneTokenPlan`'s layers and output layers, or (None, None) where a one-token step reads no copies
        (`_reads_copies`). A layer is (cell type, whether it fuses its products, and `_bag_arguments` for the
        products of [x, 1], [h, 1] and [x, 1, h, 1] with its copy); an output layer (`_bag_arguments` of its
        copy [W | b], whether it has a bias)."""
        outputs, layers = self._output_layers(), []
        matrices = tuple(m.weight for m in outputs)
        if not (
            all(map(_plain_linear, outputs))
            and _reads_copies(self.config.decode_cache_weights, self, matrices)
        ):
            return None, None
        for layer in self.model.layers:
            rnn = layer.rnn
            group = (rnn.weight_ih_l0, rnn.bias_ih_l0, rnn.weight_hh_l0, rnn.bias_hh_l0)
            if not _reads_copies(True, layer, group[::2]):
                return None, None
            (copy,) = layer._decode_copies.of(group)
            (width, size), hidden = rnn.weight_ih_l0.shape, layer.hidden_size
            rows = ((0, size + 1), (size + 1, hidden + 1), (0, size + hidden + 2))  # [x, 1], [h, 1], both
            bags = [_bag_arguments(copy, start, k, width) for start, k in rows]
            layers.append((layer.cell_type, layer.fuses_products, *bags))
        heads = [
            (_bag_arguments(copy, 0, copy.shape[1], width), bias)
            for copy, bias, width in self._output_copies(outputs)
        ]
        read = [bag for _, fuses, x, h, both in layers for bag in ((both,) if fuses else (x, h))]
        choose_batch1_kernel(read + [bag for bag, _ in heads])  # what a step reads, once per shape
        return layers, heads

    def _one_token(self, token: int, states: list[tuple]) -> tuple[torch.Tensor, list[tuple]]:
        """The batch-1 step on a CPU from `OneTokenPlan`: (logits (1, 1, vocab), the new states). The same
        products (`_bag_product`) and cell equations (`_cell_update`) as `LSTMRecurrentLayer._decode_step`
        and `_output_layer`, with what they work out at every call worked out once; the first layer's input
        product is kept per token (`InputProductRows`)."""
        plan, embedding = self._one_token_plan, self.model.embed_tokens.weight
        one, first = _ones(1, embedding.dtype, embedding.device), plan.layers[0][2]
        gx = self.model.layers[0]._input_rows.product(
            token, lambda: _bag_product(torch.cat((embedding[token : token + 1], one), 1), *first)
        )
        x, new = None, []  # the first layer reads its input product `gx`, not its input
        for (cell_type, fuses, bag_x, bag_h, bag_all), state in zip(plan.layers, states):
            h = state[0]
            if fuses:
                gates = _bag_product(torch.cat((x, one, h, one), 1), *bag_all)
                new.append(_cell_update(cell_type, state, gates=gates))
            else:
                if gx is None:  # a layer above the first: its input is the h_t of the layer below
                    gx = _bag_product(torch.cat((x, one), 1), *bag_x)
                gh = _bag_product(torch.cat((h, one), 1), *bag_h)
                new.append(_cell_update(cell_type, state, gx=gx, gh=gh))
            x, gx = new[-1][0], None
        for bag, has_bias in plan.outputs:
            x = _bag_product(torch.cat((x, one), 1) if has_bias else x, *bag)
        return x.unsqueeze(1), new

    def _decode_step_into(self, b: _StepBuffers) -> None:
        """The one-token step `GraphedDecodeStep` captures: from `b.ids`, `b.mask` and `b.state_in` to
        `b.logits` and `b.state_out`, every tensor at a fixed address. A row whose mask is 0 keeps its
        state."""
        x = F.embedding(b.ids[:, 0].clamp(0, self.config.vocab_size - 1), self.model.embed_tokens.weight)
        keep = (b.mask != 0).unsqueeze(1)
        for layer, state, out in zip(self.model.layers, b.state_in_views, b.state_out_views):
            rnn = layer.rnn
            weights = (rnn.weight_ih_l0, rnn.weight_hh_l0, rnn.bias_ih_l0, rnn.bias_hh_l0)
            cell = _TORCH_CELL[layer.cell_type]
            new = cell(x, state, *weights) if layer.has_cell_state else (cell(x, state[0], *weights),)
            for old, value, target in zip(state, new, out):
                target.copy_(torch.where(keep, value, old))
            x = out[0]
        for module in self._output_layers():
            x = F.linear(x, module.weight, module.bias)
        b.logits[:, 0].copy_(x)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        cache: LSTMCache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        output_gates: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        past_key_values: LSTMCache | None = None,
        **kwargs,
    ) -> LSTMCausalLMOutput:
        r"""
        Args:
            labels (`torch.LongTensor` of shape `(batch, seq_len)`, *optional*): usually `input_ids`; shifted
                inside (position t predicts labels[t + 1]); -100 is ignored. To score the token after the
                window too (truncated BPTT over a stream), pass `shift_labels` (already shifted) instead.
            logits_to_keep (`int` or `torch.Tensor`): compute logits only for the last `logits_to_keep`
                positions (0: all), or for the given indices.
            Other arguments: as in [`LSTMModel.forward`]. `num_items_in_batch`, `shift_labels` and
            `ignore_index` reach the loss.
        """
        loss_kwargs = {
            k: kwargs.pop(k) for k in ("num_items_in_batch", "shift_labels", "ignore_index") if k in kwargs
        }
        past = _one_cache(cache, past_key_values)
        extras = {
            "labels": labels is not None,
            "loss": bool(loss_kwargs),
            "output_hidden_states": output_hidden_states,
            "output_gates": output_gates,
            "logits_to_keep": not isinstance(logits_to_keep, int),
            **{k: True for k in kwargs if k not in ("position_ids", "cache_position", "return_dict")},
        }
        route = self._decode_route(input_ids, inputs_embeds, past, use_cache, extras)
        if route is not None:
            step = self._graph_step if route == "graph" else self._direct_step
            output = step(input_ids, attention_mask, past)
            if output is not None:
                return output
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            cache=past,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            output_hidden_states=output_hidden_states,
            output_gates=output_gates,
            **kwargs,
        )
        hidden = outputs.last_hidden_state
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self._output_layer(hidden[:, keep])
        loss = None
        if labels is not None or loss_kwargs.get("shift_labels") is not None:
            for name, target in (("labels", labels), ("shift_labels", loss_kwargs.get("shift_labels"))):
                if target is not None:
                    _check_labels(
                        name,
                        target,
                        logits.shape[:2],
                        self.config.vocab_size,
                        loss_kwargs.get("ignore_index", -100),
                    )
            if loss_kwargs.get("shift_labels") is not None:
                loss_kwargs["shift_labels"] = loss_kwargs["shift_labels"].contiguous()
            loss = self.loss_function(logits, labels, vocab_size=self.config.vocab_size, **loss_kwargs)
        return LSTMCausalLMOutput(
            loss=loss,
            logits=logits,
            **{CACHE_NAME: outputs.cache},
            hidden_states=outputs.hidden_states,
            gates=outputs.gates,
        )


class _LSTMClassifier(LSTMPreTrainedModel):
    """What the two classifiers share: the stack, dropout, a linear layer over h_t (both directions), and
    `forward`; each subclass turns the stack's output into logits and a loss (`_classify`)."""

    def __init__(self, config: LSTMConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.model = LSTMModel(config)
        self.dropout = nn.Dropout(config.classifier_dropout)
        directions = 2 if config.bidirectional else 1
        self.score = nn.Linear(directions * config.hidden_size, config.num_labels)
        self.post_init()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        output_gates: bool | None = None,
        **kwargs,
    ) -> LSTMClassifierOutput:
        r"""
        Args:
            labels (`torch.Tensor`, *optional*): as the class describes (one per sequence, or one per token).
            num_items_in_batch (`int` or `torch.Tensor`, *optional*): the labels counted over all the
                micro-batches of one optimizer step (`Trainer` passes it under gradient accumulation): the
                token classifier divides its summed loss by it; the sequence classifier does not take it.
            Other arguments: as in [`LSTMModel.forward`].
        """
        num_items_in_batch = kwargs.pop("num_items_in_batch", None) if self.accepts_loss_kwargs else None
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            inputs_embeds=inputs_embeds,
            use_cache=False,
            output_hidden_states=output_hidden_states,
            output_gates=output_gates,
            **kwargs,
        )
        logits, loss = self._classify(outputs.last_hidden_state, attention_mask, labels, num_items_in_batch)
        return LSTMClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, gates=outputs.gates
        )


class LSTMForSequenceClassification(_LSTMClassifier):
    """A sequence classifier (or regressor): the stack, pooled over each sequence's real tokens, then a linear
    layer. Bidirectional stacks are welcome here.

    `labels` (`(batch,)` or `(batch, num_labels)`): class ids (single-label), floats (regression,
    `num_labels == 1`) or multi-hot rows (multi-label).
    """

    # Its loss is a mean over the batch's sequences, so `Trainer` divides it by the gradient-accumulation
    # steps itself and passes no `num_items_in_batch` (which it would count in labels, not sequences).
    accepts_loss_kwargs = False

    def _classify(self, hidden, attention_mask, labels, num_items_in_batch=None):
        # padded positions carry the state of the last real token
        batch, seq_len = hidden.shape[:2]
        mask = _prepare_mask(attention_mask, batch, seq_len)
        if self.config.classifier_pooling == "mean":
            weights = (
                torch.ones(batch, seq_len, 1, device=hidden.device)
                if mask is None
                else mask.unsqueeze(-1).to(hidden.dtype)
            )
            pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1)
        else:
            pooled = hidden[:, -1]  # forward direction: the state after the last real token
            if self.config.bidirectional:
                first = (
                    torch.zeros(batch, dtype=torch.long, device=hidden.device)
                    if mask is None
                    else mask.to(torch.int8).argmax(1)
                )
                backward = hidden[torch.arange(batch, device=hidden.device), first, self.config.hidden_size :]
                pooled = torch.cat([pooled[:, : self.config.hidden_size], backward], dim=-1)
        logits = self.score(self.dropout(pooled))
        return logits, None if labels is None else self._classification_loss(logits, labels)

    def _classification_loss(self, logits, labels):
        config = self.config
        if config.problem_type is None:
            if self.num_labels == 1:
                config.problem_type = "regression"
            elif labels.dtype in (torch.long, torch.int):
                config.problem_type = "single_label_classification"
            else:
                config.problem_type = "multi_label_classification"
        if config.problem_type == "regression":
            return F.mse_loss(logits.squeeze(-1), labels.squeeze(-1).to(logits.dtype))
        if config.problem_type == "single_label_classification":
            return F.cross_entropy(logits.view(-1, self.num_labels), labels.view(-1))
        return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))


class LSTMForTokenClassification(_LSTMClassifier):
    """A per-token classifier (tagging): the stack's h_t at every position, then a linear layer.

    `labels` (`(batch, seq_len)`): a class id per token; -100 (and padded positions, when you set them to
    -100) are ignored.
    """

    # Under gradient accumulation `Trainer` passes the number of labelled tokens of the whole optimizer step:
    # the summed loss divided by it weighs every token alike, however the micro-batches split them.
    accepts_loss_kwargs = True

    def _classify(self, hidden, attention_mask, labels, num_items_in_batch=None):
        logits = self.score(self.dropout(hidden))
        if labels is None:
            return logits, None
        flat = (logits.reshape(-1, self.num_labels), labels.reshape(-1))
        if num_items_in_batch is None:
            return logits, F.cross_entropy(*flat, ignore_index=-100)
        total = F.cross_entropy(*flat, ignore_index=-100, reduction="sum")
        return logits, total / torch.as_tensor(num_items_in_batch, device=total.device)


LSTMModel.register_for_auto_class("AutoModel")
LSTMForCausalLM.register_for_auto_class("AutoModelForCausalLM")
LSTMForSequenceClassification.register_for_auto_class("AutoModelForSequenceClassification")
LSTMForTokenClassification.register_for_auto_class("AutoModelForTokenClassification")

__all__ = [
    "CACHE_NAME",
    "cache_of",
    "LSTMCache",
    "LSTMPreTrainedModel",
    "LSTMModel",
    "LSTMForCausalLM",
    "LSTMForSequenceClassification",
    "LSTMForTokenClassification",
    "LSTMModelOutput",
    "LSTMCausalLMOutput",
    "LSTMClassifierOutput",
    "lstm_cell",
    "gru_cell",
    "rnn_cell",
]
