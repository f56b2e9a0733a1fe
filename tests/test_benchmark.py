"""`hf-lstm bench` at a toy size: every measurement is printed and written, with its target and verdict; and
the counts the benchmark takes from `hf_lstm.flops`.

These tests check the shape of the report, never a timing: timings belong in docs/PERFORMANCE.md.
"""

import json
import math

import pytest
import torch

from conftest import tiny_config
import hf_lstm
from hf_lstm import benchmark, flops
from hf_lstm.benchmark.measuring import layouts_now
from hf_lstm.quantization import quantize_dynamic_int8
from hf_lstm.timing import interleaved, round_ratios

TARGETED = {
    "decode.generate_vs_floor": ">= 0.70",
    "context.long_vs_short": ">= 0.90",
    "context.rss_growth": "<= 5%",
    "decode.generate_overhead": "<= 1.25",
    "prefill.speedup": ">= 2",
    "train.lstm_mfu": ">= 50%",
    "reference.slowdown": "<= 3",
}
REPORTED = [
    "decode.floor_tokens_per_s",
    "decode.plain_read_tokens_per_s",
    "decode.parameters_tokens_per_s",
    "decode.copies_speedup",
    "decode.naive_tokens_per_s",
    "decode.generate_vs_naive",
    "train.matmul_peak_gflops",
    "train.gpt2_mfu",
    "quant.decode_speedup",
    "quant.ptb_perplexity_float",
    "quant.ptb_perplexity_int8",
    "quant.ptb_perplexity_change",
    "batch.tokens_per_s_1",
    "batch.tokens_per_s_2",
]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    path = tmp_path_factory.mktemp("bench") / "bench.json"
    code = benchmark.main(["--tiny", "--json", str(path)])
    return code, json.loads(path.read_text())


def test_tiny_run_succeeds_and_records_command_machine_and_model(tiny_run):
    code, report = tiny_run
    assert code == 0
    assert report["command"].startswith("hf-lstm bench --tiny")
    assert report["machine"]["torch"] == torch.__version__ and report["machine"]["cores"] >= 1
    assert report["model"]["hidden_size"] == 16 and report["model"]["matmul_parameters"] > 0


def test_every_target_is_printed_with_its_threshold_and_a_verdict(tiny_run):
    figures = {f["key"]: f for f in tiny_run[1]["figures"]}
    for key, target in TARGETED.items():
        assert figures[key]["target"] == target
        assert isinstance(figures[key]["met"], bool)
        assert math.isfinite(figures[key]["value"])


def test_reported_figures_are_present_and_finite(tiny_run):
    figures = {f["key"]: f for f in tiny_run[1]["figures"]}
    for key in REPORTED:
        assert figures[key]["value"] is not None and math.isfinite(figures[key]["value"]), key
        assert figures[key]["met"] is None


def test_printed_table_names_each_target(capsys):
    benchmark.main(["--tiny", "--sections", "decode,prefill"])
    out = capsys.readouterr().out
    assert "1. generate() / floor" in out and "3. generate() time / bare step loop time" in out
    assert "4. fused prefill speed-up over the decode step" in out
    assert "MET" in out or "MISSED" in out


def test_unknown_section_is_an_error():
    with pytest.raises(SystemExit):
        benchmark.main(["--tiny", "--sections", "decode,warp-drive"])


def test_every_section_is_registered_by_its_name():
    names = ["decode", "context", "prefill", "train", "reference", "quant", "batch"]
    assert list(benchmark.SECTIONS) == names
    assert benchmark.parse_args([]).sections == list(benchmark.SECTIONS)


@pytest.mark.parametrize("option", ["--vocab-size", "--decode-tokens", "--ptb-train-steps", "--batch-sizes"])
def test_options_have_one_spelling_the_underscore_one(option):
    underscored = option.replace("-", "_").replace("__", "--")
    assert benchmark.parse_args([underscored, "3"]) is not None
    with pytest.raises(SystemExit):
        benchmark.parse_args([option, "3"])


def test_matmul_weights_are_what_one_decoding_step_multiplies_by():
    model = hf_lstm.LSTMForCausalLM(tiny_config(embedding_size=8))
    expected = [w for layer in model.model.layers for w in (layer.rnn.weight_ih_l0, layer.rnn.weight_hh_l0)]
    expected += [model.output_projection.weight, model.lm_head.weight]
    weights = flops.matmul_weights(model)
    assert len(weights) == len(expected) and all(torch.equal(w, e) for w, e in zip(weights, expected))
    assert flops.matmul_parameters(model) == sum(w.numel() for w in expected)
    assert flops.flops_per_token(model, context_length=128) == 6 * flops.matmul_parameters(model)


def test_a_gpt2_counts_its_block_products_and_output_layer_and_pays_for_attention():
    gpt = benchmark.gpt2_matched(hf_lstm.LSTMForCausalLM(tiny_config(hidden_size=32)), block_size=16)
    blocks = sum(
        p.numel()
        for name, p in gpt.named_parameters()
        if name.endswith(".weight") and any(k in name for k in ("c_attn", "c_proj", "c_fc"))
    )
    assert flops.matmul_parameters(gpt) == blocks + gpt.lm_head.weight.numel()
    layers, width = gpt.config.n_layer, gpt.config.n_embd
    attention = 6 * layers * 16 * width  # 2 x 2 x L x T x d forward (causal half), x3 for a training step
    assert flops.flops_per_token(gpt, context_length=16) == 6 * flops.matmul_parameters(gpt) + attention


def test_matmul_peak_takes_as_many_products_as_asked_and_leaves_the_global_seed_alone():
    torch.manual_seed(1)
    expected = torch.rand(3)
    torch.manual_seed(1)
    assert flops.measure_matmul_peak(32, repeats=2) > 0
    assert torch.equal(torch.rand(3), expected)


def test_bare_floor_is_a_positive_time_per_token():
    weights = [torch.randn(8, 4), torch.randn(12, 8)]
    assert benchmark.bare_floor(weights, tokens=3) > 0


def test_the_floor_reads_each_matrix_in_its_fastest_layout():
    weights = [torch.randn(8, 4), torch.randn(12, 8)]
    seconds = benchmark.layout_seconds(weights, tokens=3)
    assert set(seconds) == set(layouts_now())
    assert {"row-major", "column-major", "weighted-rows"} <= set(seconds)
    assert all(len(per_matrix) == 2 and min(per_matrix) > 0 for per_matrix in seconds.values())
    fake = {"row-major": [1.0, 5.0], "column-major": [2.0, 3.0]}
    assert benchmark.best_of_layouts(fake) == 4.0
    x = torch.randn(8)
    before = torch.get_num_threads()
    try:
        for threads in (1, 2, 5):  # every layout computes the same product, with 12 rows in 5 blocks too
            torch.set_num_threads(threads)
            for store, product in benchmark.LAYOUTS.values():
                assert torch.allclose(product(store(weights[1]), x), weights[1] @ x, atol=1e-5)
    finally:
        torch.set_num_threads(before)
    assert benchmark.LAYOUTS["column-major"][0](weights[1]).t().is_contiguous()


def test_the_floor_is_printed_with_its_bandwidth_and_the_layouts(tiny_run):
    figures = {f["key"]: f for f in tiny_run[1]["figures"]}
    detail = figures["decode.floor_tokens_per_s"]["detail"]
    assert "GB/s" in detail and all(f"{name} alone" in detail for name in layouts_now())
    assert "GB/s" in figures["decode.plain_read_tokens_per_s"]["detail"]


def test_int8_is_also_measured_at_one_thread_when_the_run_uses_more(capsys):
    if torch.get_num_threads() < 2:
        pytest.skip("the run already uses one thread")
    benchmark.main(["--tiny", "--sections", "quant", "--ptb_train_steps", "0"])
    out = capsys.readouterr().out
    assert "int8 generate() greedy (batch 1, 1 thread)" in out and "7c. int8 decode at 1 thread" in out
    assert torch.get_num_threads() >= 2, "the thread count is restored"


def test_gpt2_baseline_is_parameter_matched_within_a_fifth():
    model = hf_lstm.LSTMForCausalLM(hf_lstm.LSTMConfig(vocab_size=1000, hidden_size=128))
    gpt = benchmark.gpt2_matched(model, block_size=32)
    ours, theirs = (sum(p.numel() for p in m.parameters()) for m in (model, gpt))
    assert abs(theirs - ours) / ours < 0.2


@pytest.mark.parametrize("cell_type", ["lstm", "gru", "rnn", "peephole"])
def test_int8_model_tracks_the_float_model_and_leaves_it_untouched(cell_type):
    model = hf_lstm.LSTMForCausalLM(tiny_config(cell_type, hidden_size=32)).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    qmodel = quantize_dynamic_int8(model)
    ids = torch.randint(2, 40, (2, 7))
    mask = torch.ones_like(ids)
    mask[0, :2] = 0
    with torch.no_grad():
        full, quant = model(ids, attention_mask=mask).logits, qmodel(ids, attention_mask=mask).logits
        steps = qmodel.generate(ids, attention_mask=mask, max_new_tokens=3, do_sample=False)
    assert (quant - full).abs().max() < 0.05 * full.abs().max() + 1e-3
    assert steps.shape == (2, 10)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_int8_perplexity_change_on_a_saved_trained_folder(tmp_path):
    # --ptb_model: the int8 perplexity change measured on a trained folder (its own tokenizer reads PTB), as
    # on the README's runs/ptb-lstm.
    from hf_lstm import LSTMConfig, LSTMForCausalLM
    from hf_lstm.data import load_corpus, train_tokenizer

    tokenizer = train_tokenizer(load_corpus("ptb")["train"]["text"][:200], kind="word")
    LSTMForCausalLM(LSTMConfig(vocab_size=len(tokenizer), hidden_size=16)).save_pretrained(tmp_path / "m")
    tokenizer.save_pretrained(tmp_path / "m")
    path = tmp_path / "bench.json"
    assert (
        benchmark.main(
            ["--tiny", "--sections", "quant", "--ptb_model", str(tmp_path / "m"), "--json", str(path)]
        )
        == 0
    )
    figures = {f["key"]: f for f in json.loads(path.read_text())["figures"]}
    assert str(tmp_path / "m") in figures["quant.ptb_perplexity_float"]["detail"]
    float_ppl, int8_ppl = (figures[f"quant.ptb_perplexity_{k}"]["value"] for k in ("float", "int8"))
    assert 1 < float_ppl < 2 * len(tokenizer) and abs(int8_ppl / float_ppl - 1) < 0.05
    assert figures["quant.ptb_perplexity_change"]["value"] == pytest.approx(100 * (int8_ppl / float_ppl - 1))


def test_the_gpu_sections_run_anywhere_and_report_graph_floor_and_peers(tmp_path):
    """`--device cuda`'s sections at a toy size on the CPU (the decoding step then runs its fixed buffers
    eagerly): every figure is there, the graph and ordinary steps agree, and `--device cuda` without a GPU is
    refused in one line."""
    path = tmp_path / "gpu.json"
    sections = "cuda_train,cuda_decode"
    assert benchmark.main(["--device", "cpu", "--tiny", "--sections", sections, "--json", str(path)]) == 0
    figures = {f["key"]: f for f in json.loads(path.read_text())["figures"]}
    for name in ("lstm", "gpt2", "llama"):
        assert figures[f"cuda_train.{name}_tokens_per_s_2"]["value"] > 0
    for batch in (1, 2):
        for key in ("generate_tokens_per_s", "before_tokens_per_s", "call_us", "floor_us", "call_vs_floor"):
            assert math.isfinite(figures[f"cuda_decode.{key}_{batch}"]["value"]), key
        assert figures[f"cuda_decode.same_tokens_{batch}"]["met"] is True
    assert figures["cuda_decode.speedup_1"]["target"] == ">= 4"
    assert "cuda_decode.llama_generate_tokens_per_s_1" in figures
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit):
            benchmark.parse_args(["--device", "cuda"])


def test_interleaved_keeps_every_round_and_reports_a_ratios_spread():
    # callables that return the seconds they want counted: the warm-up round is not kept, the median is
    floor_seconds, generate_seconds = iter([9.0, 1.0, 2.0, 3.0]), iter([9.0, 2.0, 2.0, 4.0])
    rounds: dict[str, list[float]] = {}
    t = interleaved(
        {"floor": lambda: next(floor_seconds), "generate": lambda: next(generate_seconds)}, 3, rounds=rounds
    )
    assert rounds == {"floor": [1.0, 2.0, 3.0], "generate": [2.0, 2.0, 4.0]}
    assert t == {"floor": 2.0, "generate": 2.0}
    assert round_ratios(rounds, "floor", "generate") == "0.5-1"  # 1/2, 2/2, 3/4
