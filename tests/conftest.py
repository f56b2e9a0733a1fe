"""Shared fixtures: tiny configurations, a real word-level tokenizer trained with `tokenizers`, and a small
local corpus in text files."""

import hashlib
import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import hf_lstm  # noqa: E402  (registers the Auto classes)

CELL_TYPES = ("lstm", "gru", "rnn", "peephole")
FUSED_CELL_TYPES = ("lstm", "gru", "rnn")

SENTENCES = [
    "i grew up in france so i speak fluent french",
    "the boy who lives next door is tall",
    "the cat sat on the mat and the dog sat on the log",
    "memory cells keep what matters and forget the rest",
    "a vanilla recurrent network forgets what it read long ago",
]


def tiny_config(cell_type="lstm", **overrides):
    """A small, fast configuration used across the tests."""
    values = dict(
        vocab_size=40,
        hidden_size=12,
        num_hidden_layers=2,
        cell_type=cell_type,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=1,
    )
    values.update(overrides)
    return hf_lstm.LSTMConfig(**values)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


class ForcedKernel(dict):
    """A `_BATCH1_KERNEL` table that answers `kernel` for every shape (and so is never timed)."""

    def __init__(self, kernel: str):
        super().__init__()
        self.kernel = kernel

    def __contains__(self, key) -> bool:
        return True

    def __getitem__(self, key) -> str:
        return self.kernel

    def get(self, key, default=None) -> str:
        return self.kernel


@pytest.fixture(autouse=True)
def _one_batch1_kernel(monkeypatch):
    """Every test decodes at batch 1 with the weighted row sums, whatever this machine would choose
    (`choose_batch1_kernel` times the two kernels): a matrix product's rounding can depend on where its input
    lies in memory, and tests compare paths bit for bit. tests/test_decode_step.py checks both kernels and
    the choice itself."""
    from hf_lstm import modeling_hf_lstm

    monkeypatch.setattr(modeling_hf_lstm, "_BATCH1_KERNEL", ForcedKernel("bag"))


@pytest.fixture(scope="session")
def word_tokenizer():
    """A real fast tokenizer (word level, with <pad>, <eos>, <unk>) trained on a few sentences."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    # Words carry their leading space ("Ġword", GPT-2's byte-level convention), so decoding only the new
    # tokens (as the text-generation pipeline does) still puts a space between prompt and continuation.
    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.ByteLevel(add_prefix_space=True, use_regex=False)]
    )
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(SENTENCES, trainers.WordLevelTrainer(special_tokens=["<pad>", "<eos>", "<unk>"]))
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        eos_token="<eos>",
        unk_token="<unk>",
        model_input_names=["input_ids", "attention_mask"],
    )


CORPUS_WORDS = (
    "the cat sat on the mat . the dog ate the bone . a bird sang in the tree . "
    "i grew up in france so i speak fluent french . "
).split()


def write_corpus(folder):
    """Small local text files: 600 lines of train, 60 of validation and test, 8 words each."""
    rng = torch.Generator().manual_seed(0)
    for name, lines in (("train", 600), ("validation", 60), ("test", 60)):
        starts = torch.randint(0, len(CORPUS_WORDS) - 8, (lines,), generator=rng).tolist()
        rows = [" ".join(CORPUS_WORDS[s : s + 8]) for s in starts]
        (folder / f"{name}.txt").write_text("\n".join(rows) + "\n")
    return folder


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("corpus"))


def tiny_train_args(corpus, output_dir, *extra):
    """The arguments of a tiny `hf-lstm train` run (word tokenizer, 2x16 LSTM, batch 4, bptt 8, AdamW so the
    optimizer has state to checkpoint) on `corpus` into `output_dir`."""
    return [
        "--train_file",
        str(corpus / "train.txt"),
        "--validation_file",
        str(corpus / "validation.txt"),
        "--test_file",
        str(corpus / "test.txt"),
        "--tokenizer_type",
        "word",
        "--output_dir",
        str(output_dir),
        "--config_overrides",
        "hidden_size=16,num_hidden_layers=2",
        "--per_device_train_batch_size",
        "4",
        "--bptt",
        "8",
        "--block_size",
        "16",
        "--eval_window",
        "16",
        "--logging_steps",
        "1",
        "--sample_max_new_tokens",
        "3",
        "--optimizer",
        "adamw",
        *extra,
    ]


def snapshot(folder: Path) -> dict:
    """Every file under `folder` with the sha256 of its bytes (to show that nothing was overwritten)."""
    if not folder.exists():
        return {}
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }
