""" "I grew up in France ... so I speak fluent French" as a language-modelling task.

    hf-lstm experiment long-dependency --output_dir runs/ld --budget_minutes 3

A generated corpus (this module writes it, from a fixed seed) of sentences

    <eos> i grew up in COUNTRY . w_1 ... w_d so i speak fluent LANGUAGE .

where COUNTRY is one of 8 countries, LANGUAGE is the one language that goes with it, and w_1 ... w_d is a
distractor span of exactly d words: everyday phrases ("the weather was cold and grey", "we walked to the old
market", ...) picked at random and strung together, the last one cut short. The phrases never name a country
or a language and never contain the cue words "so i speak fluent". (A first version drew every distractor word
independently and uniformly from 40 words; under that unpredictable noise no model learned the dependency
within a few minutes, not even at d = 0.) So the only way to predict LANGUAGE is to
remember COUNTRY across d + 6 positions (the ".", the d fillers and "so i speak fluent").

Every model (each recurrent cell type, and a small GPT-2 with about as many parameters as the LSTM) is trained
as an ordinary causal language model on every token of sentences whose d is drawn log-uniformly from
[0, D] (as many sentences with d in 1-3 as in 30-100), for the same wall-clock budget. D follows a curriculum:
it starts at 5 and doubles, up to max_distance, each time the model gets 90% of 64 fresh sentences at d = D
right (checked every 100 steps). Without it, mixing long gaps in from the start left even the LSTM at chance
at every d, d = 0 included, after 3000 steps; with d <= 5 alone it learned the pairs in about 400 steps. It is
then tested on fresh sentences at fixed distances: the next-token accuracy on LANGUAGE (argmax over the whole
vocabulary; chance is at most 1/8 once the model knows a language comes).
"""

from __future__ import annotations

import argparse
import math
import random
from pathlib import Path

import torch

from .runner import (
    CELL_COLOURS,
    RECURRENT_CELLS,
    TRANSFORMER,
    Budget,
    Experiment,
    add_memory_bias_argument,
    environment,
    gpt2_config,
    parse_cell_types,
    pyplot,
    recorded_settings,
    save_figure,
    set_memory_bias,
)

NAME = "long-dependency"
COUNTRIES = {
    "france": "french",
    "spain": "spanish",
    "italy": "italian",
    "germany": "german",
    "japan": "japanese",
    "greece": "greek",
    "poland": "polish",
    "sweden": "swedish",
}
PHRASES = (  # the distractor span is cut from a random run of these everyday phrases
    "the weather was cold and grey",
    "we walked to the old market",
    "my friends played music every night",
    "the river ran near the small town",
    "they lived near a big red house",
    "then we met the family for dinner",
    "books were on every table",
    "the summer days were long",
    "a green garden lay under the window",
    "school started early every morning",
)
FILLER = tuple(dict.fromkeys(" ".join(PHRASES).split()))
PREFIX = ["i", "grew", "up", "in"]
CUE = ["so", "i", "speak", "fluent"]
PAD, EOS = "<pad>", "<eos>"


class SentenceCorpus:
    """The generated corpus: its vocabulary and a sentence generator with its own seeded random source."""

    def __init__(self, seed: int):
        words = [PAD, EOS, *dict.fromkeys(PREFIX + CUE + ["."]), *COUNTRIES, *COUNTRIES.values(), *FILLER]
        assert not set(FILLER) & set(PREFIX + CUE + list(COUNTRIES) + list(COUNTRIES.values()))
        self.vocab = words
        self.ids = {w: k for k, w in enumerate(words)}
        self.language_ids = [self.ids[lang] for lang in COUNTRIES.values()]
        self.random = random.Random(seed)

    def distractor(self, length: int) -> list[str]:
        """Exactly `length` words: randomly chosen phrases, one after another, the last one cut short."""
        words: list[str] = []
        while len(words) < length:
            words.extend(self.random.choice(PHRASES).split())
        return words[:length]

    def sentence(self, distance: int) -> tuple[list[str], int]:
        """One sentence with a distractor span of `distance` words; returns (words, index of LANGUAGE)."""
        country = self.random.choice(list(COUNTRIES))
        filler = self.distractor(distance)
        words = [EOS, *PREFIX, country, ".", *filler, *CUE, COUNTRIES[country], "."]
        return words, len(words) - 2

    def batch(self, distances: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Token ids (batch, L) right-padded with <pad>, labels (pads set to -100), and each row's LANGUAGE
        index."""
        sentences = [self.sentence(d) for d in distances]
        length = max(len(words) for words, _ in sentences)
        ids = torch.full((len(sentences), length), self.ids[PAD], dtype=torch.long)
        for row, (words, _) in enumerate(sentences):
            ids[row, : len(words)] = torch.tensor([self.ids[w] for w in words])
        labels = ids.masked_fill(ids == self.ids[PAD], -100)
        return ids, labels, torch.tensor([index for _, index in sentences])


def build_language_model(
    kind: str,
    vocab_size: int,
    hidden_size: int,
    embedding_size: int,
    max_positions: int,
    target_parameters: int | None = None,
    memory_bias: float | None = None,
):
    """The causal language model of one kind that the experiment trains on its generated sentences.

    Args:
        kind (`str`):
            A recurrent cell (`"rnn"`, `"gru"`, `"lstm"`, `"peephole"`) or `"transformer"`.
        vocab_size (`int`), hidden_size (`int`), embedding_size (`int`):
            The vocabulary, the recurrent width and the token-embedding width.
        max_positions (`int`):
            The GPT-2's position table (the longest sentence it will read).
        target_parameters (`int`, *optional*):
            For a GPT-2: pick the width whose parameter count is closest to this (e.g. the LSTM's); without it
            the width is `embedding_size`.
        memory_bias (`float`, *optional*):
            For a recurrent cell: the initial bias of its memory gate (`runner.set_memory_bias`).

    Returns:
        `hf_lstm.LSTMForCausalLM` with one layer for a recurrent cell, or a 2-layer `GPT2LMHeadModel`.
    """
    if kind == TRANSFORMER:
        from transformers import GPT2LMHeadModel

        def make(width):
            config = gpt2_config(vocab_size, max_positions, width, layers=2, heads=4, special_token_id=1)
            return GPT2LMHeadModel(config)

        widths = range(16, 257, 4)
        if target_parameters is None:
            return make(embedding_size)
        best = min(
            widths, key=lambda w: abs(_gpt2_parameters(w, vocab_size, max_positions) - target_parameters)
        )
        return make(best)
    from hf_lstm import LSTMConfig, LSTMForCausalLM

    config = LSTMConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        embedding_size=embedding_size,
        num_hidden_layers=1,
        cell_type=kind,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=1,
    )
    model = LSTMForCausalLM(config)
    if memory_bias is not None:
        set_memory_bias(model, memory_bias)
    return model


def _gpt2_parameters(width: int, vocab_size: int, positions: int, layers: int = 2) -> int:
    """Parameter count of a tied GPT-2 (per layer: attention 4w^2 + 4w, MLP 8w^2 + 5w, two layer norms 4w)."""
    return layers * (12 * width * width + 13 * width) + vocab_size * width + positions * width + 2 * width


@torch.no_grad()
def accuracy_at(
    model, corpus: SentenceCorpus, distance: int, num_sentences: int, batch_size: int = 128
) -> dict:
    """Next-token accuracy on LANGUAGE for fresh sentences with exactly `distance` fillers.

    Args:
        model:
            A causal LM over `corpus.vocab`; left in training mode afterwards.
        corpus (`SentenceCorpus`):
            Where the test sentences come from (it advances the corpus's random source).
        distance (`int`), num_sentences (`int`), batch_size (`int`, *optional*, defaults to 128):
            Filler words per sentence, sentences in all, sentences per forward pass.

    Returns:
        `dict`: `accuracy` (argmax over the vocabulary) and `choice_accuracy` (argmax among the 8 languages).
    """
    model.eval()
    right = choice_right = 0
    languages = torch.tensor(corpus.language_ids)
    for start in range(0, num_sentences, batch_size):
        n = min(batch_size, num_sentences - start)
        ids, _, where = corpus.batch([distance] * n)
        logits = model(input_ids=ids).logits
        rows = torch.arange(n)
        scores = logits[rows, where - 1]  # the prediction made at the last cue word
        truth = ids[rows, where]
        right += int((scores.argmax(-1) == truth).sum())
        choice_right += int((languages[scores[:, languages].argmax(-1)] == truth).sum())
    model.train()
    return {"accuracy": right / num_sentences, "choice_accuracy": choice_right / num_sentences}


def log_uniform_distance(rng: random.Random, max_distance: int) -> int:
    """A distance d in [0, max_distance] with log(d + 1) uniform: short and long gaps equally represented per
    octave."""
    return min(max_distance, int(math.exp(rng.uniform(0.0, math.log(max_distance + 1)))) - 1)


def train_language_model(
    model,
    corpus: SentenceCorpus,
    max_distance: int,
    budget_minutes: float,
    batch_size: int,
    learning_rate: float,
    max_steps: int | None = None,
    start_distance: int = 5,
    check_every: int = 100,
    promote_at: float = 0.9,
) -> dict:
    """Train on every token of sentences whose d is log-uniform in [0, D], with a curriculum on D: it starts
    at `start_distance` and doubles (up to `max_distance`) whenever the model gets `promote_at` of 64 fresh
    sentences at d = D right, checked every `check_every` steps. Stops when the budget is spent; returns the
    record, including the largest D reached (`curriculum_distance`) and when each level was passed."""
    optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate)
    budget = Budget(budget_minutes)
    probe = SentenceCorpus(corpus.random.randint(0, 2**31))
    model.train()
    steps, tokens, losses, level, passed = 0, 0, [], min(start_distance, max_distance), []
    while not budget.expired() and (max_steps is None or steps < max_steps):
        distances = [log_uniform_distance(corpus.random, level) for _ in range(batch_size)]
        ids, labels, _ = corpus.batch(distances)
        loss = model(input_ids=ids, labels=labels).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        steps += 1
        tokens += int((labels != -100).sum())
        losses.append(loss.item())
        if steps % check_every == 0 and accuracy_at(model, probe, level, 64)["accuracy"] >= promote_at:
            passed.append({"distance": level, "step": steps, "seconds": round(budget.elapsed(), 1)})
            level = min(max_distance, level * 2)  # at the full range it simply keeps training
    tail = losses[-50:]
    return {
        "steps": steps,
        "training_sentences": steps * batch_size,
        "training_tokens": tokens,
        "seconds": round(budget.elapsed(), 2),
        "final_train_loss": sum(tail) / len(tail) if tail else None,
        "curriculum_distance": level,
        "curriculum_passed": passed,
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The experiment's own arguments (after the shared ones of `runner.base_parser`)."""
    parser.add_argument(
        "--max_distance", type=int, default=100, help="training distances d are uniform in [0, this]"
    )
    parser.add_argument(
        "--eval_distances", default="0,5,10,20,35,50,75,100", help="comma-separated distances d to test at"
    )
    parser.add_argument("--eval_sentences", type=int, default=256, help="test sentences per distance")
    parser.add_argument("--hidden_size", type=int, default=128)
    parser.add_argument("--embedding_size", type=int, default=64)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument(
        "--learning_rate",
        type=float,
        default=1e-2,
        help="Adam learning rate of the recurrent models (2e-3 left them at chance for 3000 steps)",
    )
    parser.add_argument(
        "--transformer_learning_rate",
        type=float,
        default=1e-3,
        help="Adam learning rate of the GPT-2 (nanoGPT's choice for its small models)",
    )
    parser.add_argument("--max_steps", type=int, default=None, help="also stop after this many steps (tests)")
    add_memory_bias_argument(parser)


def train_and_test(
    kind: str,
    args: argparse.Namespace,
    vocab_size: int,
    max_positions: int,
    distances: list[int],
    lstm_size: int,
) -> dict:
    """Build one model of `kind` (a GPT-2 sized to `lstm_size` parameters), train it on the seed's stream of
    sentences and test it at every distance; return its record."""
    torch.manual_seed(args.seed)
    model = build_language_model(
        kind,
        vocab_size,
        args.hidden_size,
        args.embedding_size,
        max_positions,
        target_parameters=lstm_size if kind == TRANSFORMER else None,
        memory_bias=args.memory_bias,
    )
    corpus = SentenceCorpus(args.seed)  # every model sees the same stream of training sentences
    print(f"long-dependency {kind}: {model.num_parameters():,} parameters, budget {args.budget_minutes} min")
    lr = args.transformer_learning_rate if kind == TRANSFORMER else args.learning_rate
    record = train_language_model(
        model, corpus, args.max_distance, args.budget_minutes, args.batch_size, lr, max_steps=args.max_steps
    )
    test = SentenceCorpus(args.seed + 1)
    scores = {str(d): accuracy_at(model, test, d, args.eval_sentences) for d in distances}
    record = {"parameters": model.num_parameters(), "learning_rate": lr, **record, "by_distance": scores}
    if kind == TRANSFORMER:
        record["width"] = model.config.n_embd
    print(
        f"  -> {kind}: {record['steps']} steps, curriculum at d={record['curriculum_distance']}, "
        "accuracy by d: " + ", ".join(f"{d}:{s['accuracy']:.2f}" for d, s in scores.items())
    )
    return record


def run(args: argparse.Namespace, output_dir: Path) -> dict:
    """Train and test every model; return the results dictionary."""
    kinds = parse_cell_types(args.cell_types, (*RECURRENT_CELLS, TRANSFORMER))
    distances = [int(d) for d in args.eval_distances.split(",") if d.strip()]
    max_positions = max(args.max_distance, *distances) + 16
    sample = SentenceCorpus(args.seed)
    (output_dir / "corpus_sample.txt").write_text(
        "\n".join(" ".join(sample.sentence(d)[0]) for d in (0, 3, 10, 25)) + "\n"
    )
    torch.manual_seed(args.seed)
    lstm = build_language_model(
        "lstm", len(sample.vocab), args.hidden_size, args.embedding_size, max_positions
    )
    lstm_size = lstm.num_parameters()  # tied weights counted once
    results = {
        "experiment": NAME,
        "corpus": {
            "template": "<eos> i grew up in COUNTRY . w_1 .. w_d so i speak fluent LANGUAGE .",
            "countries": COUNTRIES,
            "distractor_phrases": list(PHRASES),
            "distractor_words": len(FILLER),
            "training_distances": "log-uniform in [0, max_distance]",
            "vocab_size": len(sample.vocab),
            "gap_between_country_and_language": "d + 6 positions",
        },
        "settings": recorded_settings(
            args,
            "max_distance",
            "eval_sentences",
            "hidden_size",
            "embedding_size",
            "batch_size",
            "learning_rate",
            "transformer_learning_rate",
            "max_steps",
            "memory_bias",
        ),
        "distances": distances,
        "chance_choice_accuracy": 1 / len(COUNTRIES),
        "environment": environment(),
        "models": {},
    }
    for kind in kinds:
        results["models"][kind] = train_and_test(
            kind, args, len(sample.vocab), max_positions, distances, lstm_size
        )
    return results


def plot(results: dict, output_dir: Path) -> list[Path]:
    """Accuracy on the dependent token against the distractor length d, one line per model."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    markers = "osD^v"
    for k, (kind, record) in enumerate(results["models"].items()):
        xs = results["distances"]
        ys = [record["by_distance"][str(d)]["accuracy"] for d in xs]
        # shrinking, differently shaped markers keep coinciding lines (several models at 1.0) visible
        ax.plot(
            xs,
            ys,
            marker=markers[k % len(markers)],
            ms=9 - 1.4 * k,
            mfc="none",
            lw=1.2,
            color=CELL_COLOURS.get(kind),
            label=f"{kind} ({record['parameters'] / 1000:.0f}k params, {record['steps']} steps, "
            f"curriculum reached d={record['curriculum_distance']})",
        )
    ax.axhline(
        results["chance_choice_accuracy"], color="k", ls=":", lw=1, label="guessing among the 8 languages"
    )
    ax.axvline(results["settings"]["max_distance"], color="k", ls="--", lw=0.6)
    for kind, record in results["models"].items():  # how far each model's curriculum got
        ax.plot(
            [record["curriculum_distance"]],
            [1.01],
            marker="v",
            color=CELL_COLOURS.get(kind),
            ms=6,
            clip_on=False,
        )
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("distractor words d between COUNTRY and 'so i speak fluent'")
    ax.set_ylabel("next-token accuracy on LANGUAGE")
    ax.set_title(
        "'I grew up in France ... so I speak fluent French' "
        f"({results['settings']['budget_minutes']} min each)"
    )
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return [save_figure(fig, output_dir / "accuracy_vs_distance.png")]


EXPERIMENT = Experiment.from_module(
    globals(), default_cells=(*RECURRENT_CELLS, TRANSFORMER), default_budget=2.0
)
