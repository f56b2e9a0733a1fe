"""The microscope in a real browser: `hf-lstm microscope` serves a model trained by `hf-lstm train` on
127.0.0.1, and Debian's Chromium, driven by Playwright, types a prompt, waits for the text, clicks a token
and checks that the heatmaps, the next-token distribution and the memory curve appear; bad input gets a
message and the app keeps serving; GRU and vanilla RNN folders get their own panels; and the time from the
end of a 40-token generation to the first heatmap is printed for the README's 2x256 PTB model.

Skips, saying why, where Chromium or Playwright is missing (`.ci/run` installs Chromium with apt).
Screenshots go to a temporary folder, or to docs/microscope/ (the ones docs/MICROSCOPE.md shows) with
`HF_LSTM_SCREENSHOTS=docs`. The speed check uses runs/ptb-lstm (what the README's training command writes)
when it is there, else a new model of the same shape and PTB vocabulary (the time does not depend on the
weights' values).
"""

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None:
    reason = "no Chromium installed: `apt-get install -y chromium` (.ci/run does) to run the browser test"
    if os.environ.get("HF_LSTM_REQUIRE_BROWSER"):  # CI: a browser test that silently skips proves nothing
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason, allow_module_level=True)
pytest.importorskip("gradio", reason="the microscope needs gradio: pip install 'hf_lstm[microscope]'")
sync_api = pytest.importorskip("playwright.sync_api", reason="the browser test needs playwright (dev extra)")

from conftest import tiny_config, tiny_train_args  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
README_MODEL = REPO / "runs" / "ptb-lstm"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",  # without these, Chromium's own connections are refused on a closed
    "--disable-component-update",  # network and the page never settles
    "--disable-sync",
]
WAIT_MS = 60_000
TOKENS = "#tokens .token, #tokens .textspan"  # one token of the HighlightedText (gradio 6.0: .textspan)


@pytest.fixture(scope="module")
def folders(tmp_path_factory, corpus, word_tokenizer):
    """A tiny LSTM trained by `hf-lstm train --write_space_app`, and saved GRU and vanilla RNN folders."""
    from hf_lstm import LSTMForCausalLM
    from hf_lstm.training import main

    root = tmp_path_factory.mktemp("microscope")
    args = tiny_train_args(corpus, root / "lstm", "--max_train_steps", "20", "--sample_max_new_tokens", "0")
    assert main([*args, "--write_space_app"]) == 0
    assert (root / "lstm" / "app.py").is_file() and (root / "lstm" / "microscope" / "app.py").is_file()
    for cell in ("gru", "rnn"):
        torch.manual_seed(0)
        config = tiny_config(
            cell, vocab_size=len(word_tokenizer), pad_token_id=0, eos_token_id=1, initializer_range=0.5
        )
        LSTMForCausalLM(config).save_pretrained(root / cell)
        word_tokenizer.save_pretrained(root / cell)
    (root / "not-a-model").mkdir()
    (root / "not-a-model" / "notes.txt").write_text("hello")
    return root


@pytest.fixture(scope="module")
def readme_model(tmp_path_factory):
    """The README's main-job folder if it is there, else a new 2x256 LSTM with the PTB word vocabulary."""
    if (README_MODEL / "model.safetensors").is_file():
        return README_MODEL
    from hf_lstm.builders import TokenIds, build_model, build_tokenizer
    from hf_lstm.data import load_corpus

    folder = tmp_path_factory.mktemp("ptb-2x256")
    tokenizer = build_tokenizer(load_corpus("ptb")["train"]["text"], dataset_name="ptb")
    model = build_model("hf_lstm", vocab=TokenIds.of(tokenizer), config_overrides={"hidden_size": 256})
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def server(folders):
    """`hf-lstm microscope` on a free port of 127.0.0.1, serving the tiny LSTM; its URL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tempfile.TemporaryFile()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    command = [sys.executable, "-m", "hf_lstm.cli", "microscope", str(folders / "lstm"), "--port", str(port)]
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 120
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                log.seek(0)
                pytest.fail(f"hf-lstm microscope did not start:\n{log.read().decode()[-3000:]}")
            time.sleep(0.3)
    yield url
    process.terminate()
    process.wait(timeout=30)


@pytest.fixture(scope="module")
def browser_page(server):
    """A fresh headless Chromium (its own profile folder) with one page."""
    with sync_api.sync_playwright() as playwright, tempfile.TemporaryDirectory() as profile:
        context = playwright.chromium.launch_persistent_context(
            profile,
            executable_path=CHROMIUM,
            args=CHROMIUM_ARGS,
            headless=True,
            viewport={"width": 1400, "height": 1000},
        )
        page = context.new_page()
        page.set_default_timeout(WAIT_MS)
        yield page
        context.close()


@pytest.fixture
def page(browser_page, server):
    browser_page.goto(server)
    browser_page.wait_for_selector("#prompt textarea")
    return browser_page


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    if os.environ.get("HF_LSTM_SCREENSHOTS") == "docs":
        folder = REPO / "docs" / "microscope"
        folder.mkdir(exist_ok=True)
        return folder
    return tmp_path_factory.mktemp("screenshots")


def text_of(page, selector: str) -> str:
    return page.inner_text(selector).strip()


def wait_for_text(page, selector: str, part: str) -> str:
    """Wait until the element's text contains `part`; return the text."""
    page.wait_for_function(
        "([s, p]) => { const e = document.querySelector(s); return e && e.innerText.includes(p); }",
        arg=[selector, part],
    )
    return text_of(page, selector)


def load(page, source, expect: str | None = None) -> str:
    """Type `source` into the model box, press Load, and wait for the message that names it."""
    page.fill("#model textarea, #model input", str(source))
    page.click("#load")
    return wait_for_text(page, "#model-status", expect or f"Loaded {source}")


def generate(page, prompt: str) -> None:
    page.fill("#prompt textarea", prompt)
    page.click("#generate")


def test_a_prompt_generates_then_a_click_shows_the_gates_the_distribution_and_the_memory(
    page, folders, shots
):
    assert "2x16 lstm" in load(page, folders / "lstm")
    generate(page, "i grew up in france so")
    status = wait_for_text(page, "#status", "generated ")
    page.wait_for_selector("#heatmaps svg.heatmap rect")
    text = page.input_value("#generated textarea")
    assert text.startswith("i grew up in france so") and len(text) > len("i grew up in france so")
    assert page.locator("#heatmaps svg.heatmap").count() == 2  # one per layer
    for name in ("forget gate f_t", "input gate i_t", "output gate o_t", "cell state C_t"):
        assert name in text_of(page, "#heatmaps")
    assert (
        "unit " in page.locator("#heatmaps svg.heatmap rect title").first.text_content()
    )  # what a hover shows
    tokens = page.locator(TOKENS)
    assert tokens.count() == int(status.split("read ")[1].split()[0])
    tokens.nth(3).click()  # "in"
    assert wait_for_text(page, "#status", "token #3") == "token #3 ' in'"
    assert page.input_value("#position input") == "3"
    assert page.locator("#next-token .confidence-set").count() == 10
    assert page.locator("#heatmaps rect.selected").count() == 2
    memory = wait_for_text(page, "#memory", "What survives of #3 ' in'")
    assert "product of forget gates" in memory and page.locator("#memory svg.memory polyline").count() == 3
    page.screenshot(path=str(shots / "microscope-tiny-lstm.png"), full_page=True)


def test_bad_input_is_a_message_on_the_page_and_the_app_keeps_serving(page, folders):
    load(page, folders / "lstm")
    generate(page, "")
    assert "Type a prompt first" in wait_for_text(page, "#status", "⚠️")
    generate(page, "the cat " * 12_500)  # 100,000 characters
    assert "100,000 characters" in wait_for_text(page, "#status", "100,000")
    message = load(page, folders / "not-a-model", expect="not-a-model")
    assert "is not a model folder" in message and f"Still showing {folders / 'lstm'}" in message
    assert "Hugging Face Hub" in load(page, "someone/no-such-lstm", expect="no-such-lstm")
    generate(page, "the cat sat")  # still serving, with the model it had
    assert "generated " in wait_for_text(page, "#status", "generated ")
    page.wait_for_selector("#heatmaps svg.heatmap rect")


@pytest.mark.parametrize(
    "cell, panels, absent",
    [
        ("gru", ["update gate z_t", "reset gate r_t", "hidden state h_t"], "forget"),
        ("rnn", ["hidden state"], "gate"),
    ],
)
def test_gru_and_vanilla_rnn_folders_get_their_own_panels(page, folders, shots, cell, panels, absent):
    assert f"2x12 {cell}" in load(page, folders / cell)
    generate(page, "the cat sat on the")
    wait_for_text(page, "#status", "generated ")
    page.wait_for_selector("#heatmaps svg.heatmap rect")
    heatmaps = text_of(page, "#heatmaps")
    assert all(name in heatmaps for name in panels) and absent not in heatmaps
    page.locator(TOKENS).nth(1).click()
    memory = wait_for_text(page, "#memory", "What survives of #1")
    assert ("vanilla RNN has no gate" in memory) == (cell == "rnn")
    page.screenshot(path=str(shots / f"microscope-tiny-{cell}.png"), full_page=True)


def test_the_first_heatmap_follows_a_40_token_generation_of_the_readme_model(page, readme_model, shots):
    assert "2x256 lstm" in load(page, readme_model)
    page.evaluate(
        """() => { window.seen = {};
        new MutationObserver(() => {
            const s = document.querySelector('#status').innerText;
            const now = performance.now();
            if (s.includes('generating') && !window.seen.generating) window.seen.generating = now;
            if (s.includes('reading the gates') && !window.seen.done) window.seen.done = now;
            if (document.querySelector('#heatmaps svg.heatmap rect') && !window.seen.heatmap)
                window.seen.heatmap = now;
            if (document.querySelector('#memory svg.memory') && !window.seen.memory) window.seen.memory = now;
        }).observe(document.body, {subtree: true, childList: true, characterData: true}); }"""
    )
    page.get_by_text("sampling", exact=True).click()
    page.locator("#stop-at-eos input[type=checkbox]").uncheck()  # 40 tokens, through sentence ends
    generate(page, "the company said it expects to report a loss for the third quarter because")
    page.wait_for_selector("#memory svg.memory")
    seen = page.evaluate("window.seen")
    status = text_of(page, "#status")
    assert "generated 40 tokens" in status
    done = seen.get("done", seen["heatmap"])  # no "done": drawn in the same frame as the first heatmap
    print(
        f"\nmicroscope, {readme_model} (2x256, vocabulary 10k): {status}; after the generation finished, "
        f"first heatmap {(seen['heatmap'] - done) / 1e3:.2f} s (meant to be under 1 s), memory panel "
        f"{(seen['memory'] - done) / 1e3:.2f} s; generation {(done - seen['generating']) / 1e3:.2f} s"
    )
    page.locator(TOKENS).nth(13).click()  # "because"
    wait_for_text(page, "#memory", "What survives of #13")
    page.screenshot(path=str(shots / "microscope-ptb-lstm.png"), full_page=True)
