"""Write a tiny model folder with the installed hf_lstm, and record its greedy continuation.

    python tests/folders/save_folder.py tests/folders/hf_lstm-0.2.0

Each folder here was saved by one release of hf_lstm and is kept as it was written: tests/test_upstream.py
loads every one of them, without hf_lstm, on each transformers that CI covers, and checks the recorded tokens.
Add a folder when the carried files change; never rewrite an old one.
"""

import json
import sys
from pathlib import Path

import tokenizers
import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast, pipeline

import hf_lstm

SENTENCES = [
    "i grew up in france so i speak fluent french",
    "the boy who lives next door is tall",
    "the cat sat on the mat and the dog sat on the log",
    "memory cells keep what matters and forget the rest",
]
PROMPT = "i grew up in france so"


def main(folder: Path) -> None:
    if folder.exists():
        raise SystemExit(f"{folder} exists: old folders are kept as they were written; choose a new name")
    # words carry their leading space (byte-level "Ġword"), so decoding only the new tokens, as the
    # text-generation pipeline does, keeps the space between prompt and continuation
    word = Tokenizer(models.WordLevel(unk_token="<unk>"))
    word.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.ByteLevel(add_prefix_space=True, use_regex=False)]
    )
    word.decoder = decoders.ByteLevel()
    word.train_from_iterator(SENTENCES, trainers.WordLevelTrainer(special_tokens=["<pad>", "<eos>", "<unk>"]))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=word, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")
    torch.manual_seed(0)
    config = hf_lstm.LSTMConfig(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=2,
                                pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                                bos_token_id=None, initializer_range=0.6)
    model = hf_lstm.LSTMForCausalLM(config)
    # a few hundred steps on the sentences, so the continuation depends on the state (an untrained model
    # repeats one token whatever it read, which would not show a wrong state)
    text = tokenizer(" <eos> ".join(SENTENCES) + " <eos>", return_tensors="pt").input_ids
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(300):
        loss = model(text, labels=text).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    prompt = tokenizer(PROMPT, return_tensors="pt").input_ids
    greedy = model.generate(prompt, max_new_tokens=10, do_sample=False, eos_token_id=None)
    pipe = pipeline("text-generation", model=model, tokenizer=tokenizer)
    record = {
        "saved_by": {"hf_lstm": hf_lstm.__version__, "transformers": transformers.__version__,
                     "torch": torch.__version__, "tokenizers": tokenizers.__version__},
        "prompt": PROMPT,
        "prompt_ids": prompt[0].tolist(),
        "greedy_ids": greedy[0].tolist(),
        "greedy_text": tokenizer.decode(greedy[0]),
        "pipeline_text": pipe(PROMPT, max_new_tokens=10, do_sample=False)[0]["generated_text"],
    }
    (folder / "expected.json").write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
