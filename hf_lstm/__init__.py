"""hf_lstm: the LSTM family (LSTM, GRU, vanilla RNN, peephole LSTM) as a first-class Hugging Face model.

Importing the package registers `model_type="hf_lstm"` with transformers' Auto classes, so
`AutoConfig.for_model("hf_lstm", ...)`, `AutoModelForCausalLM.from_config(config)` and
`AutoModel*.from_pretrained(folder)` work like they do for any built-in model. Saved folders also carry the
two model files, so they load without this package through `trust_remote_code=True`.
"""

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
)
from transformers.models.auto import modeling_auto

from .configuration_hf_lstm import CELL_TYPES, IMPLEMENTATIONS, LSTMConfig, is_hf_lstm
from .modeling_hf_lstm import (
    CACHE_NAME,
    LSTMCache,
    LSTMCausalLMOutput,
    LSTMClassifierOutput,
    LSTMForCausalLM,
    LSTMForSequenceClassification,
    LSTMForTokenClassification,
    LSTMModel,
    LSTMModelOutput,
    LSTMPreTrainedModel,
    cache_of,
)

__version__ = "0.2.0"

AutoConfig.register(LSTMConfig.model_type, LSTMConfig, exist_ok=True)
AutoModel.register(LSTMConfig, LSTMModel, exist_ok=True)
AutoModelForCausalLM.register(LSTMConfig, LSTMForCausalLM, exist_ok=True)
AutoModelForSequenceClassification.register(LSTMConfig, LSTMForSequenceClassification, exist_ok=True)
AutoModelForTokenClassification.register(LSTMConfig, LSTMForTokenClassification, exist_ok=True)

# `register` is not enough for `Trainer`: it decides whether label smoothing shifts the labels (a causal LM
# predicts the next token) by looking the model's class name up among the *names* of transformers' own
# models, and so would train a label-smoothed hf_lstm to predict the token it is reading. The task a
# `Trainer` model card names comes from the same tables. The tables' other readers, the lazy Auto mappings,
# skip a model type that has no built-in config, so the entry changes nothing else
# (tests/test_ecosystem.py::test_trainer_label_smoothing_scores_the_next_token).
for _names, _cls in (
    (modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, LSTMForCausalLM),
    (modeling_auto.MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES, LSTMForSequenceClassification),
    (modeling_auto.MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES, LSTMForTokenClassification),
):
    _names.setdefault(LSTMConfig.model_type, _cls.__name__)
del _names, _cls

__all__ = [
    "CACHE_NAME",
    "cache_of",
    "CELL_TYPES",
    "IMPLEMENTATIONS",
    "is_hf_lstm",
    "LSTMConfig",
    "LSTMCache",
    "LSTMPreTrainedModel",
    "LSTMModel",
    "LSTMForCausalLM",
    "LSTMForSequenceClassification",
    "LSTMForTokenClassification",
    "LSTMModelOutput",
    "LSTMCausalLMOutput",
    "LSTMClassifierOutput",
]
