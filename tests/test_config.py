"""LSTMConfig: defaults, validation, and the Auto-class registration."""

import pytest
from transformers import AutoConfig, AutoModelForCausalLM

from hf_lstm import LSTMConfig, LSTMForCausalLM, LSTMForSequenceClassification


def test_defaults_match_the_documented_ones():
    config = LSTMConfig()
    assert (config.cell_type, config.implementation, config.bidirectional) == ("lstm", "auto", False)
    assert config.tie_word_embeddings is True and config.use_cache is True
    assert config.forget_bias == 1.0
    assert config.embedding_size == config.hidden_size
    for name in ("embedding_dropout", "input_dropout", "hidden_dropout", "output_dropout", "weight_dropout"):
        assert getattr(config, name) == 0.0


def test_for_model_builds_the_registered_config():
    config = AutoConfig.for_model(
        "hf_lstm", vocab_size=100, hidden_size=8, num_hidden_layers=3, cell_type="gru"
    )
    assert isinstance(config, LSTMConfig)
    assert (config.vocab_size, config.hidden_size, config.num_hidden_layers, config.cell_type) == (
        100,
        8,
        3,
        "gru",
    )
    assert isinstance(AutoModelForCausalLM.from_config(config), LSTMForCausalLM)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("cell_type", "transformer", "cell_type must be one of 'lstm', 'gru', 'rnn', 'peephole'"),
        ("implementation", "cuda", "implementation must be one of 'auto', 'fused', 'reference'"),
        ("classifier_pooling", "max", "classifier_pooling must be one of"),
        ("vocab_size", 0, "vocab_size must be a positive integer"),
        ("hidden_size", 12.5, "hidden_size must be a positive integer"),
        ("num_hidden_layers", True, "num_hidden_layers must be a positive integer"),
        ("embedding_size", -3, "embedding_size must be a positive integer"),
        ("bidirectional", "yes", "bidirectional must be True or False"),
        ("tie_word_embeddings", 1, "tie_word_embeddings must be True or False"),
        ("weight_dropout", 1.0, "weight_dropout must be a probability in [0, 1)"),
        ("input_dropout", -0.1, "input_dropout must be a probability"),
        ("forget_bias", "one", "forget_bias must be a finite number"),
        ("initializer_range", 0, "initializer_range must be a finite positive number"),
        ("pad_token_id", 10_000, "pad_token_id must be a token id in [0, vocab_size=10000)"),
    ],
)
def test_invalid_values_raise_value_error_naming_the_field(field, value, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        LSTMConfig(**{field: value})


def test_peephole_has_no_fused_kernel():
    with pytest.raises(ValueError, match="peephole"):
        LSTMConfig(cell_type="peephole", implementation="fused")
    assert not LSTMConfig(cell_type="peephole").uses_fused_kernel
    assert LSTMConfig(cell_type="gru").uses_fused_kernel


def test_causal_lm_refuses_bidirectional_but_classifiers_accept_it():
    config = LSTMConfig(vocab_size=20, hidden_size=4, bidirectional=True)
    with pytest.raises(ValueError, match="cannot be bidirectional"):
        LSTMForCausalLM(config)
    assert LSTMForSequenceClassification(config).score.in_features == 8


def test_round_trip_through_json(tmp_path):
    config = LSTMConfig(
        vocab_size=30, hidden_size=6, embedding_size=4, cell_type="peephole", weight_dropout=0.3
    )
    config.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, LSTMConfig)
    assert loaded.to_diff_dict() == config.to_diff_dict()
