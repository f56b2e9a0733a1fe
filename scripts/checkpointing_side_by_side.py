#!/usr/bin/env python
"""One training step of an hf_lstm language model with and without activation checkpointing, side by side:
what autograd keeps for the backward pass (counted exactly, tensor by tensor), and the step's time
(interleaved rounds, median), with the same loss and gradients checked.

    python scripts/checkpointing_side_by_side.py
    python scripts/checkpointing_side_by_side.py --hidden_size 650 --batch 20 --bptt 35 --rounds 5

Memory is what checkpointing is for, so that is the figure to read; the time is the price.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from hf_lstm import LSTMConfig, LSTMForCausalLM
from hf_lstm.builders import enable_activation_checkpointing


def step(model, ids) -> tuple[int, float, float]:
    """(bytes autograd kept, seconds for forward + backward, loss) of one step on `ids`."""
    kept = []

    def pack(t):
        kept.append(t.numel() * t.element_size())
        return t

    model.zero_grad(set_to_none=True)
    start = time.perf_counter()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(ids, labels=ids).loss
    loss.backward()
    return sum(kept), time.perf_counter() - start, loss.item()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vocab_size", type=int, default=10_000)
    p.add_argument("--hidden_size", type=int, default=512)
    p.add_argument("--num_layers", type=int, default=2)
    p.add_argument("--cell_type", default="lstm")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--bptt", type=int, default=256)
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()

    config = LSTMConfig(
        vocab_size=args.vocab_size,
        hidden_size=args.hidden_size,
        num_hidden_layers=args.num_layers,
        cell_type=args.cell_type,
    )
    torch.manual_seed(0)
    plain = LSTMForCausalLM(config).train()
    checkpointed = LSTMForCausalLM(config).train()
    checkpointed.load_state_dict(plain.state_dict())
    enable_activation_checkpointing(checkpointed)
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(0, args.vocab_size, (args.batch, args.bptt), generator=generator)

    kept, seconds, losses = {}, {"plain": [], "checkpointed": []}, {}
    for model in (plain, checkpointed):  # warm-up
        step(model, ids)
    for _ in range(args.rounds):
        for name, model in (("plain", plain), ("checkpointed", checkpointed)):
            kept[name], spent, losses[name] = step(model, ids)
            seconds[name].append(spent)
    worst = max(
        (a.grad - b.grad).abs().max().item() for a, b in zip(plain.parameters(), checkpointed.parameters())
    )
    print(
        f"{args.num_layers}x{args.hidden_size} {args.cell_type}, vocab {args.vocab_size}, "
        f"batch {args.batch} x bptt {args.bptt}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    )
    print(f"same loss: {losses['plain'] == losses['checkpointed']}; largest gradient difference {worst:.1e}")
    for name in ("plain", "checkpointed"):
        median = statistics.median(seconds[name])
        print(f"  {name:13s} kept for backward {kept[name] / 1e6:8.1f} MB   step {median * 1e3:8.1f} ms")
    ratio = statistics.median(c / p for p, c in zip(seconds["plain"], seconds["checkpointed"]))
    print(f"  memory kept: {kept['plain'] / kept['checkpointed']:.1f}x less; step time: {ratio:.2f}x")


if __name__ == "__main__":
    main()
