"""The science experiments: each runs end to end from the CLI at a tiny budget and writes results of the right
shape; the adding problem is Hochreiter & Schmidhuber's (1997); the special cases of the cell update that the
article this project started from describes ("LSTM: Why It Was Born, How It Fixes RNN, and Why It Changed
Sequence Learning" (Towards AI)) hold on the project's own cell. Also the one dispatcher (`hf-lstm` and
`hf-lstm experiment`), the runner every experiment plugs into, and the embedding-initialisation diagnostic."""

import json
import math

import pytest
import torch

from hf_lstm import cli
from hf_lstm.experiments import EXPERIMENTS
from hf_lstm.experiments.adding import TOLERANCE, adding_batch, constant_baseline, fixed_set
from hf_lstm.experiments.gates import special_case_checks
from hf_lstm.experiments.long_dependency import COUNTRIES, FILLER, SentenceCorpus
from hf_lstm.modeling_hf_lstm import lstm_cell

ALL = ("rnn", "gru", "lstm", "peephole", "transformer")


def run_cli(name, tmp_path, *args, plots=()):
    """Run `hf-lstm experiment NAME` at a tiny size; with `plots`, also check those PNGs were drawn (and
    small)."""
    out = tmp_path / name
    flags = [] if plots else ["--no_plots"]
    assert cli.main(["experiment", name, "--output_dir", str(out), "--threads", "1", *flags, *args]) == 0
    for png in plots:
        assert (out / png).stat().st_size < 150_000
    return json.loads((out / "results.json").read_text()), out


# -- the adding problem, as Hochreiter & Schmidhuber define it ---------------------------------------------


def test_adding_batch_follows_the_paper():
    gen = torch.Generator().manual_seed(0)
    x, y = adding_batch(512, 100, gen)
    values, markers = x[..., 0], x[..., 1]
    assert 100 <= x.shape[1] <= 110 and x.shape[2] == 2
    assert values.min() >= -1 and values.max() <= 1
    assert torch.equal((markers == 1).sum(1), torch.full((512,), 2))  # exactly two marked steps
    first = (markers == 1).float().argmax(1)
    marked = (markers == 1).nonzero()[:, 1].view(512, 2)
    assert (first < 10).all()  # first marker among the first 10 steps
    assert (
        marked[:, 1] < 100 // 2
    ).all()  # second among the first T/2 - 1 unmarked steps (step T/2 at the latest)
    ends = markers[:, [0, -1]]
    assert ((ends == -1) | (ends == 1)).all()  # first and last steps carry -1 unless marked
    expected = 0.5 + (values * (markers == 1)).sum(1) / 4  # X1 is zero when step 1 is marked (value zeroed)
    assert torch.allclose(y, expected)
    assert y.min() >= 0 and y.max() <= 1


def test_always_answering_one_half_scores_about_eight_percent():
    base = constant_baseline(fixed_set(2560, 100, seed=0))
    # |0.5 - target| < 0.04 means |X1 + X2| < 0.16; for X1, X2 uniform on [-1, 1] that has probability
    # 0.16 - 0.16**2 / 4 = 0.1536 (the sum's density is triangular with peak 1/2)
    assert 0.12 < base["success_rate"] < 0.19
    assert TOLERANCE == 0.04


def test_adding_cli_writes_success_rates_for_every_cell_type(tmp_path):
    results, out = run_cli(
        "adding",
        tmp_path,
        "--seq_lens",
        "24",
        "--max_steps",
        "3",
        "--eval_every",
        "2",
        "--hidden_size",
        "8",
        "--test_sequences",
        "128",
        "--save_models",
        plots=["adding_success.png"],
    )
    assert set(results["runs"]) == set(ALL)
    for cell, runs in results["runs"].items():
        record = runs["24"]
        assert 0.0 <= record["success_rate"] <= 1.0
        assert record["training_sequences"] == 3 * 64 and record["sequences"] == 128
        assert record["seconds"] >= 0 and record["history"]
        assert (out / "models" / f"{cell}_T24.pt").exists()
    assert results["paper_lstm"]["100"]["wrong_of_2560"] == 1


# -- vanishing gradient ---------------------------------------------------------------------------------


def test_vanishing_gradient_curves_are_finite_and_span_every_distance(tmp_path):
    results, _ = run_cli(
        "vanishing-gradient",
        tmp_path,
        "--max_distance",
        "40",
        "--num_sequences",
        "8",
        "--hidden_size",
        "8",
        "--train_seq_len",
        "24",
        "--max_steps",
        "2",
        "--memory_bias",
        "1",
        plots=["gradient_vs_distance.png", "forget_gates.png"],
    )
    assert results["distances"] == list(range(41))
    assert set(results["cells"]) == set(ALL)
    for cell, entry in results["cells"].items():
        for phase in ("init", "trained"):
            curve = entry[phase]["mean"]
            assert len(curve) == 41 and all(math.isfinite(v) and v >= 0 for v in curve)
        if cell in ("lstm", "peephole"):
            stats = entry["forget_gate_init"]
            assert 0 < stats["mean"] < 1 and len(stats["cell_path_mean"]) == 41
            assert stats["cell_path_mean"][0] == pytest.approx(1.0)
            # forget bias 1 (the library default) at init: f is near sigmoid(1), the direct path shrinks
            # like 0.73^d
            assert stats["mean"] == pytest.approx(1 / (1 + math.exp(-1)), abs=0.05)
            assert stats["cell_path_mean"][40] < 1e-3


def test_an_untrained_vanilla_rnn_loses_its_gradient_exponentially(tmp_path):
    results, _ = run_cli(
        "vanishing-gradient",
        tmp_path,
        "--cell_types",
        "rnn",
        "--max_distance",
        "60",
        "--num_sequences",
        "8",
        "--hidden_size",
        "16",
        "--train_seq_len",
        "24",
        "--max_steps",
        "1",
    )
    curve = results["cells"]["rnn"]["init"]["mean"]
    assert curve[60] < 1e-6 * curve[0]


# -- long dependency ------------------------------------------------------------------------------------


def test_generated_sentences_put_the_dependent_token_after_the_distractors():
    corpus = SentenceCorpus(seed=0)
    words, where = corpus.sentence(7)
    country = words[5]
    assert words[:5] == ["<eos>", "i", "grew", "up", "in"] and country in COUNTRIES
    assert words[where] == COUNTRIES[country] and where - 5 == 7 + 6
    assert all(w in FILLER for w in words[7:14])
    assert SentenceCorpus(seed=0).sentence(7) == (words, where)  # fixed seed, same corpus


def test_long_dependency_cli_reports_accuracy_per_distance(tmp_path):
    results, out = run_cli(
        "long-dependency",
        tmp_path,
        "--max_distance",
        "10",
        "--eval_distances",
        "0,5,10",
        "--eval_sentences",
        "16",
        "--hidden_size",
        "16",
        "--embedding_size",
        "8",
        "--max_steps",
        "2",
        plots=["accuracy_vs_distance.png"],
    )
    assert set(results["models"]) == set(ALL)
    for record in results["models"].values():
        assert set(record["by_distance"]) == {"0", "5", "10"}
        for scores in record["by_distance"].values():
            assert 0.0 <= scores["accuracy"] <= 1.0 and 0.0 <= scores["choice_accuracy"] <= 1.0
    lstm, gpt = results["models"]["lstm"]["parameters"], results["models"]["transformer"]["parameters"]
    assert gpt > 0 and lstm > 0
    assert (out / "corpus_sample.txt").read_text().count("so i speak fluent") == 4


# -- gates ----------------------------------------------------------------------------------------------


def test_gates_cli_draws_every_gate_of_every_cell_type(tmp_path):
    results, _ = run_cli(
        "gates",
        tmp_path,
        "--hidden_size",
        "8",
        "--units",
        "4",
        "--max_steps",
        "2",
        "--max_train_words",
        "5000",
        "--text",
        "the company said it expects a loss",
        plots=[f"gates_{cell}.png" for cell in ("rnn", "gru", "lstm", "peephole")],
    )
    assert set(results["models"]) == {"rnn", "gru", "lstm", "peephole"}
    assert set(results["models"]["lstm"]["panels"]) >= {"forget", "input", "output", "cell", "hidden"}
    assert set(results["models"]["gru"]["panels"]) >= {"update", "reset", "candidate", "hidden"}
    assert set(results["models"]["rnn"]["panels"]) == {"hidden"}
    panel = results["models"]["lstm"]["panels"]["forget"]
    assert len(panel) == 4 and len(panel[0]) == 7  # units x tokens
    assert all(0 <= v <= 1 for row in panel for v in row)
    assert all(case["holds"] for case in results["special_cases"].values())


def test_forget_one_input_zero_carries_the_cell_state_unchanged():
    checks = special_case_checks(steps=500)
    assert checks["carry"]["holds"] and checks["carry"]["max_abs_change"] == 0.0


def test_input_gate_zero_writes_nothing_new():
    checks = special_case_checks()
    assert checks["no_write"]["holds"] and checks["no_write"]["max_input_gate"] == 0.0
    assert checks["no_write"]["candidate_difference"] > 1.0  # the candidates really differed


def test_forget_gate_one_makes_the_update_purely_additive():
    assert special_case_checks()["additive"]["holds"]


def test_tanh_keeps_h_inside_minus_one_one_however_large_c_grows():
    checks = special_case_checks()["bounded"]
    assert checks["max_abs_cell"] >= 1e6 and checks["max_abs_h"] < 1.0
    assert checks["max_abs_h_without_tanh"] > 1e5  # h = o * C would have exploded


def test_the_special_cases_written_out_by_hand():
    """The same three facts straight from the equations, with the gate values chosen directly."""
    hidden = 3
    c_prev = torch.tensor([[50.0, -100.0, 0.3]])
    h_prev = torch.zeros(1, hidden)
    w_hh = torch.zeros(4 * hidden, hidden)
    big = 1e4
    # gate order i, f, g, o in the fused layout; candidate pre-activation 0.7, output pre-activation 0.9

    def pre(i, f):
        return torch.tensor([[i] * hidden + [f] * hidden + [0.7] * hidden + [0.9] * hidden])

    _, c, _ = lstm_cell(pre(-big, big), h_prev, c_prev, w_hh, torch.zeros(4 * hidden))
    assert torch.equal(c, c_prev)  # f = 1, i = 0: carried unchanged
    h, c, _ = lstm_cell(pre(-big, 0.0), h_prev, c_prev, w_hh, torch.zeros(4 * hidden))
    assert torch.allclose(c, 0.5 * c_prev)  # i = 0, f = sigmoid(0) = 0.5: only forgetting
    assert (h.abs() < 1).all() and torch.allclose(h, torch.sigmoid(torch.tensor(0.9)) * torch.tanh(c))


def test_gates_reads_any_saved_hf_lstm_folder(tmp_path, word_tokenizer):
    import hf_lstm

    config = hf_lstm.LSTMConfig(
        vocab_size=len(word_tokenizer),
        hidden_size=8,
        num_hidden_layers=2,
        cell_type="peephole",
        pad_token_id=0,
        eos_token_id=1,
    )
    folder = tmp_path / "model"
    hf_lstm.LSTMForCausalLM(config).save_pretrained(folder)
    word_tokenizer.save_pretrained(folder)
    results, _ = run_cli(
        "gates",
        tmp_path,
        "--model_name_or_path",
        str(folder),
        "--layer",
        "1",
        "--units",
        "5",
        "--text",
        "i grew up in france so i speak fluent french",
    )
    entry = results["models"]["peephole"]
    assert len(entry["tokens"]) == 10 and entry["tokens"][4].endswith("france")
    assert len(entry["panels"]["cell"]) == 5 and len(entry["panels"]["cell"][0]) == 10
    assert results["layer"] == 1


def test_training_stops_when_the_wall_clock_budget_is_spent():
    from hf_lstm.experiments.adding import train_adding

    _, record = train_adding("rnn", 24, budget_minutes=0.01, hidden_size=4, eval_every=1000)
    assert record["steps"] >= 1 and record["seconds"] < 5 and record["stopped_because"] == "budget spent"


def test_memory_bias_sets_where_the_forget_and_update_gates_start():
    from hf_lstm.experiments.runner import SequenceRegressor

    x = torch.zeros(2, 5, 2)
    lstm = SequenceRegressor("lstm", 2, 8, memory_bias=3.0)
    _, gates = lstm.hidden_states(x, output_gates=True)
    assert torch.allclose(
        gates[0]["forget"][:, 0], torch.sigmoid(torch.tensor(3.0))
    )  # h_0 = 0, x = 0: bias only
    gru = SequenceRegressor("gru", 2, 8, memory_bias=3.0)
    _, gates = gru.hidden_states(x, output_gates=True)
    assert torch.allclose(gates[0]["update"][:, 0], torch.sigmoid(torch.tensor(3.0)))


# -- the dispatcher, the registry of experiments and the runner they plug into -----------------------------


def test_an_unknown_experiment_is_refused_with_the_choices(capsys):
    assert cli.main(["experiment", "no-such-experiment", "--output_dir", "unused"]) == 2
    err = capsys.readouterr().err
    assert (
        "hf-lstm experiment: unknown experiment 'no-such-experiment'; choose one of "
        "vanishing-gradient, adding, long-dependency, gates" in err
    )
    assert "usage: hf-lstm experiment NAME" in err


def test_an_unknown_command_is_refused_with_the_choices(capsys):
    assert cli.main(["trian"]) == 2
    err = capsys.readouterr().err
    choices = "train, compare, bench, microscope, experiment"
    assert f"hf-lstm: unknown command 'trian'; choose one of {choices}" in err


def test_help_lists_every_command_and_every_experiment(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: hf-lstm COMMAND [ARGS...]")
    assert all(f"  {name:<12}{help_}" in out for name, (_, help_) in cli.COMMANDS.items())
    assert cli.main(["experiment", "-h"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: hf-lstm experiment NAME --output_dir DIR")
    assert all(f"  {name:<20}{summary}" in out for name, (_, summary) in EXPERIMENTS.items())


def test_experiment_without_a_name_exits_1_with_the_list(capsys):
    assert cli.main(["experiment"]) == 1 and cli.main([]) == 1
    err = capsys.readouterr().err
    assert "hf-lstm experiment: no experiment given" in err and "hf-lstm: no command given" in err
    assert all(name in err for name in EXPERIMENTS)


def test_a_bad_cell_types_leaves_no_output_folder(tmp_path, capsys):
    out = tmp_path / "adding"
    assert cli.main(["experiment", "adding", "--output_dir", str(out), "--cell_types", "bogus"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        len(err) == 1 and "hf-lstm experiment adding: error: --cell_types must be a comma-separated" in err[0]
    )
    assert not out.exists()


def test_every_registered_experiment_is_defined_under_its_name(capsys):
    import importlib

    for name, (module, _) in EXPERIMENTS.items():
        experiment = importlib.import_module(module).EXPERIMENT
        assert experiment.name == name
        with pytest.raises(SystemExit) as stop:
            cli.main(["experiment", name, "--help"])
        assert stop.value.code == 0
        out = capsys.readouterr().out
        assert out.startswith(f"usage: hf-lstm experiment {name} ")
        assert all(flag in out for flag in ("--output_dir", "--cell_types", "--budget_minutes", "--no_plots"))


def test_the_runner_seeds_runs_writes_results_json_then_plots(tmp_path, capsys):
    from hf_lstm.experiments.runner import Experiment, run_experiment

    def add_arguments(parser):
        parser.add_argument("--value", type=float, default=1.0)

    def run(args, output_dir):
        assert output_dir.is_dir()
        return {
            "experiment": "toy",
            "value": args.value / 3,
            "cells": args.cell_types,
            "seed": torch.initial_seed(),
            "undefined": float("nan"),
        }

    def plot(results, output_dir):
        assert (output_dir / "results.json").exists()  # the numbers are safe before any plotting starts
        path = output_dir / "toy.txt"
        path.write_text(str(results["value"]))
        return [path]

    toy = Experiment("toy", "A toy experiment.", ("lstm",), 0.5, add_arguments, run, plot)
    out = tmp_path / "toy"
    assert run_experiment(toy, ["--output_dir", str(out), "--value", "2", "--seed", "3"]) == 0
    assert json.loads((out / "results.json").read_text()) == {
        "experiment": "toy",
        "value": 0.666667,
        "cells": "lstm",
        "seed": 3,
        "undefined": None,
    }
    assert (out / "toy.txt").read_text() == str(2 / 3)
    assert f"wrote {out / 'results.json'}" in capsys.readouterr().out
    assert run_experiment(toy, ["--output_dir", str(tmp_path / "bare"), "--no_plots"]) == 0
    assert [p.name for p in (tmp_path / "bare").iterdir()] == ["results.json"]


# -- the embedding-initialisation diagnostic (scripts/init_diagnostic.py) ----------------------------------


def test_the_embedding_initialisation_diagnostic_trains_each_model(corpus, capsys):
    from hf_lstm.experiments.embedding_init import MODELS, build_diagnostic_model, main

    threads = torch.get_num_threads()
    try:
        for model in MODELS:
            assert (
                main(
                    [
                        "--model",
                        model,
                        "--dataset_name",
                        str(corpus),
                        "--hidden_size",
                        "8",
                        "--steps",
                        "2",
                        "--print_every",
                        "1",
                    ]
                )
                == 0
            )
    finally:
        torch.set_num_threads(threads)
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines if " step " in line] == [
        f"{model} adamw 0.003 step {step}" for model in MODELS for step in (1, 2)
    ]
    assert all(math.isfinite(float(line.split("loss ")[1].split()[0])) for line in lines if " step " in line)
    # the old default's embeddings sit in U(-1/sqrt(H), 1/sqrt(H)); torch's and hf_lstm's default are N(0, 1)
    small = build_diagnostic_model("hf_lstm_small_embeddings", 50, 64).get_input_embeddings().weight
    assert small.abs().max() <= 64**-0.5
    for kind in ("torch", "hf_lstm"):
        model = build_diagnostic_model(kind, 50, 64)
        weight = model.embed.weight if kind == "torch" else model.get_input_embeddings().weight
        assert 0.8 < float(weight.detach().std()) < 1.2
