"""The microscope's reading, drawing and loading, without a browser (tests/test_microscope_browser.py drives
the page in Chromium): every cell type's panels, what a token leaves in memory, unit orders, the messages for
bad input, a folder loaded with its own code in a fresh process, and the Space app `--write_space_app` writes.
"""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

pytest.importorskip("gradio", reason="the microscope needs gradio: pip install 'hf_lstm[microscope]'")

from conftest import CELL_TYPES, tiny_config  # noqa: E402
from hf_lstm import LSTMForCausalLM  # noqa: E402
from hf_lstm.microscope import reading as R  # noqa: E402
from hf_lstm.microscope import render  # noqa: E402
from hf_lstm.microscope.space import write_space_app  # noqa: E402


def saved_model(folder, tokenizer, cell_type="lstm", **overrides):
    """A tiny hf_lstm causal LM with `tokenizer`, saved with `save_pretrained` into `folder`."""
    torch.manual_seed(0)
    config = tiny_config(
        cell_type,
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        initializer_range=0.5,
        **overrides,
    )
    LSTMForCausalLM(config).eval().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module", params=CELL_TYPES)
def loaded(request, tmp_path_factory, word_tokenizer):
    folder = saved_model(tmp_path_factory.mktemp(request.param), word_tokenizer, request.param)
    return R.load_model(str(folder))


def generated(loaded, prompt="i grew up in france so", new=6, **sampling):
    ids = R.prompt_ids(loaded, prompt, new)
    pieces = list(R.generate_stream(loaded, ids, R.Sampling(max_new_tokens=new, **sampling)))
    return ids, pieces


def test_generation_streams_text_then_ends_with_every_token_id(loaded):
    ids, pieces = generated(loaded, do_sample=False)
    assert all(token_ids is None for _, token_ids in pieces[:-1])
    text, token_ids = pieces[-1]
    assert token_ids[: ids.shape[1]] == ids[0].tolist() and ids.shape[1] < len(token_ids) <= ids.shape[1] + 6
    expected = loaded.model.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert token_ids == expected[0].tolist()  # the same tokens as a plain greedy generate()
    ids, pieces = generated(loaded, new=30, stop_at_eos=False)
    assert len(pieces[-1][1]) == ids.shape[1] + 30  # on through end-of-text tokens


def test_the_panels_adapt_to_the_cell_type_and_hold_the_models_own_gates(loaded):
    ids, pieces = generated(loaded)
    token_ids = pieces[-1][1]
    reading = R.read(loaded, token_ids, ids.shape[1])
    assert [list(p) for p in reading.panels] == [list(R.PANELS[loaded.cell_type])] * 2
    out = loaded.model(torch.tensor([token_ids]), output_gates=True, output_hidden_states=True)
    for layer, panels in enumerate(reading.panels):
        for name, values in panels.items():
            truth = out.hidden_states[layer + 1] if name == "hidden" else out.gates[layer][name]
            np.testing.assert_allclose(values, truth[0].detach().numpy(), atol=1e-6)
    probs = torch.softmax(out.logits[0, 2], -1)
    assert [p for _, p in reading.top_next[2]] == pytest.approx(probs.topk(R.TOP_K).values.tolist(), abs=1e-6)
    html = render.heatmaps(reading, [[0, 1, 2]] * 2, position=2)
    assert html.count("<svg class='heatmap'") == 2
    panels = len(R.PANELS[loaded.cell_type])
    assert html.count("<image class='panel'") == 2 * panels
    assert html.count("<rect") == 2 * panels * len(token_ids) + 2  # a column per token, and the outlines
    hover = f"#2 {reading.tokens[2]!r}, ".replace("'", "&#x27;")
    assert hover in html and "unit 1 " in html  # what hovering a column shows
    for name in R.PANELS[loaded.cell_type]:
        assert render.LABELS[name] in html


def test_what_survives_is_the_product_of_the_carrying_gate_and_a_vanilla_rnn_has_none(loaded):
    ids, pieces = generated(loaded)
    reading = R.read(loaded, pieces[-1][1], ids.shape[1])
    curves = R.carry(reading, 1)
    if loaded.cell_type == "rnn":
        assert curves is None
    else:
        gate = reading.panels[0][R.CARRY_GATE[loaded.cell_type]].astype(np.float64)
        expected = [1.0] + [np.prod(gate[2 : t + 1], axis=0).mean() for t in range(2, len(gate))]
        np.testing.assert_allclose(curves[0], expected, rtol=1e-9)
        assert np.all(np.diff(curves[0]) <= 0)  # a product of gates in (0, 1) only falls
    effect = R.sensitivity(loaded, reading, 1)
    assert effect.shape == (len(reading.token_ids) - 1,) and effect[0] == 1.0
    html = render.memory_html(reading, 1, curves, effect)
    assert "<svg class='memory'" in html and ("vanilla RNN has no gate" in html) == (
        loaded.cell_type == "rnn"
    )


def test_the_sensitivity_is_the_jacobian_vector_product_autograd_gives(word_tokenizer, tmp_path):
    loaded = R.load_model(str(saved_model(tmp_path, word_tokenizer, "rnn")))
    ids = [3, 4, 5, 6, 7, 8]
    reading = R.read(loaded, ids, 2)
    embeds = loaded.model.get_input_embeddings()(torch.tensor([ids])).detach()
    tangent = torch.zeros_like(embeds)
    tangent[0, 2] = embeds[0, 2]
    _, jvp = torch.autograd.functional.jvp(
        lambda e: loaded.model.model(inputs_embeds=e, output_gates=True).last_hidden_state, embeds, tangent
    )
    norms = jvp[0, 2:].norm(dim=-1)
    np.testing.assert_allclose(R.sensitivity(loaded, reading, 2), (norms / norms[0]).numpy(), rtol=1e-5)


def test_units_are_ordered_by_change_saturation_or_hand(word_tokenizer, tmp_path):
    loaded = R.load_model(str(saved_model(tmp_path, word_tokenizer, "lstm")))
    reading = R.read(loaded, [3, 4, 5, 6, 7, 8, 9], 3)
    cell = reading.panels[0]["cell"]
    assert R.unit_order(reading, 0, "most-changing", 4) == list(np.argsort(-cell.std(0))[:4])
    gates = [reading.panels[0][n] for n in ("forget", "input", "output")]
    saturation = np.mean([((g < 0.05) | (g > 0.95)).mean(0) for g in gates], axis=0)
    assert saturation[R.unit_order(reading, 0, "most-saturated", 1)[0]] == saturation.max()
    assert R.unit_order(reading, 0, "by hand", 3, [7, 2])[:2] == [7, 2]
    assert R.parse_units("7, 2 5", 12) == [7, 2, 5]
    with pytest.raises(R.MicroscopeError, match="from 0 to 11"):
        R.parse_units("12", 12)


def test_an_empty_or_huge_prompt_is_a_message_not_a_crash(word_tokenizer, tmp_path):
    loaded = R.load_model(str(saved_model(tmp_path, word_tokenizer)))
    for prompt in ("", "   "):
        with pytest.raises(R.MicroscopeError, match="Type a prompt first"):
            R.prompt_ids(loaded, prompt)
    with pytest.raises(R.MicroscopeError, match="100,000 characters"):
        R.prompt_ids(loaded, "the " * 25_000)
    with pytest.raises(R.MicroscopeError, match="at most 600 tokens"):
        R.prompt_ids(loaded, "the cat " * 300, max_new_tokens=10)


def test_a_folder_that_is_not_a_model_and_an_unreachable_hub_id_are_clear_messages(tmp_path):
    (tmp_path / "notes.txt").write_text("not a model")
    with pytest.raises(R.MicroscopeError, match="is not a model folder.*config.json"):
        R.load_model(str(tmp_path))
    with pytest.raises(R.MicroscopeError, match="Give a model"):
        R.load_model("  ")
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    with pytest.raises(R.MicroscopeError, match="from the Hugging Face Hub: it is unreachable"):
        R.load_model("someone/no-such-lstm")


def test_a_transformer_folder_generates_and_shows_its_distribution_without_gates(word_tokenizer, tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(vocab_size=len(word_tokenizer), n_embd=16, n_layer=1, n_head=2, n_positions=64)
    GPT2LMHeadModel(config).save_pretrained(tmp_path)
    word_tokenizer.save_pretrained(tmp_path)
    loaded = R.load_model(str(tmp_path))
    assert loaded.cell_type is None and "no gates" in loaded.describe()
    ids, pieces = generated(loaded)
    reading = R.read(loaded, pieces[-1][1], ids.shape[1])
    assert reading.panels == [] and len(reading.top_next[0]) == R.TOP_K
    assert "no gates" in render.heatmaps(reading, [], 0)


def run_python(script: str, cwd, path) -> subprocess.CompletedProcess:
    """`script` in a fresh interpreter of this venv, in `cwd`, offline, with `path` first on its sys.path."""
    paths = [str(path), *filter(None, [os.environ.get("PYTHONPATH")])]
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        cwd=cwd,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.pathsep.join(paths)},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_a_folder_loaded_with_its_own_code_in_a_fresh_process_shows_its_gates(word_tokenizer, tmp_path):
    folder = saved_model(tmp_path / "gru", word_tokenizer, "gru")
    write_space_app(tmp_path / "app")  # the microscope's files alone, as a Space has them
    script = f"""
        import sys
        sys.modules["hf_lstm"] = None  # no hf_lstm in this process: the model code is the folder's
        from microscope import reading as R
        loaded = R.load_model({str(folder)!r}, trust_remote_code=True)
        reading = R.read(loaded, [3, 4, 5, 6], 2)
        print(type(loaded.model).__module__, list(reading.panels[0]), len(R.carry(reading, 1)[0]))
    """
    run = run_python(script, tmp_path, tmp_path / "app")
    assert run.returncode == 0, run.stderr[-3000:]
    module, *rest = run.stdout.split(" ", 1)
    assert module.startswith("transformers_modules.") and rest == ["['update', 'reset', 'hidden'] 3\n"]


def test_the_space_app_runs_from_the_folder_without_hf_lstm(word_tokenizer, tmp_path):
    folder = saved_model(tmp_path / "space", word_tokenizer, "lstm")
    written = write_space_app(folder)
    assert {p.name for p in written} == {
        "__init__.py",
        "reading.py",
        "render.py",
        "app.py",
        "requirements.txt",
    }
    assert "gradio" in (folder / "requirements.txt").read_text()
    script = """
        import sys
        sys.modules["hf_lstm"] = None  # the Space has no hf_lstm: importing it must fail, and nothing may try
        import app
        from microscope import reading as R
        loaded = app.app  # the gradio.Blocks, built and loaded at import time as the Space does
        scope_model = [f for f in loaded.fns.values()][0].fn.__self__.loaded
        print(type(loaded).__name__, scope_model.cell_type, type(scope_model.model).__module__.split(".")[0])
    """
    run = run_python(script, folder, folder)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.split() == ["Blocks", "lstm", "transformers_modules"]
    config = json.loads((folder / "config.json").read_text())
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_hf_lstm.LSTMForCausalLM"


def test_the_command_line_lists_the_microscope_and_its_arguments(capsys):
    from hf_lstm.cli import main

    assert main(["--help"]) == 0 and "microscope" in capsys.readouterr().out
    with pytest.raises(SystemExit) as done:
        main(["microscope", "--help"])
    usage = capsys.readouterr().out
    assert (
        done.value.code == 0 and "MODEL_DIR_OR_HUB_ID" in usage and "--port" in usage and "--share" in usage
    )


def test_the_page_starts_and_keeps_serving_whatever_it_is_given(word_tokenizer, tmp_path):
    from hf_lstm.microscope.app import Microscope

    (tmp_path / "empty").mkdir()
    scope = Microscope(str(tmp_path / "empty"))
    assert "is not a model folder" in scope.model_message and scope.loaded is None
    sampling = ("", 5, False, 1.0, 0, 1.0, 0, True, "most-changing", "", 8)
    assert "is not a model folder" in list(scope.generate(*sampling))[-1][1]  # the page says why, not a crash
    assert "Loaded" in scope.load(str(saved_model(tmp_path / "lstm", word_tokenizer)))
    assert "Type a prompt first" in list(scope.generate(*sampling))[-1][1]
    assert "Still showing" in scope.load("someone/no-such-lstm")
    *_, heatmaps, memory = list(scope.generate("the cat sat", *sampling[1:]))
    assert "generated " in heatmaps[1] and "<svg class='heatmap'" in heatmaps[4]
    assert "<svg class='memory'" in memory[6]  # the memory panel follows the heatmaps
    reading = heatmaps[7]  # the gr.State value
    assert scope.show(reading, 2, "most-changing", "", 8)[0] == "token #2 ' sat'"
    scope.load(str(saved_model(tmp_path / "gru", word_tokenizer, "gru")))
    assert "generate again" in scope.show(reading, 2, "most-changing", "", 8)[0]  # read by the other model
