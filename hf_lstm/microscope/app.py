"""The microscope's page: a prompt, generation that streams in, the gates of every layer as heatmaps, the
next-token distribution at any clicked token, and what that token leaves in memory.

`build_app(source)` returns the `gradio.Blocks`; `hf-lstm microscope` and a Space's `app.py` launch it.
Carried into a Space with `reading` and `render` (standard library, numpy, torch, transformers, gradio).
Every problem (an empty or huge prompt, a folder that is not a model, a Hub id that cannot be reached) is a
message on the page; the app keeps serving.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported: no calls home

import gradio as gr  # noqa: E402

from . import reading as R  # noqa: E402
from . import render  # noqa: E402

INTRO = """# The LSTM microscope
Type a prompt and generate. Then **click any token** to see what the model expected next there and how much of
that token survives in memory later on. Hover a heatmap column for that token's value in every unit shown, a
token label for its means, a point of the memory curve for its value."""
EXAMPLE = "the company said it expects to report a loss for the third quarter because"
TOKEN_COLORS = {"prompt": "#e5e7eb", "generated": "#bbf7d0", "selected": "#fdba74"}


class Microscope:
    """The model being looked at (shared by every visitor, one reading at a time) and the page's handlers.

    Args:
        source (`str` or `None`): the folder or Hub id to load first.
        trust_remote_code (`bool`): load models with the code their folder carries.
        check_folder (`Callable[[str], None]`, *optional*): passed to `reading.load_model`.
    """

    def __init__(self, source, trust_remote_code: bool = False, check_folder: Callable | None = None):
        self.trust_remote_code = trust_remote_code
        self.check_folder = check_folder
        self.lock = threading.Lock()
        self.loaded = None
        self.model_message = "No model loaded yet: give a folder or Hub id above and press Load."
        if source:
            self.load(source)

    def load(self, source: str) -> str:
        """Load `source`; on failure keep the model there was. Returns the message for the page."""
        try:
            loaded = R.load_model(source, self.trust_remote_code, self.check_folder)
        except R.MicroscopeError as error:
            kept = f" Still showing {self.loaded.source}." if self.loaded else ""
            self.model_message = f"⚠️ {error}{kept}"
            return self.model_message
        with self.lock:
            self.loaded = loaded
        self.model_message = f"Loaded {loaded.describe()}."
        return self.model_message

    def generate(
        self, prompt, max_new_tokens, do_sample, temperature, top_k, top_p, seed, stop, order, units, count
    ):
        """Stream the generation into the page, then draw everything at the last prompt token."""
        skip = gr.skip()
        try:
            loaded = self._model()
            sampling = R.Sampling(max_new_tokens, do_sample, temperature, top_k, top_p, seed, stop)
            ids = R.prompt_ids(loaded, prompt, int(max_new_tokens))
            with self.lock:
                for text, token_ids in R.generate_stream(loaded, ids, sampling):
                    status = "generating …" if token_ids is None else "generated; reading the gates …"
                    yield (prompt + text, status, skip, skip, skip, skip, skip, skip)
                reading = R.read(loaded, token_ids, ids.shape[1])
                position = ids.shape[1] - 1  # where generation started: its distribution gave the first token
                view = self._view(loaded, reading, position, order, units, count, memory=False)
                new, ms = len(token_ids) - ids.shape[1], reading.seconds * 1e3
                status = f"generated {new} tokens; read {len(token_ids)} tokens in {ms:.0f} ms"
                yield (prompt + text, status, *view, reading)  # the heatmaps first: the memory takes longer
                memory = self._memory(loaded, reading, position)
            yield (skip, skip, skip, skip, skip, skip, memory, skip)
        except R.MicroscopeError as error:
            yield (skip, f"⚠️ {error}", skip, skip, skip, skip, skip, skip)
        except Exception as error:  # the page says what broke and the app keeps serving
            yield (skip, f"⚠️ Unexpected error: {type(error).__name__}: {error}", *[skip] * 6)

    def select(self, reading, order, units, count, event: gr.SelectData):
        """A click on a token: redraw everything at that position."""
        return self.show(reading, event.index, order, units, count)

    def show(self, reading, position, order, units, count):
        """Redraw the tokens, heatmaps, distribution and memory at `position` (status first)."""
        skip = gr.skip()
        if reading is None:
            return ("Generate first, then click a token.", *[skip] * 5)
        try:
            position = min(max(int(position or 0), 0), len(reading.token_ids) - 1)
            with self.lock:
                loaded = self._model()
                if loaded.source != reading.source:
                    raise R.MicroscopeError(f"This text was read by {reading.source}: generate again.")
                view = self._view(loaded, reading, position, order, units, count)
            return (f"token #{position} {reading.tokens[position]!r}", *view)
        except R.MicroscopeError as error:
            return (f"⚠️ {error}", *[skip] * 5)
        except Exception as error:  # the page says what broke and the app keeps serving
            return (f"⚠️ Unexpected error: {type(error).__name__}: {error}", *[skip] * 5)

    def _model(self) -> R.Loaded:
        if self.loaded is None:
            raise R.MicroscopeError(self.model_message.removeprefix("⚠️ "))
        return self.loaded

    def _view(self, loaded, reading, position, order, units, count, memory=True) -> tuple:
        """(tokens, position, heatmaps, next-token label, memory) for `position` (memory left as it is when
        `memory` is False)."""
        tokens = [
            (text, "selected" if t == position else "prompt" if t < reading.prompt_length else "generated")
            for t, text in enumerate(reading.tokens)
        ]
        label = render.next_token_label(reading, position)
        if reading.cell_type is None:
            return tokens, position, render.heatmaps(reading, [], position), label, gr.skip()
        hidden = reading.panels[0][R.STATE_PANEL[reading.cell_type]].shape[1]
        picked = R.parse_units(units, hidden)
        rows = [R.unit_order(reading, k, order, int(count), picked) for k in range(len(reading.panels))]
        shown = self._memory(loaded, reading, position) if memory else gr.skip()
        return tokens, position, render.heatmaps(reading, rows, position), label, shown

    @staticmethod
    def _memory(loaded, reading, position) -> str:
        """The "what would it remember" panel for the token at `position`."""
        if reading.cell_type is None:
            return ""
        carried = R.carry(reading, position)
        return render.memory_html(reading, position, carried, R.sensitivity(loaded, reading, position))


def build_app(source: str | None, trust_remote_code: bool = False, check_folder: Callable | None = None):
    """The microscope as a `gradio.Blocks` (call `.launch()` on it), starting with the model at `source`."""
    scope = Microscope(source, trust_remote_code, check_folder)
    with gr.Blocks(title="LSTM microscope") as app:
        gr.Markdown(INTRO)
        with gr.Row():
            model_box = gr.Textbox(source or "", label="model folder or Hub id", elem_id="model", scale=4)
            load = gr.Button("Load", elem_id="load", scale=1)
        model_status = gr.Markdown(scope.model_message, elem_id="model-status")
        prompt = gr.Textbox(EXAMPLE, label="prompt", lines=2, elem_id="prompt")
        with gr.Accordion("sampling", open=False, elem_id="sampling"):
            with gr.Row():
                max_new = gr.Slider(1, 200, 40, step=1, label="max new tokens", elem_id="max-new-tokens")
                do_sample = gr.Checkbox(True, label="sample (off: greedy)")
                temperature = gr.Slider(0.05, 2.0, 1.0, label="temperature")
                top_k = gr.Slider(0, 200, 50, step=1, label="top-k (0: off)")
                top_p = gr.Slider(0.05, 1.0, 1.0, label="top-p")
                seed = gr.Number(0, precision=0, label="seed")
                stop = gr.Checkbox(True, label="stop at the end-of-text token", elem_id="stop-at-eos")
        run = gr.Button("Generate", variant="primary", elem_id="generate")
        generated = gr.Textbox(label="text", lines=3, interactive=False, elem_id="generated")
        status = gr.Markdown("", elem_id="status")
        tokens = gr.HighlightedText(
            label="tokens (click one)", color_map=TOKEN_COLORS, show_legend=True, elem_id="tokens",
            show_inline_category=False,
        )  # fmt: skip
        with gr.Row():
            position = gr.Number(label="position", precision=0, elem_id="position", scale=1)
            order = gr.Radio(list(R.UNIT_ORDERS), value="most-changing", label="units", scale=2)
            units = gr.Textbox("", label="units by hand (e.g. 3, 17)", elem_id="units", scale=2)
            count = gr.Slider(4, 64, 16, step=1, label="units shown", scale=2)
        with gr.Row():
            with gr.Column(scale=3):
                heatmaps = gr.HTML(elem_id="heatmaps")
            with gr.Column(scale=1):
                next_token = gr.Label(num_top_classes=R.TOP_K, label="next token", elem_id="next-token")
        gr.Markdown("### What would it remember?")
        memory = gr.HTML(elem_id="memory")
        state = gr.State(None)

        views = [tokens, position, heatmaps, next_token, memory]
        load.click(scope.load, model_box, model_status)
        model_box.submit(scope.load, model_box, model_status)
        sampling = [max_new, do_sample, temperature, top_k, top_p, seed, stop, order, units, count]
        run.click(scope.generate, [prompt, *sampling], [generated, status, *views, state])
        prompt.submit(scope.generate, [prompt, *sampling], [generated, status, *views, state])
        tokens.select(scope.select, [state, order, units, count], [status, *views])
        redraw = [state, position, order, units, count]
        for control in (order, count):
            control.change(scope.show, redraw, [status, *views])
        for control in (units, position):
            control.submit(scope.show, redraw, [status, *views])
    return app
