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


# The element type a run's matrix products compute in, named as Accelerate names mixed precision.
PEAK_DTYPES = {"fp32": torch.float32, "tf32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def compute_dtype(
    device: torch.device | str = "cpu",
    mixed_precision: str | None = "no",
    weights: torch.dtype = torch.float32,
) -> str:
    """The element type a run's matrix products compute in, which its MFU must be measured against.

    bf16 or fp16 under mixed precision (autocast) or with weights of that type; TF32 for fp32 products on a
    CUDA device where torch allows TF32 (`torch.backends.cuda.matmul.allow_tf32`, which
    `torch.set_float32_matmul_precision("high")` turns on); fp32 otherwise.

    Args:
        device (`torch.device` or `str`, *optional*, defaults to `"cpu"`): where the products run.
        mixed_precision (`str`, *optional*, defaults to `"no"`): Accelerate's setting (`"no"`, `"bf16"`,
            `"fp16"`; `None` counts as `"no"`).
        weights (`torch.dtype`, *optional*, defaults to `torch.float32`): the model's parameter type.

    Returns:
        `str`: a key of `PEAK_DTYPES`.
    """
    if mixed_precision in ("bf16", "fp16"):
        return mixed_precision
    if weights in (torch.bfloat16, torch.float16):
        return "bf16" if weights == torch.bfloat16 else "fp16"
    if torch.device(device).type == "cuda" and torch.backends.cuda.matmul.allow_tf32:
        return "tf32"
    return "fp32"


def measure_matmul_peak(
    size: int | None = None,
    seconds: float = 0.5,
    dtype: torch.dtype | str = torch.float32,
    repeats: int | None = None,
    device: torch.device | str = "cpu",
) -> float:
    """FLOP/s of a large square matrix product on `device` in `dtype`, right now (best of repeated runs).

    One untimed product warms up first. The inputs come from a private generator, so the global random
    state (dropout, data order) is left untouched. On a GPU every product is timed between synchronisations,
    with matrices large enough (8192 by default) for the tensor cores to reach their peak; a 2048 product
    would measure a GPU at a small fraction of it and every MFU against it would be too high.

    Args:
        size (`int`, *optional*): the matrices are `size x size` (default 1024 on a CPU, where that is as
            fast per FLOP as 2048 and gives more samples to take the best of; 8192 on a GPU).
        seconds (`float`, *optional*, defaults to 0.5): keep timing products until this much time has passed
            (at least one).
        dtype (`torch.dtype` or `str`, *optional*, defaults to `torch.float32`): the element type, or a key of
            `PEAK_DTYPES` ("tf32" is an fp32 product with TF32 as torch allows it now).
        repeats (`int`, *optional*): time exactly this many products instead (`seconds` is then ignored); for
            short measurements interleaved with others, as `hf-lstm bench` does.
        device (`torch.device` or `str`, *optional*, defaults to `"cpu"`): where to measure.

    Returns:
        `float`: the best FLOP/s (2 x size^3 per product).
    """
    device = torch.device(device)
    dtype = PEAK_DTYPES[dtype] if isinstance(dtype, str) else dtype
    size = size or (8192 if device.type == "cuda" else 1024)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=generator).to(device, dtype)
    b = torch.randn(size, size, generator=generator).to(device, dtype)
    torch.mm(a, b)  # warm up
    sync()
    best = float("inf")
    deadline = time.perf_counter() + seconds
    runs = 0
    while True:
        start = time.perf_counter()
        torch.mm(a, b)
        sync()
        best = min(best, time.perf_counter() - start)
        runs += 1
        if (runs >= repeats) if repeats is not None else (time.perf_counter() > deadline):
            break
    return 2.0 * size**3 / best


def mfu_text(mfu: float) -> str:
    """`"MFU 42%"`, or, above 100%, a statement that the figure cannot be trusted: on a shared machine the
    peak can be measured while others hold the cores and come out lower than what training later gets.

    Args:
        mfu (`float`): model FLOP utilisation as a fraction.

    Returns:
        `str`: the text a summary or a card prints.
    """
    if mfu <= 1.0:
        return f"MFU {mfu:.0%}"
    return f"MFU not known: {mfu:.0%} of a peak measured while the machine was busier (that peak is too low)"
