"""Saved folders are Hub model repos: safetensors, complete auto_map, and they load without hf_lstm
installed."""

import ast
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from transformers import (
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
)

from conftest import tiny_config
from hf_lstm import LSTMForCausalLM, LSTMForSequenceClassification, LSTMForTokenClassification, LSTMModel

CARRIED_FILES = ("configuration_hf_lstm.py", "modeling_hf_lstm.py")


@pytest.fixture(scope="module")
def saved_lm(tmp_path_factory, word_tokenizer):
    folder = tmp_path_factory.mktemp("hub") / "tiny-lstm"
    torch.manual_seed(0)
    config = tiny_config(
        "lstm",
        vocab_size=len(word_tokenizer),
        pad_token_id=word_tokenizer.pad_token_id,
        eos_token_id=word_tokenizer.eos_token_id,
        bos_token_id=None,
        initializer_range=0.5,
    )
    model = LSTMForCausalLM(config).eval()
    model.save_pretrained(folder)
    word_tokenizer.save_pretrained(folder)
    return model, folder


def test_folder_holds_safetensors_the_model_files_and_a_complete_auto_map(saved_lm):
    _, folder = saved_lm
    names = set(os.listdir(folder))
    assert {"model.safetensors", "config.json", "generation_config.json", *CARRIED_FILES} <= names
    assert not any(n.endswith((".bin", ".pt", ".pth")) for n in names)
    auto_map = json.loads((folder / "config.json").read_text())["auto_map"]
    assert auto_map == {
        "AutoConfig": "configuration_hf_lstm.LSTMConfig",
        "AutoModel": "modeling_hf_lstm.LSTMModel",
        "AutoModelForCausalLM": "modeling_hf_lstm.LSTMForCausalLM",
        "AutoModelForSequenceClassification": "modeling_hf_lstm.LSTMForSequenceClassification",
        "AutoModelForTokenClassification": "modeling_hf_lstm.LSTMForTokenClassification",
    }


def test_carried_files_import_only_torch_transformers_and_each_other(saved_lm):
    _, folder = saved_lm
    # os: only save_pretrained's permission fix (`weights_readable_as`); time: `choose_batch1_kernel`'s timing
    allowed_roots = {"torch", "transformers", "__future__", "math", "dataclasses", "os", "time"}
    for name in CARRIED_FILES:
        tree = ast.parse((folder / name).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                roots = {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                if node.level == 1:
                    assert node.module in ("configuration_hf_lstm",), f"{name}: relative import {node.module}"
                    continue
                roots = {node.module.split(".")[0]}
            else:
                continue
            assert roots <= allowed_roots, f"{name} imports {roots - allowed_roots}"
        # and nothing at module level touches files, the network or processes
        source = (folder / name).read_text()
        for word in ("open(", "requests", "urllib", "subprocess", "os.system", "socket"):
            assert word not in source, f"{name} contains {word}"


def current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@pytest.mark.parametrize("umask", [0o022, 0o007])
def test_saved_weights_are_readable_by_whoever_can_read_the_config(tmp_path, umask):
    """safetensors 0.8 creates its files owner-only (0600) whatever the umask; a saved folder's weights keep
    the permission bits every other file there gets, one shard or several."""
    model = LSTMForCausalLM(tiny_config(vocab_size=400, hidden_size=32))
    previous = os.umask(umask)
    try:
        model.save_pretrained(tmp_path / "one")
        model.save_pretrained(tmp_path / "sharded", max_shard_size="30KB")
    finally:
        os.umask(previous)
    expected = 0o666 & ~umask
    for folder in (tmp_path / "one", tmp_path / "sharded"):  # (the copied .py files keep their source's bits)
        written = [p for p in folder.iterdir() if p.suffix in (".json", ".safetensors")]
        modes = {p.name: oct(p.stat().st_mode & 0o777) for p in written}
        assert set(modes.values()) == {oct(expected)}, modes
    assert len(list((tmp_path / "sharded").glob("*.safetensors"))) > 1


@pytest.mark.parametrize(
    "auto_cls, cls",
    [
        (AutoModel, LSTMModel),
        (AutoModelForCausalLM, LSTMForCausalLM),
        (AutoModelForSequenceClassification, LSTMForSequenceClassification),
        (AutoModelForTokenClassification, LSTMForTokenClassification),
    ],
)
def test_every_auto_class_loads_the_folder_with_the_package_installed(saved_lm, auto_cls, cls):
    _, folder = saved_lm
    assert type(auto_cls.from_pretrained(folder)) is cls


def test_loaded_weights_are_identical(saved_lm):
    model, folder = saved_lm
    loaded = AutoModelForCausalLM.from_pretrained(folder)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[name]), name
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight


FRESH_PROCESS = textwrap.dedent(
    """
    import json, sys
    sys.modules["hf_lstm"] = None  # `import hf_lstm` now raises ImportError: the package is unavailable
    try:
        import hf_lstm  # noqa: F401
        raise SystemExit("hf_lstm should not be importable here")
    except ImportError:
        pass
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, pipeline

    folder, prompt_ids = sys.argv[1], json.loads(sys.argv[2])
    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
    saved = load_file(f"{folder}/model.safetensors")
    state = model.state_dict()
    same = all(torch.equal(state[k], v) for k, v in saved.items())
    greedy = model.generate(torch.tensor([prompt_ids]), max_new_tokens=8, do_sample=False, eos_token_id=None)
    pipe = pipeline("text-generation", model=folder, trust_remote_code=True)
    text = pipe("the boy who lives", max_new_tokens=5, do_sample=False)[0]["generated_text"]
    classifier = AutoModelForSequenceClassification.from_pretrained(
        folder, trust_remote_code=True, num_labels=2
    )
    print(json.dumps({"module": type(model).__module__, "same_weights": same, "greedy": greedy[0].tolist(),
                      "text": text, "classifier": type(classifier).__name__}))
    """
)


def test_fresh_process_without_hf_lstm_loads_the_folder_and_runs_the_pipeline(saved_lm, tmp_path):
    model, folder = saved_lm
    prompt = [5, 9, 3, 7]
    expected = model.generate(torch.tensor([prompt]), max_new_tokens=8, do_sample=False, eos_token_id=None)
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_MODULES_CACHE": str(tmp_path / "modules"),
        "PYTHONPATH": "",
    }
    result = subprocess.run(
        [sys.executable, "-c", FRESH_PROCESS, str(folder), json.dumps(prompt)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["module"].startswith("transformers_modules"), report["module"]
    assert report["same_weights"] is True
    assert report["greedy"] == expected[0].tolist()
    words = report["text"].split()
    assert words[:4] == ["the", "boy", "who", "lives"] and len(words) == 9
    assert report["classifier"] == "LSTMForSequenceClassification"
