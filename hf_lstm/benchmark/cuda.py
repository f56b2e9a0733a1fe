"""`hf-lstm bench --device cuda`: training against parameter-matched Transformers, and decoding against its
launch floor, on a GPU.

    hf-lstm bench --device cuda                    # the 2x1024 model (vocab 10k, tied), both sections
    hf-lstm bench --device cuda --sections cuda_decode --decode_batches 1,64

Both sections run on any device (`--device cpu --tiny` is what the tests run); on a CPU the decoding step is
the same fixed-buffer step run eagerly, so the "floor" there is not a launch floor.

    cuda_train   tokens/s and MFU of a whole training step (bf16 autocast, fused AdamW, batch x bptt tokens)
                 at each `--train_batches` size, for the LSTM and a parameter-matched GPT-2 and Llama; the MFU
                 is against a bf16 matrix-product peak measured on the device in the same run
    cuda_decode  per batch size: greedy generate() with the CUDA-graph step, without it, and without it and
                 with transformers' own input preparation (the code before the graph step); a bare loop of
                 model calls; the captured step replayed alone (the launch floor) and the weights' bytes over
                 the measured memory bandwidth; prefill timed apart; the same at bf16; GPT-2 and Llama
                 generate() for comparison
"""

from __future__ import annotations


import torch

from ..flops import flops_per_token, matmul_parameters, matmul_weights, measure_matmul_peak
from ..timing import interleaved, timed
from .measuring import (
    Measurement,
    Report,
    generate_per_token,
    prompt,
    reference_model,
    transformer_matched,
)


def _shape(model) -> str:
    c = model.config
    layers = getattr(c, "num_hidden_layers", None) or getattr(c, "n_layer", None)
    width = getattr(c, "hidden_size", None) or getattr(c, "n_embd", None)
    return f"{layers}x{width}, {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M"


# ---------------------------------------- Training -------------------------------------------------------


def section_cuda_train(model, args, report: Report) -> None:
    """A whole training step (forward, loss, backward, fused AdamW) under bf16 autocast on `args.device`,
    for the LSTM and parameter-matched GPT-2 and Llama on the same batches, at each `--train_batches` size;
    MFU against the bf16 matrix-product peak measured in the same run."""
    device = torch.device(args.device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16)
    lstm = reference_model(args).to(device).train()
    models = {
        "LSTM": lstm,
        "GPT-2": transformer_matched("gpt2", lstm, args.bptt).to(device).train(),
        "Llama": transformer_matched("llama", lstm, args.bptt).to(device).train(),
    }
    optimizers = {
        name: torch.optim.AdamW(m.parameters(), lr=1e-4, fused=device.type == "cuda")
        for name, m in models.items()
    }

    def step(name, ids):
        def run():
            with autocast:
                loss = models[name](input_ids=ids, labels=ids).loss
            loss.backward()
            optimizers[name].step()
            optimizers[name].zero_grad(set_to_none=True)

        return timed(run, device)

    peak = measure_matmul_peak(args.peak_size, dtype=torch.bfloat16, repeats=10, device=device)
    report.add(
        Measurement(
            "cuda_train.bf16_peak_tflops",
            f"bf16 matrix-product peak ({args.peak_size or 'default'}^2, best of 10)",
            peak / 1e12,
            "TFLOP/s",
        )
    )
    for batch in args.train_batches:
        ids = prompt(lstm, args.bptt, batch).to(device)
        t = interleaved({name: (lambda n=name: step(n, ids)) for name in models}, args.repeats)
        for name, m in models.items():
            tokens_per_s = ids.numel() / t[name]
            context = 0 if name == "LSTM" else args.bptt
            mfu = flops_per_token(m, context_length=context) * tokens_per_s / peak
            report.add(
                Measurement(
                    f"cuda_train.{name.lower().replace('-', '')}_tokens_per_s_{batch}",
                    f"{name} training tok/s, batch {batch} x {args.bptt}, bf16 autocast",
                    tokens_per_s,
                    "tok/s",
                    "report",
                    detail=f"{_shape(m)} params, {t[name] * 1e3:.1f} ms/step, MFU {100 * mfu:.1f}% "
                    f"(N={matmul_parameters(m) / 1e6:.1f}M matmul params)",
                )
            )


# ---------------------------------------- Decoding -------------------------------------------------------


def call_loop(model, ids: torch.Tensor, new_tokens: int) -> float:
    """Seconds per token of a bare greedy loop of model calls (the step, argmax; no generate())."""
    device = ids.device
    with torch.no_grad():
        out = model(ids, use_cache=True, logits_to_keep=1)
        cache, token = out.cache, out.logits[:, -1].argmax(-1, keepdim=True)
        model(token, cache=cache)  # the first step captures
        return timed(lambda: _loop(model, cache, token, new_tokens), device) / new_tokens


def _loop(model, cache, token, n):
    for _ in range(n):
        token = model(token, cache=cache).logits[:, -1].argmax(-1, keepdim=True)


def replay_floor(model, ids: torch.Tensor, new_tokens: int) -> float:
    """Seconds per replay of the captured step alone (no input copies, no checks, no Python model code):
    the launch floor a decoding step can reach on this device. On a CPU, the same step run eagerly."""
    call_loop(model, ids, 2)  # captures for this batch size
    graph = model._decode_graph
    if graph.graphs is not None:
        step = graph.graphs[1]
        return timed(lambda: [step.replay() for _ in range(new_tokens)], ids.device) / new_tokens
    buffers = graph.buffers
    with torch.no_grad():
        return (
            timed(lambda: [model._decode_step_into(buffers) for _ in range(new_tokens)], ids.device)
            / new_tokens
        )


def copy_bandwidth(device: torch.device, nbytes: int = 2**30) -> float:
    """Bytes per second a device-to-device copy moves (read plus written), best of 5."""
    source = torch.empty(nbytes // 4, dtype=torch.float32, device=device)
    target = torch.empty_like(source)
    target.copy_(source)
    best = min(timed(lambda: target.copy_(source), device) for _ in range(5))
    return 2 * nbytes / best


def _twin(model, **overrides):
    from ..modeling_hf_lstm import GraphedDecodeStep, LSTMForCausalLM

    config = type(model.config).from_dict({**model.config.to_dict(), **overrides})
    twin = LSTMForCausalLM(config).to(model.device, model.dtype).eval()
    twin.load_state_dict(model.state_dict())
    if model.device.type != "cuda":
        twin._decode_graph = GraphedDecodeStep(eager=True)  # the same buffers, run eagerly (smoke runs)
    return twin


def _general_preparation(model):
    """`model` made to prepare its generate() steps with transformers' general code (before the lean one)."""
    from ..modeling_hf_lstm import LSTMForCausalLM

    model.prepare_inputs_for_generation = super(LSTMForCausalLM, model).prepare_inputs_for_generation
    return model


def section_cuda_decode(model, args, report: Report) -> None:
    """Greedy decoding of the reference model on `args.device` at each `--decode_batches` size: generate()
    with the CUDA-graph step, with the ordinary step, and with the ordinary step and transformers' general
    input preparation (what generate() ran before); a bare loop of model calls; the captured step replayed
    alone; the weights' bytes over the measured bandwidth; prefill apart; then bf16, GPT-2 and Llama."""
    device = torch.device(args.device)
    base = reference_model(args).to(device)
    graphed = _twin(base)
    ordinary = _twin(base, decode_cuda_graph=False)
    before = _general_preparation(_twin(base, decode_cuda_graph=False))
    n = args.decode_tokens
    weight_bytes = sum(w.numel() * w.element_size() for w in matmul_weights(base))
    bandwidth = copy_bandwidth(device, 2**30 if device.type == "cuda" else 2**26)
    for batch in args.decode_batches:
        ids = prompt(base, args.short_prompt, batch).to(device)
        t = interleaved(
            {
                "graph": lambda: generate_per_token(graphed, ids, n)[0],
                "ordinary": lambda: generate_per_token(ordinary, ids, n)[0],
                "before": lambda: generate_per_token(before, ids, n)[0],
                "call": lambda: call_loop(graphed, ids, n),
                "floor": lambda: replay_floor(graphed, ids, n),
            },
            args.repeats,
        )
        report.add(*_decode_rows(batch, t, weight_bytes, bandwidth))
        same = torch.equal(*(_greedy(m, ids, 32) for m in (graphed, ordinary)))
        report.add(
            Measurement(
                f"cuda_decode.same_tokens_{batch}",
                f"G4. graph and ordinary step give the same 32 greedy tokens (batch {batch})",
                float(same),
                "bool",
                "== 1",
                same,
            )
        )
    _prefill_rows(graphed, args, report)
    _bf16_rows(base, args, report)
    _transformer_rows(base, args, report)


def _greedy(model, ids, n):
    return model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)


def _decode_rows(batch: int, t: dict, weight_bytes: int, bandwidth: float) -> list[Measurement]:
    """The decoding figures at one batch size, from the interleaved medians `t` (seconds per token)."""
    floor_bytes = weight_bytes / (bandwidth / 2)  # a copy moves each byte twice; a step only reads them
    share = 1 - t["call"] / t["graph"]
    rows = [
        Measurement(
            f"cuda_decode.generate_tokens_per_s_{batch}",
            f"{'G3. ' if batch >= 64 else ''}generate() greedy, CUDA-graph step (batch {batch})",
            batch / t["graph"],
            "tok/s",
            ">= 100k" if batch >= 64 else "",
            (batch / t["graph"] >= 1e5) if batch >= 64 else None,
            detail=f"{t['graph'] * 1e6:.0f} us/step; generate()'s own loop {100 * share:.0f}% of it",
        ),
        Measurement(
            f"cuda_decode.ordinary_tokens_per_s_{batch}",
            f"generate() greedy, ordinary step (batch {batch})",
            batch / t["ordinary"],
            "tok/s",
            detail=f"{t['ordinary'] * 1e6:.0f} us/step",
        ),
        Measurement(
            f"cuda_decode.before_tokens_per_s_{batch}",
            f"generate() greedy, ordinary step + transformers' input preparation (batch {batch})",
            batch / t["before"],
            "tok/s",
            detail=f"{t['before'] * 1e6:.0f} us/step: the code before the graph step",
        ),
        Measurement(
            f"cuda_decode.speedup_{batch}",
            f"G2. generate() CUDA-graph step / before (batch {batch})",
            t["before"] / t["graph"],
            "x",
            ">= 4" if batch == 1 else "report",
            (t["before"] / t["graph"] >= 4) if batch == 1 else None,
        ),
        Measurement(
            f"cuda_decode.call_us_{batch}",
            f"bare loop of model calls, CUDA-graph step (batch {batch})",
            t["call"] * 1e6,
            "us",
            detail=f"{batch / t['call']:,.0f} tok/s",
        ),
        Measurement(
            f"cuda_decode.floor_us_{batch}",
            f"the captured step replayed alone (batch {batch})",
            t["floor"] * 1e6,
            "us",
            detail=f"weights {weight_bytes / 1e6:.1f} MB over {bandwidth / 2e12:.2f} TB/s read "
            f"(half the measured copy rate): {floor_bytes * 1e6:.0f} us",
        ),
        Measurement(
            f"cuda_decode.call_vs_floor_{batch}",
            f"G1. model call / replay floor (batch {batch})",
            t["call"] / t["floor"],
            "x",
            "<= 1.5" if batch == 1 else "report",
            (t["call"] / t["floor"] <= 1.5) if batch == 1 else None,
        ),
    ]
    return rows


def _prefill_rows(model, args, report: Report) -> None:
    """Prefill alone: the prompt through the fused kernel with the logits of the last position."""
    device = model.device
    for batch in args.decode_batches:
        for length in (args.short_prompt, args.long_prompt):
            ids = prompt(model, length, batch).to(device)

            def run(ids=ids):
                with torch.no_grad():
                    model(ids, use_cache=True, logits_to_keep=1)

            seconds = interleaved({"prefill": lambda run=run: timed(run, device)}, args.repeats)["prefill"]
            report.add(
                Measurement(
                    f"cuda_decode.prefill_{batch}x{length}",
                    f"prefill, batch {batch} x {length} tokens",
                    batch * length / seconds,
                    "tok/s",
                    detail=f"{seconds * 1e3:.2f} ms",
                )
            )


def _bf16_rows(base, args, report: Report) -> None:
    device = base.device
    graphed = _twin(base).to(torch.bfloat16)
    ordinary = _twin(base, decode_cuda_graph=False).to(torch.bfloat16)
    ids = prompt(base, args.short_prompt, 1).to(device)
    n = args.decode_tokens
    t = interleaved(
        {
            "graph": lambda: generate_per_token(graphed, ids, n)[0],
            "ordinary": lambda: generate_per_token(ordinary, ids, n)[0],
            "floor": lambda: replay_floor(graphed, ids, n),
        },
        args.repeats,
    )
    same = torch.equal(*(_greedy(m, ids, 32) for m in (graphed, ordinary)))
    report.add(
        Measurement(
            "cuda_decode.bf16_generate_tokens_per_s_1",
            "bf16 weights: generate() greedy, CUDA-graph step (batch 1)",
            1 / t["graph"],
            "tok/s",
            detail=f"{t['graph'] * 1e6:.0f} us/step; ordinary step {t['ordinary'] * 1e6:.0f} us; "
            f"replay floor {t['floor'] * 1e6:.0f} us; same 32 greedy tokens as the ordinary step: {same}",
        )
    )


def _transformer_rows(base, args, report: Report) -> None:
    device = base.device
    ids = prompt(base, args.short_prompt, 1).to(device)
    for kind in ("gpt2", "llama"):
        other = transformer_matched(kind, base, args.short_prompt + args.decode_tokens + 8).to(device).eval()
        seconds = interleaved(
            {kind: lambda o=other: generate_per_token(o, ids, args.decode_tokens)[0]}, args.repeats
        )[kind]
        report.add(
            Measurement(
                f"cuda_decode.{kind}_generate_tokens_per_s_1",
                f"{kind} generate() greedy, batch 1 (fp32, its own cache)",
                1 / seconds,
                "tok/s",
                detail=f"{_shape(other)} params, {seconds * 1e6:.0f} us/step",
            )
        )


CUDA_SECTIONS = {"cuda_train": section_cuda_train, "cuda_decode": section_cuda_decode}
"""The sections `--device cuda` runs by default (both run on any device)."""
