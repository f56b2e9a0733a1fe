"""The benchmark sections, each one function that adds its measurements to a `Report`, and `SECTIONS`, the
registry the command line reads."""

from __future__ import annotations

import statistics
import time

import torch
import torch.nn.functional as F

from ..flops import flops_per_token, matmul_parameters, matmul_weights, measure_matmul_peak
from ..timing import interleaved, round_ratios, timed
from .measuring import (
    Measurement,
    NaiveLSTM,
    Report,
    best_of_layouts,
    generate_per_token,
    gpt2_matched,
    layout_seconds,
    plain_read_seconds,
    prompt,
    reference_model,
    step_loop,
)


# ---------------------------------------- Sections -------------------------------------------------------


def step_weights(model) -> list[torch.Tensor]:
    """The matrices a batch-1 decoding step multiplies by: every matrix (`matmul_weights`) but the first
    layer's `weight_ih` when the model keeps that product per token (`InputProductRows`, on with
    `decode_cache_weights` for the cells with a decoding step), whose step reads it only for a token it has
    not read before."""
    weights = matmul_weights(model)
    if model.config.decode_cache_weights and model.config.cell_type in ("lstm", "gru", "rnn"):
        first = model.model.layers[0].rnn.weight_ih_l0
        weights = [w for w in weights if w.data_ptr() != first.data_ptr()]
    return weights


def section_decode(model, args, report: Report) -> None:
    """Greedy decoding at batch 1: `generate()` at least 0.70x the speed of the bare matrix-vector floor (each
    matrix the step reads, read in the layout this machine reads fastest), compared with the same model
    reading its parameters (`decode_cache_weights=False`) and a naive `nn.LSTM` loop, and at most 1.25x the
    time of the model's own bare step loop."""
    weights, naive, ids = step_weights(model), NaiveLSTM(model).eval(), prompt(model, args.short_prompt)
    parameters = reference_model(args, decode_cache_weights=False)  # the same weights, read where they are
    n, layouts = args.decode_tokens, []

    def floor():
        layouts.append(layout_seconds(weights, n))
        return best_of_layouts(layouts[-1])

    rounds: dict[str, list[float]] = {}
    t = interleaved(
        {
            "floor": floor,
            "read": lambda: plain_read_seconds(weights, n),
            "generate": lambda: generate_per_token(model, ids, n)[0],
            "parameters": lambda: generate_per_token(parameters, ids, n)[0],
            "step": lambda: step_loop(model, ids, n),
            "naive": lambda: naive.greedy(ids, n),
        },
        args.repeats,
        rounds=rounds,
    )
    report.add(*_floor_measurements(t, layouts[1:], weights), *_decode_measurements(t, rounds))


def _floor_measurements(t: dict, layouts: list[dict], weights) -> list[Measurement]:
    """The floor with its bandwidth and the layout each matrix is fastest in, and the plain read."""
    mbytes = sum(w.numel() * w.element_size() for w in weights) / 1e6
    per_layout = {name: statistics.median(sum(r[name]) for r in layouts) for name in layouts[0]}
    fastest = [min(layouts[0], key=lambda name, k=k: layouts[0][name][k]) for k in range(len(weights))]
    alone = ", ".join(
        f"{name} alone {s * 1e3:.3f} ms ({mbytes / 1e3 / s:.1f} GB/s)" for name, s in per_layout.items()
    )
    won = ", ".join(f"{name} {fastest.count(name)} of {len(weights)}" for name in per_layout)
    return [
        Measurement(
            "decode.floor_tokens_per_s",
            "bare matrix-vector floor (batch 1, fastest layouts)",
            1 / t["floor"],
            "tok/s",
            detail=f"{t['floor'] * 1e3:.3f} ms/token over the {len(weights)} matrices the step reads, "
            f"{mbytes:.1f} MB "
            f"({mbytes / 1e3 / t['floor']:.1f} GB/s); fastest: {won}; {alone}",
        ),
        Measurement(
            "decode.plain_read_tokens_per_s",
            "plain read of the same bytes (sum, no product)",
            1 / t["read"],
            "tok/s",
            detail=f"{t['read'] * 1e3:.3f} ms/token ({mbytes / 1e3 / t['read']:.1f} GB/s)",
        ),
    ]


def _decode_measurements(t: dict, rounds: dict[str, list[float]]) -> list[Measurement]:
    onednn = "on" if torch.backends.mkldnn.is_available() else "off"
    return [
        Measurement(
            "decode.generate_tokens_per_s",
            "generate() greedy (batch 1)",
            1 / t["generate"],
            "tok/s",
            detail=f"{t['generate'] * 1e3:.3f} ms/token",
        ),
        Measurement(
            "decode.generate_vs_floor",
            "1. generate() / floor",
            t["floor"] / t["generate"],
            "x",
            ">= 0.70",
            t["floor"] / t["generate"] >= 0.70,
            detail=f"round by round: {round_ratios(rounds, 'floor', 'generate')}",
        ),
        Measurement(
            "decode.parameters_tokens_per_s",
            "generate() reading the parameters (decode_cache_weights=False)",
            1 / t["parameters"],
            "tok/s",
            detail=f"{t['parameters'] * 1e3:.3f} ms/token",
        ),
        Measurement(
            "decode.copies_speedup",
            "1c. generate() speed-up from the decode-time copies",
            t["parameters"] / t["generate"],
            "x",
            "report",
        ),
        Measurement(
            "decode.naive_tokens_per_s",
            "naive nn.LSTM loop, one token per call",
            1 / t["naive"],
            "tok/s",
            detail=f"{t['naive'] * 1e3:.3f} ms/token; oneDNN {onednn}",
        ),
        Measurement(
            "decode.generate_vs_naive",
            "1b. generate() / naive nn.LSTM loop",
            t["naive"] / t["generate"],
            "x",
            "report",
        ),
        Measurement(
            "decode.step_tokens_per_s",
            "bare step loop (model forward + argmax)",
            1 / t["step"],
            "tok/s",
            detail=f"{t['step'] * 1e3:.3f} ms/token",
        ),
        Measurement(
            "decode.generate_overhead",
            "3. generate() time / bare step loop time",
            t["generate"] / t["step"],
            "x",
            "<= 1.25",
            t["generate"] / t["step"] <= 1.25,
            detail=f"round by round: {round_ratios(rounds, 'generate', 'step')}",
        ),
    ]


def section_context(model, args, report: Report) -> None:
    """Flat in the context: decode speed after a long prompt at least 0.90x that after a short one, and
    resident memory within 5% between a long and a short generation."""
    short, long_ = prompt(model, args.short_prompt), prompt(model, args.long_prompt)
    n = args.decode_tokens
    t = interleaved(
        {
            "short": lambda: generate_per_token(model, short, n)[0],
            "long": lambda: generate_per_token(model, long_, n)[0],
        },
        args.repeats,
    )
    ratio, short_n, long_n = t["short"] / t["long"], args.short_prompt, args.long_prompt
    report.add(
        Measurement(
            "context.tokens_per_s_short_prompt",
            f"decode tok/s after a {short_n}-token prompt",
            1 / t["short"],
            "tok/s",
        ),
        Measurement(
            "context.tokens_per_s_long_prompt",
            f"decode tok/s after a {long_n}-token prompt",
            1 / t["long"],
            "tok/s",
        ),
        Measurement(
            "context.long_vs_short",
            f"2a. tok/s after {long_n} / after {short_n}",
            ratio,
            "x",
            ">= 0.90",
            ratio >= 0.90,
        ),
    )
    every = max(1, args.memory_short_tokens // 4)
    _, short_clock = generate_per_token(model, short, args.memory_short_tokens, rss_every=every)
    long_seconds, long_clock = generate_per_token(model, short, args.memory_long_tokens, rss_every=every)
    rss_short, rss_long = max(short_clock.rss), max(long_clock.rss)
    growth = rss_long / rss_short - 1 if rss_short else float("nan")
    cache_bytes = 2 * model.config.num_hidden_layers * model.config.hidden_size * 4
    short_n, long_n = args.memory_short_tokens, args.memory_long_tokens
    report.add(
        Measurement(
            "context.rss_short_mb",
            f"peak RSS during a {short_n}-token generation",
            rss_short / 1e6,
            "MB",
            detail=f"sampled every {every} steps",
        ),
        Measurement(
            "context.rss_long_mb",
            f"peak RSS during a {long_n}-token generation",
            rss_long / 1e6,
            "MB",
            detail=f"{1 / long_seconds:.0f} tok/s over the whole run; "
            f"recurrent state {cache_bytes} bytes at batch 1",
        ),
        Measurement(
            "context.rss_growth",
            f"2b. RSS growth, {long_n} vs {short_n} tokens",
            100 * growth,
            "%",
            "<= 5%",
            abs(growth) <= 0.05,
        ),
    )


def section_prefill(model, args, report: Report) -> None:
    """Prefill: a long prompt through the fused kernel at least 2x faster than through the recurrent stack's
    decode step (with its decode-time copies), token by token.

    Both sides compute the logits of the last position only; the token-by-token side runs the recurrent stack
    one token per call (what the decode step does, minus the output layer it does not need for a prompt).
    The bound is low because a prefill at batch 1 is still one recurrent matrix-vector product per token and
    layer: it saves the input projection and the per-call cost, not the sequential reads
    (docs/PERFORMANCE.md, "Prefill")."""
    ids = prompt(model, args.long_prompt)

    def fused():
        with torch.no_grad():
            return timed(lambda: model(ids, use_cache=True, logits_to_keep=1))

    def stepwise():
        from ..modeling_hf_lstm import LSTMCache

        with torch.no_grad():
            cache = LSTMCache()

            def run():
                for k in range(ids.shape[1]):
                    model.model(ids[:, k : k + 1], cache=cache, use_cache=True)
                model.lm_head(model.model.embed_tokens.weight[:1])  # the output product the fused side pays

            return timed(run)

    t = interleaved({"fused": fused, "stepwise": stepwise}, max(1, args.repeats - 1))
    ratio = t["stepwise"] / t["fused"]
    report.add(
        Measurement(
            "prefill.fused_tokens_per_s",
            f"prefill tok/s, {args.long_prompt} tokens, fused kernel",
            args.long_prompt / t["fused"],
            "tok/s",
            detail=f"{t['fused'] * 1e3:.0f} ms",
        ),
        Measurement(
            "prefill.stepwise_tokens_per_s",
            f"prefill tok/s, {args.long_prompt} tokens, decode step",
            args.long_prompt / t["stepwise"],
            "tok/s",
            detail=f"{t['stepwise'] * 1e3:.0f} ms ({t['stepwise'] / args.long_prompt * 1e3:.3f} ms per step)",
        ),
        Measurement(
            "prefill.speedup",
            "4. fused prefill speed-up over the decode step",
            ratio,
            "x",
            ">= 2",
            ratio >= 2,
        ),
    )


def train_step_seconds(model, ids: torch.Tensor, optimizer) -> float:
    """Seconds for one training step: forward, loss, backward, optimizer step."""

    def step():
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return timed(step)


def section_train(model, args, report: Report) -> None:
    """Training: tokens/s and MFU (at least 50%) at (batch, bptt), against an fp32 matrix-product peak
    measured between the steps, and a parameter-matched GPT-2 trained on the same batches.

    FLOPs per token come from `hf_lstm.flops.flops_per_token`: 6N for the LSTM, 6N plus the causal attention
    term for GPT-2, with N = `hf_lstm.flops.matmul_parameters`."""
    lstm = reference_model(args).train()
    gpt = gpt2_matched(lstm, args.bptt).train()
    ids = prompt(lstm, args.bptt, args.train_batch)
    opt_lstm = torch.optim.AdamW(lstm.parameters(), lr=1e-4)
    opt_gpt = torch.optim.AdamW(gpt.parameters(), lr=1e-4)
    peaks = []
    t = interleaved(
        {
            "peak": lambda: peaks.append(measure_matmul_peak(args.peak_size, repeats=3) / 1e9) or 0.0,
            "lstm": lambda: train_step_seconds(lstm, ids, opt_lstm),
            "gpt": lambda: train_step_seconds(gpt, ids, opt_gpt),
        },
        args.repeats,
    )
    peak = max(peaks)
    tokens = ids.numel()
    n_lstm, n_gpt = matmul_parameters(lstm), matmul_parameters(gpt)
    mfu_lstm = flops_per_token(lstm) * tokens / t["lstm"] / (peak * 1e9)
    mfu_gpt = flops_per_token(gpt, context_length=args.bptt) * tokens / t["gpt"] / (peak * 1e9)
    total_lstm, total_gpt = (sum(p.numel() for p in m.parameters()) / 1e6 for m in (lstm, gpt))
    cfg = gpt.config
    report.add(
        Measurement(
            "train.matmul_peak_gflops", f"fp32 matmul peak ({args.peak_size}^2, best)", peak, "GFLOP/s"
        ),
        Measurement(
            "train.lstm_tokens_per_s",
            f"LSTM training tok/s (batch {args.train_batch}, bptt {args.bptt})",
            tokens / t["lstm"],
            "tok/s",
            detail=f"{t['lstm'] * 1e3:.0f} ms/step, AdamW, N={n_lstm / 1e6:.2f}M matmul "
            f"params of {total_lstm:.2f}M",
        ),
        Measurement(
            "train.lstm_mfu",
            "5. LSTM MFU (6N FLOPs per token / peak)",
            100 * mfu_lstm,
            "%",
            ">= 50%",
            mfu_lstm >= 0.5,
        ),
        Measurement(
            "train.gpt2_tokens_per_s",
            f"GPT-2 {cfg.n_layer}x{cfg.n_embd} training tok/s (same batches)",
            tokens / t["gpt"],
            "tok/s",
            detail=f"{t['gpt'] * 1e3:.0f} ms/step, N={n_gpt / 1e6:.2f}M matmul params of {total_gpt:.2f}M",
        ),
        Measurement(
            "train.gpt2_mfu",
            "5b. GPT-2 MFU ((6N + 6*L*d*T) FLOPs per token / peak)",
            100 * mfu_gpt,
            "%",
            "report",
        ),
        Measurement(
            "train.lstm_vs_gpt2", "5c. LSTM tok/s / GPT-2 tok/s", t["gpt"] / t["lstm"], "x", "report"
        ),
    )


def section_reference(model, args, report: Report) -> None:
    """The step-by-step reference path at most 3x the fused kernel's time for one training step (forward and
    backward) at `reference_seq_len`."""
    fused = reference_model(args).train()
    reference = reference_model(args, implementation="reference").train()
    reference.load_state_dict(fused.state_dict())
    ids = prompt(fused, args.reference_seq_len, args.reference_batch)

    def step(m):
        def run():
            m(input_ids=ids, labels=ids).loss.backward()
            m.zero_grad(set_to_none=True)

        return timed(run)

    t = interleaved(
        {"fused": lambda: step(fused), "reference": lambda: step(reference)}, max(1, args.repeats - 1)
    )
    ratio = t["reference"] / t["fused"]
    tokens = ids.numel()
    report.add(
        Measurement(
            "reference.fused_tokens_per_s",
            f"fused training tok/s (batch {args.reference_batch}, seq {args.reference_seq_len}, fwd+bwd)",
            tokens / t["fused"],
            "tok/s",
        ),
        Measurement(
            "reference.reference_tokens_per_s",
            "reference-path training tok/s (same)",
            tokens / t["reference"],
            "tok/s",
        ),
        Measurement(
            "reference.slowdown", "6. reference / fused training time", ratio, "x", "<= 3", ratio <= 3
        ),
    )


def tokenized_ptb(vocab_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Penn Treebank train and validation as token-id streams, as `hf-lstm train --dataset_name ptb` reads
    them: `hf_lstm.data.load_corpus("ptb")`, a word tokenizer of at most `vocab_size` ids trained on the train
    split (`hf_lstm.data.train_tokenizer`), `<eos>` after every line (`hf_lstm.data.tokenize_corpus`)."""
    import datasets

    from ..data import load_corpus, tokenize_corpus, train_tokenizer

    corpus = load_corpus("ptb")
    tokenizer = train_tokenizer(corpus["train"]["text"], kind="word", vocab_size=vocab_size)
    wanted = datasets.DatasetDict({split: corpus[split] for split in ("train", "validation")})
    streams = tokenize_corpus(wanted, tokenizer)
    return streams["train"], streams["validation"]


def train_on_ptb(
    model, train_ids: torch.Tensor, max_steps: int, max_seconds: float, batch: int = 20, bptt: int = 35
) -> tuple[int, float]:
    """Train `model` on the PTB stream (fused kernel, AdamW, truncated BPTT with the state carried, batches of
    `hf_lstm.data.StreamBatcher`) for `max_steps` steps or `max_seconds`, whichever comes first; returns
    (steps, seconds). Brief on purpose: the point is a model that has learnt something, to measure what int8
    costs it."""
    from ..data import StreamBatcher

    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    batcher = StreamBatcher(train_ids, batch_size=batch, bptt=bptt)
    start, steps, cache, batches = time.perf_counter(), 0, None, iter(batcher)
    while steps < max_steps and time.perf_counter() - start < max_seconds:
        try:
            x, y = next(batches)
        except StopIteration:
            batches, cache = iter(batcher), None
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


def _int8_perplexity_change(model, valid_ids: torch.Tensor, detail: str, report: Report) -> None:
    """PTB validation perplexity of `model` in float32 and after int8 dynamic quantisation, read as 10
    stateful streams (`hf_lstm.evaluation.stateful_perplexity`, windows of 128), and the change."""
    from ..evaluation import stateful_perplexity
    from ..quantization import quantize_dynamic_int8

    ppl_float, ppl_int8 = (
        stateful_perplexity(m, valid_ids, bptt=128, batch_size=10)["perplexity"]
        for m in (model, quantize_dynamic_int8(model))
    )
    report.add(
        Measurement(
            "quant.ptb_perplexity_float",
            "PTB valid perplexity, float32",
            ppl_float,
            "ppl",
            detail=f"{detail}; {len(valid_ids)} validation tokens, stateful",
        ),
        Measurement("quant.ptb_perplexity_int8", "PTB valid perplexity, int8", ppl_int8, "ppl"),
        Measurement(
            "quant.ptb_perplexity_change",
            "7b. PTB valid perplexity change, int8 vs float32",
            100 * (ppl_int8 / ppl_float - 1),
            "%",
            "report",
        ),
    )


def _trained_model_and_ptb_validation(model, args) -> tuple[torch.nn.Module, torch.Tensor, str] | None:
    """The model whose int8 perplexity change is measured, the PTB validation ids it reads and a description:
    the folder `--ptb_model` with its own tokenizer, else the benchmarked shape trained briefly on PTB here
    (None when `--ptb_train_steps` is 0)."""
    if args.ptb_model:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from ..data import load_corpus, tokenize_corpus

        tokenizer = AutoTokenizer.from_pretrained(args.ptb_model)
        trained = AutoModelForCausalLM.from_pretrained(args.ptb_model, use_safetensors=True).eval()
        valid_ids = tokenize_corpus(load_corpus("ptb"), tokenizer)["validation"]
        detail = args.ptb_model
    elif args.ptb_train_steps > 0:
        train_ids, valid_ids = tokenized_ptb(model.config.vocab_size)
        trained = reference_model(args)
        steps, seconds = train_on_ptb(trained, train_ids, args.ptb_train_steps, args.ptb_train_seconds)
        trained.eval()
        detail = f"after {steps} AdamW steps ({seconds:.0f} s) of batch 20 x bptt 35"
    else:
        return None
    if args.ptb_eval_tokens:
        valid_ids = valid_ids[: args.ptb_eval_tokens]
    return trained, valid_ids, detail


def section_quant(model, args, report: Report) -> None:
    """int8 dynamic quantisation (recurrent and output layers), reported: decode speed-up at batch 1 against
    the float32 step (which reads its decode-time copies), at the run's thread count and, when that is more
    than one, at one thread; and the Penn Treebank validation perplexity change of a trained model
    (`--ptb_model`, or one trained briefly)."""
    from ..quantization import quantize_dynamic_int8

    qmodel = quantize_dynamic_int8(model)
    ids = prompt(model, args.short_prompt)
    n, threads = args.decode_tokens, torch.get_num_threads()
    runs = {
        "float": lambda: generate_per_token(model, ids, n)[0],
        "int8": lambda: generate_per_token(qmodel, ids, n)[0],
    }
    if threads > 1:
        runs["float_1"] = lambda: one_thread(lambda: generate_per_token(model, ids, n)[0])
        runs["int8_1"] = lambda: one_thread(lambda: generate_per_token(qmodel, ids, n)[0])
    t = interleaved(runs, args.repeats)
    report.add(
        Measurement(
            "quant.int8_tokens_per_s",
            f"int8 generate() greedy (batch 1, {threads} thread{'s' if threads > 1 else ''})",
            1 / t["int8"],
            "tok/s",
            detail=f"{t['int8'] * 1e3:.3f} ms/token; float32 (decode copies) alongside: "
            f"{1 / t['float']:.0f} tok/s, {t['float'] * 1e3:.3f} ms/token",
        ),
        Measurement(
            "quant.decode_speedup", "7a. int8 / float32 decode speed", t["float"] / t["int8"], "x", "report"
        ),
    )
    if threads > 1:
        report.add(
            Measurement(
                "quant.int8_one_thread_tokens_per_s",
                "int8 generate() greedy (batch 1, 1 thread)",
                1 / t["int8_1"],
                "tok/s",
                detail=f"float32 at 1 thread: {1 / t['float_1']:.0f} tok/s "
                f"({t['float'] / t['float_1']:.2f}x its {threads}-thread speed)",
            ),
            Measurement(
                "quant.one_thread_speedup",
                f"7c. int8 decode at 1 thread / at {threads} threads",
                t["int8"] / t["int8_1"],
                "x",
                "report",
            ),
        )
    trained = _trained_model_and_ptb_validation(model, args)
    if trained is None:
        report.add(
            Measurement(
                "quant.ptb_perplexity_change",
                "7b. PTB valid perplexity change, int8 vs float32",
                None,
                "%",
                "report",
                None,
                "skipped (--ptb_train_steps 0)",
            )
        )
        return
    _int8_perplexity_change(*trained, report)


def one_thread(fn):
    """`fn()` run with torch at one thread; the thread count is restored after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return fn()
    finally:
        torch.set_num_threads(threads)


def section_batch(model, args, report: Report) -> None:
    """Greedy decode throughput (tokens/s summed over the batch) at several batch sizes, reported."""
    prompts = {b: prompt(model, args.short_prompt, b) for b in args.batch_sizes}
    t = interleaved(
        {
            b: (lambda b=b: generate_per_token(model, prompts[b], args.batch_tokens)[0])
            for b in args.batch_sizes
        },
        args.repeats,
    )
    first = args.batch_sizes[0]
    for b in args.batch_sizes:
        report.add(
            Measurement(
                f"batch.tokens_per_s_{b}",
                f"8. generate() tok/s at batch {b}",
                b / t[b],
                "tok/s",
                "report",
                detail=f"{t[b] * 1e3:.2f} ms/step, {b * t[first] / t[b]:.1f}x batch {first}",
            )
        )


SECTIONS = {
    "decode": section_decode,
    "context": section_context,
    "prefill": section_prefill,
    "train": section_train,
    "reference": section_reference,
    "quant": section_quant,
    "batch": section_batch,
}
"""Every section by its `--sections` name, in the order a full run measures them."""
