"""Parameter matching: for each model family, the depth and width whose exact total parameter count is nearest
a target.

Counts are taken from the very model `hf-lstm train` would build (`hf_lstm.builders.build_model`), constructed
on the meta device, so they cost no memory and no initialisation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from ..configuration_hf_lstm import is_hf_lstm

FAMILIES = ("hf_lstm", "gpt2", "llama")
# Depths tried for each family, in order of preference: the first depth whose best width lands within
# TIGHT_TOLERANCE of the target is taken; otherwise the best of all of them (if within --tolerance).
PREFERRED_DEPTHS = {"hf_lstm": (2, 3, 1), "gpt2": (4, 3, 5, 2, 6, 1), "llama": (4, 3, 5, 2, 6, 1)}
WIDTH_STEP = 8
MAX_WIDTH = 4096
TIGHT_TOLERANCE = 0.05

# The configuration fields of each family that are not its shape: every family ties its output layer to the
# token embedding (which the parameter count depends on), and none uses dropout. At a budget of minutes on a
# CPU every model sees about one epoch of PTB, a regime where dropout only slows learning (GPT-2's default 0.1
# is switched off; Llama and hf_lstm have none by default). The training half of each family's recipe is
# `hf_lstm.compare.runs.RECIPES`.
FAMILY_CONFIG = {
    "hf_lstm": {"cell_type": "lstm", "tie_word_embeddings": True},
    "gpt2": {"tie_word_embeddings": True, "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0},
    "llama": {"tie_word_embeddings": True},
}


def parse_count(text: str | int) -> int:
    """A parameter or token count written with an optional unit.

    Args:
        text (`str` or `int`): e.g. `"5M"` (5_000_000), `"50k"` (50_000), `"1.5m"` (1_500_000) or `"123456"`.

    Returns:
        `int`: the count.

    Raises:
        `ValueError`: for text that is not a number with an optional k/m/b unit, or a count below 1.
    """
    if isinstance(text, int):
        return text
    raw = str(text).strip().replace("_", "").replace(",", "")
    scale = {"k": 1e3, "m": 1e6, "b": 1e9, "g": 1e9}.get(raw[-1:].lower(), 1)
    number = raw[:-1] if scale != 1 else raw
    try:
        value = float(number) * scale
    except ValueError:
        raise ValueError(f"cannot read {text!r} as a parameter count (examples: 4M, 50k, 1200000)") from None
    if value < 1:
        raise ValueError(f"a parameter count must be positive, got {text!r}")
    return round(value)


def attention_heads(width: int) -> int:
    """Heads for a Transformer of this width: as many as keep every head at least 32 wide (even widths only,
    which rotary embeddings need), at least one. 256 -> 8, 208 -> 4 (52 wide), 48 -> 1."""
    best = 1
    for heads in range(1, width + 1):
        if width % heads == 0 and (width // heads) % 2 == 0 and width // heads >= 32:
            best = heads
    return best


def llama_intermediate_size(width: int) -> int:
    """Llama's MLP width rule (8/3 of the model width), rounded up to a multiple of 8."""
    return WIDTH_STEP * math.ceil(8 * width / 3 / WIDTH_STEP)


def shape_overrides(
    model_type: str, layers: int, width: int, block_size: int = 128, max_positions: int | None = None
) -> dict:
    """The configuration changes that give `model_type` this depth and width (`FAMILY_CONFIG` included).

    GPT-2 learns one embedding per position, so it gets exactly `block_size` positions (the ones it is trained
    on, and all its parameters are trained); Llama's rotary positions cost no parameters, so it is built with
    `max_position_embeddings = max_positions` to let generation reach long prompts (positions beyond the
    trained block are extrapolation: speed is meaningful there, quality is not).

    Args:
        model_type (`str`): one of `FAMILIES`.
        layers (`int`): depth.
        width (`int`): hidden size.
        block_size (`int`, *optional*, defaults to 128): the positions GPT-2 gets.
        max_positions (`int`, *optional*): the positions Llama gets (at least `block_size`).

    Returns:
        `dict`: configuration fields, as `hf-lstm train --config_overrides` takes them.
    """
    overrides = dict(FAMILY_CONFIG.get(model_type, {}))
    if is_hf_lstm(model_type):
        overrides.update(hidden_size=width, num_hidden_layers=layers)
    elif model_type == "gpt2":
        overrides.update(n_embd=width, n_layer=layers, n_head=attention_heads(width), n_positions=block_size)
    elif model_type == "llama":
        heads = attention_heads(width)
        overrides.update(
            hidden_size=width,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=heads,
            head_dim=width // heads,
            intermediate_size=llama_intermediate_size(width),
            max_position_embeddings=max(block_size, max_positions or block_size),
        )
    else:
        raise ValueError(
            f"no parameter matching rule for model type {model_type!r}; choose from {', '.join(FAMILIES)}"
        )
    return overrides


def format_overrides(overrides: dict) -> str:
    """A dict as the training script's `--config_overrides` text (`"a=1,b=true"`)."""
    return ",".join(f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in overrides.items())


def build_model_on_meta(
    model_type: str, overrides: dict, vocab_size: int, block_size: int = 128, eval_window: int = 128
):
    """The model `hf-lstm train --model_type ... --config_overrides ...` would build, on the meta device
    (no memory, no initialisation cost): what the parameter counts are taken from."""
    from ..builders import TokenIds, build_model

    with torch.device("meta"):
        return build_model(
            model_type,
            vocab=TokenIds(vocab_size),
            config_overrides=overrides,
            min_positions=max(block_size, eval_window),
        )


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(total, non-embedding) parameter counts.

    Embedding parameters are the weights of every `nn.Embedding` (tokens and, for GPT-2, learned positions)
    and an untied output matrix; biases and norms are not.
    """
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    output_weight = getattr(output, "weight", None)
    input_weight = model.get_input_embeddings().weight if hasattr(model, "get_input_embeddings") else None
    # parameters() lists a tied weight once; transformers before 5.24 does not tie on the meta device, so a
    # weight the config ties but that is still separate here is counted as the one it will be
    untied_copy = (
        getattr(model.config, "tie_word_embeddings", False)
        and output_weight is not None
        and output_weight is not input_weight
    )
    params = [p for p in model.parameters() if not (untied_copy and p is output_weight)]
    total = sum(p.numel() for p in params)
    embedding_ids = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    if output_weight is not None:
        embedding_ids.add(id(output_weight))
    embedding = sum(p.numel() for p in params if id(p) in embedding_ids)
    return total, total - embedding


@dataclass
class MatchedShape:
    """A family's configuration chosen for a target size, with its exact counts."""

    model_type: str
    layers: int
    width: int
    overrides: dict
    num_parameters: int
    num_non_embedding_parameters: int
    target_parameters: int
    relative_error: float = field(init=False)

    def __post_init__(self):
        self.relative_error = self.num_parameters / self.target_parameters - 1

    def describe(self) -> str:
        """One line: `2 x 256 lstm` for hf_lstm, `4 layers x 208 (4 heads)` for Transformers."""
        if is_hf_lstm(self.model_type):
            return f"{self.layers} x {self.width} {self.overrides.get('cell_type', 'lstm')}"
        heads = self.overrides.get("n_head") or self.overrides.get("num_attention_heads")
        extra = (
            f", MLP {self.overrides['intermediate_size']}" if "intermediate_size" in self.overrides else ""
        )
        return f"{self.layers} layers x {self.width} ({heads} head{'s' if heads != 1 else ''}{extra})"


def match_parameters(
    model_type: str,
    target: int,
    vocab_size: int,
    tolerance: float = 0.10,
    block_size: int = 128,
    max_positions: int | None = None,
    eval_window: int = 128,
) -> MatchedShape:
    """The configuration of `model_type` whose total parameter count is nearest `target`.

    Depths are tried in `PREFERRED_DEPTHS` order; for each, the width (a multiple of 8) is found by bisection
    on the exact count (it grows with the width). The first depth within 5% is taken; otherwise the nearest
    over all depths.

    Args:
        model_type (`str`): one of `FAMILIES`.
        target (`int`): total parameters wanted.
        vocab_size (`int`): the shared tokenizer's size.
        tolerance (`float`, *optional*, defaults to 0.10): the largest accepted relative gap to `target`.
        block_size (`int`, *optional*, defaults to 128): the Transformers' training block.
        max_positions (`int`, *optional*): the longest sequence generation will need (Llama's positions).
        eval_window (`int`, *optional*, defaults to 128): the fixed-window evaluation's window.

    Raises:
        `ValueError`: if even the nearest shape is more than `tolerance` away (e.g. a target smaller than the
        embedding matrix alone).
    """
    cache: dict[tuple[int, int], tuple[int, int, dict]] = {}

    def counted(layers: int, width: int):
        if (layers, width) not in cache:
            # GPT-2 gets the positions the training script would give it: max(block, evaluation window)
            overrides = shape_overrides(
                model_type, layers, width, max(block_size, eval_window), max_positions
            )
            model = build_model_on_meta(model_type, overrides, vocab_size, block_size, eval_window)
            cache[layers, width] = (*count_parameters(model), overrides)
        return cache[layers, width]

    candidates = []
    for layers in PREFERRED_DEPTHS.get(model_type, (2,)):
        low, high = 1, MAX_WIDTH // WIDTH_STEP  # bisection for the first width whose count reaches the target
        while low < high:
            mid = (low + high) // 2
            if counted(layers, mid * WIDTH_STEP)[0] >= target:
                high = mid
            else:
                low = mid + 1
        widths = {max(1, low - 1) * WIDTH_STEP, low * WIDTH_STEP}
        best = min(widths, key=lambda w: abs(counted(layers, w)[0] - target))
        total, non_embedding, overrides = counted(layers, best)
        shape = MatchedShape(model_type, layers, best, overrides, total, non_embedding, target)
        candidates.append(shape)
        if abs(shape.relative_error) <= TIGHT_TOLERANCE:
            return shape
    shape = min(candidates, key=lambda s: abs(s.relative_error))
    if abs(shape.relative_error) > tolerance:
        raise ValueError(
            f"no {model_type} configuration on the grid comes within {tolerance:.0%} of {target:,} "
            f"parameters (nearest: {shape.describe()}, {shape.num_parameters:,}; vocabulary {vocab_size:,}): "
            "choose another --target_params"
        )
    return shape
