"""The rest of the ecosystem: Trainer, resize_token_embeddings, pipeline with the package installed."""

import os

import pytest
import torch
from transformers import Trainer, TrainingArguments, pipeline

from conftest import SENTENCES, tiny_config
from hf_lstm import LSTMForCausalLM, LSTMForSequenceClassification, LSTMForTokenClassification


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


def test_trainer_label_smoothing_scores_the_next_token(tmp_path, word_tokenizer):
    """With `label_smoothing_factor`, `Trainer` computes the loss itself and shifts the labels only for the
    causal LMs it knows by name: an unknown one would be trained to predict the token it reads."""
    model = LSTMForCausalLM(tiny_config("lstm", vocab_size=len(word_tokenizer), hidden_size=32)).eval()
    blocks = blocks_of(word_tokenizer)
    args = TrainingArguments(
        output_dir=str(tmp_path), label_smoothing_factor=0.1, per_device_eval_batch_size=len(blocks),
        report_to=[], use_cpu=True,
    )  # fmt: skip
    trainer = Trainer(model=model, args=args, eval_dataset=blocks)
    ids = torch.stack([b["input_ids"] for b in blocks])
    with torch.no_grad():
        logits = model(ids).logits
    vocab = logits.shape[-1]
    next_token = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, vocab), ids[:, 1:].reshape(-1), label_smoothing=0.1
    )
    assert trainer.evaluate()["eval_loss"] == pytest.approx(next_token.item(), rel=1e-5)


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


@pytest.mark.parametrize("head", ["causal", "sequence", "token"])
def test_trainer_accumulates_gradients_exactly_for_every_head(tmp_path, word_tokenizer, head, monkeypatch):
    """`Trainer` with each head, on padded batches of sentences of different lengths: one optimizer step over
    4 sentences equals two accumulated micro-batches of 2 (the language model and the token classifier
    divide their summed loss by the labelled tokens `Trainer` counts over the whole step; the sequence
    classifier leaves the scaling to `Trainer`). Padded on the right, as for training: on the left, a
    language model also predicts the first token of every row shorter than the batch's longest (from the
    state before any token), so which tokens count would depend on how rows are grouped into batches."""
    monkeypatch.setattr(word_tokenizer, "padding_side", "right")  # a pipeline test sets it to "left"
    from transformers import (
        DataCollatorForLanguageModeling,
        DataCollatorForTokenClassification,
        DataCollatorWithPadding,
    )

    rows = [word_tokenizer(s) for s in SENTENCES[:8]]
    if head == "causal":
        dataset = rows
        collator = DataCollatorForLanguageModeling(word_tokenizer, mlm=False)
        model_class = LSTMForCausalLM
    elif head == "sequence":
        dataset = [{**r, "labels": k % 2} for k, r in enumerate(rows)]
        collator, model_class = DataCollatorWithPadding(word_tokenizer), LSTMForSequenceClassification
    else:
        dataset = [{**r, "labels": [t % 3 for t in r["input_ids"]]} for r in rows]
        collator, model_class = DataCollatorForTokenClassification(word_tokenizer), LSTMForTokenClassification
    assert len({len(r["input_ids"]) for r in rows}) > 1  # the padding differs between micro-batches

    def build():
        torch.manual_seed(0)
        pad = word_tokenizer.pad_token_id
        return model_class(tiny_config(vocab_size=len(word_tokenizer), num_labels=3, pad_token_id=pad))

    def one_step(batch: int, accumulation: int) -> dict:
        model = build()
        args = TrainingArguments(
            output_dir=str(tmp_path / f"{batch}x{accumulation}"),
            max_steps=1,
            per_device_train_batch_size=batch,
            gradient_accumulation_steps=accumulation,
            optim="sgd",
            learning_rate=0.5,
            report_to=[],
            save_strategy="no",
            use_cpu=True,
            seed=0,
        )
        Trainer(model=model, args=args, train_dataset=dataset, data_collator=collator).train()
        return {name: p.detach().clone() for name, p in model.named_parameters()}

    initial = dict(build().named_parameters())
    whole, accumulated = one_step(4, 1), one_step(2, 2)
    last = "lm_head.bias" if head == "causal" else "score.weight"
    assert not torch.equal(whole[last], initial[last])  # the step moved the weights
    for name, weight in whole.items():
        torch.testing.assert_close(accumulated[name], weight, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize("cell_type", ["lstm", "gru"])
def test_torch_compile_gives_the_eager_logits_loss_and_gradients(cell_type):
    """`torch.compile(model)` (inductor, the default mode), as a training script or `Trainer(torch_compile=
    True)` applies it: the same logits on a left-padded batch in eval mode, and the same loss and gradients
    in training mode (dropout off). The value checks break the graph; they do not change the result."""
    torch.manual_seed(0)
    model = LSTMForCausalLM(tiny_config(cell_type, hidden_size=16)).eval()
    ids = torch.randint(2, model.config.vocab_size, (3, 9))
    mask = torch.ones_like(ids)
    mask[0, :4] = 0
    compiled = torch.compile(model)
    with torch.no_grad():
        eager = model(ids, attention_mask=mask).logits
        assert (compiled(ids, attention_mask=mask).logits - eager).abs().max() < 1e-5
    model.train()
    losses, grads = [], []
    for run in (model, compiled):
        model.zero_grad(set_to_none=True)
        loss = run(ids, labels=ids).loss
        loss.backward()
        losses.append(loss.detach())
        grads.append([p.grad.clone() for p in model.parameters()])
    assert torch.allclose(losses[0], losses[1], atol=1e-6)
    for eager_grad, compiled_grad in zip(*grads):
        assert torch.allclose(eager_grad, compiled_grad, atol=1e-5)


@pytest.mark.parametrize("where", ["layers", "everything"])
def test_from_pretrained_with_weights_offloaded_to_disk(tmp_path, where):
    """`from_pretrained(device_map=..., offload_folder=...)`: accelerate keeps the weights it offloads on the
    meta device and loads each module's only around that module's `forward` (its hooks). The one-token
    steps, the padded prompt and the reference equations (`output_gates`) read the recurrent weights outside
    the cell module's own forward, so they must get the same tokens and logits as the model in memory. The
    recurrent layers on disk (an explicit map) works at both ends of the ranges; the whole model on disk
    (`device_map="auto"` with no memory to spare) needs accelerate >= 1.15 (docs/UPSTREAM.md)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = LSTMForCausalLM(tiny_config(hidden_size=16, vocab_size=60)).eval()
    model.save_pretrained(tmp_path / "model")
    if where == "layers":
        placement = dict(device_map={"model.embed_tokens": "cpu", "model.layers": "disk", "lm_head": "cpu"})
    else:
        placement = dict(device_map="auto", max_memory={"cpu": "1KB"})
    try:
        offloaded = AutoModelForCausalLM.from_pretrained(
            tmp_path / "model", offload_folder=tmp_path / "offload", **placement
        ).eval()
    except ValueError as error:  # accelerate < 1.15: "use the `disk_offload` function instead" (GPT-2 too)
        assert where == "everything" and "disk_offload" in str(error)
        pytest.skip(f"this accelerate cannot offload a whole model through from_pretrained: {error}")
    if not hasattr(offloaded, "hf_device_map"):  # transformers 5.0 with accelerate 1.3: no hooks attached
        import transformers

        assert where == "everything"
        pytest.skip(
            f"transformers {transformers.__version__} leaves a model offloaded to disk on the meta device "
            "without accelerate's hooks (GPT-2 too; docs/UPSTREAM.md)"
        )
    rnn_devices = {p.device.type for layer in offloaded.model.layers for p in layer.parameters()}
    assert rnn_devices == {"meta"}
    ids = torch.randint(2, 60, (2, 6))
    mask = torch.ones_like(ids)
    mask[1, :2] = 0
    greedy = dict(max_new_tokens=8, do_sample=False, pad_token_id=0)
    assert torch.equal(offloaded.generate(ids[:1], **greedy), model.generate(ids[:1], **greedy))
    assert torch.equal(
        offloaded.generate(ids, attention_mask=mask, **greedy),
        model.generate(ids, attention_mask=mask, **greedy),
    )
    with torch.no_grad():
        expected = model(ids, attention_mask=mask, output_gates=True)
        got = offloaded(ids, attention_mask=mask, output_gates=True)
    assert torch.allclose(got.logits, expected.logits, atol=1e-6)
    assert all(
        torch.allclose(a, b, atol=1e-6) for a, b in zip(got.gates[0].values(), expected.gates[0].values())
    )
    assert {p.device.type for layer in offloaded.model.layers for p in layer.parameters()} == {"meta"}
