"""Property-based tests (hypothesis): for random small configurations and inputs, the invariants of the model
hold (cached == uncached, chunked == whole, padded == alone, fused == reference) and invalid input raises
`ValueError`, never anything else.

The default suite draws few examples (`deadline=None`: the machine is shared); `pytest -m slow` draws many.
"""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hf_lstm import LSTMCache, LSTMConfig, LSTMForCausalLM

FAST = settings(
    max_examples=12,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
MANY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
TOL = dict(rtol=1e-5, atol=1e-5)


@st.composite
def configs(draw, fused_only=False):
    """A random small causal-LM configuration (every cell type, 1-3 layers, any embedding size, either
    path)."""
    cell = draw(st.sampled_from(("lstm", "gru", "rnn") if fused_only else ("lstm", "gru", "rnn", "peephole")))
    vocab = draw(st.integers(3, 30))
    return LSTMConfig(
        vocab_size=vocab,
        hidden_size=draw(st.integers(1, 10)),
        embedding_size=draw(st.integers(1, 10)),
        num_hidden_layers=draw(st.integers(1, 3)),
        cell_type=cell,
        pad_token_id=0,
        tie_word_embeddings=draw(st.booleans()),
        forget_bias=draw(st.floats(-2, 2)),
        initializer_range=draw(st.floats(0.05, 1.5)),
    )


def model_and_ids(data, fused_only=False, max_batch=4, max_len=12):
    """Draw a configuration, build its model (seeded), and draw a batch of token ids for it."""
    config = data.draw(configs(fused_only=fused_only), label="config")
    torch.manual_seed(data.draw(st.integers(0, 2**16), label="seed"))
    model = LSTMForCausalLM(config).eval()
    batch, length = data.draw(st.integers(1, max_batch)), data.draw(st.integers(1, max_len))
    ids = torch.randint(0, config.vocab_size, (batch, length))
    return model, ids


def check_chunked_equals_whole(data):
    model, ids = model_and_ids(data)
    cut = data.draw(st.integers(1, ids.shape[1]), label="cut")
    with torch.no_grad():
        whole = model(input_ids=ids, use_cache=True)
        first = model(input_ids=ids[:, :cut], use_cache=True)
        if cut == ids.shape[1]:
            rest_logits, cache = first.logits[:, :0], first.cache
        else:
            rest = model(input_ids=ids[:, cut:], cache=first.cache, use_cache=True)
            rest_logits, cache = rest.logits, rest.cache
    torch.testing.assert_close(torch.cat([first.logits, rest_logits], 1), whole.logits, **TOL)
    for a, b in zip(cache.states, whole.cache.states):
        for x, y in zip(a, b):
            torch.testing.assert_close(x, y, **TOL)
    assert cache.get_seq_length() == ids.shape[1]


def check_token_by_token_equals_whole(data):
    model, ids = model_and_ids(data, max_len=8)
    with torch.no_grad():
        whole = model(input_ids=ids).logits
        cache, steps = None, []
        for t in range(ids.shape[1]):  # the single-step decode path, as generate() uses it
            out = model(input_ids=ids[:, t : t + 1], cache=cache, use_cache=True)
            cache = out.cache
            steps.append(out.logits)
    torch.testing.assert_close(torch.cat(steps, 1), whole, **TOL)


def check_padded_equals_alone(data):
    model, ids = model_and_ids(data)
    batch, length = ids.shape
    lengths = [data.draw(st.integers(1, length), label=f"length{k}") for k in range(batch)]
    side = data.draw(st.sampled_from(("left", "right")), label="side")
    mask = torch.zeros(batch, length, dtype=torch.long)
    for k, n in enumerate(lengths):
        if side == "left":
            mask[k, length - n :] = 1
        else:
            mask[k, :n] = 1
    padded_ids = ids.masked_fill(mask == 0, 0)
    with torch.no_grad():
        together = model(input_ids=padded_ids, attention_mask=mask, use_cache=True)
        for k, n in enumerate(lengths):
            real = padded_ids[k : k + 1][mask[k : k + 1] == 1].view(1, n)
            alone = model(input_ids=real, use_cache=True)
            last = length - 1 if side == "left" else n - 1
            torch.testing.assert_close(together.logits[k, last], alone.logits[0, -1], **TOL)
            for a, b in zip(together.cache.states, alone.cache.states):
                for x, y in zip(a, b):  # the final state ignores the padding wherever it is
                    torch.testing.assert_close(x[k], y[0], **TOL)


def check_fused_equals_reference(data):
    model, ids = model_and_ids(data, fused_only=True)
    reference = LSTMForCausalLM(
        LSTMConfig.from_dict({**model.config.to_dict(), "implementation": "reference"})
    ).eval()
    reference.load_state_dict(model.state_dict())
    mask = torch.ones_like(ids)
    mask[0, : data.draw(st.integers(0, ids.shape[1] - 1), label="pad")] = 0
    with torch.no_grad():
        fused = model(input_ids=ids, attention_mask=mask).logits
        by_equations = reference(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(fused, by_equations, **TOL)


@st.composite
def bad_inputs(draw, vocab: int, embedding: int, hidden: int, layers: int):
    """Keyword arguments of a forward call with exactly one thing wrong."""
    batch, length = draw(st.integers(1, 3)), draw(st.integers(1, 5))
    good = torch.randint(0, vocab, (batch, length))
    kind = draw(
        st.sampled_from(
            (
                "id_high",
                "id_negative",
                "float_ids",
                "rank",
                "empty",
                "both",
                "embeds_shape",
                "mask_shape",
                "mask_values",
                "cache_shape",
                "cache_type",
                "unknown_kwarg",
                "labels_shape",
                "bool_ids",
            )
        )
    )
    if kind == "id_high":
        return dict(input_ids=good.index_fill(1, torch.tensor([0]), vocab + draw(st.integers(0, 10**6))))
    if kind == "id_negative":
        return dict(input_ids=good.index_fill(1, torch.tensor([0]), -draw(st.integers(1, 10**6))))
    if kind == "float_ids":
        return dict(input_ids=good.to(draw(st.sampled_from((torch.float32, torch.float16, torch.float64)))))
    if kind == "bool_ids":
        return dict(input_ids=good > 0)
    if kind == "rank":
        shape = draw(st.sampled_from(((length,), (batch, length, 1), (1, 1, 1, length))))
        return dict(input_ids=torch.randint(0, vocab, shape))
    if kind == "empty":
        return dict(input_ids=torch.zeros(draw(st.sampled_from(((batch, 0), (0, length)))), dtype=torch.long))
    if kind == "both":
        return dict(input_ids=good, inputs_embeds=torch.zeros(batch, length, embedding))
    if kind == "embeds_shape":
        shape = draw(
            st.sampled_from(((batch, length, embedding + 1), (batch, length), (batch, 0, embedding)))
        )
        return dict(inputs_embeds=torch.zeros(shape))
    if kind == "mask_shape":
        shape = draw(
            st.sampled_from(((batch + 1, length), (batch, max(length - 1, 0)), (length,), (batch, length, 1)))
        )
        return dict(input_ids=good, attention_mask=torch.ones(shape))
    if kind == "mask_values":
        return dict(
            input_ids=good, attention_mask=torch.full((batch, length), draw(st.sampled_from((2, -1, 0.5))))
        )
    if kind == "cache_shape":
        wrong = draw(st.sampled_from(("hidden", "batch", "layers")))
        h = hidden + (wrong == "hidden")
        b = batch + (wrong == "batch")
        n = layers + (wrong == "layers")
        return dict(input_ids=good, cache=LSTMCache([(torch.zeros(b, h), torch.zeros(b, h))] * n))
    if kind == "cache_type":
        return dict(input_ids=good, cache=draw(st.sampled_from(((torch.zeros(1),), {"h": 1}, "cache"))))
    if kind == "unknown_kwarg":
        return dict(
            input_ids=good, **{draw(st.sampled_from(("token_type_ids", "head_mask", "foo"))): torch.ones(1)}
        )
    return dict(input_ids=good, labels=torch.zeros(batch, length + 1, dtype=torch.long))


def check_invalid_input_raises_only_value_error(data):
    config = data.draw(configs(), label="config")
    model = LSTMForCausalLM(config).eval()
    kwargs = data.draw(
        bad_inputs(config.vocab_size, config.embedding_size, config.hidden_size, config.num_hidden_layers),
        label="kwargs",
    )
    with pytest.raises(ValueError):
        model(**kwargs)


@st.composite
def bad_config_values(draw):
    """One configuration field set to a wrong value or a wrong type."""
    field = draw(
        st.sampled_from(
            (
                "vocab_size",
                "hidden_size",
                "embedding_size",
                "num_hidden_layers",
                "cell_type",
                "implementation",
                "bidirectional",
                "hidden_dropout",
                "weight_dropout",
                "forget_bias",
                "initializer_range",
                "pad_token_id",
            )
        )
    )
    wrong = st.one_of(
        st.none(),
        st.text(max_size=5),
        st.floats(allow_nan=True),
        st.integers(-5, 0),
        st.lists(st.integers(), max_size=2),
        st.just(True),
    )
    value = draw(wrong.filter(lambda v: _is_invalid(field, v)))
    return field, value


def _is_invalid(field, value) -> bool:
    try:
        LSTMConfig(**{field: value})
    except ValueError:
        return True
    except Exception:  # noqa: BLE001  (the property below reports any other exception as a failure)
        return True
    return False


def check_invalid_config_raises_only_value_error(data):
    field, value = data.draw(bad_config_values(), label="field=value")
    with pytest.raises(ValueError, match=field):
        LSTMConfig(**{field: value})


PROPERTIES = [
    check_chunked_equals_whole,
    check_token_by_token_equals_whole,
    check_padded_equals_alone,
    check_fused_equals_reference,
    check_invalid_input_raises_only_value_error,
    check_invalid_config_raises_only_value_error,
]


@pytest.mark.parametrize("prop", PROPERTIES, ids=lambda f: f.__name__.removeprefix("check_"))
def test_property(prop):
    FAST(given(st.data())(prop))()


@pytest.mark.slow
@pytest.mark.parametrize("prop", PROPERTIES, ids=lambda f: f.__name__.removeprefix("check_"))
def test_property_many_examples(prop):
    MANY(given(st.data())(prop))()
