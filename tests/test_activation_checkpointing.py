"""Activation (gradient) checkpointing, as transformers offers it for its own models: after
`model.gradient_checkpointing_enable()` (`activation_checkpointing_enable()` from transformers 5.25),
`Trainer(..., gradient_checkpointing=True)` or `hf-lstm train --gradient_checkpointing`, each recurrent layer
keeps only its input in the forward pass and recomputes the rest in the backward pass: the same gradients,
less memory."""

import json

import pytest
import torch
from transformers import TrainingArguments

from conftest import tiny_config, tiny_train_args
from hf_lstm import LSTMForCausalLM
from hf_lstm.builders import enable_activation_checkpointing
from test_ecosystem import blocks_of, logged_losses, train_with_trainer
from test_training import losses, run_cli


SWITCH = next(
    name
    for name in ("activation_checkpointing", "gradient_checkpointing")
    if name in TrainingArguments.__dataclass_fields__
)


def backward(checkpointed: bool, reentrant: bool = False, **overrides):
    """(bytes autograd kept for the backward pass, loss, gradients) of one training step of a 3-layer model;
    dropout draws the same masks in both runs (the same seed, and torch's checkpoint replays the random
    state when it recomputes)."""
    torch.manual_seed(0)
    model = LSTMForCausalLM(tiny_config(**{"num_hidden_layers": 3, "hidden_size": 32, **overrides})).train()
    if checkpointed:
        enable_activation_checkpointing(model, use_reentrant=reentrant)
        assert model.model.gradient_checkpointing
    ids = torch.randint(0, model.config.vocab_size, (4, 40), generator=torch.Generator().manual_seed(1))
    kept = []

    def pack(t):
        kept.append(t.numel() * t.element_size())
        return t

    torch.manual_seed(5)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(ids, labels=ids).loss
    loss.backward()
    return sum(kept), loss.item(), {n: p.grad for n, p in model.named_parameters()}


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"cell_type": "gru"},
        {"cell_type": "rnn"},
        {"cell_type": "peephole"},
        {"implementation": "reference"},
        {"weight_dropout": 0.3, "hidden_dropout": 0.2, "input_dropout": 0.1},
    ],
    ids=["lstm", "gru", "rnn", "peephole", "reference", "dropout"],
)
@pytest.mark.parametrize("reentrant", [False, True], ids=["non-reentrant", "reentrant"])
def test_checkpointed_layers_give_the_same_gradients_and_keep_far_less(overrides, reentrant):
    kept, loss, grads = backward(False, **overrides)
    kept_checkpointed, loss_checkpointed, grads_checkpointed = backward(True, reentrant, **overrides)
    assert loss_checkpointed == loss
    for name, grad in grads.items():
        torch.testing.assert_close(grads_checkpointed[name], grad, rtol=1e-5, atol=1e-6, msg=name)
    # what autograd keeps: every layer's gates and states without, only the layers' inputs with
    assert kept_checkpointed * 4 < kept, (kept_checkpointed, kept)


def test_evaluation_and_decoding_ignore_the_switch():
    model = LSTMForCausalLM(tiny_config()).eval()
    ids = torch.tensor([[5, 6, 7]])
    before = model.generate(ids, max_new_tokens=5, do_sample=False)
    enable_activation_checkpointing(model)
    assert torch.equal(model.generate(ids, max_new_tokens=5, do_sample=False), before)


def test_trainer_with_gradient_checkpointing_takes_the_same_steps(tmp_path, word_tokenizer):
    dataset = blocks_of(word_tokenizer)

    def train(checkpointing: bool) -> list[float]:
        torch.manual_seed(0)
        model = LSTMForCausalLM(tiny_config(vocab_size=len(word_tokenizer), hidden_size=32))
        # the switch is activation_checkpointing from transformers 5.25, gradient_checkpointing before
        trainer = train_with_trainer(
            model, dataset, tmp_path / str(checkpointing), 12, 1, **{SWITCH: checkpointing}
        )
        assert model.model.gradient_checkpointing is checkpointing
        return logged_losses(trainer)

    plain, checkpointed = train(False), train(True)
    assert len(plain) == 12 and checkpointed == pytest.approx(plain, rel=1e-5)


def test_the_cli_flag_trains_the_same_run(corpus, tmp_path):
    runs = {}
    for name, extra in (("plain", ()), ("checkpointed", ("--gradient_checkpointing",))):
        out = tmp_path / name
        process = run_cli(
            tiny_train_args(corpus, out, "--max_train_steps", "6", "--sample_max_new_tokens", "0", *extra)
        )
        printed, _ = process.communicate(timeout=300)
        assert process.returncode == 0, printed
        assert "deprecated" not in printed  # the switch under the name the installed transformers prefers
        runs[name] = [entry[1] for entry in losses(out)]
    assert len(runs["plain"]) == 6 and runs["checkpointed"] == pytest.approx(runs["plain"], rel=1e-5)
    results = json.loads((tmp_path / "checkpointed" / "all_results.json").read_text())
    assert results["gradient_checkpointing"] is True
    assert "activation checkpointing on" in (tmp_path / "checkpointed" / "README.md").read_text()
    assert "activation checkpointing" not in (tmp_path / "plain" / "README.md").read_text()
