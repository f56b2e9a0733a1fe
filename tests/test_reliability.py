"""Reliability and security: bad input gives one clear error and overwrites nothing; training survives
SIGKILL, SIGTERM/SIGINT, non-finite losses and a full disk; long and odd inputs; only safetensors are ever
read.

Every row of docs/RELIABILITY.md names a test here (or in test_config / test_modeling / test_data /
test_training). The runs are real: real processes, real signals, real files, a real full filesystem (tmpfs).
"""

import ast
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForCausalLM

from conftest import snapshot, tiny_config, tiny_train_args
from hf_lstm import LSTMConfig, LSTMForCausalLM, checkpointing
from hf_lstm.training import main

REPO = Path(__file__).resolve().parents[1]


def cli_args(corpus, output_dir, *extra, train_file=None):
    """A tiny run into `output_dir` (conftest's), without the sample, optionally on another train file."""
    other_train = ["--train_file", str(train_file)] if train_file else []
    return tiny_train_args(corpus, output_dir, "--sample_max_new_tokens", "0", *other_train, *extra)


@pytest.fixture(scope="module")
def finished_run(corpus, tmp_path_factory):
    """A complete output folder of a 4-step run with checkpoints step_2 and step_4 (made once per module)."""
    out = tmp_path_factory.mktemp("done") / "run"
    assert main(cli_args(corpus, out, "--max_train_steps", "4", "--checkpointing_steps", "2")) == 0
    return out


def error_line(capsys) -> str:
    """The one `hf-lstm train: error: ...` message on stderr (progress bars share the stream)."""
    lines = re.findall(r"hf-lstm train: [^\r\n]*", capsys.readouterr().err)  # a progress bar may precede it
    assert len(lines) == 1, lines
    return lines[0]


def run_cli(args, log: Path | None = None):
    """`python -m hf_lstm.cli train ARGS` as a real child process, output merged into one pipe (or appended to
    `log`, for runs nobody reads while they go: a pipe that fills up would block the child)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "hf_lstm.cli", "train", *args]
    if log is None:
        return subprocess.Popen(
            command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
    with open(log, "a") as stdout:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            command, cwd=REPO, env=env, stdout=stdout, stderr=subprocess.STDOUT, text=True
        )


def assert_checkpoint_is_whole(folder: Path) -> None:
    """Every file a resume reads is present and parses (safetensors headers and data, JSON)."""
    state = json.loads((folder / "trainer_state.json").read_text())
    assert state["completed_steps"] >= 1
    for name in (
        "model.safetensors",
        "optimizer.safetensors",
        "rng_state_0.safetensors",
        "stream_state_0.safetensors",
    ):
        assert load_file(str(folder / name))
    for name in ("optimizer.json", "rng_state_0.json"):
        json.loads((folder / name).read_text())


# -- 1. bad input through the CLI: one line, exit code 1, nothing overwritten ------------------------------


@pytest.mark.parametrize(
    "overrides, message",
    [
        ("cell_type=transformer", "cell_type must be one of 'lstm', 'gru', 'rnn', 'peephole'"),
        ("hidden_size=big", "hidden_size must be a positive integer, got 'big'"),
        ("hidden_dropout=1.5", "hidden_dropout must be a probability in [0, 1)"),
        ("num_hidden_layers=0", "num_hidden_layers must be a positive integer"),
        ("no_such_field=3", "LSTMConfig has no field(s) no_such_field"),
        ("hidden_size", "is not of the form key=value"),
    ],
)
def test_cli_refuses_a_bad_config_in_one_line_and_overwrites_nothing(
    corpus, finished_run, capsys, overrides, message
):
    before = snapshot(finished_run)
    args = cli_args(corpus, finished_run, "--max_train_steps", "2", "--overwrite_output_dir")
    args[args.index("--config_overrides") + 1] = overrides
    assert main(args) == 1
    err = error_line(capsys)
    assert err.startswith("hf-lstm train: error:") and message in err, err
    assert snapshot(finished_run) == before


def test_a_saved_config_json_with_invalid_values_is_refused_on_load(tmp_path):
    tiny_config().save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "cell_type": "lstmm"}))
    with pytest.raises(ValueError, match="cell_type must be one of"):
        AutoConfig.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**config, "hidden_size": "512"}))
    with pytest.raises(ValueError, match="hidden_size must be a positive integer, got '512'"):
        LSTMConfig.from_pretrained(tmp_path)


@pytest.mark.parametrize(
    "case, message",
    [
        ("empty", "is empty"),
        ("missing", "Data file not found"),
        ("no_text_column", "text"),
        ("shorter_than_a_window", "fewer"),
    ],
)
def test_cli_refuses_unusable_data_in_one_line(corpus, tmp_path, capsys, case, message):
    train_file = tmp_path / "train.txt"
    if case == "empty":
        train_file.write_text("")
    elif case == "no_text_column":
        train_file = tmp_path / "train.jsonl"
        train_file.write_text("\n".join(json.dumps({"id": k, "label": k % 2}) for k in range(50)) + "\n")
    elif case == "shorter_than_a_window":
        train_file.write_text("the cat sat\n")  # 4 tokens with eos; 4 streams of 8 need far more
    out = tmp_path / "out"
    assert main(cli_args(corpus, out, "--max_train_steps", "2", train_file=train_file)) == 1
    err = error_line(capsys)
    assert err.startswith("hf-lstm train: error:") and message in err, err
    assert not (out / "model.safetensors").exists() and not (out / "tokenizer.json").exists()


def test_a_tokenizer_larger_than_the_models_vocabulary_is_refused(corpus, finished_run, tmp_path, capsys):
    small = tmp_path / "small-model"
    LSTMForCausalLM(
        tiny_config(vocab_size=5, pad_token_id=0, eos_token_id=1, bos_token_id=1)
    ).save_pretrained(small)
    before = snapshot(finished_run)
    assert (
        main(
            cli_args(
                corpus,
                finished_run,
                "--model_name_or_path",
                str(small),
                "--tokenizer_name",
                str(finished_run),
                "--max_train_steps",
                "2",
                "--overwrite_output_dir",
            )
        )
        == 1
    )
    err = capsys.readouterr().err
    assert "the tokenizer has 25 tokens but the model" in err and "--tokenizer_name" in err
    assert snapshot(finished_run) == before


def test_the_model_names_the_tokenizer_when_a_token_id_is_out_of_range():
    model = LSTMForCausalLM(tiny_config(vocab_size=10)).eval()
    with pytest.raises(
        ValueError, match=r"token id 12, outside \[0, vocab_size=10\).*tokenizer matches the model"
    ):
        model(input_ids=torch.tensor([[1, 12]]))


def damage(folder: Path, how: str) -> None:
    """Damage a saved model folder the way disks, downloads and strangers do."""
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    if how == "truncated_weights":
        weights.write_bytes(data[: len(data) // 2])
    elif how == "garbled_header":
        weights.write_bytes(b"\xff" * 16 + data[16:])
    elif how == "empty_weights":
        weights.write_bytes(b"")
    elif how == "config_not_json":
        (folder / "config.json").write_text('{"model_type": "hf_lstm", "hidden_size": 16,')
    elif how == "no_weights":
        weights.unlink()


@pytest.mark.parametrize(
    "how, message",
    [
        ("truncated_weights", "is truncated or corrupted"),
        ("garbled_header", "is truncated or corrupted"),
        ("empty_weights", "is truncated or corrupted"),
        ("config_not_json", "config.json is not valid JSON"),
        ("no_weights", "has no model.safetensors"),
    ],
)
def test_cli_refuses_a_damaged_model_folder_before_any_work(
    corpus, finished_run, tmp_path, capsys, how, message
):
    model_dir = tmp_path / "model"
    shutil.copytree(finished_run, model_dir, ignore=shutil.ignore_patterns("step_*"))
    damage(model_dir, how)
    damaged, out = snapshot(model_dir), tmp_path / "out"
    start = time.perf_counter()
    assert main(cli_args(corpus, out, "--model_name_or_path", str(model_dir), "--max_train_steps", "2")) == 1
    err = error_line(capsys)
    assert err.startswith("hf-lstm train: error:") and message in err, err
    assert time.perf_counter() - start < 30  # refused before the corpus is read or a tokenizer trained
    assert snapshot(model_dir) == damaged and not (out / "tokenizer.json").exists()


def test_from_pretrained_on_damaged_folders_raises_instead_of_loading(finished_run, tmp_path):
    for how in ("truncated_weights", "config_not_json"):
        folder = tmp_path / how
        shutil.copytree(finished_run, folder, ignore=shutil.ignore_patterns("step_*"))
        damage(folder, how)
        with pytest.raises(Exception, match="deserializing header|not a valid JSON"):
            AutoModelForCausalLM.from_pretrained(folder)


def test_resume_from_a_damaged_checkpoint_is_a_clear_error_that_keeps_it(
    corpus, finished_run, tmp_path, capsys
):
    out = tmp_path / "resume"
    shutil.copytree(finished_run, out)
    weights = out / "step_4" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    damaged = snapshot(out)
    assert (
        main(cli_args(corpus, out, "--max_train_steps", "6", "--resume_from_checkpoint", str(out / "step_4")))
        == 1
    )
    err = capsys.readouterr().err
    assert "step_4/model.safetensors does not match the checksum written with it" in err
    assert snapshot(out) == damaged
    (
        out / "step_4" / "checksums.json"
    ).unlink()  # a checkpoint without a manifest (hf_lstm 0.1) is still checked
    assert (
        main(cli_args(corpus, out, "--max_train_steps", "6", "--resume_from_checkpoint", str(out / "step_4")))
        == 1
    )
    assert "step_4/model.safetensors does not fit this model or is damaged" in capsys.readouterr().err
    (out / "step_2" / "trainer_state.json").write_text("{")
    (out / "step_2" / "checksums.json").unlink()
    assert (
        main(cli_args(corpus, out, "--max_train_steps", "6", "--resume_from_checkpoint", str(out / "step_2")))
        == 1
    )
    assert "trainer_state.json is unreadable or not JSON" in capsys.readouterr().err


def test_resume_from_a_folder_that_is_not_a_checkpoint(corpus, finished_run, tmp_path, capsys):
    assert main(cli_args(corpus, tmp_path / "o", "--resume_from_checkpoint", str(finished_run))) == 1
    assert "not a complete training checkpoint" in capsys.readouterr().err


def test_an_absurd_learning_rate_is_refused_by_the_parser(corpus, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(cli_args(corpus, tmp_path, "--learning_rate", "1e39"))
    err = capsys.readouterr().err
    assert exit_info.value.code == 1 and "--learning_rate must be a finite number in (0, 1e+38)" in err
    assert len(err.strip().splitlines()) == 1  # one line, not the whole usage


# -- 2. faults during training ------------------------------------------------------------------------------


def kill_at_random_moments(corpus, out, kills: int, rng: random.Random, extra=()):
    """Start the run, SIGKILL it at a random moment after it has begun checkpointing, `kills` times, each time
    resuming from `latest`; after every kill, each checkpoint that resume could pick must be whole."""
    args = cli_args(corpus, out, "--checkpointing_steps", "1", "--checkpoints_total_limit", "2", *extra)
    for k in range(kills):
        log = out.parent / f"{out.name}-kill-{k}.log"
        proc = run_cli(args + (["--resume_from_checkpoint", "latest"] if k else []), log=log)
        seen = {p.name for p in checkpointing.list_checkpoints(out)}
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            if {p.name for p in checkpointing.list_checkpoints(out)} - seen:
                break  # this run has written at least one checkpoint of its own
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 1.5))  # a random moment: mid-step, mid-write, mid-rename
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert proc.returncode == -signal.SIGKILL, log.read_text()[-2000:]
        saved = checkpointing.list_checkpoints(out)
        assert saved, "a killed run must leave its earlier checkpoints"
        for folder in saved:
            assert_checkpoint_is_whole(folder)
    return args


def test_sigkill_at_a_random_moment_leaves_only_whole_checkpoints_and_resume_finishes(corpus, tmp_path):
    out = tmp_path / "killed"
    # 400 steps (a checkpoint after each) so that the kill lands before the end even on a fast machine
    args = kill_at_random_moments(
        corpus, out, kills=1, rng=random.Random(1), extra=("--max_train_steps", "400")
    )
    resumed = run_cli(args + ["--resume_from_checkpoint", "latest"])
    output = resumed.communicate(timeout=600)[0]
    assert resumed.returncode == 0, output[-2000:]
    assert (
        "resumed from" in output and json.loads((out / "all_results.json").read_text())["train_steps"] == 400
    )


@pytest.mark.slow
def test_many_sigkills_at_random_moments_then_resume_give_the_uninterrupted_losses(corpus, tmp_path):
    # 3000 tiny steps (about 20 s here, a checkpoint after each) so that all six kills land before the end
    steps = ("--max_train_steps", "3000", "--learning_rate", "0.01")
    straight = run_cli(cli_args(corpus, tmp_path / "straight", *steps), log=tmp_path / "straight.log")
    assert straight.wait(timeout=900) == 0, (tmp_path / "straight.log").read_text()[-2000:]
    out = tmp_path / "killed"
    args = kill_at_random_moments(corpus, out, kills=6, rng=random.Random(7), extra=steps)
    resumed = run_cli(args + ["--resume_from_checkpoint", "latest"])
    output = resumed.communicate(timeout=900)[0]
    assert resumed.returncode == 0, output[-2000:]
    assert json.loads((out / "train_log.json").read_text()) == json.loads(
        (tmp_path / "straight" / "train_log.json").read_text()
    )


@pytest.mark.slow
def test_sigint_like_ctrl_c_saves_a_final_checkpoint(corpus, tmp_path):
    out = tmp_path / "ctrl-c"
    proc = run_cli(cli_args(corpus, out, "--max_train_steps", "100000"))
    deadline = time.time() + 300
    while time.time() < deadline and "process(es)" not in proc.stdout.readline():
        pass
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    output = proc.communicate(timeout=300)[0]
    assert proc.returncode == 143 and "signal SIGINT received" in output, output[-2000:]
    [checkpoint] = checkpointing.list_checkpoints(out)
    assert_checkpoint_is_whole(checkpoint)


def test_a_non_finite_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(corpus, tmp_path, capsys):
    # A learning rate of 1e37 is a real divergence: after one AdamW step the tied weights are ~1e37, so the
    # second step's logits overflow float32 and its loss is inf.
    out = tmp_path / "diverged"
    assert (
        main(
            cli_args(
                corpus, out, "--max_train_steps", "6", "--checkpointing_steps", "1", "--learning_rate", "1e37"
            )
        )
        == 1
    )
    err = capsys.readouterr().err
    assert "non-finite loss (inf) at step 2" in err and "the last checkpoint is kept (step_1)" in err
    assert [p.name for p in checkpointing.list_checkpoints(out)] == ["step_1"]
    assert_checkpoint_is_whole(out / "step_1")
    assert all(torch.isfinite(t).all() for t in load_file(str(out / "step_1" / "model.safetensors")).values())
    assert not (out / "model.safetensors").exists()


@pytest.mark.slow
def test_nonfinite_loss_skip_skips_those_batches_without_touching_the_weights(corpus, tmp_path, capsys):
    out = tmp_path / "skipping"
    assert (
        main(
            cli_args(
                corpus,
                out,
                "--max_train_steps",
                "4",
                "--checkpointing_steps",
                "1",
                "--checkpoints_total_limit",
                "4",
                "--learning_rate",
                "1e37",
                "--nonfinite_loss",
                "skip",
                "--eval_window",
                "8",
                "--per_device_eval_batch_size",
                "64",
            )
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "skipped batch 1 of epoch 1 (step 2): non-finite loss" in printed
    after_first = load_file(str(out / "step_1" / "model.safetensors"))
    for step in (2, 3, 4):  # every later batch was skipped: no update reached the weights
        later = load_file(str(out / f"step_{step}" / "model.safetensors"))
        assert all(torch.equal(after_first[k], later[k]) for k in after_first)
    assert checkpointing.read_trainer_state(out / "step_4")["skipped_batches"] == 3


def mount_tmpfs(folder: Path, size: str) -> bool:
    """Mount a tmpfs of `size` at `folder` (needs root); False where this sandbox does not allow it."""
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        return False
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True
    )
    return done.returncode == 0


def test_a_full_disk_while_saving_fails_cleanly_and_keeps_the_previous_checkpoint(corpus, tmp_path, capsys):
    out = tmp_path / "small-disk"
    if not mount_tmpfs(out, "160k"):
        pytest.skip(
            "cannot mount a tmpfs here (needs root): the full-disk test needs a real small filesystem"
        )
    try:
        # one checkpoint is ~90 kB on disk (4 kB pages), the tokenizer ~8 kB: step_2 fits, step_4 cannot (it
        # is written beside step_2, which is only pruned once step_4 is complete).
        code = main(
            cli_args(
                corpus,
                out,
                "--max_train_steps",
                "40",
                "--checkpointing_steps",
                "2",
                "--checkpoints_total_limit",
                "1",
            )
        )
        err = error_line(capsys)
        assert (
            code == 1 and "could not write checkpoint step_4" in err and "No space left on device" in err
        ), err
        assert "the earlier checkpoints are kept (step_2)" in err
        assert not list(out.glob(".tmp-*"))
        [kept] = checkpointing.list_checkpoints(out)
        assert kept.name == "step_2"
        assert_checkpoint_is_whole(kept)
    finally:
        subprocess.run(["umount", str(out)], check=False)


def test_a_run_killed_between_the_two_renames_of_a_resave_loses_nothing(tmp_path):
    # publish() swaps an existing step_N for a new one through .old-step_N; a kill between the two renames
    # leaves only .old-step_N. The next start must move it back, not delete it.
    old = tmp_path / ".old-step_8"
    old.mkdir()
    (old / "trainer_state.json").write_text(json.dumps({"completed_steps": 8}))
    (tmp_path / ".tmp-step_8").mkdir()
    checkpointing.remove_leftovers(tmp_path)
    assert [p.name for p in checkpointing.list_checkpoints(tmp_path)] == ["step_8"]
    assert not list(tmp_path.glob(".*"))


def test_a_run_killed_while_pruning_an_old_checkpoint_leaves_nothing_half_deleted(tmp_path, monkeypatch):
    # Pruning (--checkpoints_total_limit) deletes old checkpoints file by file. A kill in the middle of that
    # must not leave a step_N that `latest` or a user could pick with files missing: the folder is renamed
    # out of the checkpoint namespace first. Simulate the kill: the deletion removes one file, then dies.
    for step in (1, 2):
        folder = tmp_path / f".tmp-step_{step}"
        folder.mkdir()
        (folder / "trainer_state.json").write_text(json.dumps({"completed_steps": step}))
        (folder / "optimizer.safetensors").write_bytes(b"x")
        checkpointing.publish(tmp_path, f"step_{step}")

    def killed_mid_delete(path, ignore_errors=False):
        if Path(path).exists():
            (Path(path) / "optimizer.safetensors").unlink()
            raise KeyboardInterrupt  # the process dies here

    (tmp_path / ".tmp-step_3").mkdir()
    (tmp_path / ".tmp-step_3" / "trainer_state.json").write_text(json.dumps({"completed_steps": 3}))
    monkeypatch.setattr(checkpointing.shutil, "rmtree", killed_mid_delete)
    with pytest.raises(KeyboardInterrupt):
        checkpointing.publish(tmp_path, "step_3", keep_last=2)
    monkeypatch.undo()
    names = [p.name for p in checkpointing.list_checkpoints(tmp_path)]
    assert names == ["step_2", "step_3"] and (tmp_path / "step_2" / "optimizer.safetensors").is_file()
    assert (tmp_path / ".del-step_1").is_dir()  # what the kill left: outside the checkpoint namespace
    checkpointing.remove_leftovers(tmp_path)
    assert not list(tmp_path.glob(".*"))


# -- 3. long and odd inputs ---------------------------------------------------------------------------------


MEMORY_PROBE = textwrap.dedent("""
    import resource, sys, torch
    from hf_lstm import LSTMConfig, LSTMForCausalLM
    from hf_lstm.evaluation import stateful_perplexity, fixed_window_perplexity
    torch.manual_seed(0)
    torch.set_num_threads(1)
    n = int(sys.argv[1])
    model = LSTMForCausalLM(LSTMConfig(vocab_size=50, hidden_size=8, num_hidden_layers=1)).eval()
    ids = torch.randint(0, 50, (n,))
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    full = stateful_perplexity(model, ids, bptt=4096)
    fixed = fixed_window_perplexity(model, ids, window=512, batch_size=64)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(full["tokens"], fixed["tokens"], full["perplexity"], (peak - base) // 1024)
""")


def evaluate_in_a_fresh_process(n_tokens: int) -> tuple[int, int, float, int]:
    """Scored tokens (both protocols), stateful perplexity and peak-memory growth (MiB) for an n-token
    stream."""
    done = subprocess.run(
        [sys.executable, "-c", MEMORY_PROBE, str(n_tokens)],
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    full, fixed, ppl, grown = done.stdout.split()
    return int(full), int(fixed), float(ppl), int(grown)


@pytest.mark.slow
def test_a_million_token_stream_is_evaluated_in_chunks_with_bounded_memory():
    small = evaluate_in_a_fresh_process(10_000)
    full, fixed, ppl, grown = evaluate_in_a_fresh_process(1_000_000)
    assert full == 999_999 and fixed == 999_999 and 1 < ppl < 200
    # 1M ids are 8 MB (plus 8 MB of windows); memory must not grow with the stream beyond that
    assert grown - small[3] < 64, (small, grown)


def test_a_long_stream_is_evaluated_in_chunks_with_bounded_memory():
    full, fixed, ppl, grown = evaluate_in_a_fresh_process(100_000)
    assert full == fixed == 99_999 and 1 < ppl < 200 and grown < 64


def test_an_empty_prompt_is_a_clear_error_and_a_prompt_of_only_padding_works():
    model = LSTMForCausalLM(tiny_config()).eval()
    with pytest.raises(ValueError, match="input_ids is empty"):
        model.generate(input_ids=torch.zeros(1, 0, dtype=torch.long), max_new_tokens=2)
    alone = model.generate(input_ids=torch.tensor([[5, 6, 7]]), max_new_tokens=4, do_sample=False)
    batch = model.generate(
        input_ids=torch.tensor([[0, 0, 0], [5, 6, 7]]),
        attention_mask=torch.tensor([[0, 0, 0], [1, 1, 1]]),
        max_new_tokens=4,
        do_sample=False,
    )
    assert batch.shape == (2, 7) and torch.equal(batch[1], alone[0])
    only_pad = model(input_ids=torch.zeros(1, 3, dtype=torch.long), attention_mask=torch.zeros(1, 3))
    assert torch.isfinite(only_pad.logits).all()


@pytest.mark.parametrize(
    "ask", [{"prompt_lookup_num_tokens": 2}, {"assistant_model": "itself"}, {"assistant_early_exit": 1}]
)
def test_assisted_decoding_with_an_lstm_as_the_model_is_refused_up_front(ask):
    """Draft-and-verify decoding rolls the model's cache back to the accepted tokens, which a recurrent state
    cannot do: a ValueError that says so, not transformers' "Assisted decoding requires a cache"."""
    model = LSTMForCausalLM(tiny_config()).eval()
    ask = {k: model if v == "itself" else v for k, v in ask.items()}
    with pytest.raises(ValueError, match=f"{next(iter(ask))} means assisted decoding: .* cannot forget"):
        model.generate(torch.tensor([[5, 6, 7]]), max_new_tokens=4, do_sample=False, **ask)


def test_an_lstm_as_the_assistant_of_a_transformer_is_refused_before_it_drafts():
    """As the assistant, the LSTM would fail at the first rollback, a round into generation: it refuses the
    generation config transformers marks for an assistant instead, and its cache refuses to be cropped."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    lstm = LSTMForCausalLM(tiny_config()).eval()
    llama = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=lstm.config.vocab_size,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=2,
        )
    ).eval()
    ids = torch.tensor([[5, 6, 7]])
    with pytest.raises(ValueError, match="is_assistant means assisted decoding"):
        llama.generate(ids, max_new_tokens=6, do_sample=False, assistant_model=lstm, pad_token_id=0)
    cache = lstm(ids, use_cache=True).cache
    with pytest.raises(ValueError, match="cannot be cropped back: assisted"):
        cache.crop(-1)
    assert len(llama.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=0)[0]) == 9


@pytest.mark.parametrize("entry", ["generate", "generate_batch", "context_manager", "init"])
def test_continuous_batching_is_refused_by_each_of_its_entry_points(entry):
    """transformers' continuous batching runs over a paged attention cache: each way in says so, where
    transformers alone would fail looking for `num_attention_heads` in the config."""
    from transformers import GenerationConfig

    model = LSTMForCausalLM(tiny_config()).eval()
    config = GenerationConfig(max_new_tokens=2, eos_token_id=1, pad_token_id=0)
    calls = {
        "generate": lambda: model.generate(torch.tensor([[5, 6, 7]]), cache_implementation="paged"),
        "generate_batch": lambda: model.generate_batch([[5, 6, 7], [8, 9]], generation_config=config),
        "context_manager": lambda: model.continuous_batching_context_manager(config).__enter__(),
        "init": lambda: model.init_continuous_batching(config),
    }
    with pytest.raises(ValueError, match="continuous batching.*paged attention key/value.*left padding"):
        calls[entry]()
    other_cache = model.generate(torch.tensor([[5, 6, 7]]), max_new_tokens=2, cache_implementation="dynamic")
    assert other_cache.shape == (1, 5)  # the other names are ignored with transformers' warning, as before


def test_a_pipeline_with_an_empty_prompt_generates_or_refuses_clearly(word_tokenizer):
    from transformers import pipeline

    config = tiny_config(
        vocab_size=len(word_tokenizer),
        pad_token_id=word_tokenizer.pad_token_id,
        eos_token_id=word_tokenizer.eos_token_id,
        bos_token_id=word_tokenizer.eos_token_id,
    )
    generator = pipeline("text-generation", model=LSTMForCausalLM(config).eval(), tokenizer=word_tokenizer)
    try:
        text = generator("", max_new_tokens=3, do_sample=False)[0]["generated_text"]
    except ValueError as error:
        assert "empty" in str(error)
    else:
        assert isinstance(text, str)


@pytest.mark.parametrize("cell_type", ["lstm", "gru"])
def test_batch_size_1_and_512_give_the_same_rows(cell_type):
    model = LSTMForCausalLM(tiny_config(cell_type)).eval()
    ids = torch.randint(2, 40, (512, 9))
    lengths = torch.randint(1, 10, (512,))
    mask = (torch.arange(9)[None, :] >= 9 - lengths[:, None]).long()  # left padding of every length
    with torch.no_grad():
        batch = model(input_ids=ids, attention_mask=mask).logits
        for row in (0, 1, 255, 511):
            alone = model(input_ids=ids[row : row + 1, 9 - int(lengths[row]) :]).logits
            torch.testing.assert_close(batch[row, -1], alone[0, -1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("implementation", ["auto", "reference"])
def test_half_precision_weights_on_cpu_work_and_stay_close_to_float32(dtype, implementation):
    model = LSTMForCausalLM(tiny_config(implementation=implementation)).eval()
    ids = torch.randint(2, 40, (2, 12))
    with torch.no_grad():
        reference = model(input_ids=ids).logits
        half = model.to(dtype)(input_ids=ids).logits
    assert half.dtype == dtype
    torch.testing.assert_close(half.float(), reference, rtol=0.05, atol=0.05)
    generated = model.generate(input_ids=ids[:1], max_new_tokens=4, do_sample=False)
    assert generated.shape == (1, 16)


# -- 5. security ------------------------------------------------------------------------------------------


def write_malicious_pickle(path: Path, marker: Path) -> None:
    """A `.bin` 'checkpoint' whose unpickling creates `marker`: proof of code execution if anyone loads it."""
    payload = b"cposix\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR."
    path.write_bytes(payload)


def test_a_pickle_weight_file_is_never_unpickled(corpus, finished_run, tmp_path, capsys):
    folder, marker = tmp_path / "evil", tmp_path / "pwned"
    shutil.copytree(finished_run, folder, ignore=shutil.ignore_patterns("step_*", "model.safetensors"))
    write_malicious_pickle(folder / "pytorch_model.bin", marker)
    assert main(cli_args(corpus, tmp_path / "out", "--model_name_or_path", str(folder))) == 1
    assert "refuses to unpickle" in capsys.readouterr().err
    with pytest.raises(Exception):  # transformers itself loads .bin files with weights_only=True: refused too
        AutoModelForCausalLM.from_pretrained(folder)
    assert not marker.exists()


def test_the_package_never_calls_torch_load_without_weights_only():
    for path in sorted((REPO / "hf_lstm").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and getattr(node.func, "attr", None) == "load"
                and getattr(node.func.value, "id", None) == "torch"
            ):
                flags = {k.arg: getattr(k.value, "value", None) for k in node.keywords}
                assert flags.get("weights_only") is True, (
                    f"{path.name}:{node.lineno} torch.load without weights_only=True"
                )
            assert not (
                isinstance(node, ast.Import) and any(a.name in ("pickle", "dill") for a in node.names)
            ), path


IMPORT_AUDIT = textwrap.dedent("""
    import importlib, os, sys
    folder = sys.argv[1]
    sys.modules["hf_lstm"] = None            # the package must not be needed
    # the allowed imports (and the names the files take from them), loaded before the audit starts
    import torch, transformers
    from transformers import GenerationMixin, PreTrainedModel, PretrainedConfig, initialization
    from transformers.utils import ModelOutput
    allowed = tuple(os.path.realpath(p) for p in [*sys.path, folder] if p)
    events = []
    def audit(event, args):
        if event == "open":
            path = args[0]
            if isinstance(path, (str, bytes)) and not os.path.realpath(os.fsdecode(path)).startswith(allowed):
                events.append(("open", os.fsdecode(path)))
        elif event.startswith(
            ("socket.", "subprocess.", "os.system", "os.exec", "os.spawn", "urllib.", "http.")
        ):
            events.append((event, str(args)[:80]))
    sys.path.insert(0, os.path.dirname(folder))
    sys.addaudithook(audit)
    package = os.path.basename(folder)
    importlib.import_module(package + ".configuration_hf_lstm")
    importlib.import_module(package + ".modeling_hf_lstm")
    print(repr(events))
""")


def test_the_carried_files_do_no_io_at_import_under_an_audit_hook(tmp_path):
    folder = tmp_path / "hubrepo"
    LSTMForCausalLM(tiny_config()).save_pretrained(folder)
    (folder / "__init__.py").write_text("")
    done = subprocess.run(
        [sys.executable, "-c", IMPORT_AUDIT, str(folder)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]", done.stdout
