"""The CLI never silently wastes or wrecks a user's work: the model's own tokenizer is kept when fine-tuning,
a folder holding another run is refused, every numeric value is checked once with its range, masks and labels
are checked, int8 copies refuse to be saved, and a checkpoint damaged after saving is detected.

Each test is a row of docs/RELIABILITY.md ("W::"); the runs are real (`hf-lstm train` in process, real files).
"""

import json
import math
import os
import re
import warnings

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers import AutoTokenizer

from conftest import snapshot, tiny_config, tiny_train_args
from hf_lstm import LSTMConfig, LSTMForCausalLM
from hf_lstm.quantization import quantize_dynamic_int8
from hf_lstm.settings import RANGES
from hf_lstm.training import main


def run(corpus, out, *extra):
    return main(tiny_train_args(corpus, out, "--sample_max_new_tokens", "0", *extra))


def exit_code(corpus, out, *extra) -> int:
    """The exit code of `hf-lstm train`, whether the parser exits or the run returns it."""
    try:
        return run(corpus, out, *extra)
    except SystemExit as exit_info:
        return exit_info.code


def error_of(capsys) -> str:
    lines = re.findall(r"hf-lstm train: error: [^\r\n]*", capsys.readouterr().err)
    assert len(lines) == 1, lines
    return lines[0]


@pytest.fixture(scope="module")
def run_a(corpus, tmp_path_factory):
    """A finished run with checkpoints step_2 and step_4, and its exact arguments."""
    out = tmp_path_factory.mktemp("a") / "run"
    args = ("--max_train_steps", "4", "--checkpointing_steps", "2")
    assert run(corpus, out, *args) == 0
    return out, args


def test_every_file_a_run_writes_obeys_the_umask(run_a):
    """The model folder and each checkpoint: weights (safetensors, which 0.8 creates owner-only) get the same
    permission bits as the JSON beside them, so a run can be shared like any other folder."""
    out, _ = run_a
    mask = os.umask(0o022)
    os.umask(mask)
    files = [p for p in out.rglob("*") if p.suffix in (".json", ".safetensors")]  # (copied .py keep theirs)
    assert any(p.name == "optimizer.safetensors" for p in files) and (out / "model.safetensors").exists()
    wrong = {str(p.relative_to(out)): oct(p.stat().st_mode & 0o777) for p in files}
    wrong = {name: mode for name, mode in wrong.items() if mode != oct(0o666 & ~mask)}
    assert not wrong, wrong


# -- 1. fine-tuning keeps the model's tokenizer --------------------------------------------------------------


def test_fine_tuning_a_model_folder_uses_its_own_tokenizer(corpus, run_a, tmp_path):
    folder, _ = run_a
    other = tmp_path / "other.txt"
    other.write_text("zebra quokka narwhal axolotl\n" * 200)  # words the model's tokenizer never saw
    out = tmp_path / "finetune"
    assert (
        main(
            [
                "--train_file",
                str(other),
                "--model_name_or_path",
                str(folder),
                "--output_dir",
                str(out),
                "--max_train_steps",
                "2",
                "--per_device_train_batch_size",
                "2",
                "--bptt",
                "8",
                "--sample_max_new_tokens",
                "0",
            ]
        )
        == 0
    )
    before, after = AutoTokenizer.from_pretrained(folder), AutoTokenizer.from_pretrained(out)
    sentence = "the cat sat on the mat"
    assert after(sentence).input_ids == before(sentence).input_ids
    assert len(after) == len(before)


def test_a_model_folder_without_a_tokenizer_is_refused_unless_one_is_named(corpus, run_a, tmp_path, capsys):
    folder, _ = run_a
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors", "configuration_hf_lstm.py", "modeling_hf_lstm.py"):
        (bare / name).write_bytes((folder / name).read_bytes())
    assert run(corpus, tmp_path / "out", "--model_name_or_path", str(bare)) == 1
    assert "has no tokenizer" in error_of(capsys) and not (tmp_path / "out").exists()
    assert (
        run(corpus, tmp_path / "out", "--model_name_or_path", str(bare), "--tokenizer_name", str(folder)) == 0
    )


# -- 2. a folder holding another run -------------------------------------------------------------------------


def test_reusing_an_output_folder_is_refused_and_the_first_run_still_resumes(corpus, run_a, capsys):
    folder, args = run_a
    before = snapshot(folder)
    assert (
        run(corpus, folder, "--config_overrides", "cell_type=gru,hidden_size=8", "--max_train_steps", "2")
        == 1
    )
    message = error_of(capsys)
    assert "already holds" in message and "--resume_from_checkpoint latest" in message
    assert "--overwrite_output_dir" in message
    assert snapshot(folder) == before
    assert run(corpus, folder, *args, "--resume_from_checkpoint", "latest") == 0  # A continues as it was


def test_a_users_own_files_are_not_overwritten(corpus, tmp_path, capsys):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "README.md").write_text("my notes\n")
    (folder / "config.json").write_text('{"mine": true}\n')
    assert run(corpus, folder, "--max_train_steps", "2") == 1
    assert "already holds 2" in error_of(capsys)
    assert (folder / "README.md").read_text() == "my notes\n"


def test_overwrite_output_dir_replaces_the_old_run_and_its_checkpoints(corpus, tmp_path):
    folder = tmp_path / "run"
    assert run(corpus, folder, "--max_train_steps", "4", "--checkpointing_steps", "2") == 0
    assert (
        run(
            corpus,
            folder,
            "--config_overrides",
            "cell_type=gru,hidden_size=8,num_hidden_layers=1",
            "--max_train_steps",
            "2",
            "--overwrite_output_dir",
        )
        == 0
    )
    assert json.loads((folder / "config.json").read_text())["cell_type"] == "gru"
    assert not (folder / "step_4").exists()  # `latest` cannot pick up the replaced run's checkpoints


# -- 3. values accepted that should not be ------------------------------------------------------------------


@pytest.mark.parametrize(
    "option, value, expected",
    [
        ("--max_train_steps", "0", "--max_train_steps must be an integer >= 1, got 0"),
        ("--weight_decay", "nan", "--weight_decay must be a finite number >= 0, got nan"),
        ("--max_grad_norm", "nan", "--max_grad_norm must be a finite number >= 0"),
        ("--max_grad_norm", "-1", "--max_grad_norm must be a finite number >= 0, got -1.0"),
        ("--num_warmup_steps", "-5", "--num_warmup_steps must be an integer >= 0, got -5"),
        ("--max_train_minutes", "-1", "--max_train_minutes must be a finite number > 0"),
        ("--sample_max_new_tokens", "-1", "--sample_max_new_tokens must be an integer >= 0"),
        ("--checkpoints_total_limit", "0", "--checkpoints_total_limit must be an integer >= 1, got 0"),
        ("--config_overrides", "forget_bias=inf", "forget_bias must be a finite number"),
        (
            "--config_overrides",
            "vocab_size=5,pad_token_id=99999",
            "pad_token_id, vocab_size come(s) from the tokenizer",
        ),
    ],
)
def test_a_value_out_of_range_is_one_line_exit_1_and_nothing_written(
    corpus, tmp_path, capsys, option, value, expected
):
    out = tmp_path / "out"
    assert exit_code(corpus, out, option, value) == 1
    err = capsys.readouterr().err
    assert expected in err and len(re.findall("hf-lstm train: error", err)) == 1, err
    assert not out.exists()


NUMERIC = sorted(RANGES)
weird = st.sampled_from(["nan", "inf", "-inf", "0", "-1", "-7", "1e308", "-1e308", "0.5", "3", "1e-9"])


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(option=st.sampled_from(NUMERIC), value=weird)
def test_any_numeric_value_either_runs_or_is_refused_in_one_line(corpus, tmp_path_factory, option, value):
    """Every numeric option with NaN, infinities, 0, negatives, huge and small values: the settings either
    take it or refuse it with one line naming the option and exit code 1, and a refused run writes nothing."""
    import contextlib
    import io

    from hf_lstm.settings import TrainingSettings

    out = tmp_path_factory.mktemp("p") / "out"
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            TrainingSettings.from_argv(tiny_train_args(corpus, out, f"--{option}", value))
            accepted = True
        except SystemExit as exit_info:
            accepted = False
            assert exit_info.code == 1
    if not accepted:
        lines = err.getvalue().strip().splitlines()
        assert len(lines) == 1 and f"--{option}" in lines[0], lines
        assert not out.exists()
    else:
        number = float(value)
        assert math.isfinite(number)
        RANGES[option].check(option, int(number) if RANGES[option].integer else number)


# -- 4. masks, labels, gate_weights -----------------------------------------------------------------------


def test_an_attention_mask_longer_than_the_input_without_a_cache_is_refused():
    model = LSTMForCausalLM(tiny_config()).eval()
    with pytest.raises(ValueError, match=r"must be \(1, 4\).*4 new tokens"):
        model(torch.tensor([[5, 6, 7, 8]]), attention_mask=torch.tensor([[1, 1, 1, 1, 0, 0]]))
    prefix = model(torch.tensor([[5, 6]]), use_cache=True).cache
    with pytest.raises(ValueError, match=r"2 cached \+ 2 new"):
        model(torch.tensor([[7, 8]]), attention_mask=torch.ones(1, 2), cache=prefix, use_cache=True)
    full = model(torch.tensor([[7, 8]]), attention_mask=torch.ones(1, 4), cache=prefix, use_cache=True)
    assert torch.allclose(full.logits, model(torch.tensor([[5, 6, 7, 8]])).logits[:, 2:], atol=1e-6)


def test_labels_outside_the_vocabulary_and_a_string_layer_are_value_errors():
    model = LSTMForCausalLM(tiny_config()).eval()
    ids = torch.tensor([[5, 6, 7]])
    with pytest.raises(ValueError, match="labels contains token id 40, outside"):
        model(ids, labels=torch.tensor([[5, 40, 7]]))
    with pytest.raises(ValueError, match="labels contains token id -3"):
        model(ids, labels=torch.tensor([[5, -3, 7]]))
    assert torch.isfinite(model(ids, labels=torch.tensor([[5, -100, 7]])).loss)
    with pytest.raises(ValueError, match="layer must be in"):
        model.gate_weights("0")


def test_forget_bias_must_be_finite():
    with pytest.raises(ValueError, match="forget_bias must be a finite number"):
        LSTMConfig(forget_bias=float("inf"))


# -- 5. int8 copies ------------------------------------------------------------------------------------------


def test_an_int8_copy_makes_no_warning_and_refuses_to_be_saved_with_the_way_out(tmp_path):
    model = LSTMForCausalLM(tiny_config()).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        int8 = quantize_dynamic_int8(model)
    assert int8.generate(torch.tensor([[3, 4]]), max_new_tokens=3, do_sample=False).shape == (1, 5)
    with pytest.raises(ValueError, match="save the float model.*quantize_dynamic_int8"):
        int8.save_pretrained(tmp_path / "int8")
    assert not (tmp_path / "int8").exists()
    model.save_pretrained(tmp_path / "float")  # the float model still saves
    assert (tmp_path / "float" / "model.safetensors").is_file()


# -- 6. smaller things -------------------------------------------------------------------------------------


def test_an_output_folder_that_is_a_file_is_named(corpus, tmp_path, capsys):
    target = tmp_path / "a-file"
    target.write_text("x")
    assert exit_code(corpus, target) == 1 and "is a file; give a folder" in capsys.readouterr().err


def test_a_refused_run_leaves_no_empty_output_folder(corpus, tmp_path, capsys):
    out = tmp_path / "new"
    assert run(corpus, out, "--model_type", "no_such_model_type") == 1
    assert "not a model type transformers knows" in error_of(capsys)
    assert not out.exists()


def test_a_json_file_that_is_not_a_checkpoint_is_named_as_such(corpus, run_a, tmp_path, capsys):
    folder, _ = run_a
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "trainer_state.json").write_text('{"completed_steps": 3}')
    (fake / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes())
    out = tmp_path / "out"
    assert run(corpus, out, "--resume_from_checkpoint", str(fake)) == 1
    assert "is not a checkpoint written by `hf-lstm train`" in error_of(capsys)


# -- 7. silent corruption ------------------------------------------------------------------------------------


def test_a_flipped_byte_inside_a_checkpoint_tensor_is_detected_and_the_checkpoint_kept(
    corpus, tmp_path, capsys
):
    folder = tmp_path / "run"
    args = ("--max_train_steps", "4", "--checkpointing_steps", "2")
    assert run(corpus, folder, *args) == 0
    weights = folder / "step_4" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    header = 8 + int.from_bytes(data[:8], "little")
    data[header + 5] ^= 0x01  # inside the tensor data: the header is intact, safetensors still opens it
    weights.write_bytes(bytes(data))
    kept = snapshot(folder / "step_4")
    assert run(corpus, folder, *args, "--resume_from_checkpoint", str(folder / "step_4")) == 1
    message = error_of(capsys)
    assert "step_4/model.safetensors does not match the checksum" in message
    assert snapshot(folder / "step_4") == kept
    manifest = json.loads((folder / "step_2" / "checksums.json").read_text())
    assert {"model.safetensors", "optimizer.safetensors", "trainer_state.json"} <= set(manifest)
