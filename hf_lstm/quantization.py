"""Int8 dynamic quantisation of an hf_lstm model for CPU inference.

Decoding one token reads every weight matrix once (the recurrent layers' `weight_ih` and `weight_hh`, and
the output layer), so at batch 1 it is limited by memory bandwidth. Storing those matrices as int8 (one
scale per output row) moves a quarter of the bytes; activations are quantised on the fly at each product
("dynamic" quantisation), so no calibration data is needed.

    from hf_lstm.quantization import quantize_dynamic_int8
    qmodel = quantize_dynamic_int8(model)   # a new model; `model` is left untouched
    qmodel.generate(input_ids, max_new_tokens=50)

It uses torch's own int8 kernels (`torch.ao.nn.quantized.dynamic.Linear`: FBGEMM/oneDNN on x86), runs
on CPU only, and is for inference (no gradients). The embedding stays in float32 (a lookup reads one row
per token). The quantised layers run the step-by-step recurrence (torch's fused RNN kernel has no int8
variant that reads our parameter layout), so prefill of long prompts is slower than the float fused kernel;
decoding is faster. `hf-lstm bench` reports both effects and the perplexity change on Penn Treebank.

Speed, against the float32 step as it now runs (reading its decode-time copies as weighted row sums,
`LSTMConfig.decode_cache_weights`): int8 decodes the 10k-vocabulary 2x512 reference model about 2x faster at
batch 1 with one thread and 1.2x with two (docs/PERFORMANCE.md, "int8"). On a quiet machine two threads are
about 7% faster than one for int8; on a machine shared with other work every op that uses two threads
(FBGEMM's int8 product, `torch.tanh`) waits at its barrier for a busy core: 2,047 tok/s at one thread against
89 at two in one contended run. So: one thread on a shared machine.

This module is not imported by the modeling file: a saved model folder stays free of it.
"""

from __future__ import annotations

import copy
import warnings

import torch
from torch import nn
from torch.ao.nn.quantized import dynamic as nnqd

from .modeling_hf_lstm import LSTMForCausalLM, LSTMModel, LSTMRecurrentLayer

__all__ = ["Int8RecurrentLayer", "quantize_dynamic_int8"]


def _int8_linear(weight: torch.Tensor, bias: torch.Tensor | None) -> nnqd.Linear:
    """A dynamic int8 linear layer holding `weight` quantised per output row."""
    out_features, in_features = weight.shape
    float_linear = nn.Linear(in_features, out_features, bias=bias is not None)
    with torch.no_grad():
        float_linear.weight.copy_(weight)
        if bias is not None:
            float_linear.bias.copy_(bias)
    float_linear.qconfig = torch.ao.quantization.per_channel_dynamic_qconfig
    return nnqd.Linear.from_float(float_linear)


class Int8RecurrentLayer(LSTMRecurrentLayer):
    """An `LSTMRecurrentLayer` whose two matrix products run in int8.

    It reuses the float layer's handling of padding and state and replaces only the recurrence (`_scan`):
    the input projection for all time steps is one int8 product, then each step is one int8 product with
    the recurrent weights and the cell's pointwise equations in float32. Unidirectional layers only.
    """

    def __init__(self, layer: LSTMRecurrentLayer):
        nn.Module.__init__(self)
        if layer.num_directions != 1:
            raise ValueError(
                "int8 quantisation supports unidirectional layers only (a causal language model)"
            )
        self.cell_type = layer.cell_type
        self.hidden_size = layer.hidden_size
        self.input_size = layer.input_size
        self.layer_idx = layer.layer_idx
        self.num_directions = 1
        self.weight_dropout = 0.0
        self.rnn = layer.rnn  # kept for the parameter names the parent reads; the int8 copies do the work
        if self.cell_type == "peephole":
            self.peephole_weight = layer.peephole_weight
        rnn = layer.rnn
        self.input_projection = _int8_linear(rnn.weight_ih_l0.detach(), rnn.bias_ih_l0.detach())
        self.recurrent_projection = _int8_linear(rnn.weight_hh_l0.detach(), rnn.bias_hh_l0.detach())

    def forward(
        self, x, mask=None, state=None, use_reference=False, output_gates=False, decode_cache_weights=False
    ):
        """As `LSTMRecurrentLayer.forward`, always through the int8 step-by-step recurrence (the int8
        matrices are already in the layout their kernel reads: no decode-time copies)."""
        if output_gates:
            raise ValueError("output_gates is not available on an int8 model; use the float model")
        return super().forward(x, mask, state, use_reference=True, output_gates=False)

    def _scan(self, x, lengths, state, w_ih, w_hh, b_ih, b_hh, peephole, output_gates):
        seq_len = x.shape[1]
        gx = self.input_projection(x)
        valid = None
        if lengths is not None:
            valid = (torch.arange(seq_len, device=x.device).unsqueeze(0) < lengths.unsqueeze(1)).unsqueeze(-1)
        h = state[0]
        c = state[1] if self.has_cell_state else None
        outs = []
        for t, gx_t in enumerate(gx.unbind(1)):
            gh = self.recurrent_projection(h)
            if self.has_cell_state:
                h_new, c_new = _lstm_pointwise(gx_t + gh, c, peephole)
            elif self.cell_type == "gru":
                h_new, c_new = _gru_pointwise(gx_t, gh, h), None
            else:
                h_new, c_new = torch.tanh(gx_t + gh), None
            if valid is not None:
                keep = valid[:, t]
                h_new = torch.where(keep, h_new, h)
                c_new = torch.where(keep, c_new, c) if c_new is not None else None
            h, c = h_new, c_new
            outs.append(h)
        final = (h, c) if self.has_cell_state else (h,)
        return torch.stack(outs, dim=1), final, None


def _lstm_pointwise(gates, c, peephole):
    i, f, g, o = gates.chunk(4, dim=-1)
    if peephole is not None:
        i, f = i + peephole[0] * c, f + peephole[1] * c
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    if peephole is not None:
        o = o + peephole[2] * c
    return torch.sigmoid(o) * torch.tanh(c), c


def _gru_pointwise(gx, gh, h):
    x_r, x_z, x_n = gx.chunk(3, dim=-1)
    h_r, h_z, h_n = gh.chunk(3, dim=-1)
    r, z = torch.sigmoid(x_r + h_r), torch.sigmoid(x_z + h_z)
    n = torch.tanh(x_n + r * h_n)
    return (1 - z) * n + z * h


def quantize_dynamic_int8(model: LSTMForCausalLM | LSTMModel) -> LSTMForCausalLM | LSTMModel:
    """Return an int8 copy of `model` for CPU inference: recurrent layers and the output layer (and the
    output projection, if any) hold int8 weights; the embedding stays float32. `model` is not changed.

    The copy works with `forward`, `generate()` and `pipeline()`; it cannot be trained, and its
    `save_pretrained` (and so `push_to_hub`) refuses with a `ValueError` that says what to do: save the float
    model and quantise after loading. Accuracy: see the perplexity change in docs/PERFORMANCE.md.
    """
    if not isinstance(model, (LSTMForCausalLM, LSTMModel)):
        raise ValueError(f"expected an LSTMForCausalLM or LSTMModel, got {type(model).__name__}")
    if next(model.parameters()).device.type != "cpu":
        raise ValueError("int8 dynamic quantisation runs on CPU only; move the model with .cpu() first")
    qmodel = copy.deepcopy(model).float().eval()
    stack = qmodel if isinstance(qmodel, LSTMModel) else qmodel.model
    with warnings.catch_warnings():
        # torch 2.13 deprecates creating quantised tensors; its dynamic int8 modules still do, internally
        warnings.filterwarnings(
            "ignore", message=".*quantized tensor creation functions.*", category=UserWarning
        )
        stack.layers = nn.ModuleList(Int8RecurrentLayer(layer) for layer in stack.layers)
        if isinstance(qmodel, LSTMForCausalLM):
            qmodel.lm_head = _int8_linear(qmodel.lm_head.weight.detach(), _bias(qmodel.lm_head))
            if qmodel.output_projection is not None:
                qmodel.output_projection = _int8_linear(qmodel.output_projection.weight.detach(), None)
    qmodel.save_pretrained = _refuse_to_save  # this copy only: the float model saves as before
    for param in qmodel.parameters():
        param.requires_grad_(False)
    return qmodel


def _refuse_to_save(*args, **kwargs):
    raise ValueError(
        "an int8 copy made by quantize_dynamic_int8 cannot be saved (its int8 weights have no safetensors "
        "form that transformers loads): save the float model with save_pretrained, and quantise after "
        "loading it: quantize_dynamic_int8(AutoModelForCausalLM.from_pretrained(folder))"
    )


def _bias(linear: nn.Linear) -> torch.Tensor | None:
    return linear.bias.detach() if linear.bias is not None else None
