"""The captured one-token step (`GraphedDecodeStep`) and the lean `prepare_inputs_for_generation`.

On a CUDA device the step is captured as CUDA graphs (tests/test_gpu.py checks the replays there).
Everything around the capture (the fixed buffers, the checks of the token ids and the mask, padded rows,
handing the state back, capturing again after a weight changes) is the same code in `eager` mode, which runs
here on the CPU."""

import copy

import pytest
import torch

from conftest import tiny_config
from hf_lstm import LSTMForCausalLM
from hf_lstm.modeling_hf_lstm import CACHE_NAME, GraphedDecodeStep

CELLS = ("lstm", "gru", "rnn")


def pair(cell_type="lstm", **overrides):
    """(a model whose one-token steps run the fixed-buffer step, the same model on the ordinary path)."""
    ordinary = LSTMForCausalLM(tiny_config(cell_type, hidden_size=24, decode_cuda_graph=False, **overrides))
    graphed = copy.deepcopy(ordinary)
    graphed.config.decode_cuda_graph = True
    graphed._decode_graph = GraphedDecodeStep(eager=True)
    return graphed.eval(), ordinary.eval()


def counted(model) -> list:
    """Record every step the fixed-buffer path runs."""
    calls, step = [], model._decode_step_into
    model._decode_step_into = lambda b: (calls.append(b.ids.shape[0]), step(b))[1]
    return calls


def prompt_and_mask():
    ids = torch.randint(2, 40, (3, 6))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # a left-padded row
    ids[1, :3] = 0
    return ids, mask


@pytest.mark.parametrize("cell_type", CELLS)
def test_greedy_sampled_and_beam_tokens_are_those_of_the_ordinary_path(cell_type):
    graphed, ordinary = pair(cell_type)
    calls = counted(graphed)
    ids, mask = prompt_and_mask()
    for kwargs in (
        dict(do_sample=False),
        dict(do_sample=True, top_k=10),
        dict(num_beams=3, do_sample=False),
    ):
        outs = []
        for model in (graphed, ordinary):
            torch.manual_seed(1)
            outs.append(model.generate(ids, attention_mask=mask, max_new_tokens=8, pad_token_id=0, **kwargs))
        assert torch.equal(*outs), kwargs
    assert len(calls) == 3 * 7  # every step after the prompt ran the fixed-buffer step
    assert set(calls) == {3, 9}  # batch 3, and 3 rows x 3 beams


@pytest.mark.parametrize("cell_type", CELLS)
def test_a_step_gives_the_logits_and_state_of_the_ordinary_path_and_a_padded_row_keeps_its_state(cell_type):
    graphed, ordinary = pair(cell_type, embedding_size=16)
    ids, mask = prompt_and_mask()
    with torch.no_grad():
        caches = [m(ids, attention_mask=mask, use_cache=True).cache for m in (graphed, ordinary)]
        before = [t.clone() for state in caches[0].states for t in state]
        token = torch.tensor([[5], [6], [7]])
        step_mask = torch.cat([mask, torch.tensor([[1], [0], [1]])], dim=1)  # row 1's new token is padding
        outs = [m(token, cache=c, attention_mask=step_mask) for m, c in zip((graphed, ordinary), caches)]
    assert (outs[0].logits - outs[1].logits).abs().max() < 1e-5
    assert outs[0].logits.shape == (3, 1, 40)
    for a, b in zip(caches[0].states, caches[1].states):
        for x, y in zip(a, b):
            assert (x - y).abs().max() < 1e-6
    after = [t for state in caches[0].states for t in state]
    for old, new in zip(before, after):
        assert torch.equal(old[1], new[1]), "the padded row's state is untouched"
        assert not torch.equal(old[0], new[0])
    assert caches[0].seen_tokens == caches[1].seen_tokens == 7


def test_a_bad_token_id_or_mask_value_is_refused_as_on_the_ordinary_path_and_the_cache_is_left_alone():
    graphed, _ = pair()
    with torch.no_grad():
        cache = graphed(torch.randint(2, 40, (2, 4)), use_cache=True).cache
        states = [t.clone() for s in cache.states for t in s]
        with pytest.raises(ValueError, match=r"token id 40, outside \[0, vocab_size=40\)"):
            graphed(torch.tensor([[3], [40]]), cache=cache)
        with pytest.raises(ValueError, match="token id -1"):
            graphed(torch.tensor([[-1], [3]]), cache=cache)
        with pytest.raises(ValueError, match="only 0 .padding. and 1"):
            graphed(torch.tensor([[3], [4]]), cache=cache, attention_mask=torch.full((2, 5), 2))
        with pytest.raises(ValueError, match=r"attention_mask has shape \(2, 3\) but must be \(2, 5\)"):
            graphed(torch.tensor([[3], [4]]), cache=cache, attention_mask=torch.ones(2, 3))
        assert all(torch.equal(a, b) for a, b in zip(states, [t for s in cache.states for t in s]))
        assert cache.seen_tokens == 4
        graphed(torch.tensor([[3], [4]]), cache=cache)  # and the step still works after the refusals
    assert cache.seen_tokens == 5


def test_the_state_handed_out_is_not_overwritten_by_the_next_step():
    graphed, _ = pair()
    with torch.no_grad():
        cache = graphed(torch.randint(2, 40, (2, 4)), use_cache=True).cache
        first = graphed(torch.tensor([[3], [4]]), cache=cache)
        held = cache.detach()  # views of the very tensors the cache holds
        kept = [t.clone() for s in held.states for t in s]
        logits = first.logits.clone()
        graphed(torch.tensor([[5], [6]]), cache=cache)
    assert torch.equal(first.logits, logits)
    assert all(torch.equal(a, b) for a, b in zip(kept, [t for s in held.states for t in s]))


def test_a_weight_change_is_seen_the_step_is_captured_again():
    graphed, ordinary = pair()
    ids = torch.randint(2, 40, (2, 5))

    def last_logits(model):
        with torch.no_grad():
            cache = model(ids[:, :-1], use_cache=True).cache
            return model(ids[:, -1:], cache=cache).logits

    assert (last_logits(graphed) - last_logits(ordinary)).abs().max() < 1e-5
    captured = graphed._decode_graph.key
    for model in (graphed, ordinary):  # the same optimizer step on both, then back to eval
        model.train()
        model(ids, labels=ids).loss.backward()
        torch.optim.SGD(model.parameters(), lr=1.0).step()
        model.eval()
    with torch.no_grad():
        graphed.model.layers[0].rnn.weight_hh_l0.add_(0.5)  # and an in-place change in eval mode
        ordinary.model.layers[0].rnn.weight_hh_l0.add_(0.5)
    assert (last_logits(graphed) - last_logits(ordinary)).abs().max() < 1e-5
    assert graphed._decode_graph.key != captured
    captured = graphed._decode_graph.key
    weights = {k: v + 0.1 for k, v in ordinary.state_dict().items()}
    for model in (graphed, ordinary):  # new parameter objects, the modules kept
        model.load_state_dict(weights, assign=True)
    assert (last_logits(graphed) - last_logits(ordinary)).abs().max() < 1e-5
    assert graphed._decode_graph.key != captured


def test_what_the_ordinary_path_keeps_for_itself():
    graphed, _ = pair("peephole")
    graphed_lstm, _ = pair("lstm")
    calls, calls_lstm = counted(graphed), counted(graphed_lstm)
    ids = torch.randint(2, 40, (2, 4))
    graphed.generate(
        ids, max_new_tokens=4, do_sample=False, pad_token_id=0
    )  # no single-step op for peepholes
    with torch.no_grad():
        cache = graphed_lstm(ids, use_cache=True).cache
        graphed_lstm(ids[:, :1], cache=cache, output_hidden_states=True)
        graphed_lstm(ids[:, :1], cache=cache, output_gates=True)
        graphed_lstm(ids[:, :2], cache=cache)  # two tokens
    graphed_lstm.train()
    graphed_lstm(ids[:, :1], cache=cache.detach())  # training
    assert calls == calls_lstm == []


def test_generate_builds_each_decoding_step_itself_with_what_transformers_would_give():
    """Record the arguments generate() passes at every step, then compare the lean preparation with
    transformers' general one on each decoding step: the same token, cache, mask and options."""
    model, _ = pair()
    ids, mask = prompt_and_mask()
    recorded, lean = [], model.prepare_inputs_for_generation

    def recording(input_ids, *args, **kwargs):
        recorded.append((input_ids, args, dict(kwargs)))
        return lean(input_ids, *args, **kwargs)

    model.prepare_inputs_for_generation = recording
    model.generate(ids, attention_mask=mask, max_new_tokens=5, do_sample=False, pad_token_id=0)
    steps = [r for r in recorded if r[0].shape[1] > ids.shape[1]]
    assert len(steps) == 4
    for input_ids, args, kwargs in steps:
        ours = lean(input_ids, *args, **kwargs)
        theirs = super(LSTMForCausalLM, model).prepare_inputs_for_generation(input_ids, *args, **kwargs)
        assert ours["input_ids"].shape == (3, 1) and torch.equal(ours["input_ids"], theirs["input_ids"])
        assert ours[CACHE_NAME] is theirs[CACHE_NAME]
        assert torch.equal(ours["attention_mask"], theirs["attention_mask"])
        ignored = {"input_ids", "attention_mask", CACHE_NAME, "cache_position", "position_ids"}
        assert {k: v for k, v in ours.items() if k not in ignored} == {
            k: v for k, v in theirs.items() if k not in ignored
        }
