"""What every benchmark section measures with: the `Measurement` and `Report` records, interleaved timing,
the models compared (the reference LSTM, a parameter-matched GPT-2, a naive nn.LSTM loop) and the decode
loops timed."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from ..modeling_hf_lstm import _column_blocks, _copy_product
from ..timing import StepClock


@dataclass
class Measurement:
    """One printed measurement: its value, the target it answers, and whether the target is met.

    `target` is the threshold as printed (`">= 0.70"`), `"report"` for a number that is reported without a
    threshold, or empty for context; `met` is `None` when nothing is judged.
    """

    key: str
    label: str
    value: float | None
    unit: str
    target: str = ""
    met: bool | None = None
    detail: str = ""

    def row(self) -> str:
        """The measurement as one line of the printed table."""
        value = self.value
        if value is None:
            shown = "-"
        elif abs(value) >= 100:
            shown = f"{value:,.0f}"
        else:
            shown = f"{value:.3g}" if abs(value) < 10 else f"{value:.1f}"
        met = {True: "MET", False: "MISSED", None: ""}[self.met]
        line = f"{self.label:<62} {shown:>10} {self.unit:<8} {self.target:<9} {met:<7}"
        return line + (f"  {self.detail}" if self.detail else "")


@dataclass
class Report:
    """Everything one run measured, with the command and machine that produced it."""

    command: str
    machine: dict
    model: dict
    measurements: list[Measurement] = field(default_factory=list)

    def add(self, *measurements: Measurement) -> None:
        """Record measurements and print them as they arrive (a long run shows progress)."""
        for measurement in measurements:
            self.measurements.append(measurement)
            print(measurement.row(), flush=True)

    def to_json(self) -> dict:
        """The report as JSON-ready data (the measurements under `"figures"`, the key the file always had)."""
        return {
            "command": self.command,
            "machine": self.machine,
            "model": self.model,
            "figures": [asdict(m) for m in self.measurements],
        }


# ---------------------------------------- The models -----------------------------------------------------


def reference_model(args, **overrides):
    """The benchmarked `LSTMForCausalLM` (float32, eval mode, seeded)."""
    from ..configuration_hf_lstm import LSTMConfig
    from ..modeling_hf_lstm import LSTMForCausalLM

    torch.manual_seed(0)
    config = LSTMConfig(
        vocab_size=args.vocab_size,
        hidden_size=args.hidden_size,
        embedding_size=args.embedding_size,
        num_hidden_layers=args.num_layers,
        cell_type=args.cell_type,
        tie_word_embeddings=True,
        **overrides,
    )
    return LSTMForCausalLM(config).eval()


def transformer_matched(kind: str, model, block_size: int):
    """A new `kind` ("gpt2", "llama") causal LM (seed 0) with `block_size` positions and about as many
    parameters as `model`, in the shape `hf-lstm compare` gives it (`hf_lstm.compare.match_parameters`: the
    family's recipe, tied, no dropout) for `model`'s vocabulary and total parameter count."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from ..compare import count_parameters, match_parameters

    vocab_size = model.config.vocab_size
    shape = match_parameters(
        kind,
        count_parameters(model)[0],
        vocab_size,
        tolerance=float("inf"),
        block_size=block_size,
        eval_window=block_size,
    )
    special = {k: getattr(model.config, k, None) for k in ("pad_token_id", "bos_token_id", "eos_token_id")}
    config = AutoConfig.for_model(kind, vocab_size=vocab_size, **special, **shape.overrides)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config)


def gpt2_matched(model, block_size: int):
    """`transformer_matched("gpt2", model, block_size)`: the GPT-2 the CPU training section compares with."""
    return transformer_matched("gpt2", model, block_size)


class NaiveLSTM(nn.Module):
    """What a user writes with plain PyTorch, the baseline decode is compared with: embedding, a multi-layer
    `torch.nn.LSTM` and a linear output layer with the benchmarked model's weights, one token per call."""

    def __init__(self, model):
        super().__init__()
        config = model.config
        self.embed = model.model.embed_tokens
        self.rnn = nn.LSTM(
            config.embedding_size, config.hidden_size, num_layers=config.num_hidden_layers, batch_first=True
        )
        with torch.no_grad():
            for k, layer in enumerate(model.model.layers):
                for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                    getattr(self.rnn, f"{name}_l{k}").copy_(getattr(layer.rnn, f"{name}_l0"))
        self.proj = model.output_projection
        self.head = model.lm_head

    def greedy(self, input_ids: torch.Tensor, new_tokens: int) -> float:
        """Greedy-decode `new_tokens` after `input_ids`; returns seconds per decoded token (no prefill)."""
        with torch.no_grad():
            out, state = self.rnn(self.embed(input_ids))
            token = self._logits(out[:, -1:]).argmax(-1)
            start = time.perf_counter()
            for _ in range(new_tokens):
                out, state = self.rnn(self.embed(token), state)
                token = self._logits(out).argmax(-1)
            return (time.perf_counter() - start) / new_tokens

    def _logits(self, h):
        return self.head(self.proj(h) if self.proj is not None else h)


def _onednn_blocked(w: torch.Tensor) -> torch.Tensor:
    """`w` reordered into oneDNN's blocked layout for a one-row product (an opaque `torch._mkldnn` tensor),
    through the private ops torch's own compiler uses for CPU inference."""
    return torch.ops.mkldnn._reorder_linear_weight(w, 1)


def _onednn_product(w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x.unsqueeze(0), w, None, "none", [], "")


def _blocks_of(blocks: int):
    """`store` for the weighted-rows layouts: the model's decode-time copy of w (no bias row) in `blocks`
    column blocks, with w's row count."""
    return lambda w: (_column_blocks(w, blocks), w.shape[0])


def _weighted_rows(stored: tuple[torch.Tensor, int], x: torch.Tensor) -> torch.Tensor:
    """The model's batch-1 product (`_copy_product`) from a copy made by `_blocks_of`."""
    copy, out_features = stored
    return _copy_product(x.reshape(1, -1), copy, 0, out_features).reshape(-1)


def _layouts() -> dict:
    """Every layout this torch can store a float32 matrix in for its matrix-vector product, each as (store,
    product): `store(w)` the stored matrix, `product(stored, x)` the product with a vector `x`."""
    layouts = {
        "row-major": (lambda w: w.contiguous(), torch.mv),  # (out, in): how torch stores a parameter
        "column-major": (lambda w: w.t().contiguous().t(), torch.mv),  # (in, out): the model's decode copies
        # W^T's rows summed weighted by x (embedding_bag): the model's batch-1 step on one thread
        "weighted-rows": (_blocks_of(1), _weighted_rows),
        # the same over one column block per thread, side by side: the model's batch-1 step on several
        "weighted-rows-per-thread": (lambda w: _blocks_of(torch.get_num_threads())(w), _weighted_rows),
    }
    try:  # a private op of x86 builds: measured where it exists, left out where it does not
        w = torch.randn(8, 4)
        _onednn_product(_onednn_blocked(w), torch.randn(4))
        layouts["oneDNN-blocked"] = (_onednn_blocked, _onednn_product)
    except (AttributeError, RuntimeError, NotImplementedError):
        pass
    return layouts


LAYOUTS = _layouts()
"""The ways a matrix can be stored for its matrix-vector product on this machine, by name: (store, product)
with `store(w)` the stored matrix (the same values) and `product(stored, x)` its product with a vector."""


def layouts_now() -> list[str]:
    """The names of `LAYOUTS` worth measuring at torch's thread count now: one block per thread on one thread
    is the weighted-rows layout again."""
    return [name for name in LAYOUTS if name != "weighted-rows-per-thread" or torch.get_num_threads() > 1]


def layout_seconds(weights: list[torch.Tensor], tokens: int) -> dict[str, list[float]]:
    """Seconds of each matrix's matrix-vector product in each of `LAYOUTS`.

    Per layout: `tokens` decoding steps' worth of products over all of `weights` stored that way, in order,
    so that (as in decoding) a matrix has left the cache by the time it is read again when the matrices
    together exceed it; each product is timed alone and averaged over the tokens (a mean, as the decoding
    figures are). Returns, per layout, one time per matrix."""
    seconds = {}
    with torch.no_grad():
        for name, (store, product) in LAYOUTS.items():
            if name not in layouts_now():
                continue
            stored = [store(w.detach()) for w in weights]
            vectors = [torch.randn(w.shape[1], dtype=w.dtype) for w in weights]
            times: list[list[float]] = [[] for _ in stored]
            for _ in range(tokens):
                for w, v, spent in zip(stored, vectors, times):
                    start = time.perf_counter()
                    product(w, v)
                    spent.append(time.perf_counter() - start)
            seconds[name] = [sum(spent) / len(spent) for spent in times]
            del stored
    return seconds


def bare_floor(weights: list[torch.Tensor], tokens: int) -> float:
    """Seconds per token of the bare matrix-vector products over `weights`, each matrix read in whichever of
    `LAYOUTS` this machine reads fastest (measured now, `layout_seconds`): the memory floor of batch-1
    decoding, with no gates, no Python model code, no sampling."""
    return best_of_layouts(layout_seconds(weights, tokens))


def best_of_layouts(seconds: dict[str, list[float]]) -> float:
    """The sum over matrices of the fastest layout's time, from `layout_seconds`."""
    return sum(min(per_layout) for per_layout in zip(*seconds.values()))


def plain_read_seconds(weights: list[torch.Tensor], tokens: int) -> float:
    """Seconds per token to read the bytes of `weights` with no product at all (`sum` of each matrix, in
    order): how fast this machine streams those bytes, for context; no decoding step can do less."""
    with torch.no_grad():
        start = time.perf_counter()
        for _ in range(tokens):
            for w in weights:
                w.sum()
        return (time.perf_counter() - start) / tokens


def step_loop(model, input_ids: torch.Tensor, new_tokens: int) -> float:
    """The model's own bare greedy loop: forward with the cache, argmax, repeat. Seconds per decoded token
    (prefill excluded)."""
    with torch.no_grad():
        out = model(input_ids, use_cache=True, logits_to_keep=1)
        cache, token = out.cache, out.logits[:, -1].argmax(-1, keepdim=True)
        start = time.perf_counter()
        for _ in range(new_tokens):
            out = model(token, cache=cache, use_cache=True, logits_to_keep=1)
            token = out.logits[:, -1].argmax(-1, keepdim=True)
        return (time.perf_counter() - start) / new_tokens


def generate_per_token(
    model, input_ids: torch.Tensor, new_tokens: int, rss_every: int = 0
) -> tuple[float, StepClock]:
    """Greedy `model.generate()` of exactly `new_tokens` tokens; returns (seconds per decoded token in steady
    state, the clock). The clock is a stopping criterion, so it is part of what is timed."""
    from transformers import StoppingCriteriaList

    clock = StepClock(rss_every)
    model.generate(
        input_ids,
        attention_mask=torch.ones_like(input_ids),
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
        pad_token_id=0,
        stopping_criteria=StoppingCriteriaList([clock]),
    )
    return clock.seconds_per_step(), clock


def prompt(model, length: int, batch: int = 1) -> torch.Tensor:
    """A reproducible random prompt of token ids."""
    generator = torch.Generator().manual_seed(length * 7919 + batch)
    return torch.randint(0, model.config.vocab_size, (batch, length), generator=generator)
