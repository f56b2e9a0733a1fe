"""hf-lstm compare: parameter matching (exact counts, within 10%, no training) and one end-to-end run at a
tiny budget that checks the shape of results.json, REPORT.md, the plots and the copied model cards."""

import dataclasses
import json
from pathlib import Path

import pytest

from conftest import write_corpus
from hf_lstm import compare
from hf_lstm.builders import parse_config_overrides
from hf_lstm.settings import TrainingSettings


@pytest.mark.parametrize("target,vocab", [(4_000_000, 10_001), (10_000_000, 10_001), (50_000, 40)])
@pytest.mark.parametrize("family", compare.FAMILIES)
def test_each_family_is_matched_within_ten_percent_of_the_target_total(family, target, vocab):
    shape = compare.match_parameters(family, target, vocab, max_positions=4160)
    assert abs(shape.num_parameters / target - 1) <= 0.10
    assert shape.relative_error == pytest.approx(shape.num_parameters / target - 1)
    assert 0 < shape.num_non_embedding_parameters < shape.num_parameters


@pytest.mark.parametrize("family", compare.FAMILIES)
def test_counts_are_those_of_the_model_the_training_script_builds(family):
    """Counted on the meta device, the same numbers as a real model; non-embedding = total - V x width
    (- GPT-2's position table), since every family ties its output layer to the embedding."""
    shape = compare.match_parameters(family, 300_000, 500, block_size=32, max_positions=96, eval_window=32)
    model = compare.build_model_on_meta(family, shape.overrides, 500, block_size=32, eval_window=32)
    real = type(model)(model.config)
    total = sum(p.numel() for p in real.parameters())
    assert total == shape.num_parameters
    # transformers' xLSTM has no tied output layer, nor has 5.0's Mamba (its config has no
    # tie_word_embeddings): counted untied
    tied = family != "xlstm" and hasattr(model.config, "tie_word_embeddings")
    embedding = 500 * shape.width * (1 if tied else 2) + (32 * shape.width if family == "gpt2" else 0)
    assert shape.num_non_embedding_parameters == total - embedding
    assert (real.get_output_embeddings().weight is real.get_input_embeddings().weight) == tied


def test_llama_gets_rotary_positions_for_long_prompts_and_gpt2_only_its_training_block():
    gpt2 = compare.match_parameters("gpt2", 1_000_000, 1000, block_size=128, max_positions=4160)
    llama = compare.match_parameters("llama", 1_000_000, 1000, block_size=128, max_positions=4160)
    assert gpt2.overrides["n_positions"] == 128
    assert llama.overrides["max_position_embeddings"] == 4160
    assert llama.overrides["head_dim"] * llama.overrides["num_attention_heads"] == llama.width


def test_an_unreachable_target_is_a_clear_error():
    with pytest.raises(ValueError, match="within 10%"):
        compare.match_parameters("gpt2", 1_000, 10_001)  # smaller than the embedding matrix alone


def test_parameter_counts_are_read_in_the_usual_units():
    assert compare.parse_count("5M") == 5_000_000
    assert compare.parse_count("50k") == 50_000
    assert compare.parse_count("1.5m") == 1_500_000
    assert compare.parse_count("123456") == 123_456
    with pytest.raises(ValueError):
        compare.parse_count("lots")


@pytest.fixture(scope="module")
def tiny_comparison(tmp_path_factory):
    """All three families on a small local corpus, about 3 seconds of training each."""
    root = write_corpus(tmp_path_factory.mktemp("compare"))
    out, cards, published = root / "run", root / "model_cards", root / "docs" / "COMPARE-tiny.md"
    argv = [
        "--train_file",
        str(root / "train.txt"),
        "--validation_file",
        str(root / "validation.txt"),
        "--test_file",
        str(root / "test.txt"),
        "--tokenizer_type",
        "word",
        "--models",
        "hf_lstm,gpt2,llama",
        "--target_params",
        "50k",
        "--budget_minutes",
        "0.05",
        "--timing_seconds",
        "0.3",
        "--curve_points",
        "2",
        "--per_device_train_batch_size",
        "4",
        "--bptt",
        "16",
        "--block_size",
        "32",
        "--eval_window",
        "32",
        "--contexts",
        "16,64",
        "--new_tokens",
        "8",
        "--repeats",
        "1",
        "--sample_max_new_tokens",
        "0",
        "--num_threads",
        "1",
        "--output_dir",
        str(out),
        "--model_cards_dir",
        str(cards),
        "--publish_report",
        str(published),
        "--run_name",
        "tiny",
    ]
    assert compare.main(argv) == 0
    return out, cards, published


def test_results_json_has_one_record_per_model_with_the_promised_fields(tiny_comparison):
    out, _, _ = tiny_comparison
    records = json.loads((out / "results.json").read_text())
    assert [r["name"] for r in records] == ["hf_lstm", "gpt2", "llama"]
    for r in records:
        assert isinstance(r["model_type"], str)
        assert isinstance(r["num_parameters"], int) and isinstance(r["num_non_embedding_parameters"], int)
        assert abs(r["parameter_match_error"]) <= 0.10
        assert r["train_tokens_per_second"] > 0 and 0 < r["model_flops_utilization"] < 5
        assert (
            1 < r["eval_perplexity"] < 1000
            and r["eval_perplexity"] == r["validation_perplexity_fixed_window"]
        )
        assert set(r["generate_tokens_per_second"]) == {"16", "64"}
        assert {(g["batch_size"], g["context"]) for g in r["generation"]} == {
            (1, 16),
            (1, 64),
            (8, 16),
            (8, 64),
        }
        assert r["train_log"] and r["train_seconds"] <= 0.05 * 60 + 2
        # one point per checkpoint the run saved (a run its time budget stops before the first has none:
        # the plots add the finished model themselves), none after the end of training
        every = int(r["train_argv"][r["train_argv"].index("--checkpointing_steps") + 1])
        steps = [p["step"] for p in r["eval_curve"]]
        assert set(range(every, r["train_steps"], every)) <= set(steps), (every, r["train_steps"], steps)
        assert all(s % every == 0 and s <= r["train_steps"] for s in steps), (every, steps)
        assert all(p["seconds"] <= r["train_seconds"] for p in r["eval_curve"])
        assert not list((out / "models" / r["name"]).glob("step_*"))  # evaluated, then removed
    lstm, gpt2, llama = records
    assert lstm["model_type"] == "hf_lstm" and lstm["batching"] == "stream"
    assert lstm["validation_perplexity_stateful"] > 1 and gpt2["validation_perplexity_stateful"] is None
    assert gpt2["batching"] == llama["batching"] == "blocks"
    for r in records:  # the recurrent state stays the same size; a KV cache grows with the context
        assert all(v > 0 for v in r["generate_tokens_per_second"].values() if v is not None)
    assert lstm["cache_bytes"]["16"] == lstm["cache_bytes"]["64"] > 0
    assert llama["cache_bytes"]["64"] > llama["cache_bytes"]["16"] > 0


def test_a_context_beyond_gpt2_positions_is_null_with_a_reason(tiny_comparison):
    out, _, _ = tiny_comparison
    gpt2 = next(r for r in json.loads((out / "results.json").read_text()) if r["name"] == "gpt2")
    assert gpt2["generate_tokens_per_second"]["16"] > 0  # 16 + 8 fits its 32 positions
    assert gpt2["generate_tokens_per_second"]["64"] is None
    beyond = next(g for g in gpt2["generation"] if g["context"] == 64 and g["batch_size"] == 1)
    assert "exceeds" in beyond["reason"] and "32 positions" in beyond["reason"]


def test_report_plots_and_model_cards_are_written(tiny_comparison):
    out, cards, published = tiny_comparison
    report = (out / "REPORT.md").read_text()
    for heading in ("## Result", "## Generation speed", "## Memory", "## Reading", "## Caveats"):
        assert heading in report
    for png in ("curves.png", "generation.png", "memory.png"):
        assert (out / png).stat().st_size > 5000
        assert f"]({png})" in report
        assert (published.parent / "compare-tiny" / png).is_file()
    assert "](compare-tiny/curves.png)" in published.read_text()
    assert sorted(p.name for p in cards.iterdir()) == ["tiny-gpt2.md", "tiny-hf_lstm.md", "tiny-llama.md"]
    assert "## In the comparison" in (cards / "tiny-hf_lstm.md").read_text()


def test_the_budget_plan_is_the_same_rule_for_every_model():
    """Wall-clock: the schedule spans the steps the warm-up predicts x1.1 and the clock stops the run;
    tokens: exactly the budget's steps, no clock. Curves come from checkpoints, not from evaluations inside
    the clock."""
    timing = {"step_seconds": 0.5, "tokens_per_step": 2048}
    args = compare.parse_args(["--budget_minutes", "5", "--curve_points", "6"])
    plan = compare.plan_budget(args, timing)
    assert plan.expected_steps == int(300 / 0.5)
    fields = plan.settings_fields()
    assert "eval_steps" not in fields and fields["checkpointing_steps"] == "100"
    assert plan.schedule_steps == pytest.approx(1.1 * plan.expected_steps, abs=1)
    assert fields["max_train_steps"] == plan.schedule_steps and fields["max_train_minutes"] == 5.0
    assert plan.warmup_steps == round(0.05 * plan.schedule_steps) == fields["num_warmup_steps"]
    args = compare.parse_args(["--budget", "tokens", "--budget_tokens", "1M"])
    plan = compare.plan_budget(args, timing)
    assert plan.schedule_steps == -(-1_000_000 // 2048) and "max_train_minutes" not in plan.settings_fields()


def _settings_of(family, argv=(), plan=None, tmp_path=Path("unused")):
    options = compare.parse_args(["--train_file", "train.txt", "--per_device_train_batch_size", "8", *argv])
    shape = compare.match_parameters(family, 50_000, 40, block_size=32, eval_window=32, max_positions=64)
    return compare.family_settings(options, shape, tmp_path / "tokenizer", tmp_path / family, plan), shape


@pytest.mark.parametrize("family", [*compare.FAMILIES, "hf_lstm:gru"])
def test_each_family_runs_with_its_recipe_its_shape_and_the_shared_data_and_batch(family):
    settings, shape = _settings_of(family, ["--bptt", "16", "--block_size", "32", "--eval_window", "32"])
    recipe = compare.get_family(family).recipe
    model_type = family.partition(":")[0]
    assert settings.model_type == model_type and settings.train_file == "train.txt"
    assert settings.batching == recipe["batching"] == ("stream" if model_type == "hf_lstm" else "blocks")
    assert settings.learning_rate == recipe["learning_rate"] and settings.optimizer == "adamw"
    assert settings.weight_decay == recipe.get("weight_decay", 0.0) and settings.max_grad_norm == 1.0
    assert settings.per_device_train_batch_size == 8 and settings.lr_scheduler_type == "cosine"
    assert settings.context_length == (16 if model_type == "hf_lstm" else 32)
    assert parse_config_overrides(settings.config_overrides) == shape.overrides
    assert settings.tokenizer_name.endswith("tokenizer") and settings.max_train_steps is None
    # the model at the budget's end, on a corpus of one's own too (train's default there keeps the best)
    assert settings.load_best_model_at_end is False and settings.best_model_plan(True, 100) == (False, None)


def test_extra_train_arguments_override_the_recipe_and_the_plan_comes_last():
    """`--optimizer sgd` without a rate keeps the recipe's rate but takes SGD's clipping, as `hf-lstm train`
    derives it; a value equal to train's default still overrides the recipe (weight decay 0.0)."""
    timing = {"step_seconds": 0.5, "tokens_per_step": 2048}
    argv = [
        "--hf_lstm_train_args",
        "--optimizer sgd --max_train_steps 7",
        "--transformer_train_args",
        "--weight_decay 0.0 --learning_rate 5e-4",
    ]
    plan = compare.plan_budget(compare.parse_args(["--budget_minutes", "1"]), timing)
    lstm, _ = _settings_of("hf_lstm", argv, plan)
    assert (lstm.optimizer, lstm.learning_rate, lstm.max_grad_norm) == ("sgd", 6e-3, 0.25)
    assert lstm.max_train_steps == plan.schedule_steps == 132 and lstm.max_train_minutes == 1.0
    gpt2, _ = _settings_of("gpt2", argv)
    assert (gpt2.weight_decay, gpt2.learning_rate, gpt2.optimizer) == (0.0, 5e-4, "adamw")


@pytest.mark.parametrize("family", compare.FAMILIES)
def test_the_recorded_command_line_makes_the_same_settings(family):
    timing = {"step_seconds": 0.25, "tokens_per_step": 512}
    plan = compare.plan_budget(compare.parse_args(["--budget_minutes", "0.5"]), timing)
    settings, _ = _settings_of(family, ["--validation_split_percentage", "10", "--trust_remote_code"], plan)
    assert settings.trust_remote_code and settings.validation_split_percentage == 10
    assert TrainingSettings.from_argv(settings.to_argv()) == settings


def test_data_and_tokenizer_options_are_those_of_hf_lstm_train():
    """Declared once: the same names, defaults, choices and help texts as `hf-lstm train`'s."""
    ours = {a.dest: a for a in compare.build_parser()._actions}
    theirs = {a.dest: a for a in TrainingSettings.parser()._actions}
    names = [f.name for f in dataclasses.fields(TrainingSettings) if f.metadata["group"] == "data"]
    names += ["tokenizer_name", "tokenizer_type", "tokenizer_vocab_size", "trust_remote_code"]
    for name in names:
        for attribute in ("default", "choices", "help", "type", "nargs"):
            assert getattr(ours[name], attribute) == getattr(theirs[name], attribute), (name, attribute)


def test_bad_arguments_are_refused_before_any_work(capsys):
    for argv in (
        ["--models", "hf_lstm,bert"],
        ["--budget", "tokens"],
        ["--generate_batch_sizes", "8"],
        ["--transformer_train_args", "--no_such_option 1"],
    ):
        with pytest.raises(SystemExit):
            compare.parse_args(argv)
    assert "bert" in capsys.readouterr().err


# -- runs made apart, combined (scripts/combine_compare.py) -----------------------------------------------


def _record(name, seed, perplexity, steps=100):
    return {
        "name": name,
        "status": "ok",
        "role": "final",
        "seed": seed,
        "target_parameters": 4_000_000,
        "budget": "wall_clock",
        "learning_rate": 0.002,
        "lr_candidates": [None],
        "shape": "2 x 8",
        "num_parameters": 4_000_000,
        "num_non_embedding_parameters": 1_000_000,
        "train_steps": steps,
        "train_tokens_per_second": 1000.0,
        "eval_perplexity": perplexity,
        "validation_perplexity_fixed_window": perplexity,
        "test_perplexity_fixed_window": perplexity * 0.9,
        "eval_curve": [{"step": 1}],  # left out of the combined file
    }


def test_runs_made_apart_combine_into_means_spreads_and_ranks_seed_by_seed(tmp_path):
    from hf_lstm.compare.combine import main

    first, second = tmp_path / "a.json", tmp_path / "b.json"
    first.write_text(json.dumps([_record("hf_lstm", 42, 200.0), _record("xlstm", 42, 190.0)]))
    second.write_text(json.dumps([_record("hf_lstm", 43, 180.0, steps=90), _record("xlstm", 43, 196.0), *[]]))
    out, saved = tmp_path / "r.md", tmp_path / "all.json"
    assert (
        main([str(first), str(second), "--title", "t", "--output", str(out), "--save_results", str(saved)])
        == 0
    )
    text = out.read_text()
    assert "| hf_lstm | 4M | 4,000,000 / 1,000,000 | wall_clock | 0.002 | 2 | 190.0 ± 14.1 |" in text
    assert "| hf_lstm | 200.0 / 180.0 | 2 / 1 | 100 / 90 | 1,000 / 1,000 |" in text  # seeds 42 / 43
    assert "| xlstm | 190.0 / 196.0 | 1 / 2 |" in text
    assert "hf_lstm 190.0 validation perplexity; xlstm 193.0" in text
    records = json.loads(saved.read_text())
    assert len(records) == 4 and "eval_curve" not in records[0] and records[0]["source"] == str(first)
    plot = tmp_path / "seeds.png"
    args = [str(first), str(second), "--models", "xlstm", "--title", "t", "--output", str(out)]
    assert main([*args, "--plot", str(plot)]) == 0
    assert "hf_lstm" not in out.read_text() and "| xlstm | 190.0 / 196.0 | 1 / 1 |" in out.read_text()
    assert "![each seed](seeds.png)" in out.read_text() and plot.stat().st_size > 5000  # no sweep to draw
    assert (
        main([str(first), str(second), "--models", "xlstm,hf_lstm", "--title", "t", "--output", str(out)])
        == 0
    )
    text = out.read_text()  # the families in the order --models gives
    assert text.index("| xlstm | 4M |") < text.index("| hf_lstm | 4M |")


def test_a_run_given_twice_is_refused_rather_than_counted_twice(tmp_path):
    from hf_lstm.compare.combine import main

    path = tmp_path / "a.json"
    path.write_text(json.dumps([_record("hf_lstm", 42, 200.0)]))
    with pytest.raises(ValueError, match="give each run once"):
        main([str(path), str(path), "--title", "t", "--output", str(tmp_path / "r.md")])
    with pytest.raises(SystemExit):
        main([str(tmp_path / "missing.json"), "--title", "t", "--output", str(tmp_path / "r.md")])


def test_a_sweep_and_seeds_run_apart_combine_only_at_the_rate_the_sweep_chose(tmp_path):
    from hf_lstm.compare.combine import main

    rates = [0.001, 0.002, 0.004]
    sweep = [
        {**_record("hf_lstm", 42, p), "learning_rate": r, "lr_candidates": rates, "role": role}
        for r, p, role in ((0.001, 230.0, "sweep"), (0.002, 200.0, "final"), (0.004, 210.0, "sweep"))
    ]
    first, seeds, out = tmp_path / "sweep.json", tmp_path / "seeds.json", tmp_path / "r.md"
    first.write_text(json.dumps(sweep))
    seeds.write_text(json.dumps([_record("hf_lstm", 43, 190.0)]))  # at 0.002, the chosen rate
    assert main([str(first), str(seeds), "--title", "t", "--output", str(out)]) == 0
    text = out.read_text()
    assert "| hf_lstm | 4M | 4,000,000 / 1,000,000 | wall_clock | 0.002 (0.001, 0.002, 0.004) | 2 |" in text
    assert "## Learning-rate sweep" in text and "| 0.002 | 200.0 | 180.0 | **yes** |" in text
    assert "| 0.004 | 210.0 | 189.0 |  |" in text
    seeds.write_text(json.dumps([{**_record("hf_lstm", 43, 190.0), "learning_rate": 0.004}]))
    with pytest.raises(ValueError, match="seed 42 chose learning rate 0.002, but seeds 43 ran at another"):
        main([str(first), str(seeds), "--title", "t", "--output", str(out)])
    saved = tmp_path / "kept.json"  # or left out, and listed, on request
    args = [str(first), str(seeds), "--title", "t", "--output", str(out), "--save_results", str(saved)]
    assert main([*args, "--drop_other_rates"]) == 0
    assert "- hf_lstm, seed 43, learning rate 0.004 (`" in out.read_text()
    assert sorted(r["seed"] for r in json.loads(saved.read_text())) == [42, 42, 42]
    # a file whose seed 42 was trained again: only its other seeds are read
    seeds.write_text(json.dumps([_record("hf_lstm", 43, 190.0), {**sweep[1], "eval_perplexity": 250.0}]))
    with pytest.raises(ValueError, match="give each run once"):
        main(args)
    with pytest.raises(SystemExit):  # a clear usage error, not a traceback from int()
        main([*args, "--seeds_of", f"{seeds}=43,x"])
    assert main([*args, "--seeds_of", f"{seeds}=43"]) == 0
    assert sorted(r["seed"] for r in json.loads(saved.read_text())) == [42, 42, 42, 43]
    # the same sweep run apart, one rate per file, each run a plain final run: assembled and chosen alike
    apart = []
    for rate, perplexity in ((0.004, 210.0), (0.002, 200.0), (0.001, 230.0)):
        apart.append(tmp_path / f"lr{rate}.json")
        apart[-1].write_text(json.dumps([{**_record("hf_lstm", 42, perplexity), "learning_rate": rate}]))
    seeds.write_text(json.dumps([_record("hf_lstm", 43, 190.0)]))
    plot = tmp_path / "plots" / "seeds.png"
    args = [*map(str, apart), str(seeds), "--title", "t", "--output", str(out), "--plot", str(plot)]
    assert main(args) == 0
    assert plot.stat().st_size > 5000
    again = out.read_text()
    assert "![each seed, and the learning-rate sweep](plots/seeds.png)" in again
    assert "| wall_clock | 0.002 (0.001, 0.002, 0.004) | 2 | 195.0 ± 7.1 |" in again
    assert "| 0.001 | 230.0 | 207.0 |  |" in again and "| 0.002 | 200.0 | 180.0 | **yes** |" in again


def test_the_cards_copied_are_those_of_each_family_s_first_seed_at_the_chosen_rate(tmp_path, capsys):
    from hf_lstm.compare.combine import main

    runs = []
    for name, rate, seed, perplexity in (
        ("hf_lstm", 0.006, 42, 220.0),
        ("hf_lstm", 0.012, 42, 210.0),  # chosen
        ("hf_lstm", 0.012, 43, 205.0),  # a better seed, but not the sweep's run
        ("xlstm", 0.002, 42, 270.0),  # its folder is gone
    ):
        folder = tmp_path / f"{name}-{rate}-{seed}"
        if name == "hf_lstm":
            folder.mkdir()
            (folder / "README.md").write_text(f"# card of {name} at {rate}, seed {seed}\n")
        record = {**_record(name, seed, perplexity), "learning_rate": rate, "model_dir": str(folder)}
        runs.append(tmp_path / f"{name}-{rate}-{seed}.json")
        runs[-1].write_text(json.dumps([{**record, "parameter_match_error": 0.01}]))
    cards, out = tmp_path / "cards", tmp_path / "docs" / "r.md"
    args = [*map(str, runs), "--title", "t", "--output", str(out), "--model_cards_dir", str(cards)]
    with pytest.raises(SystemExit):  # the cards need a name
        main(args)
    assert main([*args, "--run_name", "sweep"]) == 0
    assert [p.name for p in cards.iterdir()] == ["sweep-hf_lstm.md"]
    card = (cards / "sweep-hf_lstm.md").read_text()
    assert card.startswith("# card of hf_lstm at 0.012, seed 42") and "## In the comparison" in card
    assert "(../docs/r.md)" in card
    assert "no card for xlstm: the model folder its results file names is gone" in capsys.readouterr().out
