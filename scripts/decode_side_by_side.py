#!/usr/bin/env python
"""Batch-1 greedy `generate()` of this checkout's model against the model file of an earlier commit, side by
side: the same weights, the same prompt, the same greedy tokens (checked), interleaved rounds.

    python scripts/decode_side_by_side.py --threads 1
    python scripts/decode_side_by_side.py --threads 2 --commit 851b032 --rounds 9

The earlier model file (and its configuration file) is read with `git show`, so this runs in a git clone.
The default commit, 851b032, is the last one before the CPU decoding work of docs/PERFORMANCE.md 1c-1d; the
figures there come from this script. It prints milliseconds per decoded token (median over rounds) for each
side, the speed-up, and its range over rounds.
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from hf_lstm import LSTMConfig, LSTMForCausalLM
from hf_lstm.benchmark.measuring import generate_per_token, prompt


def model_class_at(commit: str, folder: Path):
    """`LSTMForCausalLM` and `LSTMConfig` as the model and configuration files of `commit` define them."""
    package = folder / f"hf_lstm_at_{commit}"
    package.mkdir()
    (package / "__init__.py").write_text("")
    for name in ("modeling_hf_lstm.py", "configuration_hf_lstm.py"):
        source = subprocess.run(
            ["git", "show", f"{commit}:hf_lstm/{name}"], capture_output=True, text=True, check=True
        ).stdout
        (package / name).write_text(source)
    sys.path.insert(0, str(folder))
    modeling = importlib.import_module(f"{package.name}.modeling_hf_lstm")
    configuration = importlib.import_module(f"{package.name}.configuration_hf_lstm")
    return modeling.LSTMForCausalLM, configuration.LSTMConfig


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--commit", default="851b032")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds; the first is a warm-up")
    parser.add_argument("--tokens", type=int, default=200, help="new tokens per generate() call")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    shape = dict(vocab_size=10000, hidden_size=512, num_hidden_layers=2, tie_word_embeddings=True)
    torch.manual_seed(0)
    new = LSTMForCausalLM(LSTMConfig(**shape)).eval()
    with tempfile.TemporaryDirectory() as folder:
        old_model, old_config = model_class_at(args.commit, Path(folder))
        old = old_model(old_config(**shape)).eval()
    old.load_state_dict(new.state_dict())
    ids = prompt(new, 16)
    greedy = dict(max_new_tokens=args.tokens, do_sample=False, pad_token_id=0)
    same = torch.equal(old.generate(ids, **greedy), new.generate(ids, **greedy))
    seconds: dict[str, list[float]] = {"old": [], "new": []}
    for round_ in range(args.rounds):
        for name, model in (("old", old), ("new", new)):
            spent = generate_per_token(model, ids, args.tokens)[0]
            if round_:
                seconds[name].append(spent)
    o, n = (statistics.median(seconds[k]) for k in ("old", "new"))
    ratios = [a / b for a, b in zip(seconds["old"], seconds["new"])]
    print(
        f"{args.threads} thread(s), {args.rounds - 1} rounds of {args.tokens} tokens, "
        f"same greedy tokens: {same}\n"
        f"  {args.commit}: {o * 1e3:.3f} ms/token ({1 / o:.0f} tok/s)\n"
        f"  this checkout: {n * 1e3:.3f} ms/token ({1 / n:.0f} tok/s)\n"
        f"  speed-up {o / n:.2f}x (rounds {min(ratios):.2f}-{max(ratios):.2f}x); "
        f"load average {Path('/proc/loadavg').read_text().split()[:3]}"
    )
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
