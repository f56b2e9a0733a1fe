"""Tokenizers trained with the `tokenizers` library (word, byte-level BPE, character), wrapped for
transformers, and the corpus turned into one stream of token ids per split."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator

import datasets
import pyarrow.compute as pc
import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

logger = logging.getLogger(__name__)


TOKENIZER_KINDS = ("word", "bpe", "char")

EOS_TOKEN = "<eos>"
PAD_TOKEN = "<pad>"
UNK_TOKEN = "<unk>"
WORD_UNK_TOKEN = "\u0120<unk>"  # "Ġ<unk>": the word tokenizer's unknown word, with its leading space

DEFAULT_BPE_VOCAB_SIZE = 8192

# transformers' own value for "no length limit" (tokenization_utils_base.VERY_LARGE_INTEGER): a recurrent
# model has no position table, so the tokenizer must never truncate on its own.
UNLIMITED_LENGTH = int(1e30)

# --------------------------------------------------------------------------------------------------------
# Tokenizers
# --------------------------------------------------------------------------------------------------------


def default_tokenizer_kind(dataset_name: str | None) -> str:
    """The tokenizer kind to use when the user does not choose: "word" for "ptb", "bpe" otherwise.

    Penn Treebank is a word-level benchmark (its published perplexities are per word over a fixed
    10,000-word vocabulary), so it gets the word tokenizer; every other corpus gets byte-level BPE, which
    never meets an unknown character.
    """
    return "word" if dataset_name == "ptb" else "bpe"


def train_tokenizer(
    texts: Iterable[str],
    kind: str = "word",
    vocab_size: int | None = None,
    min_frequency: int = 1,
) -> PreTrainedTokenizerFast:
    """Train a tokenizer on `texts` and return it as a `transformers.PreTrainedTokenizerFast`.

    Kinds:

    * `"word"`: splits on whitespace only, so "n't", "<unk>" and "hydro-quebec" stay whole. As in GPT-2,
      each word token carries its leading space as "Ġ" ("Ġthe"), so that the decoded text of any run of
      ids starts with its separating space: `decode(encode("the cat"))` is `" the cat"`, and the
      text-generation pipeline, which decodes only the new ids and appends them to the prompt, gets
      "the cat sat" rather than "the catsat". Unknown words become `"Ġ<unk>"`, shown as " <unk>".
      On Penn Treebank's train split it yields exactly the literature's 10,000 types (9,999 words
      including `<unk>`, plus `<eos>`) and `<pad>`: 10,001 ids, `<pad>` = 0, `<eos>` = 1,
      `<unk>` = 2, then the words from most to least frequent.
    * `"bpe"`: byte-level BPE as in GPT-2 (every byte is in the alphabet, so nothing is unknown and
      `decode(encode(text)) == text` for any text). `vocab_size` defaults to 8192.
    * `"char"`: one token per Unicode character (spaces and newlines included), `decode(encode(text))
      == text`; characters not seen in training become `<unk>` (id 2).

    Every tokenizer has `eos_token="<eos>"` and `pad_token="<pad>"` as special tokens (ids 1 and 0),
    pads on the left (what `pipeline`/`generate` use; the attention mask marks the pads), returns only
    `input_ids` and `attention_mask`, and has an unlimited `model_max_length`. The unknown token is
    an ordinary vocabulary entry, not a special token, so `skip_special_tokens=True` keeps it visible.
    Encoding adds no special tokens: the end of each row is marked by `tokenize_corpus`, which
    appends `<eos>` to every row, so a prompt is encoded exactly as typed and generation continues it
    rather than starting after an end-of-text.

    Args:
        texts: the training text, one string per row (e.g. `corpus["train"]["text"]`). Rows that are
            None are skipped.
        kind: "word", "bpe" or "char".
        vocab_size: the largest vocabulary, special tokens included. None keeps every word or character
            seen (word, char) or means 8192 (bpe).
        min_frequency: words, characters or merges seen fewer times than this are left out.

    Returns:
        A `PreTrainedTokenizerFast` ready for `save_pretrained`.
    """
    specials = [PAD_TOKEN, EOS_TOKEN]
    vocab_size = _checked_vocab_size(texts, kind, vocab_size, min_frequency, specials)
    counted = _Counted(texts)
    if kind == "bpe":
        tokenizer = _train_bpe(counted, vocab_size, min_frequency, specials)
    else:
        tokenizer = _train_word_level(counted, kind, vocab_size, min_frequency, specials)
    if counted.rows == 0:
        raise ValueError("train_tokenizer got no text (texts was empty); pass the training split's rows.")
    return _wrap(tokenizer)


def _checked_vocab_size(texts, kind: str, vocab_size: int | None, min_frequency: int, specials: list[str]):
    """The vocabulary size to train (BPE's default filled in), after refusing what cannot be trained."""
    if kind not in TOKENIZER_KINDS:
        raise ValueError(f"Unknown tokenizer kind {kind!r}; choose one of {', '.join(TOKENIZER_KINDS)}.")
    if isinstance(texts, str):
        raise ValueError(
            "texts must be an iterable of strings (one per row), not a single string; "
            "wrap it in a list: train_tokenizer([text], ...)."
        )
    if min_frequency < 1:
        raise ValueError(f"min_frequency must be at least 1, got {min_frequency}.")
    if kind == "bpe":
        vocab_size = DEFAULT_BPE_VOCAB_SIZE if vocab_size is None else vocab_size
        smallest = len(pre_tokenizers.ByteLevel.alphabet()) + len(specials)
        if vocab_size < smallest:
            raise ValueError(
                f"vocab_size={vocab_size} is too small for byte-level BPE, which needs at least "
                f"{smallest} (256 bytes + {len(specials)} special tokens); pass a larger one."
            )
    elif vocab_size is not None and vocab_size <= len(specials) + 1:
        raise ValueError(
            f"vocab_size={vocab_size} leaves no room beside {specials} and the unknown token; "
            "pass a larger vocab_size, or None to keep everything seen."
        )
    return vocab_size


def _train_bpe(counted, vocab_size: int, min_frequency: int, specials: list[str]) -> Tokenizer:
    """Byte-level BPE as in GPT-2: every byte is in the alphabet, so nothing is unknown."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=specials,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(counted, trainer)
    return tokenizer


def _train_word_level(counted, kind: str, vocab_size: int | None, min_frequency: int, specials: list[str]):
    """A word (whitespace-split) or character vocabulary, ordered specials, unknown, then by frequency."""
    if kind == "word":
        # Each word carries its leading space as GPT-2's "Ġ", so the decoded text of any slice of ids
        # starts with the space that separated it from what came before: the text-generation pipeline
        # decodes only the new ids and appends them to the prompt, which needs exactly that.
        unk = WORD_UNK_TOKEN
        pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.WhitespaceSplit(),
                pre_tokenizers.ByteLevel(add_prefix_space=True, use_regex=False),
            ]
        )
        decoder = decoders.ByteLevel()
    else:
        unk = UNK_TOKEN
        pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
        decoder = decoders.Fuse()
    tokenizer = Tokenizer(models.WordLevel(unk_token=unk))
    tokenizer.pre_tokenizer = pre_tokenizer
    tokenizer.decoder = decoder
    trainer = trainers.WordLevelTrainer(
        vocab_size=2**31 - 1, min_frequency=min_frequency, special_tokens=specials, show_progress=False
    )
    tokenizer.train_from_iterator(counted, trainer)
    vocab = _ordered_vocab(tokenizer.get_vocab(), specials + [unk], vocab_size)
    tokenizer.model = models.WordLevel(vocab, unk_token=unk)
    return tokenizer


class _Counted:
    """Feeds `texts` to a tokenizers trainer in batches of rows, skipping None, counting the rows."""

    def __init__(self, texts: Iterable[str]):
        self.texts = texts
        self.rows = 0

    def __iter__(self) -> Iterator[list[str]]:
        batch: list[str] = []
        for text in self.texts:
            if text is None:
                continue
            if not isinstance(text, str):
                raise ValueError(
                    f"train_tokenizer expects strings, got a {type(text).__name__}: "
                    f"{text!r:.80}. Pass the text column, e.g. corpus['train']['text']."
                )
            self.rows += 1
            batch.append(text)
            if len(batch) == 1000:
                yield batch
                batch = []
        if batch:
            yield batch


def _ordered_vocab(trained: dict[str, int], first: list[str], vocab_size: int | None) -> dict[str, int]:
    """`first` (pad, eos, unk) get ids 0, 1, 2; the trained tokens follow in the trainer's order.

    The trainer ranks tokens by frequency. It would give PTB's literal "<unk>" a frequency rank of its own,
    so the unknown token is taken out of the ranking and pinned at id 2; ids stay dense, so
    `len(tokenizer)` is the embedding size. `vocab_size` (special tokens included) keeps the most
    frequent tokens.
    """
    ranked = [tok for tok in sorted(trained, key=trained.__getitem__) if tok not in first]
    if vocab_size is not None:
        ranked = ranked[: vocab_size - len(first)]
    return {tok: i for i, tok in enumerate(first + ranked)}


def _wrap(tokenizer: Tokenizer) -> PreTrainedTokenizerFast:
    # The unknown token is deliberately not registered as a special token: `pipeline` and
    # `decode(skip_special_tokens=True)` drop special tokens, and an unknown word should stay visible as
    # "<unk>" in generated text (PTB is full of them), not vanish.
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        model_max_length=UNLIMITED_LENGTH,
        padding_side="left",
        model_input_names=["input_ids", "attention_mask"],
        clean_up_tokenization_spaces=False,  # would turn PTB's "do n't" into "don't"
    )


# --------------------------------------------------------------------------------------------------------
# Token streams
# --------------------------------------------------------------------------------------------------------


def unknown_token_rate(tokenizer, ids: torch.LongTensor) -> float | None:
    """The share of `ids` that are the tokenizer's unknown token (None for a tokenizer without one, BPE)."""
    unknown = [t for t in (WORD_UNK_TOKEN, UNK_TOKEN) if t in tokenizer.get_vocab()]
    if not unknown or ids.numel() == 0:
        return None
    return float((ids == tokenizer.convert_tokens_to_ids(unknown[0])).float().mean())


def text_bytes(texts) -> int:
    """The UTF-8 bytes of the rows `tokenize_corpus` keeps, plus one per row for the line break that the
    row's `<eos>` stands for: the denominator of bits per byte."""
    return sum(len(t.encode("utf-8")) + 1 for t in texts if t is not None and t.strip())


def tokenize_corpus(
    dataset_dict: datasets.DatasetDict,
    tokenizer: PreTrainedTokenizerFast,
    add_eos: bool = True,
    num_proc: int | None = None,
) -> dict[str, torch.LongTensor]:
    """Tokenize every split into one 1-D `LongTensor` stream of ids, rows concatenated in order.

    Each row is followed by `<eos>` (`add_eos=True`), which is how the end of a sentence, line or
    paragraph is marked: on Penn Treebank this reproduces the literature's token counts (train 929,589,
    validation 73,760, test 82,430, end-of-sentence tokens included). Rows that are empty or whitespace
    only are skipped, so the blank lines between paragraphs of wikitext-style files do not turn into lone
    `<eos>` tokens.

    The work runs through `datasets.Dataset.map(batched=True)`, so `num_proc` processes can share it
    and datasets read from files reuse their cached results on the next run.

    Args:
        dataset_dict: the output of `load_corpus` (any splits with a "text" column).
        tokenizer: the output of `train_tokenizer` or any tokenizer with an `eos_token_id`.
        add_eos: append `tokenizer.eos_token_id` after every row.
        num_proc: worker processes for `map`; None tokenizes in this process.

    Returns:
        `{split: LongTensor of shape (num_tokens,)}`.
    """
    if add_eos and tokenizer.eos_token_id is None:
        raise ValueError(
            "The tokenizer has no eos_token, so rows cannot be ended with it; give it one "
            "(train_tokenizer's tokenizers have '<eos>') or pass add_eos=False."
        )
    eos = [tokenizer.eos_token_id] if add_eos else []

    def encode(batch: dict[str, list]) -> dict[str, list[list[int]]]:
        texts = [t for t in batch["text"] if t is not None and t.strip()]
        encoded = tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
        return {"input_ids": [ids + eos for ids in encoded]}

    streams: dict[str, torch.LongTensor] = {}
    for split, dataset in dataset_dict.items():
        if "text" not in dataset.column_names:
            raise ValueError(
                f"Split {split!r} has no 'text' column (columns: {dataset.column_names}); "
                "load it with load_corpus, which names the text column 'text'."
            )
        tokenized = dataset.map(
            encode,
            batched=True,
            remove_columns=dataset.column_names,
            num_proc=num_proc,
            desc=f"Tokenizing {split}",
        )
        if len(tokenized) == 0:
            raise ValueError(f"Split {split!r} holds no text (every row is empty); give it some text.")
        flat = pc.list_flatten(tokenized.with_format("arrow")[:]["input_ids"])
        streams[split] = torch.from_numpy(flat.to_numpy(zero_copy_only=False).astype("int64"))
    return streams
