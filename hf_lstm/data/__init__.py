"""Corpora, tokenizers and batches for language modelling with hf_lstm.

The training loop needs three things from its data, and this package provides each (`corpora`,
`tokenization`, `batching`):

1. A corpus: `load_corpus` turns a Hub dataset name, a local file or folder, or one of the built-in
   corpora (`"ptb"`, `"shakespeare"`) into a `datasets.DatasetDict` with "train", "validation"
   (and "test" when the source has one), each holding one string column, "text".
2. A tokenizer: `train_tokenizer` trains a word-level, byte-level BPE or character-level tokenizer
   with the `tokenizers` library and wraps it as a `transformers.PreTrainedTokenizerFast` that
   `save_pretrained`/`AutoTokenizer.from_pretrained` handle like any other.
3. Batches: `tokenize_corpus` turns each split into one long stream of token ids, which is then cut
   either into carried-state windows (`StreamBatcher`, truncated backpropagation through time as in
   PyTorch's word_language_model), into independent blocks (`group_texts_dataset`, run_clm's
   `group_texts`), or into the fixed-window evaluation protocol (`fixed_windows`).

docs/DATA.md tells the same story with the numbers measured on the built-in corpora.
"""

from .batching import (
    IGNORE_INDEX,
    EpochBatches,
    BlockDataset,
    FixedWindows,
    StreamBatcher,
    fixed_windows,
    group_texts_dataset,
)
from .corpora import (
    BUILTIN_CORPORA,
    SHAKESPEARE_TEST_PLAYS,
    SHAKESPEARE_VALIDATION_PLAYS,
    load_corpus,
)
from .tokenization import (
    DEFAULT_BPE_VOCAB_SIZE,
    EOS_TOKEN,
    PAD_TOKEN,
    TOKENIZER_KINDS,
    UNK_TOKEN,
    UNLIMITED_LENGTH,
    WORD_UNK_TOKEN,
    default_tokenizer_kind,
    text_bytes,
    unknown_token_rate,
    tokenize_corpus,
    train_tokenizer,
)

__all__ = [
    "BUILTIN_CORPORA",
    "SHAKESPEARE_TEST_PLAYS",
    "SHAKESPEARE_VALIDATION_PLAYS",
    "load_corpus",
    "DEFAULT_BPE_VOCAB_SIZE",
    "EOS_TOKEN",
    "PAD_TOKEN",
    "TOKENIZER_KINDS",
    "UNK_TOKEN",
    "UNLIMITED_LENGTH",
    "WORD_UNK_TOKEN",
    "default_tokenizer_kind",
    "text_bytes",
    "unknown_token_rate",
    "tokenize_corpus",
    "train_tokenizer",
    "IGNORE_INDEX",
    "EpochBatches",
    "BlockDataset",
    "FixedWindows",
    "StreamBatcher",
    "fixed_windows",
    "group_texts_dataset",
]
