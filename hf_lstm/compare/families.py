"""The model families `hf-lstm compare` trains, one `Family` each: how a depth and width become a
configuration, which depths and widths the parameter matching tries, the training recipe, and which code
path runs it.

    hf_lstm (any cell: hf_lstm:gru, hf_lstm:rnn, hf_lstm:peephole), gpt2, llama,
    mamba, mamba2, xlstm, rwkv, recurrent_gemma

Every peer is the transformers model of that type, built from its default configuration with the shape fields
set here (`hf_lstm.builders.build_model` sets fields on an existing config, so fields that a config derives
in its `__init__`, such as Mamba's `intermediate_size`, are set explicitly). Each family ties its output
layer to its token embedding (except xLSTM, whose transformers model cannot) and uses no dropout, so the total
parameter count is the fair count and the vocabulary costs every family about the same.
"""

from __future__ import annotations

import functools
import importlib.util
import math
from dataclasses import dataclass, field

from ..configuration_hf_lstm import CELL_TYPES

PEERS = ("mamba", "mamba2", "xlstm", "rwkv", "recurrent_gemma")
FAMILIES = ("hf_lstm", "gpt2", "llama", *PEERS)
"""Family names `--models` takes; `hf_lstm:CELL` (CELL one of `CELL_TYPES`) names another hf_lstm cell."""

ATTENTION = ("gpt2", "llama", "recurrent_gemma")
"""Families with attention layers (a KV cache and a context term in their FLOPs)."""

# The training half of each family's recipe, as `TrainingSettings` fields. hf_lstm and GPT-2 come from a small
# sweep on PTB at 4M parameters and 5 minutes (docs/COMPARE.md, "Recipes"); Llama and every recurrent
# peer take GPT-2's untuned, and `--lr_sweep N` gives every family the same N learning rates around these.
TRANSFORMER_RECIPE = {"batching": "blocks", "optimizer": "adamw", "learning_rate": 2e-3, "weight_decay": 0.1}
# No dropout for any family: `hf-lstm train`'s default `--regularization auto` gives a new hf_lstm model
# dropout on every corpus but PTB, which no peer gets here (--hf_lstm_train_args "--regularization auto").
LSTM_RECIPE = {"batching": "stream", "optimizer": "adamw", "learning_rate": 6e-3, "regularization": "none"}


def attention_heads(width: int) -> int:
    """Heads for an attention layer of this width: as many as keep every head at least 32 wide (even widths
    only, which rotary embeddings need), at least one. 256 -> 8, 208 -> 4 (52 wide), 48 -> 1."""
    best = 1
    for heads in range(1, width + 1):
        if width % heads == 0 and (width // heads) % 2 == 0 and width // heads >= 32:
            best = heads
    return best


def round_up(value: float, multiple: int) -> int:
    """`value` rounded up to a multiple of `multiple`."""
    return int(multiple * math.ceil(value / multiple))


def _lstm_shape(layers: int, width: int, block: int, positions: int) -> dict:
    return {"hidden_size": width, "num_hidden_layers": layers, "tie_word_embeddings": True}


def _gpt2_shape(layers: int, width: int, block: int, positions: int) -> dict:
    # GPT-2 learns one embedding per position: exactly the positions it trains on (all of them trained)
    no_dropout = {"resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}
    heads = attention_heads(width)
    return {
        "tie_word_embeddings": True,
        **no_dropout,
        "n_embd": width,
        "n_layer": layers,
        "n_head": heads,
        "n_positions": block,
    }


def _llama_shape(layers: int, width: int, block: int, positions: int) -> dict:
    heads = attention_heads(width)
    return {
        "tie_word_embeddings": True,
        "hidden_size": width,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": heads,
        "head_dim": width // heads,
        "intermediate_size": round_up(8 * width / 3, 8),  # Llama's MLP rule, 8/3 of the width
        "max_position_embeddings": max(block, positions),  # rotary: positions cost no parameters
    }


def _mamba_shape(layers: int, width: int, block: int, positions: int) -> dict:
    # the released configs' rules: expand 2, dt rank ceil(width / 16), state 16, convolution 4; full sequences
    # scanned by mamba.py's parallel scan (pure PyTorch) where `mambapy` is installed: transformers' own
    # fallback for CPUs (the sequential loop's backward costs ~15x its forward on this CPU)
    return {
        "use_mambapy": True,
        "tie_word_embeddings": True,
        "hidden_size": width,
        "num_hidden_layers": layers,
        "intermediate_size": 2 * width,
        "time_step_rank": math.ceil(width / 16),
    }


def _mamba2_shape(layers: int, width: int, block: int, positions: int) -> dict:
    # the released configs' rules: expand 2 into heads of 64, one group, state 128
    return {
        "tie_word_embeddings": True,
        "hidden_size": width,
        "num_hidden_layers": layers,
        "num_heads": 2 * width // 64,
        "head_dim": 64,
        "n_groups": 1,
        "time_step_rank": math.ceil(width / 16),
    }


def _xlstm_shape(layers: int, width: int, block: int, positions: int) -> dict:
    """xLSTM's config rounds the query/key and value widths up to multiples of 64 (`qk_dim`, `v_dim`: what its
    cache is built with), but transformers 5.24 builds the layer with the unrounded `width x factor`: shapes
    disagree unless the product is already a multiple of 64. So the factors are set to give exactly the
    rounded widths the config declares for the default factors (0.5 and 1.0); the +0.5 keeps both `int()` and
    the rounding on the same integer. Computation in float32 like every other family (the default autocasts
    the kernel to bfloat16, which this CPU runs slower). transformers' xLSTM cannot tie its output layer to
    the embedding (no `_tied_weights_keys`): it is untied, and counted, like the model it is."""
    qk, v = round_up(width * 0.5, 64), round_up(width * 1.0, 64)
    return {
        "tie_word_embeddings": False,
        "hidden_size": width,
        "embedding_dim": width,
        "num_hidden_layers": layers,
        "num_blocks": layers,
        "num_heads": 4,
        "qk_dim_factor": (qk + 0.5) / width,
        "v_dim_factor": (v + 0.5) / width,
        "autocast_kernel_dtype": "float32",
    }


def _rwkv_shape(layers: int, width: int, block: int, positions: int) -> dict:
    # RWKV-4: time mixing as wide as the model, channel mixing 4x; context_length only sizes the CUDA kernel
    return {
        "tie_word_embeddings": True,
        "hidden_size": width,
        "attention_hidden_size": width,
        "intermediate_size": 4 * width,
        "num_hidden_layers": layers,
        "context_length": max(block, positions),
    }


def _recurrent_gemma_shape(layers: int, width: int, block: int, positions: int) -> dict:
    # Griffin: two recurrent (RG-LRU) blocks then one local-attention block; MLP 3x; the default window 2048
    heads = attention_heads(width)
    return {
        "tie_word_embeddings": True,
        "hidden_size": width,
        "lru_width": width,
        "intermediate_size": 3 * width,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": heads,
        "head_dim": width // heads,
        "final_w_init_variance_scale": 2.0 / layers,
    }


@dataclass(frozen=True)
class Family:
    """One family of `--models`.

    Args:
        name (`str`): as `--models` names it (`hf_lstm:gru`).
        model_type (`str`): the transformers model type `hf-lstm train --model_type` builds.
        depths (`tuple[int, ...]`): depths the parameter matching tries, in order of preference.
        width_step (`int`): widths are multiples of this.
        recipe (`dict`): training fields (`TrainingSettings`), before `--lr_sweep` and the extra arguments.
        extra_config (`dict`): configuration fields beside the shape (hf_lstm's cell type).
    """

    name: str
    model_type: str
    depths: tuple[int, ...]
    width_step: int = 8
    recipe: dict = field(default_factory=lambda: dict(TRANSFORMER_RECIPE))
    extra_config: dict = field(default_factory=dict)

    @property
    def recurrent(self) -> bool:
        """Whether the model carries a fixed-size state (no position limit, nothing that grows)."""
        return self.model_type not in ATTENTION

    @property
    def slug(self) -> str:
        """The name as a file or folder name (`hf_lstm-gru`)."""
        return self.name.replace(":", "-")

    def overrides(self, layers: int, width: int, block_size: int = 128, max_positions: int | None = None):
        """The configuration fields that give this family `layers` x `width`, as `--config_overrides` takes
        them. `block_size` is the training block (GPT-2's positions); `max_positions` the longest sequence
        generation will need (Llama's rotary positions)."""
        shape = SHAPES[self.model_type](layers, width, block_size, max_positions or block_size)
        fields = {**self.extra_config, **shape}
        if not _config_has(self.model_type, "tie_word_embeddings"):
            # transformers 5.0's MambaConfig has no such field (5.24's has): the model is built, counted and
            # trained as that version builds it
            fields.pop("tie_word_embeddings", None)
        return fields


@functools.cache
def _config_has(model_type: str, name: str) -> bool:
    """Whether the installed transformers' configuration of `model_type` has the field `name`."""
    from transformers import AutoConfig

    return hasattr(AutoConfig.for_model(model_type), name)


SHAPES = {
    "hf_lstm": _lstm_shape,
    "gpt2": _gpt2_shape,
    "llama": _llama_shape,
    "mamba": _mamba_shape,
    "mamba2": _mamba2_shape,
    "xlstm": _xlstm_shape,
    "rwkv": _rwkv_shape,
    "recurrent_gemma": _recurrent_gemma_shape,
}
TRANSFORMER_DEPTHS = (4, 3, 5, 2, 6, 1)
_DEFINITIONS = {
    "gpt2": {"depths": TRANSFORMER_DEPTHS},
    "llama": {"depths": TRANSFORMER_DEPTHS},
    "mamba": {"depths": (4, 6, 8, 3, 5, 2, 1)},  # a Mamba block is about half a Transformer layer
    "mamba2": {"depths": (4, 6, 8, 3, 5, 2, 1), "width_step": 32},  # heads of 64 over 2 x width
    "xlstm": {"depths": (2, 3, 4, 1, 5, 6)},
    "rwkv": {"depths": TRANSFORMER_DEPTHS},
    "recurrent_gemma": {"depths": (3, 6, 4, 5, 2, 1)},  # 3: recurrent, recurrent, attention
}


def get_family(name: str) -> Family:
    """The `Family` a `--models` entry names.

    Raises:
        `ValueError`: for an unknown family or hf_lstm cell type.
    """
    base, _, cell = name.partition(":")
    if base == "hf_lstm":
        if cell and cell not in CELL_TYPES:
            raise ValueError(
                f"unknown hf_lstm cell type {cell!r} in {name!r}; choose from {', '.join(CELL_TYPES)}"
            )
        extra = {"cell_type": cell or "lstm"}
        return Family(name, "hf_lstm", (2, 3, 1), recipe=dict(LSTM_RECIPE), extra_config=extra)
    if cell or base not in _DEFINITIONS:
        raise ValueError(
            f"unknown family {name!r}; choose from {', '.join(FAMILIES)} (or hf_lstm:CELL with CELL one of "
            f"{', '.join(CELL_TYPES)})"
        )
    return Family(name, base, **_DEFINITIONS[base])


def _installed(*packages: str) -> dict[str, bool]:
    return {p: importlib.util.find_spec(p) is not None for p in packages}


def _kernel_note(packages: dict[str, bool]) -> str:
    missing = [p for p, ok in packages.items() if not ok]
    present = [p for p, ok in packages.items() if ok]
    return "; ".join(
        filter(
            None,
            [
                f"not installed: {', '.join(missing)}" if missing else "",
                f"installed: {', '.join(present)}" if present else "",
            ],
        )
    )


def code_path(model) -> str:
    """Which implementation ran `model` here, read from what is importable and what the model file selects
    (on a CPU, in float32). Honest rather than precise: where a fused kernel package is installed, it says so
    and names it as what transformers would pick."""
    model_type = model.config.model_type
    device = next(model.parameters()).device.type
    if model_type == "hf_lstm":
        cell = model.config.cell_type
        return (
            f"hf_lstm {cell}: torch's fused recurrent kernel (nn.{cell.upper()}) for training"
            " and prefill, its own one-step path for decoding"
            if cell != "peephole"
            else "hf_lstm peephole: the reference (step-by-step PyTorch) path"
        )
    if model_type in ("gpt2", "llama"):
        return f"{model_type}: PyTorch, attention {model.config._attn_implementation}"
    if model_type in ("mamba", "mamba2"):
        packages = _installed("mamba_ssm", "causal_conv1d", "mambapy")
        if packages["mamba_ssm"] and device == "cuda":
            what = "fused CUDA kernels (mamba_ssm)"
        elif model_type == "mamba2":
            what = "PyTorch reference chunked scan (SSD)"
        elif packages["mambapy"] and getattr(model.config, "use_mambapy", False):
            what = "PyTorch: mamba.py parallel scan (pscan) over full sequences, one step per decoded token"
        else:
            what = "PyTorch reference scan, one step per token"
        return f"{model_type}: {what}; {_kernel_note(packages)}"
    if model_type == "xlstm":
        packages = _installed("xlstm")
        what = "the xlstm package's kernels" if packages["xlstm"] else "native PyTorch chunkwise mLSTM"
        return f"xlstm: {what} ({model.config.autocast_kernel_dtype}); {_kernel_note(packages)}"
    if model_type == "rwkv":
        packages = _installed("kernels", "ninja")
        cuda = device == "cuda" and all(packages.values())
        what = "CUDA WKV kernel" if cuda else "PyTorch WKV loop, one step per token (CPU path)"
        return f"rwkv: {what}; {_kernel_note(packages)}"
    if model_type == "recurrent_gemma":
        return (
            "recurrent_gemma: PyTorch only (RG-LRU scan one step per token, local attention "
            f"{model.config._attn_implementation})"
        )
    return f"{model_type}: transformers' PyTorch implementation"
