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
