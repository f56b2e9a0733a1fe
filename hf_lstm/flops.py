"""Model FLOPs per token and the machine's matrix-product peak: the two halves of model FLOP utilisation.

MFU = (model FLOPs per token x tokens per second) / peak FLOP/s, as in nanoGPT and the PaLM paper. We count
only matrix products (the work a fast kernel can do at peak): 2 FLOPs per multiply-add forward, and 3x the
forward for a training step (the backward pass costs two matrix products per forward one).
"""

from __future__ import annotations

import time

import torch


def matmul_parameters(model: torch.nn.Module) -> int:
    """Parameters that take part in a matrix product for every token.

    hf_lstm: the recurrent layers' `weight_ih` and `weight_hh` (all directions), the projection, and the output
    layer (counted even when tied: the product with it is done once per token). Embedding lookups, biases and
    peephole (diagonal) weights are not matrix products. GPT-2/Llama-style models: every `nn.Linear`/`Conv1D`
    weight plus the output layer.
    """
    total = 0
    for module in model.modules():
        if isinstance(module, torch.nn.RNNBase):
            total += sum(p.numel() for n, p in module.named_parameters() if n.startswith("weight"))
        elif isinstance(module, torch.nn.Linear) or type(module).__name__ == "Conv1D":
            total += module.weight.numel()  # a tied output layer is still one product per token
    return total


def flops_per_token(model: torch.nn.Module, context_length: int = 0, training: bool = True) -> float:
    """Matrix-product FLOPs to process one token (x3 with `training`: forward and backward).

    For attention models, `context_length` adds the attention scores and weighted sums
    (2 x 2 x n_layer x context x d_model per token forward, as in nanoGPT's estimate with the causal half).
    Recurrent models have no such term: their cost per token does not grow with the context.
    """
    forward = 2.0 * matmul_parameters(model)
    config = getattr(model, "config", None)
    if config is not None and getattr(config, "model_type", "") != "hf_lstm" and context_length:
        layers = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer", 0)
        width = getattr(config, "hidden_size", None) or getattr(config, "n_embd", 0)
        forward += 2.0 * layers * context_length * width  # QK^T and AV, each 2*T*d per token, halved by the causal mask
    return forward * (3.0 if training else 1.0)


def measure_matmul_peak(size: int = 2048, seconds: float = 0.5, dtype: torch.dtype = torch.float32) -> float:
    """FLOP/s of a large square matrix product on this machine right now (best of repeated runs)."""
    generator = torch.Generator().manual_seed(0)  # leaves the global RNG (dropout, data order) untouched
    a = torch.randn(size, size, dtype=dtype, generator=generator)
    b = torch.randn(size, size, dtype=dtype, generator=generator)
    torch.mm(a, b)  # warm up
    best = float("inf")
    deadline = time.perf_counter() + seconds
    while True:
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
        if time.perf_counter() > deadline:
            break
    return 2.0 * size**3 / best
