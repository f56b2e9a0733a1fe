"""EleutherAI's lm-eval is a supported client: its own `HFLM` scores a folder written by `hf-lstm train` on a
`loglikelihood_rolling` task (offline, a local JSON file), and its bits per byte equals ours."""

import json

import pytest

from hf_lstm.evaluation import document_bits_per_byte
from hf_lstm.training import main

lm_eval = pytest.importorskip("lm_eval", reason="lm-eval is in the `eval` extra (the dev extra includes it)")

TASK = """task: hf_lstm_heldout
dataset_path: json
dataset_kwargs:
  data_files:
    test: {docs}
test_split: test
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{{{text}}}}"
metric_list:
  - metric: bits_per_byte
    aggregation: bits_per_byte
    higher_is_better: false
"""


def test_lm_eval_scores_a_trained_folder_with_our_bits_per_byte(corpus, tmp_path):
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = tmp_path / "run"
    args = [
        "--train_file",
        str(corpus / "train.txt"),
        "--validation_file",
        str(corpus / "validation.txt"),
        "--output_dir",
        str(folder),
        "--max_train_steps",
        "30",
        "--per_device_train_batch_size",
        "4",
        "--bptt",
        "16",
        "--config_overrides",
        "hidden_size=32",
        "--sample_max_new_tokens",
        "0",
    ]
    assert main(args) == 0  # the default tokenizer for a user's corpus: byte-level BPE
    docs = [line for line in (corpus / "test.txt").read_text().splitlines() if line.strip()][:20]
    (tmp_path / "docs.jsonl").write_text("\n".join(json.dumps({"text": d}) for d in docs) + "\n")
    (tmp_path / "heldout.yaml").write_text(TASK.format(docs=tmp_path / "docs.jsonl"))

    lm = HFLM(pretrained=str(folder), trust_remote_code=True, batch_size=4, device="cpu")
    results = simple_evaluate(
        model=lm, tasks=["hf_lstm_heldout"], task_manager=TaskManager(include_path=str(tmp_path))
    )
    theirs = results["results"]["hf_lstm_heldout"]["bits_per_byte,none"]
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    ours = document_bits_per_byte(model, AutoTokenizer.from_pretrained(folder), docs)["bits_per_byte"]
    assert ours == pytest.approx(theirs, rel=1e-3)
    assert 0 < ours < 8
