"""A causal LM as a function of tensors, so that a program without Python can generate: `torch.export` and
ONNX take tensors in and give tensors out, and an `LSTMCache` is a Python object.

    step = RecurrentStep(model.eval())  # inference only: the model's dropout off
    program = torch.export.export(step, step.example_inputs(batch=2), dynamic_shapes=step.dynamic_shapes())
    logits, *state = program.module()(input_ids, attention_mask, *state)

`RecurrentStep.forward(input_ids, attention_mask, h, c=None)` runs the model's own `forward` from the state
`(h, c)` (`(h,)` for GRU and RNN cells), each of shape `(num_hidden_layers, batch, hidden_size)`, and returns
`(logits, h, c)`: the logits of the last position, and the state after the new tokens. A row whose mask is 0
keeps its state, so a batch of prompts of different lengths can be fed left-padded, one token per call. A
generation loop is then: `initial_state`, the prompt (all at once, or token by token), then one token per
call (tests/test_export.py runs it in ONNX Runtime and gets `generate()`'s greedy tokens).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.export import Dim

from .modeling_hf_lstm import LSTMCache, LSTMForCausalLM


class RecurrentStep(nn.Module):
    """`model` (an `LSTMForCausalLM`, in eval mode) as `(input_ids, attention_mask, h, c=None) -> (logits,
    h, c)`; see the module's docstring."""

    def __init__(self, model: LSTMForCausalLM):
        super().__init__()
        if not isinstance(model, LSTMForCausalLM):
            raise ValueError(f"RecurrentStep takes an LSTMForCausalLM, got {type(model).__name__}")
        if model.training:
            raise ValueError("RecurrentStep exports inference: call model.eval() first (dropout is off then)")
        self.model = model
        self.state_names = ("h", "c") if model.model.layers[0].has_cell_state else ("h",)

    def initial_state(self, batch: int) -> tuple[torch.Tensor, ...]:
        """The zero state a sequence starts from: one `(num_hidden_layers, batch, hidden_size)` tensor per
        name in `state_names`."""
        config, weight = self.model.config, self.model.model.embed_tokens.weight
        shape = (config.num_hidden_layers, batch, config.hidden_size)
        return tuple(weight.new_zeros(shape) for _ in self.state_names)

    def forward(self, input_ids, attention_mask, h, c=None):
        state = (h,) if c is None else (h, c)
        if len(state) != len(self.state_names):
            names = ", ".join(self.state_names)
            raise ValueError(f"this model's state is {names}; got {len(state)} tensor(s)")
        cache = LSTMCache([tuple(t[k] for t in state) for k in range(self.model.config.num_hidden_layers)])
        out = self.model(
            input_ids=input_ids, attention_mask=attention_mask, cache=cache, use_cache=True, logits_to_keep=1
        )
        new_state = tuple(torch.stack([layer[j] for layer in out.cache.states]) for j in range(len(state)))
        return (out.logits[:, -1], *new_state)

    def example_inputs(self, batch: int = 2, seq_len: int = 1) -> tuple[torch.Tensor, ...]:
        """Inputs to trace with: `seq_len` tokens per row (1 for a decoding step), a mask of ones, the zero
        state."""
        device = self.model.model.embed_tokens.weight.device
        ids = torch.zeros(batch, seq_len, dtype=torch.long, device=device)
        return (ids, torch.ones_like(ids), *self.initial_state(batch))

    def dynamic_shapes(self, max_batch: int = 1024) -> tuple:
        """A dynamic batch for `torch.export` (the sequence length stays the example's: torch cannot export
        its RNN kernels with a dynamic length)."""
        batch = Dim("batch", min=1, max=max_batch)
        return ({0: batch}, {0: batch}, *({1: batch} for _ in self.state_names))
