"""hf-lstm train: the output folder, both protocols, Transformers through the same script, exact resume,
signals, distributed launch, tracking and the push to a (local stand-in) Hub."""

import json
import math
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import tiny_train_args
from hf_lstm import checkpointing
from hf_lstm.settings import TrainingSettings
from hf_lstm.training import main, train

REPO = Path(__file__).resolve().parents[1]
tiny_args = tiny_train_args


def train_tiny(corpus, output_dir, *extra):
    """Train the tiny run of `tiny_args` in this process; returns `train`'s results."""
    return train(TrainingSettings.from_argv(tiny_args(corpus, output_dir, *extra)))


def test_training_writes_a_complete_hub_folder_with_both_protocols(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    results = train_tiny(corpus, out, "--max_train_steps", "80", "--learning_rate", "0.03")
    printed = capsys.readouterr().out
    assert "this run, stateful full stream" in printed and "sample from pipeline" in printed
    for split in ("validation", "test"):
        for protocol in ("fixed_window", "stateful"):
            assert 1.0 < results[f"{split}_perplexity_{protocol}"] < 50, results
    saved = json.loads((out / "all_results.json").read_text())
    assert saved["batching"] == "stream" and saved["train_steps"] == 80
    assert saved["validation_tokens_scored"] == 60 * 9  # 8 words + eos per line, every one scored
    names = set(os.listdir(out))
    assert {
        "model.safetensors",
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "README.md",
        "modeling_hf_lstm.py",
        "configuration_hf_lstm.py",
    } <= names
    assert "AutoModelForCausalLM" in json.loads((out / "config.json").read_text())["auto_map"]
    card = (out / "README.md").read_text()
    assert "perplexity" in card and "stateful full stream" in card and "tokens/s" in card and "CPU" in card
    model = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert model.config.vocab_size == len(tokenizer) and tokenizer.pad_token == "<pad>"
    # training helped: far better than the uniform distribution over the vocabulary
    assert results["validation_perplexity_stateful"] < 0.6 * len(
        tokenizer
    )  # uniform guessing: len(tokenizer)


def test_a_transformer_trains_through_the_same_script_with_blocks(corpus, tmp_path):
    args = tiny_args(
        corpus,
        tmp_path / "gpt2",
        "--model_type",
        "gpt2",
        "--max_train_steps",
        "10",
        "--sample_max_new_tokens",
        "0",
    )
    args[args.index("--config_overrides") + 1] = "n_embd=16,n_layer=2,n_head=2"
    results = train(TrainingSettings.from_argv(args))
    assert results["model_type"] == "gpt2" and results["batching"] == "blocks"
    assert "validation_perplexity_fixed_window" in results and "validation_perplexity_stateful" not in results


def test_the_default_recipe_of_each_family(corpus, tmp_path):
    # Measured in docs/TRAINING.md ("Initialisation, and the optimizer it decided"): AdamW 6e-3 for hf_lstm,
    # 1e-3 for Transformers; SGD's own rate and clipping when it is asked for.
    def defaults(*extra):
        args = tiny_args(corpus, tmp_path, *extra)
        at = args.index("--optimizer")  # tiny_args' own choice; one given in `extra` comes later and stays
        return TrainingSettings.from_argv(args[:at] + args[at + 2 :])

    lstm = defaults()
    assert (lstm.optimizer, lstm.learning_rate, lstm.max_grad_norm, lstm.batching) == (
        "adamw",
        6e-3,
        1.0,
        "stream",
    )
    gpt2 = defaults("--model_type", "gpt2")
    assert (gpt2.optimizer, gpt2.learning_rate, gpt2.batching) == ("adamw", 1e-3, "blocks")
    sgd = defaults("--optimizer", "sgd")
    assert (sgd.optimizer, sgd.learning_rate, sgd.max_grad_norm) == ("sgd", 20.0, 0.25)


def test_stream_batching_is_refused_for_a_transformer(corpus, tmp_path, capsys):
    with pytest.raises(SystemExit):
        TrainingSettings.from_argv(
            tiny_args(corpus, tmp_path, "--model_type", "gpt2", "--batching", "stream")
        )
    assert "a Transformer has none" in capsys.readouterr().err


def test_hub_dataset_offline_fails_fast_with_a_clear_message(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    code = main(
        [
            "--dataset_name",
            "wikitext",
            "--dataset_config_name",
            "wikitext-2-raw-v1",
            "--output_dir",
            str(tmp_path),
        ]
    )
    assert code == 1 and time.perf_counter() - start < 10
    err = capsys.readouterr().err
    assert "Hub" in err and "ptb" in err


def run_cli(args, **kwargs):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "hf_lstm.cli", "train", *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **kwargs,
    )


def losses(folder: Path) -> list:
    return json.loads((folder / "train_log.json").read_text())


def test_sigkill_after_a_checkpoint_then_resume_gives_the_same_losses(corpus, tmp_path):
    # Long enough (300 steps) that the kill lands well before the end even on a fast machine; every
    # checkpoint is kept so the one we wait for cannot be pruned before we see it.
    common = [
        "--max_train_steps",
        "300",
        "--checkpointing_steps",
        "4",
        "--checkpoints_total_limit",
        "1000",
        "--learning_rate",
        "0.01",
        "--sample_max_new_tokens",
        "0",
        "--logging_steps",
        "50",
    ]
    dropout = ",input_dropout=0.2,weight_dropout=0.2"
    straight = tiny_args(corpus, tmp_path / "straight", *common)
    straight[straight.index("--config_overrides") + 1] += dropout
    assert run_cli(straight).wait(timeout=600) == 0

    killed_dir = tmp_path / "killed"
    killed = tiny_args(corpus, killed_dir, *common)
    killed[killed.index("--config_overrides") + 1] += dropout
    proc = run_cli(killed)
    deadline = time.time() + 600
    while not (killed_dir / "step_8").is_dir():
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    saved = checkpointing.list_checkpoints(killed_dir)
    assert saved and not (killed_dir / "step_300").exists() and not (killed_dir / "all_results.json").exists()
    resumed = run_cli(killed + ["--resume_from_checkpoint", "latest"])
    output = resumed.communicate(timeout=600)[0]
    assert resumed.returncode == 0, output[-2000:]
    assert "resumed from" in output
    assert losses(killed_dir) == losses(tmp_path / "straight")


def test_resuming_from_the_last_step_trains_nothing_more(corpus, tmp_path):
    # A kill during the final evaluation leaves step_N == max_train_steps as the latest checkpoint; resuming
    # from it must only evaluate and save, not take one more step (the slow 6-kill test caught step 301 of
    # 300).
    out = tmp_path / "done"
    first = train_tiny(corpus, out, "--max_train_steps", "4", "--checkpointing_steps", "2")
    log = json.loads((out / "train_log.json").read_text())
    again = train_tiny(
        corpus,
        out,
        "--max_train_steps",
        "4",
        "--checkpointing_steps",
        "2",
        "--resume_from_checkpoint",
        "latest",
    )
    assert again["train_steps"] == first["train_steps"] == 4
    assert json.loads((out / "train_log.json").read_text()) == log


def test_sigterm_saves_a_checkpoint_before_exiting(corpus, tmp_path):
    out = tmp_path / "term"
    proc = run_cli(tiny_args(corpus, out, "--max_train_steps", "100000", "--sample_max_new_tokens", "0"))
    deadline = time.time() + 300
    while time.time() < deadline:
        line = proc.stdout.readline()
        if "process(es)" in line:
            break
    time.sleep(2)
    proc.send_signal(signal.SIGTERM)
    output = proc.communicate(timeout=120)[0]
    assert proc.returncode == 143, output[-2000:]
    assert "resume with --resume_from_checkpoint latest" in output
    [checkpoint] = checkpointing.list_checkpoints(out)
    assert checkpointing.read_trainer_state(checkpoint)["completed_steps"] > 0


def test_resume_from_a_missing_or_foreign_checkpoint_is_a_clear_error(corpus, tmp_path, capsys):
    assert main(tiny_args(corpus, tmp_path / "a", "--resume_from_checkpoint", str(tmp_path / "nope"))) == 1
    assert "no such folder" in capsys.readouterr().err
    first = tmp_path / "b"
    train_tiny(
        corpus, first, "--max_train_steps", "2", "--checkpointing_steps", "2", "--sample_max_new_tokens", "0"
    )
    other = tiny_args(corpus, first, "--resume_from_checkpoint", str(first / "step_2"))
    other[other.index("--config_overrides") + 1] = "hidden_size=24,num_hidden_layers=2"
    assert main(other) == 1
    assert "different model" in capsys.readouterr().err


def test_tensorboard_tracking_works_offline(corpus, tmp_path):
    out = tmp_path / "tracked"
    train_tiny(
        corpus,
        out,
        "--max_train_steps",
        "3",
        "--with_tracking",
        "--report_to",
        "tensorboard",
        "--sample_max_new_tokens",
        "0",
    )
    assert list(out.rglob("events.out.tfevents.*"))


class LocalHubStandIn:
    """A stand-in for huggingface_hub.HfApi with the two calls push_folder makes: the real Hub is unreachable
    here, so a repository is a local folder. Everything up to the network is the real code path."""

    def __init__(self, root: Path):
        self.root = root

    def create_repo(self, repo_id, private=False, exist_ok=True, repo_type="model"):
        (self.root / repo_id).mkdir(parents=True, exist_ok=exist_ok)
        return f"local-stand-in://{repo_id}"

    def upload_folder(self, folder_path, repo_id, repo_type, commit_message, ignore_patterns):
        import fnmatch
        import shutil

        for path in Path(folder_path).rglob("*"):
            rel = path.relative_to(folder_path).as_posix()
            if path.is_file() and not any(fnmatch.fnmatch(rel, p) for p in ignore_patterns):
                target = self.root / repo_id / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(path, target)


def test_push_to_hub_uploads_a_loadable_model_repo_to_a_local_stand_in(corpus, tmp_path):
    from hf_lstm.hub import push_folder

    out = tmp_path / "pushed"
    train_tiny(
        corpus, out, "--max_train_steps", "4", "--checkpointing_steps", "2", "--sample_max_new_tokens", "0"
    )
    hub = LocalHubStandIn(tmp_path / "hub")
    url = push_folder(out, "me/tiny-lstm", api=hub)
    repo = tmp_path / "hub" / "me" / "tiny-lstm"
    assert url == "local-stand-in://me/tiny-lstm"
    assert not (repo / "step_4").exists() and (repo / "model.safetensors").is_file()
    assert AutoModelForCausalLM.from_pretrained(repo, trust_remote_code=True).config.model_type == "hf_lstm"
    with pytest.raises(ValueError, match="not a complete model folder"):
        push_folder(tmp_path, "me/empty", api=hub)


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_a_schedule_with_a_time_budget_ends_with_whichever_runs_out_first(kind):
    """While the steps run out first it is transformers' own schedule, warm-up included; once the clock is
    ahead, the rate is the schedule's at the share of the minutes spent."""
    from transformers import get_scheduler

    from hf_lstm.builders import TimeBudget, build_scheduler

    def rates(make, steps, budget=None, used_at=None):
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.5)
        scheduler, seen = make(optimizer), []
        for step in range(steps):
            if used_at is not None and step == used_at[0]:
                budget.used = used_at[1]
            seen.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            scheduler.step()
        return seen

    ours = TimeBudget(minutes=1.0)
    steps = rates(lambda o: build_scheduler(o, kind, 100, 10, warmup_steps=10, budget=ours), 100)
    assert steps == pytest.approx(rates(lambda o: get_scheduler(kind, o, 10, 100), 100), abs=1e-12)
    clock = TimeBudget(minutes=1.0)
    timed = rates(
        lambda o: build_scheduler(o, kind, 100, 10, warmup_steps=10, budget=clock), 40, clock, (20, 45)
    )
    half_way = {"linear": 0.25, "cosine": 0.5 * (1 + math.cos(math.pi * 0.75))}[kind]
    assert timed[:21] == steps[:21] and timed[21:] == pytest.approx([0.5 * half_way] * 19)
    clock.used = 120.0  # past the budget: the schedule's end value from the first step
    assert rates(lambda o: build_scheduler(o, kind, 100, 10, budget=clock), 3) == [0.0, 0.0, 0.0]


def test_a_run_the_clock_stops_ends_its_schedule_with_schedule_by_time(corpus, tmp_path, capsys):
    """By default a time budget only stops the run: the schedule is the steps', cut where the clock stops it
    (near its peak here). With `--schedule_by time` the schedule ends with the clock. Either way the run says
    what stopped it, and so do its results and its card."""
    budget = ("--num_train_epochs", "100000", "--max_train_minutes", "0.04")
    peak = TrainingSettings().learning_rate
    cut = train_tiny(corpus, tmp_path / "cut", *budget)
    assert cut["final_learning_rate"] > 0.99 * peak, cut
    ended = train_tiny(corpus, tmp_path / "ended", *budget, "--schedule_by", "time")
    assert ended["train_steps"] < 100000 and 2.4 <= ended["train_seconds"] < 10
    assert ended["final_learning_rate"] < 0.01 * peak, ended
    for results, folder in ((cut, "cut"), (ended, "ended")):
        assert results["stopped_by"] == "time budget of 0.04 minutes reached"
        card = (tmp_path / folder / "README.md").read_text()
        assert "- ended by: time budget of 0.04 minutes reached; final learning rate" in card
    assert f"stopped at step {ended['train_steps']:,}: time budget" in capsys.readouterr().out
    with pytest.raises(SystemExit):  # one line, exit 1, as for every refused option
        TrainingSettings.from_argv(tiny_args(corpus, tmp_path / "refused", "--schedule_by", "time"))
    assert "--schedule_by time runs a linear or cosine schedule over" in capsys.readouterr().err


def test_the_prepared_gpu_moonshot_command_parses_and_stays_within_25m_parameters():
    """scripts/gpu_moonshot.sh waits for a session with a GPU: its command must still parse, and its model
    must keep to the goal's 25M parameters, whatever changes here before then."""
    from hf_lstm.builders import parse_config_overrides
    from hf_lstm.modeling_hf_lstm import LSTMConfig, LSTMForCausalLM

    script = (REPO / "scripts" / "gpu_moonshot.sh").read_text()
    command = script[script.index("hf_lstm.cli train") + len("hf_lstm.cli train") : script.index('>"$out')]
    settings = TrainingSettings.from_argv(
        shlex.split(command.replace("\\\n", " ").replace('"$minutes"', "9"))
    )
    assert settings.dataset_name == "ptb" and settings.max_train_minutes == 9
    assert settings.lr_scheduler_type == "cosine" and settings.schedule_by == "time"  # ends with the clock
    config = LSTMConfig(vocab_size=10_001, **parse_config_overrides(settings.config_overrides))
    # built for real: on the meta device transformers 5.0 leaves the output layer untied (GPT-2's too)
    parameters = sum(p.numel() for p in LSTMForCausalLM(config).parameters())
    assert 24_000_000 < parameters <= 25_000_000, parameters  # PTB's 10,000 words and <eos>


def test_accelerate_launch_two_cpu_processes(corpus, tmp_path):
    # On a machine without GPUs, Accelerate 1.15's multi-process launcher (`--multi_gpu`) starts CPU processes
    # that talk through gloo (MULTI_CPU); `--cpu --num_processes 2` would start a single process.
    out = tmp_path / "ddp"
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        str(REPO / "scripts" / "train.py"),
        *tiny_args(
            corpus,
            out,
            "--max_train_steps",
            "6",
            "--checkpointing_steps",
            "3",
            "--sample_max_new_tokens",
            "0",
            "--max_train_minutes",  # not reached: the processes agree on the time spent at every step
            "30",
            "--schedule_by",
            "time",
        ),
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((out / "all_results.json").read_text())
    assert results["num_processes"] == 2 and results["train_steps"] == 6
    assert results["final_learning_rate"] == 0.0  # the cosine schedule ended with its steps
    assert results["stopped_by"] == "end of schedule (6 steps)"
    assert results["train_tokens"] == 6 * 2 * 4 * 8  # steps x processes x batch x bptt
    assert results["validation_perplexity_stateful"] < 10_000
    assert {"rng_state_0.json", "rng_state_1.json", "stream_state_1.safetensors"} <= set(
        os.listdir(out / "step_6")
    )
    assert AutoModelForCausalLM.from_pretrained(out).config.model_type == "hf_lstm"
