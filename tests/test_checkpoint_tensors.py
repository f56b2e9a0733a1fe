"""What a checkpoint writes of the weights (`checkpointing.model_tensors`): each tensor once, tied weights
under the name safetensors' own `save_model` chose, and weights that are views into one shared buffer (what
cuDNN's `flatten_parameters` makes of an RNN's weights on a GPU) written as tensors of their own and loaded
back in place."""

import torch
from safetensors.torch import load_file, save_file, save_model

from conftest import tiny_config
from hf_lstm import LSTMForCausalLM
from hf_lstm.checkpointing import load_model_tensors, model_tensors


def test_the_names_written_are_those_save_model_writes(tmp_path):
    model = LSTMForCausalLM(tiny_config())
    save_model(model, str(tmp_path / "theirs.safetensors"))
    assert sorted(model_tensors(model)) == sorted(load_file(str(tmp_path / "theirs.safetensors")))


def packed_like_cudnn(model):
    """Point every recurrent weight of `model` into one buffer per layer, as cuDNN's flattening does."""
    for layer in model.model.layers:
        rnn = layer.rnn
        weights = [getattr(rnn, n) for n in rnn._flat_weights_names]
        buffer = torch.cat([w.detach().reshape(-1) for w in weights])
        start = 0
        for name, w in zip(rnn._flat_weights_names, weights):
            getattr(rnn, name).data = buffer[start : start + w.numel()].view_as(w)
            start += w.numel()
        rnn._init_flat_weights()
    return buffer


def test_weights_packed_into_one_buffer_are_written_and_loaded_back_in_place(tmp_path):
    model = LSTMForCausalLM(tiny_config())
    buffer = packed_like_cudnn(model)
    path = str(tmp_path / "model.safetensors")
    save_file(model_tensors(model), path)  # safetensors' save_model refuses these views
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    other = LSTMForCausalLM(tiny_config())
    last = other.model.layers[-1].rnn
    other_buffer = packed_like_cudnn(other)
    assert load_model_tensors(other, path) == ([], [])
    for name, value in other.state_dict().items():
        assert torch.equal(value, expected[name]), name
    assert last.weight_ih_l0.data_ptr() >= other_buffer.data_ptr(), "loaded in place: still in its buffer"
    assert buffer.numel() > 0


def test_a_missing_or_unexpected_weight_is_reported(tmp_path):
    model = LSTMForCausalLM(tiny_config())
    tensors = model_tensors(model)
    tensors.pop("model.layers.0.rnn.weight_hh_l0")
    tensors["stranger"] = torch.zeros(2)
    save_file(tensors, str(tmp_path / "m.safetensors"))
    missing, unexpected = load_model_tensors(model, str(tmp_path / "m.safetensors"))
    assert missing == ["model.layers.0.rnn.weight_hh_l0"] and unexpected == ["stranger"]
