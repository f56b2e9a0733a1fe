"""Why the embedding initialisation matters: a bare torch LSTM LM against hf_lstm under the same loop.

    python scripts/init_diagnostic.py --model torch --optimizer adamw --learning_rate 3e-3
    python scripts/init_diagnostic.py --model hf_lstm --optimizer adamw --learning_rate 3e-3
    python scripts/init_diagnostic.py --model hf_lstm_small_embeddings --optimizer adamw --learning_rate 3e-3

A 2x256 LSTM with tied embeddings on PTB, random 128-token windows, batch 32, one thread; prints the training
loss every 50 steps. `torch` is nn.Embedding + nn.LSTM + nn.Linear with torch's own initialisation (embeddings
N(0, 1)); `hf_lstm` is LSTMForCausalLM with its default initialisation (the same scales); and
`hf_lstm_small_embeddings` starts the embeddings in U(-1/sqrt(H), 1/sqrt(H)) like the recurrent weights, which
was this project's default before 2026-11-24. Results: docs/TRAINING.md, "Initialisation".
"""

import argparse
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from hf_lstm import LSTMConfig, LSTMForCausalLM
from hf_lstm.data import load_corpus, tokenize_corpus, train_tokenizer


class TorchLSTMLM(nn.Module):
    def __init__(self, vocab_size: int, hidden_size: int):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, hidden_size)
        self.lstm = nn.LSTM(hidden_size, hidden_size, num_layers=2, batch_first=True)
        self.head = nn.Linear(hidden_size, vocab_size)
        self.head.weight = self.embed.weight

    def forward(self, ids):
        return self.head(self.lstm(self.embed(ids))[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("torch", "hf_lstm", "hf_lstm_small_embeddings"), default="hf_lstm")
    parser.add_argument("--optimizer", choices=("adamw", "sgd"), default="adamw")
    parser.add_argument("--learning_rate", type=float, default=3e-3)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--hidden_size", type=int, default=256)
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)

    corpus = load_corpus("ptb")
    tokenizer = train_tokenizer(corpus["train"]["text"], kind="word")
    train = tokenize_corpus(corpus, tokenizer)["train"]
    vocab_size, batch, window = len(tokenizer), 32, 128

    if args.model == "torch":
        model = TorchLSTMLM(vocab_size, args.hidden_size)
    else:
        model = LSTMForCausalLM(LSTMConfig(vocab_size=vocab_size, hidden_size=args.hidden_size, num_hidden_layers=2))
        if args.model == "hf_lstm_small_embeddings":
            r = args.hidden_size ** -0.5
            with torch.no_grad():
                model.get_input_embeddings().weight.uniform_(-r, r)
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
        if step % 50 == 0:
            print(f"{args.model} {args.optimizer} {args.learning_rate:g} step {step}: loss {loss.item():.3f} "
                  f"({time.perf_counter() - start:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
