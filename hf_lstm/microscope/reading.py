"""What the microscope reads from a model: the loaded model, a streamed generation, one pass over the text
with `output_gates=True`, and what one token leaves in memory at later positions.

This file is carried into a Space next to `app.py` (see `hf_lstm.microscope.space`): it imports only the
standard library, numpy, torch and transformers. A model is any causal LM folder or Hub id; the gates are read
from hf_lstm models (`config.model_type == "hf_lstm"`, the package's own classes or the ones a folder carries
for `trust_remote_code=True`), whose forward returns every layer's gates with `output_gates=True`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

MAX_PROMPT_CHARACTERS = 4000
"""A longer prompt is refused with a message (the heatmaps of thousands of tokens are unreadable anyway)."""
MAX_TOKENS = 600
"""The most tokens (prompt and generated together) one reading covers."""
TOP_K = 10
"""How many next tokens the distribution shows."""
STATE_PANEL = {"lstm": "cell", "peephole": "cell", "gru": "hidden", "rnn": "hidden"}
"""The panel that holds each cell type's memory: C_t for the LSTMs, h_t otherwise."""
PANELS = {
    "lstm": ("forget", "input", "output", "cell"),
    "peephole": ("forget", "input", "output", "cell"),
    "gru": ("update", "reset", "hidden"),
    "rnn": ("hidden",),
}
"""The heatmaps drawn per layer for each cell type: the gates (a vanilla RNN has none) and the memory."""
CARRY_GATE = {"lstm": "forget", "peephole": "forget", "gru": "update"}
"""The gate whose product over time is what survives of a token's write: C_t = f_t * C_{t-1} + ...,
h_t = z_t * h_{t-1} + (1 - z_t) * n_t (torch.nn.GRU's convention). The vanilla RNN has no such gate."""


class MicroscopeError(ValueError):
    """A problem the page shows as a message (a bad prompt, a folder that is not a model, ...)."""


@dataclass
class Loaded:
    """A model and its tokenizer, ready to read.

    Args:
        model: a causal LM in eval mode.
        tokenizer: its tokenizer.
        source (`str`): the folder or Hub id it came from.
        cell_type (`str` or `None`): `"lstm"`, `"gru"`, `"rnn"` or `"peephole"`; `None` for a model without
            gates (a Transformer trained by the same script), which still generates and shows its next-token
            distribution.
    """

    model: object
    tokenizer: object
    source: str
    cell_type: str | None

    def describe(self) -> str:
        """One line: what was loaded."""
        config = self.model.config
        size = sum(p.numel() for p in self.model.parameters())
        if self.cell_type is None:
            return f"{self.source}: {config.model_type}, {size / 1e6:.2f}M parameters (no gates to show)"
        return (
            f"{self.source}: {config.num_hidden_layers}x{config.hidden_size} {self.cell_type}, "
            f"vocabulary {config.vocab_size}, {size / 1e6:.2f}M parameters"
        )


def load_model(
    source: str, trust_remote_code: bool = False, check_folder: Callable[[str], None] | None = None
) -> Loaded:
    """Load a causal LM and its tokenizer from a folder or a Hub id, or raise `MicroscopeError` saying why.

    Args:
        source (`str`): a folder written by `hf-lstm train` (or `save_pretrained`), or a Hub id.
        trust_remote_code (`bool`, *optional*, defaults to `False`): load with the model code the folder
            carries (needed where hf_lstm is not installed, as on a Space).
        check_folder (`Callable[[str], None]`, *optional*): a check that raises `ValueError` or `OSError` with
            a message for a folder that cannot load (the CLI passes `hf_lstm.builders.check_model_folder`).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = (source or "").strip()
    if not source:
        raise MicroscopeError("Give a model: a folder written by `hf-lstm train --output_dir`, or a Hub id.")
    local = Path(source).expanduser()
    if local.exists():
        if not local.is_dir() or not (local / "config.json").is_file():
            raise MicroscopeError(
                f"{source} is not a model folder: a folder written by `hf-lstm train` (or save_pretrained) "
                "holds config.json, model.safetensors and the tokenizer files."
            )
        source = str(local)
    try:
        if check_folder is not None:
            check_folder(source)
        model = AutoModelForCausalLM.from_pretrained(source, trust_remote_code=trust_remote_code)
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    except Exception as error:  # transformers raises OSError, ValueError, EnvironmentError, ...
        raise MicroscopeError(_load_failure(source, local.exists(), error)) from None
    model.eval()
    hf_lstm = getattr(model.config, "model_type", None) == "hf_lstm"
    return Loaded(model, tokenizer, source, model.config.cell_type if hf_lstm else None)


def _load_failure(source: str, is_local: bool, error: Exception) -> str:
    text = " ".join(str(error).split())
    if len(text) > 400:
        text = text[:400] + " ..."
    if "trust_remote_code" in text:
        return f"{source} needs its own model code: start with --trust_remote_code ({text})"
    if not is_local:
        return (
            f"Could not load {source} from the Hugging Face Hub: it is unreachable from here (offline, or "
            f"HF_HUB_OFFLINE=1), or there is no such model. Give a local folder instead. ({text})"
        )
    return f"Could not load the model folder {source}: {text}"


def prompt_ids(loaded: Loaded, prompt: str, max_new_tokens: int = 0) -> torch.Tensor:
    """The prompt's token ids, shape (1, T), or `MicroscopeError` for an empty or too long prompt."""
    if not prompt or not prompt.strip():
        raise MicroscopeError("Type a prompt first: the microscope reads it and what the model writes next.")
    if len(prompt) > MAX_PROMPT_CHARACTERS:
        raise MicroscopeError(
            f"The prompt has {len(prompt):,} characters; the microscope reads at most "
            f"{MAX_PROMPT_CHARACTERS:,}. Shorten it."
        )
    ids = loaded.tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
    if ids.shape[1] == 0:
        raise MicroscopeError("The prompt has no tokens for this tokenizer; type some words.")
    if ids.shape[1] + max_new_tokens > MAX_TOKENS:
        raise MicroscopeError(
            f"The prompt is {ids.shape[1]} tokens and {max_new_tokens} more were asked for; one reading "
            f"covers at most {MAX_TOKENS} tokens. Shorten the prompt or ask for fewer new tokens."
        )
    return ids


@dataclass
class Sampling:
    """The usual sampling controls of `generate()`."""

    max_new_tokens: int = 40
    do_sample: bool = True
    temperature: float = 1.0
    top_k: int = 50
    top_p: float = 1.0
    seed: int = 0
    stop_at_eos: bool = True

    def generate_kwargs(self, tokenizer) -> dict:
        """The keyword arguments for `model.generate`."""
        kwargs = dict(max_new_tokens=int(self.max_new_tokens), do_sample=bool(self.do_sample))
        if self.do_sample:
            kwargs.update(temperature=float(self.temperature), top_k=int(self.top_k), top_p=float(self.top_p))
        else:  # greedy: say so, or the folder's sampling settings warn that they are ignored
            kwargs.update(temperature=None, top_k=None, top_p=None)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if not self.stop_at_eos:  # write on through end-of-text tokens, as the model read its training stream
            kwargs["eos_token_id"] = None
        return {**kwargs, "pad_token_id": pad}


def generate_stream(
    loaded: Loaded, ids: torch.Tensor, sampling: Sampling
) -> Iterator[tuple[str, list | None]]:
    """Generate after `ids`, yielding `(new text so far, None)` as tokens arrive and finally
    `(new text, every token id: prompt and new)`."""
    from transformers import TextIteratorStreamer

    skip = sampling.stop_at_eos  # show the end-of-text tokens the text runs through
    streamer = TextIteratorStreamer(loaded.tokenizer, skip_prompt=True, skip_special_tokens=skip)
    result: dict = {}

    def work():
        try:
            torch.manual_seed(int(sampling.seed))
            with torch.no_grad():
                result["ids"] = loaded.model.generate(
                    ids, attention_mask=torch.ones_like(ids), streamer=streamer,
                    **sampling.generate_kwargs(loaded.tokenizer),
                )  # fmt: skip
        except Exception as error:  # shown on the page; the streamer must end either way
            result["error"] = error
            streamer.end()

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    text = ""
    for piece in streamer:
        text += piece
        yield text, None
    thread.join()
    if "error" in result:
        raise MicroscopeError(f"Generation failed: {result['error']}")
    yield text, result["ids"][0].tolist()


@dataclass
class Reading:
    """One pass of the model over a text.

    Args:
        token_ids (`list[int]`): the tokens read (prompt, then generated).
        tokens (`list[str]`): each token as text.
        prompt_length (`int`): how many of them are the prompt.
        cell_type (`str` or `None`): as in [`Loaded`].
        panels (`list[dict[str, np.ndarray]]`): per layer, each panel of `PANELS[cell_type]` as a
            (tokens, hidden) array.
        top_next (`list[list[tuple[str, float]]]`): per position, the `TOP_K` likeliest next tokens.
        seconds (`float`): how long the pass took.
        source (`str`): the model that read it.
    """

    token_ids: list[int]
    tokens: list[str]
    prompt_length: int
    cell_type: str | None
    panels: list[dict[str, np.ndarray]] = field(default_factory=list)
    top_next: list[list[tuple[str, float]]] = field(default_factory=list)
    seconds: float = 0.0
    source: str = ""


def token_texts(tokenizer, token_ids: list[int]) -> list[str]:
    """Each token as the text it stands for (byte-level markers decoded; special tokens by name)."""
    return [tokenizer.decode([t]) or tokenizer.convert_ids_to_tokens(t) for t in token_ids]


@torch.no_grad()
def read(loaded: Loaded, token_ids: list[int], prompt_length: int) -> Reading:
    """Run the model once over `token_ids` with `output_gates=True` (hf_lstm models) and keep every layer's
    gates and memory and the next-token distribution at every position."""
    start = time.perf_counter()
    ids = torch.tensor([token_ids])
    hf_lstm = loaded.cell_type is not None
    kwargs = dict(output_gates=True, output_hidden_states=True) if hf_lstm else {}
    out = loaded.model(input_ids=ids, use_cache=False, **kwargs)
    probs = torch.softmax(out.logits[0].float(), dim=-1)
    values, indices = probs.topk(min(TOP_K, probs.shape[-1]), dim=-1)
    texts = {}
    for t in indices.unique().tolist():
        texts[t] = token_texts(loaded.tokenizer, [t])[0]
    top_next = [
        [(texts[i], p) for i, p in zip(row_i, row_p)]
        for row_i, row_p in zip(indices.tolist(), values.tolist())
    ]
    panels = []
    if hf_lstm:
        for layer, gates in enumerate(out.gates):
            names = PANELS[loaded.cell_type]
            found = {**gates, "hidden": out.hidden_states[layer + 1]}
            panels.append({name: found[name][0].float().numpy() for name in names})
    return Reading(
        token_ids=list(token_ids),
        tokens=token_texts(loaded.tokenizer, token_ids),
        prompt_length=prompt_length,
        cell_type=loaded.cell_type,
        panels=panels,
        top_next=top_next,
        seconds=time.perf_counter() - start,
        source=loaded.source,
    )


UNIT_ORDERS = ("most-changing", "most-saturated", "by hand")
"""How the units (rows of a heatmap) are chosen and ordered."""


def unit_order(
    reading: Reading, layer: int, how: str, count: int, picked: list[int] | None = None
) -> list[int]:
    """The units of `layer` to draw, best first: `"most-changing"` (the memory's spread over the text),
    `"most-saturated"` (the share of gate values within 0.05 of 0 or 1; of |h_t| > 0.95 for a vanilla RNN),
    or `"by hand"` (`picked`, then the most-changing to fill `count`)."""
    panels = reading.panels[layer]
    memory = panels[STATE_PANEL[reading.cell_type]]
    changing = np.argsort(-memory.std(axis=0), kind="stable").tolist()
    if how == "most-saturated":
        gates = [panels[n] for n in panels if n not in ("cell", "hidden")]
        if gates:
            score = np.mean([((g < 0.05) | (g > 0.95)).mean(axis=0) for g in gates], axis=0)
        else:
            score = (np.abs(memory) > 0.95).mean(axis=0)
        return np.argsort(-score, kind="stable")[:count].tolist()
    if how == "by hand" and picked:
        hidden = memory.shape[1]
        chosen = [u for u in dict.fromkeys(picked) if 0 <= u < hidden]
        return (chosen + [u for u in changing if u not in chosen])[: max(count, len(chosen))]
    return changing[:count]


def parse_units(text: str, hidden_size: int) -> list[int]:
    """Unit numbers typed by hand ("3, 17 42"), or `MicroscopeError` naming what is wrong."""
    units = []
    for word in (text or "").replace(",", " ").split():
        if not word.isdigit() or int(word) >= hidden_size:
            raise MicroscopeError(f"Units are numbers from 0 to {hidden_size - 1}; {word!r} is not one.")
        units.append(int(word))
    return units


def carry(reading: Reading, position: int) -> list[np.ndarray] | None:
    """What survives of the memory written at `position` at every later position, per layer: the mean over
    units of the product of the carrying gate (forget gate, or the GRU's update gate) from `position + 1` on,
    as a (tokens - position,) array starting at 1. `None` for a vanilla RNN (it has no such gate)."""
    gate = CARRY_GATE.get(reading.cell_type)
    if gate is None:
        return None
    curves = []
    for panels in reading.panels:
        after = panels[gate][position + 1 :].astype(np.float64)
        survival = np.cumprod(after, axis=0) if len(after) else np.zeros((0, after.shape[1]))
        curves.append(np.concatenate([[1.0], survival.mean(axis=1)]))
    return curves


def sensitivity(loaded: Loaded, reading: Reading, position: int) -> np.ndarray:
    """How strongly the token at `position` still moves the last layer's h_t at every later position t: the
    norm of the Jacobian-vector product dh_t/dx_s . x_s (x_s: the token's embedding, so the product is the
    linearised effect of that token's input), relative to its value at t = s. For a vanilla RNN this is the
    vanishing gradient itself.

    Computed exactly by the double-backward trick (J v is the gradient with respect to u of (J^T u) . v), on
    the reference path: two backward passes, where torch's forward-mode AD copies every recurrent weight
    matrix at every step (ten times slower here)."""
    model = loaded.model
    ids = torch.tensor([reading.token_ids])
    with torch.no_grad():
        embeds = model.get_input_embeddings()(ids)
    tangent = torch.zeros_like(embeds)
    tangent[0, position] = embeds[0, position]
    with torch.enable_grad():
        inputs = embeds.clone().requires_grad_(True)
        hidden = model.model(inputs_embeds=inputs, output_gates=True, use_cache=False).last_hidden_state
        u = torch.zeros_like(hidden, requires_grad=True)
        (vjp,) = torch.autograd.grad(hidden, inputs, grad_outputs=u, create_graph=True)
        (effect,) = torch.autograd.grad(vjp, u, grad_outputs=tangent)
    norms = effect[0, position:].norm(dim=-1).double().numpy()
    return norms / max(norms[0], 1e-30)
