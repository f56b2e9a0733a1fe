"""Why the embedding initialisation matters: a bare torch LSTM LM against hf_lstm under the same loop.

    python scripts/init_diagnostic.py --model torch --optimizer adamw --learning_rate 3e-3
    python scripts/init_diagnostic.py --model hf_lstm --optimizer adamw --learning_rate 3e-3
    python scripts/init_diagnostic.py --model hf_lstm_small_embeddings --optimizer adamw --learning_rate 3e-3

A 2x256 LSTM with tied embeddings on PTB, random 128-token windows, batch 32, one thread; prints the training
loss every 50 steps. `torch` is nn.Embedding + nn.LSTM + nn.Linear with torch's own initialisation (embeddings
N(0, 1)); `hf_lstm` is LSTMForCausalLM with its default initialisation (the same scales); and
`hf_lstm_small_embeddings` starts the embeddings in U(-1/sqrt(H), 1/sqrt(H)) like the recurrent weights, which
was this project's earlier default. Results: docs/TRAINING.md, "Initialisation".

A diagnostic rather than one of the registered experiments (`hf_lstm.experiments.EXPERIMENTS`): it prints
losses and writes no results.json.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

MODELS = ("torch", "hf_lstm", "hf_lstm_small_embeddings")


class TorchLSTMLM(nn.Module):
    """A two-layer `nn.LSTM` language model with tied input and output embeddings and torch's own
    initialisation (embeddings N(0, 1), recurrent weights U(-1/sqrt(H), 1/sqrt(H)))."""

    def __init__(self, vocab_size: int, hidden_size: int):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, hidden_size)
        self.lstm = nn.LSTM(hidden_size, hidden_size, num_layers=2, batch_first=True)
        self.head = nn.Linear(hidden_size, vocab_size)
        self.head.weight = self.embed.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Next-token logits of shape (batch, T, vocab) for token ids of shape (batch, T)."""
        return self.head(self.lstm(self.embed(ids))[0])


def build_diagnostic_model(kind: str, vocab_size: int, hidden_size: int) -> nn.Module:
    """One of the three two-layer, tied LSTM language models the diagnostic compares.

    Args:
        kind (`str`):
            `"torch"` (`TorchLSTMLM`), `"hf_lstm"` (`LSTMForCausalLM`, default initialisation) or
            `"hf_lstm_small_embeddings"` (the same with the embeddings in U(-1/sqrt(H), 1/sqrt(H))).
        vocab_size (`int`), hidden_size (`int`):
            The vocabulary and the width H.

    Returns:
        `nn.Module`: the model.
    """
    if kind == "torch":
        return TorchLSTMLM(vocab_size, hidden_size)
    from hf_lstm import LSTMConfig, LSTMForCausalLM

    model = LSTMForCausalLM(LSTMConfig(vocab_size=vocab_size, hidden_size=hidden_size, num_hidden_layers=2))
    if kind == "hf_lstm_small_embeddings":
        r = hidden_size**-0.5
        with torch.no_grad():
            model.get_input_embeddings().weight.uniform_(-r, r)
    return model


def build_parser() -> argparse.ArgumentParser:
    """The command line of `scripts/init_diagnostic.py`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=MODELS, default="hf_lstm")
    parser.add_argument("--optimizer", choices=("adamw", "sgd"), default="adamw")
    parser.add_argument("--learning_rate", type=float, default=3e-3)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--hidden_size", type=int, default=256)
    parser.add_argument(
        "--dataset_name",
        default="ptb",
        help="the corpus, as `hf_lstm.data.load_corpus` reads it (default: ptb)",
    )
    parser.add_argument("--print_every", type=int, default=50, help="steps between printed losses")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Train one model with the diagnostic's loop and print its training loss every `--print_every` steps.

    Args:
        argv (`Sequence[str]`, *optional*):
            The command-line arguments; `sys.argv[1:]` when `None`.

    Returns:
        `int`: the exit status, 0.
    """
    from hf_lstm.data import load_corpus, tokenize_corpus, train_tokenizer

    args = build_parser().parse_args(argv)
    torch.manual_seed(0)
    torch.set_num_threads(1)

    corpus = load_corpus(args.dataset_name)
    tokenizer = train_tokenizer(corpus["train"]["text"], kind="word")
    train = tokenize_corpus(corpus, tokenizer)["train"]
    vocab_size, batch, window = len(tokenizer), 32, 128

    model = build_diagnostic_model(args.model, vocab_size, args.hidden_size)
    if args.optimizer == "adamw":
        optimizer, clip = torch.optim.AdamW(model.parameters(), lr=args.learning_rate, weight_decay=0.01), 1.0
    else:
        optimizer, clip = torch.optim.SGD(model.parameters(), lr=args.learning_rate), 0.25

    generator = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    for step in range(1, args.steps + 1):
        starts = torch.randint(0, len(train) - window - 1, (batch,), generator=generator).tolist()
        rows = torch.stack([train[s : s + window + 1] for s in starts])
        logits = model(rows[:, :-1]) if args.model == "torch" else model(input_ids=rows[:, :-1]).logits
        loss = F.cross_entropy(logits.reshape(-1, vocab_size), rows[:, 1:].reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        optimizer.zero_grad()
        if step % args.print_every == 0:
            print(
                f"{args.model} {args.optimizer} {args.learning_rate:g} step {step}: loss {loss.item():.3f} "
                f"({time.perf_counter() - start:.0f} s)",
                flush=True,
            )
    return 0
