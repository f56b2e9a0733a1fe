"""The direct one-token step on a CPU (`LSTMForCausalLM._direct_step`) and the first layer's kept input
products (`InputProductRows`): bit for bit what the ordinary path gives, at batch 1 and above, kept rows
dropped whenever what they were computed from changes, and every bad input refused as before."""

import pytest
import torch
from test_decode_step import TOLERANCE, WITH_CACHE, decode, make, twin

from hf_lstm.modeling_hf_lstm import InputProductRows, _copy_product


def ordinary(model):
    """A twin of `model` that takes the ordinary path at every step (a hook on the embedding rules out the
    direct step), with the decode-time copies but no kept rows."""
    other = twin(model)
    other.model.embed_tokens.register_forward_hook(lambda module, args, output: None)
    return other


def rows(model) -> dict:
    return model.model.layers[0]._input_rows.rows


def ids_with_repeats(model, batch=1, length=10):
    ids = torch.randint(2, model.config.vocab_size, (batch, length))
    if length >= 8:
        ids[:, 5:8] = ids[:, 1:4]  # tokens read again: their products come from the kept rows
    return ids


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("embedding_size", [None, 20])
@pytest.mark.parametrize("cell_type", WITH_CACHE)
def test_the_direct_step_gives_the_ordinary_paths_logits_bit_for_bit(cell_type, embedding_size, batch):
    model = make(cell_type, embedding_size=embedding_size)
    ids = ids_with_repeats(model, batch)
    fast, other = decode(model, ids), ordinary(model)
    assert torch.equal(fast, decode(other, ids))
    assert not rows(other), "the hooked twin took the ordinary path, which keeps no rows"
    assert (fast - decode(twin(model, implementation="reference"), ids)).abs().max() < TOLERANCE
    # rows are kept at batch 1 only, one per distinct token read by a one-token step (not the first)
    assert len(rows(model)) == (len(set(ids[0, 1:].tolist())) if batch == 1 else 0)


def test_a_kept_row_is_the_products_own_value():
    model = make()
    ids = ids_with_repeats(model)
    decode(model, ids)
    layer = model.model.layers[0]
    (copy,) = layer._decode_copies.matrices  # the step's copy: the same computation on the same bytes
    for token, row in rows(model).items():
        x = model.model.embed_tokens.weight[token : token + 1]
        with torch.no_grad():
            width = layer.rnn.weight_ih_l0.shape[0]
            assert torch.equal(row, _copy_product(torch.cat((x, torch.ones(1, 1)), 1), copy, 0, width))
            exact = x.double() @ layer.rnn.weight_ih_l0.double().t() + layer.rnn.bias_ih_l0.double()
        assert (row.double() - exact).abs().max() < TOLERANCE


@pytest.mark.parametrize("cell_type", WITH_CACHE)
def test_greedy_generate_at_batch_1_equals_the_reference_path(cell_type):
    model = make(cell_type, vocab_size=200)
    reference = twin(model, implementation="reference", decode_cache_weights=False)
    prompt = torch.randint(2, 200, (1, 5))
    kwargs = dict(max_new_tokens=40, min_new_tokens=40, do_sample=False, pad_token_id=0)
    assert torch.equal(model.generate(prompt, **kwargs), reference.generate(prompt, **kwargs))
    assert rows(model), "generate() read the kept rows"


def _in_place_updates(model):
    """Optimizer steps in eval mode: nothing drops the rows, so the version counters must be seen."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(2):
        ids = torch.randint(2, model.config.vocab_size, (2, 6))
        model(ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def _load_other_weights(model):
    model.load_state_dict({k: v + 0.05 * torch.randn_like(v) for k, v in model.state_dict().items()})


def _double_through_data(model):
    model.model.embed_tokens.weight.data.mul_(2)  # bumps no version counter: eval() is the documented step
    model.eval()


def _round_trip_through_bfloat16(model):
    model.to(torch.bfloat16).to(torch.float32)


def _swap_a_parameter(model):
    """A layer's recurrent matrix replaced by another parameter (no eval(), no version counter moved): the
    step finds its tensors through the modules' own dictionaries, so it must see the new one."""
    rnn = model.model.layers[0].rnn
    rnn.weight_hh_l0 = torch.nn.Parameter(rnn.weight_hh_l0.detach() * 2)


def _swap_an_output_layer(model):
    """The output layer replaced by a new module (untied from the embedding), between two steps."""
    torch.manual_seed(1)
    old = model.lm_head
    model.lm_head = torch.nn.Linear(old.in_features, old.out_features).eval()
    model.config.tie_word_embeddings = False  # so that `ordinary`'s twin does not tie it back


@pytest.mark.parametrize(
    "change",
    [
        _in_place_updates,
        _load_other_weights,
        _double_through_data,
        _round_trip_through_bfloat16,
        _swap_a_parameter,
        _swap_an_output_layer,
    ],
)
@pytest.mark.parametrize("cell_type", WITH_CACHE)
def test_rows_are_dropped_when_what_they_came_from_changes(cell_type, change):
    model = make(cell_type, embedding_size=20)
    ids = ids_with_repeats(model)
    before = decode(model, ids)
    assert rows(model)
    change(model)
    after = decode(model, ids)
    assert (after - before).abs().max() > 1e-3, "the change reached the outputs"
    assert torch.equal(after, decode(ordinary(model), ids))


def test_rows_follow_resize_token_embeddings_and_dtype():
    model = make()
    decode(model, ids_with_repeats(model))
    model.resize_token_embeddings(57)
    model.eval()
    ids = ids_with_repeats(model)
    ids[0, -3:] = 56  # the new token, read twice
    assert torch.equal(decode(model, ids), decode(ordinary(model), ids))
    model.to(torch.float64)
    fast = decode(model, ids)
    assert fast.dtype == torch.float64 and all(r.dtype == torch.float64 for r in rows(model).values())
    assert torch.equal(fast, decode(ordinary(model), ids))


def test_the_least_recently_read_row_goes_first_when_full():
    model = make()
    model.model.layers[0]._input_rows.max_rows = 3
    ids = torch.tensor([[2, 5, 6, 7, 5, 8, 9]])
    fast = decode(model, ids)
    assert list(rows(model)) == [5, 8, 9]  # 6 and 7 dropped; 5 was read again after them
    assert torch.equal(fast, decode(ordinary(model), ids))


def test_no_rows_when_the_copies_are_off_in_training_or_with_gradients():
    model = make(decode_cache_weights=False)
    decode(model, ids_with_repeats(model))
    assert not rows(model)
    model = make()
    ids = ids_with_repeats(model)
    out = model(ids[:, :1], use_cache=True)
    model(ids[:, 1:2], cache=out.cache, use_cache=True).logits.sum().backward()  # gradients on
    assert not rows(model) and model.model.layers[0].rnn.weight_ih_l0.grad is not None
    decode(model, ids)
    assert rows(model)
    model.config.decode_cache_weights = False  # turned off: the next step frees them
    decode(model, ids)
    assert not rows(model)


def test_rows_are_never_saved_or_copied(tmp_path):
    model = make()
    decode(model, ids_with_repeats(model))
    expected = set(make().state_dict())
    assert rows(model) and set(model.state_dict()) == expected
    assert not model.model.layers[0]._input_rows.__getstate__()
    model.drop_decode_copies()
    assert not rows(model)
    assert InputProductRows.max_rows == 4096  # the bound docs/PERFORMANCE.md states


def test_a_padded_position_takes_the_ordinary_path_and_keeps_the_state():
    model = make()
    ids = ids_with_repeats(model, batch=2, length=4)
    with torch.no_grad():
        out = model(ids[:, :3], use_cache=True)
        mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
        padded = model(ids[:, 3:], attention_mask=mask, cache=out.cache, use_cache=True)
        alone = model(ids[:1], use_cache=True)
    state_second_row = [s[1] for s in padded.cache.states[0]]
    assert torch.allclose(padded.logits[0, -1], alone.logits[0, -1], atol=TOLERANCE)
    with torch.no_grad():
        before = model(ids[1:, :3], use_cache=True).cache.states[0]
    assert all(torch.allclose(a, b[0], atol=TOLERANCE) for a, b in zip(state_second_row, before))


@pytest.mark.parametrize("batch", [1, 3])
def test_bad_input_is_refused_and_leaves_the_cache_as_it_was(batch):
    model = make()
    ids = ids_with_repeats(model, batch, length=3)
    with torch.no_grad():
        out = model(ids, use_cache=True)
        cache = out.cache
        seen, states = cache.seen_tokens, [tuple(t.clone() for t in s) for s in cache.states]
        bad = ids[:, :1].clone()
        bad[-1, 0] = model.config.vocab_size
        with pytest.raises(ValueError, match="vocab_size"):
            model(bad, cache=cache, use_cache=True)
        with pytest.raises(ValueError, match="only 0"):
            model(ids[:, :1], attention_mask=torch.full((batch, 4), 2), cache=cache, use_cache=True)
        with pytest.raises(ValueError, match="attention_mask has shape"):
            model(ids[:, :1], attention_mask=torch.ones(batch, 2), cache=cache, use_cache=True)
        with pytest.raises(ValueError, match="does not fit"):
            model(torch.cat([ids[:, :1], ids[:1, :1]]), cache=cache, use_cache=True)
    assert cache.seen_tokens == seen
    assert all(torch.equal(a, b) for s, t in zip(cache.states, states) for a, b in zip(s, t))


@pytest.mark.parametrize("kind", ["forward", "forward_pre"])
def test_hooks_on_every_module_see_every_step(kind):
    # torch's global module hooks fire only through module calls, which the direct step skips: while one is
    # registered, every step takes the ordinary path
    model = make()
    ids = ids_with_repeats(model)
    calls = []
    register = getattr(torch.nn.modules.module, f"register_module_{kind}_hook")
    watched = (model.model.embed_tokens, model.lm_head)
    handle = register(lambda module, *args: calls.append(module) if module in watched else None)
    try:
        hooked = decode(model, ids)
    finally:
        handle.remove()
    assert len(calls) == 2 * ids.shape[1] and not rows(model)
    assert (hooked - decode(model, ids)).abs().max() < TOLERANCE and rows(model)  # the direct step again


@pytest.mark.parametrize("where", ["lm_head", "layer"])
def test_a_forward_replaced_on_the_instance_is_called_at_every_step(where):
    # what accelerate's hooks do (`module.forward = wrapper`): the direct step would skip the wrapper, so
    # while one is set the ordinary path runs, which calls it; removed, the direct step runs again
    model = make()
    ids = ids_with_repeats(model)
    module = model.lm_head if where == "lm_head" else model.model.layers[1]
    calls, original = [], module.forward

    def wrapper(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    plain = decode(model, ids)
    model.model.layers[0]._input_rows.clear()
    module.forward = wrapper
    wrapped = decode(model, ids)
    del module.forward
    assert len(calls) == ids.shape[1] and not rows(model), "every step took the ordinary path"
    assert (wrapped - plain).abs().max() < TOLERANCE
    assert torch.equal(decode(model, ids), plain) and rows(model)  # the direct step again


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
@pytest.mark.parametrize("cell_type", WITH_CACHE)
def test_batch_1_in_other_dtypes_and_under_inference_mode(cell_type, dtype):
    model = make(cell_type).to(dtype)
    ids = ids_with_repeats(model)
    with torch.inference_mode():
        fast = decode(model, ids)
    plain = decode(twin(model, decode_cache_weights=False), ids)
    assert fast.dtype == dtype and rows(model)
    assert (fast - plain).abs().max() < (TOLERANCE if dtype == torch.float64 else 0.05)
    assert torch.equal(
        decode(model, ids), fast
    )  # rows and indices made under inference mode serve outside it
