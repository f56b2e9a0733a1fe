"""`hf_lstm.evaluation`: the stateful protocol, at batch 1 and with parallel streams."""

import math

import pytest
import torch
import torch.nn.functional as F

from conftest import tiny_config
import hf_lstm
from hf_lstm.evaluation import stateful_perplexity


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return hf_lstm.LSTMForCausalLM(tiny_config()).eval()


def test_batch_one_scores_every_token_after_the_first_whatever_the_window(model):
    ids = torch.randint(2, 40, (37,))
    with torch.no_grad():
        logits = model(ids[None]).logits[0]
    whole = F.cross_entropy(logits[:-1], ids[1:]).item()
    for bptt in (5, 36, 256):
        result = stateful_perplexity(model, ids, bptt=bptt)
        assert result["tokens"] == 36
        assert result["loss"] == pytest.approx(whole, rel=1e-5)
        assert result["perplexity"] == pytest.approx(math.exp(whole), rel=1e-5)


def test_parallel_streams_of_the_same_split_give_the_batch_one_numbers(model):
    split = torch.randint(2, 40, (23,))
    single = stateful_perplexity(model, split, bptt=4)
    batched = stateful_perplexity(model, torch.cat([split, split, split]), bptt=4, batch_size=3)
    assert batched["tokens"] == 3 * single["tokens"] == 66
    assert batched["perplexity"] == pytest.approx(single["perplexity"], rel=1e-5)


def test_parallel_streams_drop_the_tokens_that_do_not_fill_a_row(model):
    result = stateful_perplexity(model, torch.randint(2, 40, (47,)), bptt=128, batch_size=10)
    assert result["tokens"] == 10 * (4 - 1)
    with pytest.raises(ValueError, match="at least 2 token ids per stream"):
        stateful_perplexity(model, torch.randint(2, 40, (19,)), batch_size=10)


def test_a_start_token_makes_the_first_token_scored_too(model):
    ids = torch.randint(2, 40, (12,))
    assert stateful_perplexity(model, ids, start_token_id=1)["tokens"] == 12
