"""Configuration of the hf_lstm models (LSTM, GRU, vanilla RNN and peephole LSTM language models).

This file travels with every saved model folder (`trust_remote_code=True` loads it without the hf_lstm
package installed), so it imports transformers and the standard library only.
"""

from __future__ import annotations

import math

from transformers import PretrainedConfig

CELL_TYPES = ("lstm", "gru", "rnn", "peephole")
IMPLEMENTATIONS = ("auto", "fused", "reference")
POOLINGS = ("last", "mean")
_DROPOUTS = ("embedding_dropout", "input_dropout", "hidden_dropout", "output_dropout", "weight_dropout")


class LSTMConfig(PretrainedConfig):
    r"""Configuration for [`LSTMModel`], [`LSTMForCausalLM`] and the classification heads.

    Args:
        vocab_size (`int`, defaults to 10000):
            Number of token ids the embedding and the output layer know.
        hidden_size (`int`, defaults to 512):
            Size H of the hidden state h_t and of the cell state C_t of every layer (per direction).
        embedding_size (`int`, *optional*):
            Size of the token embeddings. Defaults to `hidden_size`. When it differs from `hidden_size`, the
            causal LM maps the last layer's h_t to `embedding_size` with a learned linear projection (no bias)
            before the output layer, so the output layer is always `(vocab_size, embedding_size)` and can
            share its weight with the embedding (`tie_word_embeddings`) whatever the two sizes are.
        num_hidden_layers (`int`, defaults to 2):
            Number of stacked recurrent layers.
        cell_type (`str`, defaults to `"lstm"`):
            One of `"lstm"`, `"gru"`, `"rnn"` (vanilla tanh RNN) or `"peephole"` (LSTM with diagonal
            peephole connections from the cell state to the gates, Gers & Schmidhuber 2000).
        bidirectional (`bool`, defaults to `False`):
            Run every layer in both directions and concatenate the two h_t. Only for the encoder heads
            (sequence and token classification); a causal LM cannot look at the future and refuses it.
        implementation (`str`, defaults to `"auto"`):
            `"fused"` runs torch's RNN kernels (oneDNN or native on CPU, cuDNN on GPU); `"reference"` runs the
            gate equations step by step in plain PyTorch (the readable definition, and the only path for
            `"peephole"`); `"auto"` picks the fused kernel whenever the cell has one. Decoding one token at a
            time always uses a dedicated single-step path, whatever this says.
        tie_word_embeddings (`bool`, defaults to `True`):
            Share the output layer's weight with the input embedding (Press & Wolf 2017; Inan et al. 2017).
        forget_bias (`float`, defaults to 1.0):
            Initial value of the forget-gate bias b_f of LSTM and peephole cells (Gers et al. 2000;
            Jozefowicz et al. 2015). A forget gate that starts near sigmoid(1) = 0.73 keeps the cell state's
            memory from the first step. Ignored by GRU and RNN cells.
        embedding_dropout (`float`, defaults to 0.0):
            Probability of dropping a whole word type from the embedding for a forward pass (AWD-LSTM's
            embedding dropout, Gal & Ghahramani 2016).
        input_dropout (`float`, defaults to 0.0):
            Variational ("locked") dropout on the embeddings: one mask per sequence, the same at every step.
        hidden_dropout (`float`, defaults to 0.0):
            Variational dropout between stacked layers.
        output_dropout (`float`, defaults to 0.0):
            Variational dropout on the last layer's output, before the output layer.
        weight_dropout (`float`, defaults to 0.0):
            DropConnect on the recurrent weights `weight_hh` (Wan et al. 2013; AWD-LSTM, Merity et al. 2017):
            one mask per forward pass, shared by all time steps.
        initializer_range (`float`, *optional*):
            Half-width r of the uniform distribution U(-r, r) every weight starts from, embeddings included
            (Zaremba et al. (2014) use 0.1). Left unset, each module starts as torch would start it: recurrent
            and linear weights U(-1/sqrt(hidden_size), 1/sqrt(hidden_size)) as in torch.nn.LSTM, and the token
            embeddings N(0, 1) as in torch.nn.Embedding. The embedding scale matters: with embeddings as small
            as the recurrent weights, the input reaches the gates ~30x attenuated and AdamW sits at the
            unigram loss for hundreds of steps (measured: docs/TRAINING.md, "Initialisation").
        classifier_pooling (`str`, defaults to `"last"`):
            How [`LSTMForSequenceClassification`] summarises a sequence: `"last"` takes the final state of the
            last layer (with `bidirectional`, the forward state after the last real token concatenated with
            the backward state after the first), `"mean"` averages h_t over the real (unpadded) tokens.
        classifier_dropout (`float`, defaults to 0.0):
            Dropout before the classification layers.
        use_cache (`bool`, defaults to `True`):
            Return the recurrent state ([`LSTMCache`]) so generation continues without re-reading the prompt.
        decode_cache_weights (`bool`, defaults to `True`):
            Let one-token steps (`generate()`, stateful evaluation at bptt 1) on CPU, in eval mode and without
            gradients, read column-major copies of the weight matrices (both recurrent matrices of every
            layer, the output projection and the output layer; the output layer in one block per thread),
            in the layout this CPU streams fastest, and at batch 1 keep the first layer's input product per
            token (at most 4,096 tokens). A batch-1 step is then ~3x faster on the CPU measured
            (docs/PERFORMANCE.md, 1c-1d). The copies are built on the first such step, rebuilt whenever a
            weight changes, never saved, and cost one more copy of those matrices in memory (37.3 MB for the
            10k-vocabulary 2x512 reference model, plus at most 32 MB of kept products). Set `False` where
            memory matters more than decoding speed; the outputs are the same either way, up to rounding.
        decode_cuda_graph (`bool`, defaults to `True`):
            On a CUDA device, in eval mode and without gradients, run each one-token step (embedding, every
            layer's cell, output layer) as a replay of a CUDA graph captured on the first such step: one
            launch instead of one per operation, which is what a small model's decoding step costs on a GPU.
            Captured again when the batch size, dtype or any weight changes; it holds the step's buffers (a
            few times batch x (hidden_size + vocab_size) values). Peephole cells and `output_gates` take the
            ordinary path. The tokens are the same either way (docs/PERFORMANCE.md, "On a GPU").
        pad_token_id, bos_token_id, eos_token_id (`int`, *optional*):
            Special token ids, usually those of the tokenizer saved next to the model.
    """

    model_type = "hf_lstm"
    keys_to_ignore_at_inference = [
        "cache",
        "past_key_values",
    ]  # the state, under its name before and after transformers 5.24

    def __init__(
        self,
        vocab_size: int = 10000,
        hidden_size: int = 512,
        embedding_size: int | None = None,
        num_hidden_layers: int = 2,
        cell_type: str = "lstm",
        bidirectional: bool = False,
        implementation: str = "auto",
        tie_word_embeddings: bool = True,
        forget_bias: float = 1.0,
        embedding_dropout: float = 0.0,
        input_dropout: float = 0.0,
        hidden_dropout: float = 0.0,
        output_dropout: float = 0.0,
        weight_dropout: float = 0.0,
        initializer_range: float | None = None,
        classifier_pooling: str = "last",
        classifier_dropout: float = 0.0,
        use_cache: bool = True,
        decode_cache_weights: bool = True,
        decode_cuda_graph: bool = True,
        pad_token_id: int | None = None,
        bos_token_id: int | None = None,
        eos_token_id: int | None = None,
        **kwargs,
    ):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.embedding_size = hidden_size if embedding_size is None else embedding_size
        self.num_hidden_layers = num_hidden_layers
        self.cell_type = cell_type
        self.bidirectional = bidirectional
        self.implementation = implementation
        self.forget_bias = forget_bias
        self.embedding_dropout = embedding_dropout
        self.input_dropout = input_dropout
        self.hidden_dropout = hidden_dropout
        self.output_dropout = output_dropout
        self.weight_dropout = weight_dropout
        self.initializer_range = initializer_range
        self.classifier_pooling = classifier_pooling
        self.classifier_dropout = classifier_dropout
        self.use_cache = use_cache
        self.decode_cache_weights = decode_cache_weights
        self.decode_cuda_graph = decode_cuda_graph
        super().__init__(
            tie_word_embeddings=tie_word_embeddings,
            pad_token_id=pad_token_id,
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            **kwargs,
        )
        self.tie_word_embeddings = tie_word_embeddings
        self.pad_token_id, self.bos_token_id, self.eos_token_id = pad_token_id, bos_token_id, eos_token_id
        self.validate_lstm_config()

    @property
    def uses_fused_kernel(self) -> bool:
        """Whether sequences run through torch's fused RNN kernels (as opposed to the step-by-step
        reference)."""
        return self.implementation != "reference" and self.cell_type != "peephole"

    def validate_lstm_config(self) -> None:
        """Check every field; raise `ValueError` naming the field, the bad value and what is allowed."""

        def positive_int(name):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")

        def choice(name, allowed):
            value = getattr(self, name)
            if value not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}; got {value!r}")

        def flag(name):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")

        def probability(name):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1), got {value!r}")

        for name in ("vocab_size", "hidden_size", "embedding_size", "num_hidden_layers"):
            positive_int(name)
        choice("cell_type", CELL_TYPES)
        choice("implementation", IMPLEMENTATIONS)
        choice("classifier_pooling", POOLINGS)
        for name in (
            "bidirectional",
            "tie_word_embeddings",
            "use_cache",
            "decode_cache_weights",
            "decode_cuda_graph",
        ):
            flag(name)
        for name in (*_DROPOUTS, "classifier_dropout"):
            probability(name)
        b = self.forget_bias
        if isinstance(b, bool) or not isinstance(b, (int, float)) or not math.isfinite(b):
            raise ValueError(f"forget_bias must be a finite number (1.0 by default), got {b!r}")
        r = self.initializer_range
        if r is not None and (
            isinstance(r, bool) or not isinstance(r, (int, float)) or not (r > 0 and math.isfinite(r))
        ):
            raise ValueError(
                f"initializer_range must be a finite positive number or None (1/sqrt(hidden_size)), got {r!r}"
            )
        if self.cell_type == "peephole" and self.implementation == "fused":
            raise ValueError(
                "implementation='fused' is not available for cell_type='peephole' (torch has no fused "
                "peephole kernel); use implementation='auto' or 'reference'"
            )
        for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
            value = getattr(self, name)
            if value is None:
                continue
            ids = value if isinstance(value, (list, tuple)) else [value]
            for token_id in ids:
                if (
                    isinstance(token_id, bool)
                    or not isinstance(token_id, int)
                    or not 0 <= token_id < self.vocab_size
                ):
                    raise ValueError(
                        f"{name} must be a token id in [0, vocab_size={self.vocab_size}) or None, "
                        f"got {value!r}"
                    )


LSTMConfig.register_for_auto_class()

__all__ = ["LSTMConfig", "CELL_TYPES", "IMPLEMENTATIONS"]


def is_hf_lstm(thing) -> bool:
    """Whether `thing` is, or belongs to, an hf_lstm model: a `model_type` string, a config dict
    (config.json), a configuration, or a model (anything with a `.config`)."""
    if isinstance(thing, str):
        model_type = thing
    elif isinstance(thing, dict):
        model_type = thing.get("model_type")
    else:
        config = getattr(thing, "config", thing)
        model_type = getattr(config, "model_type", None)
    return model_type == LSTMConfig.model_type
