"""Model FLOPs per token and the machine's matrix-product peak: the two halves of model FLOP utilisation.

MFU = (model FLOPs per token x tokens per second) / peak FLOP/s, as in nanoGPT and the PaLM paper. We count
only matrix products (the work a fast kernel can do at peak): 2 FLOPs per multiply-add forward, and 3x the
forward for a training step (the backward pass costs two matrix products per forward one).

This module is the one home of these ideas: `hf-lstm train`, `hf-lstm compare` and `hf-lstm bench` all count
with `matmul_weights`/`matmul_parameters`/`flops_per_token` and time the peak with `measure_matmul_peak`.
"""

from __future__ import annotations

import time

import torch

from .configuration_hf_lstm import is_hf_lstm


def matmul_weights(model: torch.nn.Module) -> list[torch.Tensor]:
    """The weight matrices that take part in a matrix product for every token, in module order (detached).

    hf_lstm: each recurrent layer's `weight_ih` and `weight_hh` (all directions), then the output projection
    (if any) and the output layer (listed even when tied: the product with it is done once per token).
    Embedding lookups, biases and peephole (diagonal) weights are not matrix products. GPT-2/Llama-style
    models: every `nn.Linear`/`Conv1D` weight, the output layer included.

    Args:
        model (`torch.nn.Module`): any causal LM (or any module).

    Returns:
        `list[torch.Tensor]`: the matrices, each listed once. For hf_lstm these are exactly what one decoding
        step multiplies a vector by.
    """
    weights = []
    for module in model.modules():
        if isinstance(module, torch.nn.RNNBase):
            weights += [p.detach() for name, p in module.named_parameters() if name.startswith("weight")]
        elif isinstance(module, torch.nn.Linear) or type(module).__name__ == "Conv1D":
            weights.append(module.weight.detach())  # a tied output layer is still one product per token
    return weights


def matmul_parameters(model: torch.nn.Module) -> int:
    """Parameters that take part in a matrix product for every token (the N of "6N FLOPs per token").

    Args:
        model (`torch.nn.Module`): any causal LM.

    Returns:
        `int`: the number of elements of `matmul_weights(model)`.
    """
    return sum(w.numel() for w in matmul_weights(model))


def flops_per_token(model: torch.nn.Module, context_length: int = 0, training: bool = True) -> float:
    """Matrix-product FLOPs to process one token (x3 with `training`: forward and backward).

    For attention models, `context_length` adds the attention scores and weighted sums
    (2 x 2 x n_layer x context x d_model per token forward, as in nanoGPT's estimate with the causal half).
    Recurrent models have no such term: their cost per token does not grow with the context.

    Args:
        model (`torch.nn.Module`): the model; its `config` tells an hf_lstm model from a Transformer.
        context_length (`int`, *optional*, defaults to 0): the attention context per token (the block size).
        training (`bool`, *optional*, defaults to `True`): count a training step (forward and backward).

    Returns:
        `float`: FLOPs per token.
    """
    forward = 2.0 * matmul_parameters(model)
    config = getattr(model, "config", None)
    if config is not None and not is_hf_lstm(config) and context_length:
        layers = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer", 0)
        width = getattr(config, "hidden_size", None) or getattr(config, "n_embd", 0)
        forward += 2.0 * layers * context_length * width  # QK^T and AV, each 2*T*d, halved by the causal mask
    return forward * (3.0 if training else 1.0)


def measure_matmul_peak(
    size: int = 2048, seconds: float = 0.5, dtype: torch.dtype = torch.float32, repeats: int | None = None
) -> float:
    """FLOP/s of a large square matrix product on this machine right now (best of repeated runs).

    One untimed product warms up first. The inputs come from a private generator, so the global random
    state (dropout, data order) is left untouched.

    Args:
        size (`int`, *optional*, defaults to 2048): the matrices are `size x size`.
        seconds (`float`, *optional*, defaults to 0.5): keep timing products until this much time has passed
            (at least one).
        dtype (`torch.dtype`, *optional*, defaults to `torch.float32`): the element type.
        repeats (`int`, *optional*): time exactly this many products instead (`seconds` is then ignored); for
            short measurements interleaved with others, as `hf-lstm bench` does.

    Returns:
        `float`: the best FLOP/s (2 x size^3 per product).
    """
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, dtype=dtype, generator=generator)
    b = torch.randn(size, size, dtype=dtype, generator=generator)
    torch.mm(a, b)  # warm up
    best = float("inf")
    deadline = time.perf_counter() + seconds
    runs = 0
    while True:
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
        runs += 1
        if (runs >= repeats) if repeats is not None else (time.perf_counter() > deadline):
            break
    return 2.0 * size**3 / best
