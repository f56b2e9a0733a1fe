"""Parameter matching: for each model family, the depth and width whose exact total parameter count is nearest
a target.

Counts are taken from the very model `hf-lstm train` would build (`hf_lstm.builders.build_model`), constructed
on the meta device, so they cost no memory and no initialisation.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..configuration_hf_lstm import is_hf_lstm
from .families import get_family

WIDTH_STEP = 8
MAX_WIDTH = 4096
TIGHT_TOLERANCE = 0.05


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


def shape_overrides(
    model_type: str, layers: int, width: int, block_size: int = 128, max_positions: int | None = None
) -> dict:
    """The configuration changes that give a family this depth and width (`families.Family.overrides`).

    GPT-2 learns one embedding per position, so it gets exactly `block_size` positions (the ones it is trained
    on, and all its parameters are trained); Llama's rotary positions cost no parameters, so it is built with
    `max_position_embeddings = max_positions` to let generation reach long prompts (positions beyond the
    trained block are extrapolation: speed is meaningful there, quality is not).

    Args:
        model_type (`str`): a family name (`FAMILIES`, or `hf_lstm:CELL`).
        layers (`int`): depth.
        width (`int`): hidden size.
        block_size (`int`, *optional*, defaults to 128): the positions GPT-2 gets.
        max_positions (`int`, *optional*): the positions Llama gets (at least `block_size`).

    Returns:
        `dict`: configuration fields, as `hf-lstm train --config_overrides` takes them.

    Raises:
        `ValueError`: for an unknown family.
    """
    return get_family(model_type).overrides(layers, width, block_size, max_positions)


def format_overrides(overrides: dict) -> str:
    """A dict as the training script's `--config_overrides` text (`"a=1,b=true"`)."""
    return ",".join(f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in overrides.items())


def build_model_on_meta(
    model_type: str, overrides: dict, vocab_size: int, block_size: int = 128, eval_window: int = 128
):
    """The model `hf-lstm train --model_type ... --config_overrides ...` would build for a family (its name,
    as `--models` gives it), on the meta device
        (no memory, no initialisation cost): what the parameter counts are taken from."""
    from ..builders import TokenIds, build_model

    with torch.device("meta"):
        return build_model(
            get_family(model_type).model_type,
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
    name: str = ""
    relative_error: float = field(init=False)

    def __post_init__(self):
        self.name = self.name or self.model_type  # the family as --models names it (hf_lstm:gru)
        self.relative_error = self.num_parameters / self.target_parameters - 1

    def describe(self) -> str:
        """One line: `2 x 256 lstm` for hf_lstm, `4 layers x 208 (4 heads, MLP 560)` for the others."""
        if is_hf_lstm(self.model_type):
            return f"{self.layers} x {self.width} {self.overrides.get('cell_type', 'lstm')}"
        heads = self.overrides.get("n_head") or self.overrides.get("num_attention_heads")
        if self.model_type in ("mamba2", "xlstm"):
            heads = self.overrides.get("num_heads")
        parts = [f"{heads} head{'s' if heads != 1 else ''}"] if heads else []
        if "intermediate_size" in self.overrides:
            parts.append(f"MLP {self.overrides['intermediate_size']}")
        details = f" ({', '.join(parts)})" if parts else ""
        return f"{self.layers} layers x {self.width}{details}"


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

    Depths are tried in the family's order of preference (`families.Family.depths`); for each, the width (a
    multiple of the family's `width_step`) is found by bisection on the exact count (it grows with the
    width). The first depth within 5% is taken; otherwise the nearest
    over all depths.

    Args:
        model_type (`str`): a family name (`FAMILIES`, or `hf_lstm:CELL`).
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
    family = get_family(model_type)
    step = family.width_step
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
    for layers in family.depths:
        low, high = 1, MAX_WIDTH // step  # bisection for the first width whose count reaches the target
        while low < high:
            mid = (low + high) // 2
            if counted(layers, mid * step)[0] >= target:
                high = mid
            else:
                low = mid + 1
        widths = {max(1, low - 1) * step, low * step}
        best = min(widths, key=lambda w: abs(counted(layers, w)[0] - target))
        total, non_embedding, overrides = counted(layers, best)
        shape = MatchedShape(
            family.model_type, layers, best, overrides, total, non_embedding, target, name=family.name
        )
        candidates.append(shape)
        if abs(shape.relative_error) <= TIGHT_TOLERANCE:
            return shape
    shape = min(candidates, key=lambda s: abs(s.relative_error))
    if abs(shape.relative_error) > tolerance:
        raise ValueError(
            f"no {family.name} configuration on the grid comes within {tolerance:.0%} of {target:,} "
            f"parameters (nearest: {shape.describe()}, {shape.num_parameters:,}; vocabulary {vocab_size:,}): "
            "choose another --target_params"
        )
    return shape
