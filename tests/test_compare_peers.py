"""hf-lstm compare against every recurrent peer transformers ships: each family matched, trained, evaluated
and decoded by generate() at a tiny budget (one end-to-end run), with the code path, the state bytes measured
on the actual tensors, and failures reported with their reason, never dropped."""

import argparse
import json

import pytest
import transformers
from packaging.version import Version

from conftest import write_corpus
from hf_lstm import compare
from hf_lstm.compare.report import write_report
from hf_lstm.compare.sweeps import match_all

EVERY_FAMILY = [
    "hf_lstm",
    "hf_lstm:gru",
    "gpt2",
    "llama",
    "mamba",
    "mamba2",
    "xlstm",
    "rwkv",
    "recurrent_gemma",
]
FIXED_STATE = ["hf_lstm", "hf_lstm:gru", "mamba", "mamba2", "xlstm", "rwkv"]


def test_every_peer_family_is_known_and_hf_lstm_takes_any_cell():
    assert set(EVERY_FAMILY) - {"hf_lstm:gru"} == set(compare.FAMILIES)
    assert compare.get_family("hf_lstm:rnn").overrides(2, 64)["cell_type"] == "rnn"
    assert compare.get_family("hf_lstm:gru").slug == "hf_lstm-gru"
    for bad in ("hf_lstm:transformer", "bert", "mamba:gru"):
        with pytest.raises(ValueError, match="unknown"):
            compare.get_family(bad)


def test_the_sweep_gives_every_family_the_same_number_of_rates_around_its_own():
    assert compare.sweep_rates(2e-3, 3) == pytest.approx([1e-3, 2e-3, 4e-3])
    assert compare.sweep_rates(6e-3, 1) == [6e-3]
    options = compare.parse_args(["--lr_sweep", "3", "--seeds", "2", "--target_params", "4M,1M"])
    assert options.target_params == [1_000_000, 4_000_000] and options.budgets == ["wall_clock"]
    both = compare.parse_args(["--budget", "both", "--budget_tokens", "1M"])
    assert both.budgets == ["wall_clock", "tokens"]
    for argv in (["--budget", "both"], ["--lr_sweep", "0"], ["--models", "hf_lstm:lstm2"]):
        with pytest.raises(SystemExit):
            compare.parse_args(argv)


def test_xlstm_shapes_agree_with_the_widths_its_config_declares():
    """transformers' xLSTM rounds qk_dim and v_dim up to multiples of 64 in its config (and cache) but not in
    its layer: the factors chosen make both the same integer."""
    for width in (24, 48, 96, 168, 256):
        overrides = compare.get_family("xlstm").overrides(2, width)
        from transformers import xLSTMConfig

        config = xLSTMConfig(hidden_size=width, **{k: v for k, v in overrides.items() if k != "hidden_size"})
        assert int(width * overrides["qk_dim_factor"]) == config.qk_dim and config.qk_dim % 64 == 0
        assert int(width * overrides["v_dim_factor"]) == config.v_dim and config.v_dim % 64 == 0


def test_a_family_that_cannot_be_matched_is_a_failure_record_with_its_reason():
    options = compare.parse_args(["--models", "hf_lstm,gpt2", "--target_params", "2k", "--contexts", "16"])
    shapes, failures = match_all(options, vocab_size=1000, target=2_000)
    assert not shapes  # 1000 x width already exceeds 2k for every width
    assert [f["name"] for f in failures] == ["hf_lstm", "gpt2"]
    for failure in failures:
        assert failure["status"] == "failed" and failure["stage"] == "parameter matching"
        assert "within 10%" in failure["reason"] and failure["target_parameters"] == 2_000


@pytest.fixture(scope="module")
def every_family(tmp_path_factory):
    """All nine families on a small local corpus, a few thousand training tokens each."""
    root = write_corpus(tmp_path_factory.mktemp("peers"))
    out = root / "run"
    argv = [
        *("--train_file", str(root / "train.txt"), "--validation_file", str(root / "validation.txt")),
        *("--test_file", str(root / "test.txt"), "--tokenizer_type", "word"),
        *("--models", ",".join(EVERY_FAMILY), "--target_params", "50k"),
        *("--budget", "tokens", "--budget_tokens", "1k", "--timing_seconds", "0.05", "--curve_points", "1"),
        *("--per_device_train_batch_size", "4", "--bptt", "16", "--block_size", "32", "--eval_window", "32"),
        *("--contexts", "16,48", "--generate_batch_sizes", "1,2", "--new_tokens", "4", "--repeats", "1"),
        *("--sample_max_new_tokens", "0", "--num_threads", "1", "--output_dir", str(out)),
    ]
    assert compare.main(argv) == 0
    return out, json.loads((out / "results.json").read_text())


def test_every_family_runs_end_to_end_with_the_promised_fields(every_family):
    _, records = every_family
    assert [r["name"] for r in records] == EVERY_FAMILY  # none dropped, in --models order
    for r in records:
        assert r["status"] == "ok" and r["main"] and r["role"] == "final", r.get("reason")
        assert abs(r["parameter_match_error"]) <= 0.10
        assert 0 < r["num_non_embedding_parameters"] < r["num_parameters"]
        assert r["train_tokens"] >= 1000 and r["train_tokens_per_second"] > 0
        assert 1 < r["validation_perplexity_fixed_window"] < 100
        assert 0 < r["validation_bits_per_byte_fixed_window"] and 0 < r["test_bits_per_byte_fixed_window"]
        assert r["budget"] == "tokens" and r["seed"] == 42 and r["train_peak_rss_bytes"] > 0
        assert isinstance(r["code_path"], str) and r["code_path"].startswith(r["model_type"])
        assert {(g["batch_size"], g["context"]) for g in r["generation"]} == {
            (1, 16),
            (1, 48),
            (2, 16),
            (2, 48),
        }
        assert r["eval_curve"]
        assert r["dropout"] == {}, r["name"]  # no family is regularised, hf_lstm on a user corpus included
    by_name = {r["name"]: r for r in records}
    assert "PyTorch" in by_name["mamba"]["code_path"] and "PyTorch" in by_name["rwkv"]["code_path"]


def test_recurrent_states_stay_the_same_size_and_attention_caches_grow(every_family):
    _, records = every_family
    by_name = {r["name"]: r for r in records}
    for name in FIXED_STATE:
        cache = by_name[name]["cache_bytes"]
        assert cache["16"] == cache["48"] > 0, name
        assert by_name[name]["generate_tokens_per_second"]["48"] > 0
    # RecurrentGemma: RG-LRU states (kept on its modules) and a local-attention cache growing to its window
    # (transformers 5.24 grows that cache token by token; 5.0 allocates the whole window at the first step)
    gemma = by_name["recurrent_gemma"]["cache_bytes"]
    assert gemma["48"] >= gemma["16"] > 0
    if Version(transformers.__version__) >= Version("5.24"):
        assert gemma["48"] > gemma["16"]
    assert by_name["llama"]["cache_bytes"]["48"] > by_name["llama"]["cache_bytes"]["16"] > 0
    gpt2 = by_name["gpt2"]
    assert gpt2["generate_tokens_per_second"]["48"] is None
    assert "32 positions" in next(g["reason"] for g in gpt2["generation"] if g["context"] == 48)


def test_the_report_names_every_family_its_code_path_and_every_failure(every_family):
    out, records = every_family
    report = (out / "REPORT.md").read_text()
    assert "None: every requested family was matched, trained" in report
    for r in records:
        assert f"| {r['name']} |" in report and r["code_path"] in report
    options = argparse.Namespace(**json.loads((out / "options.json").read_text()))
    summary = json.loads((out / "summary.json").read_text())
    _, failures = match_all(options, vocab_size=1000, target=2_000)
    with_failures = write_report(options, records + failures, summary)
    assert "**hf_lstm** failed at parameter matching" in with_failures
    assert "**mamba** failed at parameter matching" in with_failures
