"""generate() with the recurrent cache: every decoding mode, token for token."""

import pytest
import torch
from transformers import TextStreamer

from conftest import CELL_TYPES, tiny_config
from hf_lstm import CACHE_NAME, LSTMCache, LSTMForCausalLM, cache_of


@pytest.fixture(scope="module", params=CELL_TYPES)
def model(request):
    torch.manual_seed(1)
    # a larger initialisation gives peaked, input-dependent distributions, so ties are unlikely and a
    # wrong state would change the tokens
    return LSTMForCausalLM(tiny_config(request.param, initializer_range=0.6)).eval()


def greedy(model, ids, max_new_tokens=12, **kwargs):
    return model.generate(
        ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=0, eos_token_id=None, **kwargs
    )


def test_greedy_cached_equals_uncached(model):
    ids = torch.randint(2, 40, (2, 5))
    cached = greedy(model, ids)
    assert torch.equal(cached, greedy(model, ids, use_cache=False))
    assert cached.shape == (2, 17)


def test_greedy_matches_a_hand_written_argmax_loop(model):
    ids = torch.randint(2, 40, (1, 4))
    seq = ids
    for _ in range(12):
        seq = torch.cat([seq, model(seq).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(greedy(model, ids), seq)


def test_beam_search_cached_equals_uncached(model):
    ids = torch.randint(2, 40, (2, 4))
    kwargs = dict(num_beams=4, num_return_sequences=2)
    assert torch.equal(greedy(model, ids, **kwargs), greedy(model, ids, use_cache=False, **kwargs))


@pytest.mark.parametrize("side", ["left", "right"])
def test_a_padded_batch_equals_each_prompt_alone_on_either_side(model, side):
    """Left padding is what transformers asks of a decoder-only model. Right padding works here too (the state
    skips padding wherever it is, and the logits at a padded position are those after the last real token),
    with or without the cache, even though transformers warns about it for every decoder-only model."""
    prompts = [torch.randint(2, 40, (n,)) for n in (6, 2, 4)]
    ids = torch.zeros(3, 6, dtype=torch.long)
    mask = torch.zeros(3, 6, dtype=torch.long)
    for k, p in enumerate(prompts):
        where = slice(6 - len(p), 6) if side == "left" else slice(0, len(p))
        ids[k, where], mask[k, where] = p, 1
    for options in ({}, {"num_beams": 3}, {"use_cache": False}):
        batch = greedy(model, ids, attention_mask=mask, **options)
        for k, p in enumerate(prompts):
            assert torch.equal(batch[k, 6:], greedy(model, p[None], **options)[0, len(p) :]), (options, k)


def test_sampling_is_seeded_and_returns_several_sequences(model):
    ids = torch.randint(2, 40, (2, 3))
    kwargs = dict(
        max_new_tokens=8, do_sample=True, top_k=10, num_return_sequences=3, pad_token_id=0, eos_token_id=None
    )
    torch.manual_seed(7)
    a = model.generate(ids, **kwargs)
    torch.manual_seed(7)
    b = model.generate(ids, **kwargs)
    assert a.shape == (6, 11) and torch.equal(a, b)
    assert torch.equal(a[0, :3], ids[0]) and torch.equal(a[3, :3], ids[1])


def test_inputs_embeds_generate_the_same_tokens_as_input_ids(model):
    ids = torch.randint(2, 40, (1, 5))
    embeds = model.get_input_embeddings()(ids)
    from_embeds = greedy(model, None, inputs_embeds=embeds)  # returns only the new tokens
    assert torch.equal(from_embeds, greedy(model, ids)[:, 5:])


def test_continuing_from_a_returned_cache_equals_one_long_generation(model):
    ids = torch.randint(2, 40, (1, 5))
    first = greedy(model, ids, max_new_tokens=6, return_dict_in_generate=True)
    cache = cache_of(first)
    assert isinstance(cache, LSTMCache)
    # the last generated token has not been read by the state yet: generate feeds it first
    assert cache.get_seq_length() == first.sequences.shape[1] - 1
    more = greedy(model, first.sequences, max_new_tokens=6, **{CACHE_NAME: cache})
    assert torch.equal(more, greedy(model, ids))


def test_continuing_a_returned_cache_with_new_prompt_tokens_reads_each_token_once(model):
    """A chat-like turn: the earlier sequence, then new user tokens, on top of the returned state."""
    ids = torch.randint(2, 40, (1, 5))
    first = greedy(model, ids, max_new_tokens=4, return_dict_in_generate=True)
    turn = torch.cat([first.sequences, torch.randint(2, 40, (1, 3))], dim=1)
    more = greedy(model, turn, max_new_tokens=5, **{CACHE_NAME: cache_of(first)})
    alone = greedy(model, turn, max_new_tokens=5)
    assert torch.equal(more, alone)


def test_text_streamer_prints_the_generated_text(word_tokenizer, capsys):
    lm = LSTMForCausalLM(tiny_config("lstm", vocab_size=len(word_tokenizer), initializer_range=0.6)).eval()
    ids = word_tokenizer("the boy who lives", return_tensors="pt").input_ids
    out = lm.generate(
        ids,
        max_new_tokens=6,
        do_sample=False,
        streamer=TextStreamer(word_tokenizer, skip_prompt=True),
        pad_token_id=word_tokenizer.pad_token_id,
        eos_token_id=None,
    )
    printed = capsys.readouterr().out.strip()
    assert printed == word_tokenizer.decode(out[0, ids.shape[1] :]).strip()
    assert len(printed.split()) == 6


def test_stop_strings_stop_the_generation_with_the_tokenizer_generate_hands_on():
    """`stop_strings` needs `tokenizer=`, which transformers passes on with the model's arguments (5.0 to
    5.25): the model's step drops it instead of refusing it as an unknown argument. Byte-level BPE, the
    tokenizer `hf-lstm train` gives your own text (transformers 5.0's stop-string search cannot read a
    word-level vocabulary)."""
    from transformers import pipeline

    from hf_lstm.data import train_tokenizer

    tok = train_tokenizer(
        ["the cat sat on the mat. the dog ate the bone. a bird sang in the tree."] * 20, "bpe", 300
    )
    torch.manual_seed(0)
    lm = LSTMForCausalLM(
        tiny_config(vocab_size=len(tok), pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    ).eval()
    ids = tok("the cat", return_tensors="pt").input_ids
    free = lm.generate(ids, max_new_tokens=30, do_sample=False, min_new_tokens=30)
    text = tok.decode(free[0, ids.shape[1] :])
    stop = text[len(text) // 2 : len(text) // 2 + 2]  # a string the free run is known to produce
    stopped = lm.generate(ids, max_new_tokens=30, do_sample=False, stop_strings=[stop], tokenizer=tok)
    new = tok.decode(stopped[0, ids.shape[1] :])
    # it stopped at the first token that completes the string
    assert stop in new and stop not in tok.decode(stopped[0, ids.shape[1] : -1])
    assert torch.equal(stopped[0], free[0, : stopped.shape[1]]) and stopped.shape[1] < free.shape[1]
    pipe = pipeline("text-generation", model=lm, tokenizer=tok)
    out = pipe(
        "the cat",
        max_new_tokens=30,
        do_sample=False,
        stop_strings=[stop],
        tokenizer=tok,
        return_full_text=False,
    )
    assert out[0]["generated_text"] == new
