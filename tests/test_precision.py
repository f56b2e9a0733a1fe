"""The numbers a run prints about its own speed are true for the device and the precision it computes in:
the matmul peak behind MFU is measured in that type on that device, `all_results.json` and the card name both,
and `--mixed_precision` trains through Accelerate's autocast (bf16 on this CPU; fp16, which needs a loss
scaler on CUDA, is refused here in one line)."""

import json

import pytest
import torch

from conftest import tiny_train_args
from hf_lstm import flops
from test_training import run_cli


def test_the_compute_type_follows_mixed_precision_weights_and_tf32():
    assert flops.compute_dtype("cpu") == "fp32"
    assert flops.compute_dtype("cpu", None) == "fp32"
    assert flops.compute_dtype("cpu", "bf16") == "bf16"
    assert flops.compute_dtype("cuda", "fp16") == "fp16"
    assert flops.compute_dtype("cpu", "no", torch.bfloat16) == "bf16"
    assert flops.compute_dtype("cpu", "no", torch.float16) == "fp16"
    allowed = torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = True
        assert flops.compute_dtype("cuda") == "tf32"
        assert flops.compute_dtype("cpu") == "fp32"  # TF32 is a CUDA setting
        torch.backends.cuda.matmul.allow_tf32 = False
        assert flops.compute_dtype("cuda") == "fp32"
    finally:
        torch.backends.cuda.matmul.allow_tf32 = allowed


def test_an_mfu_above_one_is_printed_as_not_known():
    assert flops.mfu_text(0.42) == "MFU 42%"
    assert flops.mfu_text(1.69).startswith("MFU not known: 169%") and "peak" in flops.mfu_text(1.69)


@pytest.mark.parametrize("dtype", ["fp32", "bf16", torch.float32])
def test_the_peak_is_measured_in_the_type_asked_for(dtype):
    assert flops.measure_matmul_peak(64, repeats=2, dtype=dtype) > 0


def test_bf16_mixed_precision_trains_and_names_its_peak(corpus, tmp_path):
    out = tmp_path / "bf16"
    args = tiny_train_args(corpus, out, "--max_train_steps", "4", "--mixed_precision", "bf16")
    process = run_cli(args)
    printed, _ = process.communicate(timeout=300)
    assert process.returncode == 0, printed
    assert "bf16 matmul peak" in printed
    results = json.loads((out / "all_results.json").read_text())
    assert results["mixed_precision"] == "bf16" and results["matmul_peak_dtype"] == "bf16"
    assert results["device"].startswith("CPU ") and results["matmul_peak_flops"] > 0
    assert 0 < results["model_flops_utilization"] < 1
    card = (out / "README.md").read_text()
    assert "bf16 matmul peak" in card and "mixed precision: bf16" in card
    # the weights are saved as the model keeps them, in fp32: autocast changes the products, not the folder
    config = json.loads((out / "config.json").read_text())
    assert config.get("dtype", config.get("torch_dtype")) in (None, "float32")


def test_a_default_run_records_fp32(corpus, tmp_path):
    out = tmp_path / "fp32"
    process = run_cli(tiny_train_args(corpus, out, "--max_train_steps", "2", "--sample_max_new_tokens", "0"))
    printed, _ = process.communicate(timeout=300)
    assert process.returncode == 0, printed
    results = json.loads((out / "all_results.json").read_text())
    assert results["mixed_precision"] == "no" and results["matmul_peak_dtype"] == "fp32"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_fp16_without_cuda_is_one_line_and_writes_nothing(corpus, tmp_path):
    out = tmp_path / "fp16"
    process = run_cli(tiny_train_args(corpus, out, "--mixed_precision", "fp16"))
    printed, _ = process.communicate(timeout=120)
    assert process.returncode == 1
    assert "--mixed_precision fp16 needs a CUDA GPU" in printed and "Traceback" not in printed
    assert not out.exists()


def test_an_unknown_precision_is_refused_by_the_parser(corpus, tmp_path):
    process = run_cli(tiny_train_args(corpus, tmp_path / "x", "--mixed_precision", "fp8"))
    printed, _ = process.communicate(timeout=120)
    assert process.returncode != 0 and "--mixed_precision" in printed and "Traceback" not in printed
