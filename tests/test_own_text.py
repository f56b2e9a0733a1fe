"""Training on your own text: an open-vocabulary tokenizer by default, bits per byte with baselines, the best
model kept (and resumed exactly), early stopping, and clear refusals."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer

from hf_lstm.builders import bpe_vocab_size_for
from hf_lstm.settings import SMALL_CORPUS_RECIPE, TrainingSettings
from hf_lstm.training import main


def own_text_args(corpus, out, *extra):
    """A run on a user's files with default tokenizer settings (no --tokenizer_type)."""
    return [
        "--train_file",
        str(corpus / "train.txt"),
        "--validation_file",
        str(corpus / "validation.txt"),
        "--test_file",
        str(corpus / "test.txt"),
        "--output_dir",
        str(out),
        "--config_overrides",
        "hidden_size=16",
        "--per_device_train_batch_size",
        "4",
        "--bptt",
        "8",
        "--eval_window",
        "16",
        "--sample_max_new_tokens",
        "0",
        "--logging_steps",
        "1",
        *extra,
    ]


@pytest.fixture(scope="module")
def best_run(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("best") / "run"
    args = own_text_args(
        corpus,
        out,
        "--max_train_steps",
        "8",
        "--eval_steps",
        "2",
        "--checkpointing_steps",
        "4",
        "--checkpoints_total_limit",
        "10",
        "--learning_rate",
        "0.03",
    )
    assert main(args) == 0
    return out, args


def test_a_users_corpus_gets_byte_level_bpe_sized_to_it(best_run):
    out, _ = best_run
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.backend_tokenizer.model.__class__.__name__ == "BPE"
    assert len(tokenizer) <= bpe_vocab_size_for(30_000) == 512
    assert bpe_vocab_size_for(150_000) == 1024 and bpe_vocab_size_for(5_000_000) == 8192
    text = "zebras speak fluent quokka"  # nothing is unknown to byte-level BPE
    assert tokenizer.decode(tokenizer(text).input_ids) == text


def test_a_new_model_on_a_users_corpus_gets_the_small_corpus_recipe(best_run):
    out, _ = best_run
    config = json.loads((out / "config.json").read_text())
    assert SMALL_CORPUS_RECIPE and all(config[k] == v for k, v in SMALL_CORPUS_RECIPE.items())
    assert config["hidden_size"] == 16  # what --config_overrides set is kept beside it


def test_the_regularization_option_chooses_the_recipe(corpus, tmp_path):
    def plan(*extra):
        settings = TrainingSettings.from_argv(own_text_args(corpus, tmp_path / "x", *extra))
        return settings.regularization_overrides()

    assert plan() == SMALL_CORPUS_RECIPE and plan("--regularization", "none") == {}
    assert TrainingSettings.from_argv(["--dataset_name", "ptb"]).regularization_overrides() == {}
    assert (
        TrainingSettings.from_argv(
            ["--dataset_name", "ptb", "--regularization", "small_corpus"]
        ).regularization_overrides()
        == SMALL_CORPUS_RECIPE
    )
    assert plan("--model_type", "gpt2") == {}  # a Transformer keeps its own dropouts
    # a saved model keeps what it was trained with
    assert plan("--model_name_or_path", str(tmp_path)) == {}


def test_config_overrides_win_over_the_recipe(corpus, tmp_path):
    out = tmp_path / "run"
    extra = ("--max_train_steps", "1", "--config_overrides", "hidden_size=16,input_dropout=0.05")
    assert main(own_text_args(corpus, out, *extra)) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["input_dropout"] == 0.05
    assert config["output_dropout"] == SMALL_CORPUS_RECIPE["output_dropout"]


def test_bits_per_byte_and_its_baselines_are_reported(best_run):
    out, _ = best_run
    results = json.loads((out / "all_results.json").read_text())
    for protocol in ("fixed_window", "stateful", "unigram", "uniform"):
        assert 0 < results[f"validation_bits_per_byte_{protocol}"] < 20, protocol
    assert results["validation_bits_per_byte_unigram"] < results["validation_bits_per_byte_uniform"]
    card = (out / "README.md").read_text()
    assert "bits per byte" in card and "baseline: unigram" in card


def test_the_saved_model_is_the_best_evaluated_one(best_run):
    out, _ = best_run
    results = json.loads((out / "all_results.json").read_text())
    curve = results["eval_curve"]
    assert [p["step"] for p in curve] == [2, 4, 6, 8]
    best = min(curve, key=lambda p: p["validation_loss_fixed_window"])
    assert results["best_step"] == best["step"]
    assert results["best_metric"] == pytest.approx(best["validation_loss_fixed_window"])
    assert results["validation_loss_fixed_window"] == pytest.approx(
        best["validation_loss_fixed_window"], rel=1e-6
    )


def test_resuming_carries_the_best_model_exactly(best_run, tmp_path):
    straight, args = best_run
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(straight / "step_4", resumed / "step_4")
    assert (resumed / "step_4" / "best_model.safetensors").is_file()
    shutil.copy(straight / "tokenizer.json", resumed / "tokenizer.json")
    shutil.copy(straight / "tokenizer_config.json", resumed / "tokenizer_config.json")
    new_args = list(args)
    new_args[new_args.index("--output_dir") + 1] = str(resumed)
    assert main(new_args + ["--resume_from_checkpoint", str(resumed / "step_4")]) == 0
    a, b = (json.loads((d / "all_results.json").read_text()) for d in (straight, resumed))
    assert (a["best_step"], a["best_metric"]) == (b["best_step"], b["best_metric"])
    weights_a, weights_b = load_file(straight / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)


def test_early_stopping_ends_the_run_when_validation_stops_improving(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    args = own_text_args(
        corpus,
        out,
        "--max_train_steps",
        "60",
        "--eval_steps",
        "2",
        "--early_stopping_patience",
        "2",
        "--learning_rate",
        "3.0",
        "--max_grad_norm",
        "0",
    )
    assert main(args) == 0  # a rate this large makes validation worse after the first evaluations
    results = json.loads((out / "all_results.json").read_text())
    assert results["train_steps"] < 60
    assert results["best_step"] < results["train_steps"]


def test_an_unknown_metric_for_best_model_is_one_line_and_writes_nothing(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:
        main(own_text_args(corpus, out, "--metric_for_best_model", "accuracy"))
    err = capsys.readouterr().err
    assert exit_info.value.code == 1 and "--metric_for_best_model" in err and "'loss', 'perplexity'" in err
    assert not out.exists()


def test_a_validation_split_with_no_text_is_one_line_and_writes_nothing(corpus, tmp_path, capsys):
    blank = tmp_path / "blank.txt"
    blank.write_text("\n   \n\n")
    out = tmp_path / "run"
    args = own_text_args(corpus, out)
    args[args.index("--validation_file") + 1] = str(blank)
    assert main(args) == 1
    assert "validation" in capsys.readouterr().err and not out.exists()


def test_a_word_tokenizer_on_own_text_learns_unk_and_warns_when_validation_is_full_of_it(
    corpus, tmp_path, capsys
):
    odd = tmp_path / "odd.txt"
    odd.write_text("\n".join(f"word{k} another{k} thing{k}" for k in range(400)) + "\n")  # every word unseen
    out = tmp_path / "run"
    args = own_text_args(corpus, out, "--tokenizer_type", "word", "--max_train_steps", "2")
    args[args.index("--validation_file") + 1] = str(odd)
    assert main(args) == 0
    printed = capsys.readouterr()
    assert "of the validation tokens are unknown to the tokenizer" in printed.out + printed.err
    tokenizer = AutoTokenizer.from_pretrained(out)
    words = set((corpus / "train.txt").read_text().split())
    assert len(tokenizer) <= len(words) + 3  # words seen once are left out (min frequency 2)
