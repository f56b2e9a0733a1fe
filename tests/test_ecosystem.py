"""The rest of the ecosystem: Trainer, resize_token_embeddings, pipeline with the package installed."""

import os

import torch
from transformers import Trainer, TrainingArguments, pipeline

from conftest import SENTENCES, tiny_config
from hf_lstm import LSTMForCausalLM


def blocks_of(tokenizer, block: int = 8) -> list[dict]:
    """The test sentences as one stream cut into blocks of `block` tokens: a causal-LM dataset (`Trainer`)."""
    stream = [t for s in SENTENCES for t in tokenizer(s + " <eos>").input_ids]
    blocks = [stream[i : i + block] for i in range(0, len(stream) - block + 1, block)]
    return [{"input_ids": torch.tensor(b), "labels": torch.tensor(b)} for b in blocks]


def train_with_trainer(model, dataset, output_dir, max_steps: int, logging_steps: int, **args) -> Trainer:
    """`Trainer` on the CPU, batch 4, rate 2e-2, no saving; `args` are more `TrainingArguments`."""
    args = TrainingArguments(
        output_dir=str(output_dir),
        max_steps=max_steps,
        per_device_train_batch_size=4,
        learning_rate=2e-2,
        logging_steps=logging_steps,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        seed=0,
        **args,
    )
    trainer = Trainer(model=model, args=args, train_dataset=dataset)
    trainer.train()
    return trainer


def logged_losses(trainer: Trainer) -> list[float]:
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]


def test_trainer_trains_the_causal_lm_and_saves_safetensors(tmp_path, word_tokenizer):
    model = LSTMForCausalLM(tiny_config("lstm", vocab_size=len(word_tokenizer), hidden_size=32))
    trainer = train_with_trainer(model, blocks_of(word_tokenizer), tmp_path, max_steps=60, logging_steps=10)
    losses = logged_losses(trainer)
    assert losses[-1] < 0.5 * losses[0], losses
    trainer.save_model(str(tmp_path / "final"))
    files = os.listdir(tmp_path / "final")
    assert "model.safetensors" in files and "pytorch_model.bin" not in files


def test_resize_token_embeddings_keeps_the_output_layer_tied():
    model = LSTMForCausalLM(tiny_config("lstm", embedding_size=6))
    model.resize_token_embeddings(57)
    assert model.config.vocab_size == 57
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert model.lm_head.weight.shape == (57, 6) and model.lm_head.bias.shape == (57,)
    assert model(torch.tensor([[56, 3]])).logits.shape == (1, 2, 57)


def test_text_generation_pipeline_with_the_package_installed(tmp_path, word_tokenizer):
    model = LSTMForCausalLM(
        tiny_config(
            "gru",
            vocab_size=len(word_tokenizer),
            pad_token_id=word_tokenizer.pad_token_id,
            eos_token_id=word_tokenizer.eos_token_id,
            initializer_range=0.5,
        )
    )
    pipe = pipeline("text-generation", model=model, tokenizer=word_tokenizer)
    outputs = pipe(["the cat sat", "i grew up in france so"], max_new_tokens=4, do_sample=False)
    # a batch is left-padded by the pipeline: each prompt must continue as it does alone
    for prompt, out in zip(["the cat sat", "i grew up in france so"], outputs):
        alone = pipe(prompt, max_new_tokens=4, do_sample=False)
        assert out[0]["generated_text"] == alone[0]["generated_text"]
        assert out[0]["generated_text"].startswith(prompt)
