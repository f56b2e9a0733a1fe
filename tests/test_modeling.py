"""The recurrent stack: fused == reference, the paper-notation weights, gates, padding, caching, bad input."""

import pytest
import torch
import torch.nn.functional as F

from conftest import CELL_TYPES, FUSED_CELL_TYPES, tiny_config
from hf_lstm import (
    LSTMCache,
    LSTMConfig,
    LSTMForCausalLM,
    LSTMForSequenceClassification,
    LSTMForTokenClassification,
    LSTMModel,
)


def twin_models(cls, cell_type, **overrides):
    """The same weights behind a fused and a reference implementation."""
    fused = cls(tiny_config(cell_type, implementation="fused", **overrides)).eval()
    reference = cls(tiny_config(cell_type, implementation="reference", **overrides)).eval()
    reference.load_state_dict(fused.state_dict())
    return fused, reference


@pytest.mark.parametrize("cell_type", FUSED_CELL_TYPES)
def test_fused_and_reference_give_the_same_logits_and_gradients(cell_type):
    fused, reference = twin_models(LSTMForCausalLM, cell_type)
    ids = torch.randint(2, 40, (3, 17))
    out_f, out_r = fused(ids, labels=ids), reference(ids, labels=ids)
    assert (out_f.logits - out_r.logits).abs().max() <= 1e-5
    out_f.loss.backward()
    out_r.loss.backward()
    grads_r = dict(reference.named_parameters())
    for name, p in fused.named_parameters():
        assert torch.allclose(p.grad, grads_r[name].grad, atol=1e-5), name


@pytest.mark.parametrize("cell_type", FUSED_CELL_TYPES)
def test_fused_and_reference_agree_bidirectional_with_padding(cell_type):
    fused, reference = twin_models(LSTMForTokenClassification, cell_type, bidirectional=True, num_labels=3)
    ids = torch.randint(2, 40, (3, 9))
    mask = torch.ones(3, 9, dtype=torch.long)
    mask[0, :4] = 0  # left padding
    mask[1, 6:] = 0  # right padding
    diff = fused(ids, attention_mask=mask).logits - reference(ids, attention_mask=mask).logits
    assert diff.abs().max() <= 1e-5


def test_auto_implementation_uses_the_fused_kernel_for_sequences_and_the_step_for_one_token():
    model = LSTMForCausalLM(tiny_config("lstm")).eval()
    calls = []
    model.model.layers[0].rnn.register_forward_hook(lambda *args: calls.append(1))
    model(torch.randint(2, 40, (1, 8)))
    assert len(calls) == 1
    model(torch.randint(2, 40, (1, 1)))
    assert len(calls) == 1  # single-token decoding never calls torch's RNN kernel


def test_gate_weights_of_input_size_4_and_hidden_size_3_have_shape_7_by_3():
    # x_t of size 4 and H = 3 give z_t of size 7 and every W_* of shape (7, 3).
    model = LSTMModel(LSTMConfig(vocab_size=10, embedding_size=4, hidden_size=3, num_hidden_layers=2))
    view = model.gate_weights(0)
    assert set(view) == {"W_f", "W_i", "W_c", "W_o", "b_f", "b_i", "b_c", "b_o"}
    assert all(view[k].shape == (7, 3) for k in ("W_f", "W_i", "W_c", "W_o"))
    assert all(view[k].shape == (3,) for k in ("b_f", "b_i", "b_c", "b_o"))
    assert model.gate_weights(1)["W_f"].shape == (6, 3)  # layer 2 reads layer 1's h (size 3)


def test_forget_bias_starts_at_one_and_other_biases_at_zero():
    view = LSTMModel(LSTMConfig(vocab_size=10, hidden_size=5)).gate_weights(0)
    assert torch.equal(view["b_f"], torch.ones(5))
    for name in ("b_i", "b_c", "b_o"):
        assert torch.equal(view[name], torch.zeros(5))
    assert torch.equal(
        LSTMModel(LSTMConfig(vocab_size=10, hidden_size=5, forget_bias=0.0)).gate_weights(0)["b_f"],
        torch.zeros(5),
    )


def test_default_initialisation_is_torchs_and_initializer_range_sets_every_weight():
    # Unset: embeddings N(0, 1) as nn.Embedding, recurrent weights U(+-1/sqrt(H)) as nn.LSTM. Small embeddings
    # made AdamW stall at the unigram loss (docs/TRAINING.md, "Initialisation"), so this default is
    # load-bearing.
    torch.manual_seed(0)
    model = LSTMForCausalLM(LSTMConfig(vocab_size=2000, hidden_size=64, num_hidden_layers=2))
    embeddings = model.get_input_embeddings().weight
    assert 0.95 < embeddings.std().item() < 1.05 and abs(embeddings.mean().item()) < 0.02
    assert model.lm_head.weight is embeddings  # tied: the output layer starts from the same matrix
    W = model.gate_weights(1)["W_f"]
    assert W.abs().max().item() <= 1 / 64**0.5 and W.std().item() > 0.5 / (3 * 64) ** 0.5
    zaremba = LSTMForCausalLM(LSTMConfig(vocab_size=2000, hidden_size=64, initializer_range=0.1))
    for name, param in zaremba.named_parameters():
        if param.dim() > 1:
            assert param.abs().max().item() <= 0.1, name


def run_equations_by_hand(view, cell_type, xs, hidden_size):
    """The equations of the docs, written out with the paper-notation weights: one sequence, one layer."""
    sig = torch.sigmoid
    h, c, hs = torch.zeros(hidden_size), torch.zeros(hidden_size), []
    for x in xs:
        z = torch.cat([h, x])
        if cell_type in ("lstm", "peephole"):
            p = {k: view.get(k, torch.zeros(hidden_size)) for k in ("p_i", "p_f", "p_o")}
            f = sig(z @ view["W_f"] + view["b_f"] + p["p_f"] * c)
            i = sig(z @ view["W_i"] + view["b_i"] + p["p_i"] * c)
            c_tilde = torch.tanh(z @ view["W_c"] + view["b_c"])
            c = f * c + i * c_tilde
            o = sig(z @ view["W_o"] + view["b_o"] + p["p_o"] * c)
            h = o * torch.tanh(c)
        elif cell_type == "gru":
            r = sig(z @ view["W_r"] + view["b_r"])
            u = sig(z @ view["W_z"] + view["b_z"])
            n = torch.tanh(
                x @ view["W_h"][hidden_size:]
                + view["b_h"]
                + r * (h @ view["W_h"][:hidden_size] + view["b_hn"])
            )
            h = (1 - u) * n + u * h
        else:
            h = torch.tanh(z @ view["W"] + view["b"])
        hs.append(h)
    return torch.stack(hs)


@pytest.mark.parametrize("cell_type", CELL_TYPES)
def test_equations_by_hand_on_gate_weights_reproduce_the_model(cell_type):
    model = LSTMModel(tiny_config(cell_type, num_hidden_layers=1)).eval()
    ids = torch.randint(2, 40, (1, 6))
    expected = model(ids, output_hidden_states=True).hidden_states[1][0]
    xs = model.embed_tokens(ids)[0].detach()
    got = run_equations_by_hand(model.gate_weights(0), cell_type, xs, 12)
    assert (got - expected).abs().max() <= 1e-5


def test_gru_and_rnn_views_name_their_own_gates():
    assert set(LSTMModel(tiny_config("gru")).gate_weights(0)) == {
        "W_z",
        "W_r",
        "W_h",
        "b_z",
        "b_r",
        "b_h",
        "b_hn",
    }
    assert set(LSTMModel(tiny_config("rnn")).gate_weights(0)) == {"W", "b"}
    assert {"p_i", "p_f", "p_o"} <= set(LSTMModel(tiny_config("peephole")).gate_weights(0))


def test_gate_weights_rejects_bad_layer_and_direction():
    model = LSTMModel(tiny_config("lstm"))
    with pytest.raises(ValueError, match=r"layer must be in \[0, 2\)"):
        model.gate_weights(2)
    with pytest.raises(ValueError, match="unidirectional"):
        model.gate_weights(0, direction="backward")


@pytest.mark.parametrize(
    "cell_type, names",
    [
        ("lstm", {"forget", "input", "output", "candidate", "cell"}),
        ("peephole", {"forget", "input", "output", "candidate", "cell"}),
        ("gru", {"update", "reset", "candidate"}),
    ],
)
def test_output_gates_returns_one_dict_per_layer(cell_type, names):
    model = LSTMForCausalLM(tiny_config(cell_type, num_hidden_layers=3)).eval()
    out = model(torch.randint(2, 40, (2, 5)), output_gates=True)
    assert len(out.gates) == 3
    for layer in out.gates:
        assert set(layer) == names and all(t.shape == (2, 5, 12) for t in layer.values())
    # gates in (0, 1); the candidate in (-1, 1)
    gate = out.gates[0]["forget" if cell_type != "gru" else "update"]
    assert gate.min() > 0 and gate.max() < 1


def test_output_gates_cell_state_is_what_the_cache_keeps():
    model = LSTMForCausalLM(tiny_config("lstm")).eval()
    out = model(torch.randint(2, 40, (2, 5)), output_gates=True, use_cache=True)
    assert torch.allclose(out.gates[1]["cell"][:, -1], out.cache.states[1][1], atol=1e-6)


def test_hidden_states_follow_the_transformers_convention():
    model = LSTMModel(tiny_config("lstm", num_hidden_layers=3, embedding_size=7)).eval()
    out = model(torch.randint(2, 40, (2, 5)), output_hidden_states=True)
    assert [tuple(t.shape) for t in out.hidden_states] == [(2, 5, 7)] + [(2, 5, 12)] * 3
    assert torch.equal(out.hidden_states[-1], out.last_hidden_state)


@pytest.mark.parametrize("cell_type", CELL_TYPES)
def test_feeding_in_chunks_with_the_cache_equals_feeding_whole(cell_type):
    model = LSTMForCausalLM(tiny_config(cell_type)).eval()
    ids = torch.randint(2, 40, (2, 13))
    whole = model(ids).logits
    cache, pieces = None, []
    for chunk in (ids[:, :5], ids[:, 5:6], ids[:, 6:13]):
        out = model(chunk, cache=cache, use_cache=True)
        cache = out.cache
        pieces.append(out.logits)
    assert (torch.cat(pieces, dim=1) - whole).abs().max() <= 1e-5
    assert cache.get_seq_length() == 13


@pytest.mark.parametrize("cell_type", CELL_TYPES)
def test_padding_anywhere_leaves_the_state_untouched(cell_type):
    model = LSTMForCausalLM(tiny_config(cell_type)).eval()
    a, b = torch.randint(2, 40, (1, 6)), torch.randint(2, 40, (1, 3))
    ids = torch.tensor([[0, 0, 0] + b[0].tolist(), a[0].tolist()])
    mask = torch.tensor([[0, 0, 0, 1, 1, 1], [1] * 6])
    out = model(ids, attention_mask=mask, use_cache=True)
    alone_b = model(b, use_cache=True)
    assert (out.logits[0, 3:] - alone_b.logits[0]).abs().max() <= 1e-5
    for state_batch, state_alone in zip(out.cache.states, alone_b.cache.states):
        for t_batch, t_alone in zip(state_batch, state_alone):
            assert (t_batch[0] - t_alone[0]).abs().max() <= 1e-5
    # padding in the middle (as when a continued batch had padding) is skipped too
    holes = torch.tensor([[b[0, 0], 0, b[0, 1], 0, 0, b[0, 2]]])
    out = model(holes, attention_mask=torch.tensor([[1, 0, 1, 0, 0, 1]]))
    assert (out.logits[0, [0, 2, 5]] - alone_b.logits[0]).abs().max() <= 1e-5


def test_sequence_of_only_padding_keeps_the_initial_state():
    model = LSTMForCausalLM(tiny_config("lstm")).eval()
    prefix = model(torch.randint(2, 40, (2, 4)), use_cache=True).cache
    before = [tuple(t.clone() for t in s) for s in prefix.states]
    ids = torch.zeros(2, 3, dtype=torch.long)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1, 1]])  # the 4 cached positions, then 3 new
    after = model(ids, attention_mask=mask, cache=prefix, use_cache=True).cache
    for s_before, s_after in zip(before, after.states):
        assert torch.equal(s_before[0][0], s_after[0][0]) and not torch.equal(s_before[0][1], s_after[0][1])


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_sequence_classification_padded_batch_equals_each_alone(bidirectional, padding_side):
    model = LSTMForSequenceClassification(
        tiny_config("lstm", bidirectional=bidirectional, num_labels=3)
    ).eval()
    seqs = [torch.randint(2, 40, (n,)) for n in (7, 3, 5)]
    ids = torch.zeros(3, 7, dtype=torch.long)
    mask = torch.zeros(3, 7, dtype=torch.long)
    for k, s in enumerate(seqs):
        where = slice(7 - len(s), 7) if padding_side == "left" else slice(0, len(s))
        ids[k, where], mask[k, where] = s, 1
    batch = model(ids, attention_mask=mask).logits
    alone = torch.cat([model(s[None]).logits for s in seqs])
    assert (batch - alone).abs().max() <= 1e-5


def test_sequence_classification_mean_pooling_and_losses():
    model = LSTMForSequenceClassification(tiny_config("gru", num_labels=3, classifier_pooling="mean")).eval()
    ids = torch.randint(2, 40, (4, 6))
    out = model(ids, labels=torch.tensor([0, 2, 1, 1]))
    assert out.logits.shape == (4, 3)
    assert torch.isclose(out.loss, F.cross_entropy(out.logits, torch.tensor([0, 2, 1, 1])))
    regression = LSTMForSequenceClassification(tiny_config("lstm", num_labels=1)).eval()
    target = torch.tensor([0.5, -1.0, 2.0, 0.0])
    out = regression(ids, labels=target)
    assert torch.isclose(out.loss, F.mse_loss(out.logits.squeeze(-1), target))


def test_token_classification_ignores_minus_100():
    model = LSTMForTokenClassification(tiny_config("rnn", num_labels=4)).eval()
    ids = torch.randint(2, 40, (2, 5))
    labels = torch.tensor([[0, 1, 2, 3, -100], [-100, -100, 1, 1, 1]])
    out = model(ids, labels=labels)
    keep = labels != -100
    assert torch.isclose(out.loss, F.cross_entropy(out.logits[keep], labels[keep]))


def test_untied_and_projected_embeddings():
    config = tiny_config("lstm", embedding_size=6)
    model = LSTMForCausalLM(config)
    assert model.output_projection.weight.shape == (6, 12)
    assert model.lm_head.weight is model.model.embed_tokens.weight  # tied through the projection
    untied = LSTMForCausalLM(tiny_config("lstm", tie_word_embeddings=False))
    assert untied.lm_head.weight is not untied.model.embed_tokens.weight


def test_logits_to_keep_keeps_the_last_positions():
    model = LSTMForCausalLM(tiny_config("lstm")).eval()
    ids = torch.randint(2, 40, (2, 6))
    full = model(ids).logits
    assert torch.allclose(model(ids, logits_to_keep=1).logits, full[:, -1:], atol=1e-6)


def test_shift_labels_scores_every_window_position():
    model = LSTMForCausalLM(tiny_config("lstm")).eval()
    stream = torch.randint(2, 40, (2, 9))
    x, y = stream[:, :-1], stream[:, 1:]
    out = model(x, shift_labels=y)
    assert torch.isclose(out.loss, F.cross_entropy(out.logits.reshape(-1, 40), y.reshape(-1)))


def test_dropouts_act_in_training_only_and_weight_drop_reaches_the_raw_weight():
    config = tiny_config(
        "lstm",
        embedding_dropout=0.2,
        input_dropout=0.3,
        hidden_dropout=0.3,
        output_dropout=0.3,
        weight_dropout=0.5,
    )
    model = LSTMForCausalLM(config)
    ids = torch.randint(2, 40, (2, 6))
    model.train()
    a, b = model(ids).logits, model(ids).logits
    assert not torch.allclose(a, b)
    model(ids, labels=ids).loss.backward()
    assert model.model.layers[0].rnn.weight_hh_l0.grad.abs().sum() > 0
    model.eval()
    assert torch.equal(model(ids).logits, model(ids).logits)


def test_weight_drop_is_the_same_in_fused_and_reference_paths():
    fused, reference = twin_models(LSTMForCausalLM, "lstm", weight_dropout=0.5)
    fused.train(), reference.train()
    ids = torch.randint(2, 40, (2, 6))
    torch.manual_seed(3)
    a = fused(ids).logits
    torch.manual_seed(3)
    b = reference(ids).logits
    assert (a - b).abs().max() <= 1e-5


# -- bad input: a ValueError that names the problem ------------------------------------------------------


@pytest.fixture(scope="module")
def lm():
    return LSTMForCausalLM(tiny_config("lstm")).eval()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(input_ids=torch.tensor([[3, 40]])), r"token id 40, outside \[0, vocab_size=40\)"),
        (dict(input_ids=torch.tensor([[-1, 3]])), "token id -1"),
        (dict(input_ids=torch.tensor([[1.0, 2.0]])), "integer tensor"),
        (dict(input_ids=torch.tensor([1, 2])), r"add a batch dimension"),
        (dict(input_ids=torch.zeros(1, 0, dtype=torch.long)), "empty"),
        (dict(input_ids=torch.tensor([[1, 2]]), inputs_embeds=torch.zeros(1, 2, 12)), "exactly one"),
        (dict(inputs_embeds=torch.zeros(1, 2, 5)), "inputs_embeds must have shape"),
        (dict(input_ids=torch.tensor([[1, 2]]), attention_mask=torch.ones(2, 2)), "attention_mask has shape"),
        (dict(input_ids=torch.tensor([[1, 2]]), attention_mask=torch.ones(1, 1)), "attention_mask has shape"),
        (dict(input_ids=torch.tensor([[1, 2]]), attention_mask=torch.tensor([[1, 2]])), "only 0"),
        (dict(input_ids=torch.tensor([[1, 2]]), attention_mask=torch.ones(2)), "2-D"),
        (
            dict(
                input_ids=torch.tensor([[1, 2]]),
                cache=LSTMCache([(torch.zeros(1, 5), torch.zeros(1, 5))] * 2),
            ),
            "does not fit",
        ),
        (dict(input_ids=torch.tensor([[1, 2]]), cache=((1, 2),)), "must be an LSTMCache"),
        (dict(input_ids=torch.tensor([[1, 2]]), token_type_ids=torch.zeros(1, 2)), "unexpected argument"),
        (dict(input_ids=torch.tensor([[1, 2]]), output_attentions=True), "no attention"),
        (dict(input_ids=torch.tensor([[1, 2]]), labels=torch.tensor([[1, 2, 3]])), "labels must have shape"),
    ],
)
def test_bad_input_raises_value_error_naming_the_problem(lm, kwargs, message):
    with pytest.raises(ValueError, match=message):
        lm(**kwargs)
