"""On a CUDA GPU: the fused cuDNN kernel against the readable equations, padding, the cache, reduced
precision and mixed-precision training through the CLI. CI has no GPU, so every test here skips there
(`-m gpu` selects them on a machine that has one: `pytest -m gpu tests/test_gpu.py`)."""

import json
import warnings

import pytest
import torch

from conftest import CELL_TYPES, FUSED_CELL_TYPES, tiny_config, tiny_train_args
from hf_lstm import LSTMForCausalLM
from test_modeling import twin_models
from test_training import run_cli

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (CI has none)"),
]
CUDA = torch.device("cuda")


@pytest.fixture(autouse=True)
def _exact_fp32():
    """fp32 products without TF32, so fused and reference agree to fp32 rounding."""
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


def twins(cell_type):
    """`test_modeling.twin_models` (the same weights, fused and reference) on the GPU, 64 units wide."""
    return [m.to(CUDA) for m in twin_models(LSTMForCausalLM, cell_type, hidden_size=64)]


@pytest.mark.parametrize("cell_type", FUSED_CELL_TYPES)
def test_cudnn_and_the_equations_agree_on_logits_and_gradients(cell_type):
    fused, reference = (m.train() for m in twins(cell_type))  # cuDNN's backward runs in training mode only
    ids = torch.randint(2, 40, (4, 33), device=CUDA)
    out_f, out_r = fused(ids, labels=ids), reference(ids, labels=ids)
    assert (out_f.logits - out_r.logits).abs().max() <= 2e-4
    out_f.loss.backward()
    out_r.loss.backward()
    grads = dict(reference.named_parameters())
    for name, p in fused.named_parameters():
        assert torch.allclose(p.grad, grads[name].grad, atol=1e-5), name


@pytest.mark.parametrize("cell_type", CELL_TYPES)
def test_a_left_padded_batch_gives_what_each_row_gives_alone(cell_type):
    model = LSTMForCausalLM(tiny_config(cell_type)).to(CUDA).eval()
    a = torch.randint(2, 40, (1, 7), device=CUDA)
    b = torch.randint(2, 40, (1, 4), device=CUDA)
    ids = torch.cat([torch.cat([torch.zeros(1, 3, dtype=torch.long, device=CUDA), b], 1), a])
    mask = (ids != 0).long()
    mask[1] = 1
    batch = model(ids, attention_mask=mask).logits
    tolerance = (
        5e-5  # cuDNN sums packed and unpacked sequences in different orders (1.8e-5 seen, vanilla RNN)
    )
    assert (batch[0, 3:] - model(b).logits[0]).abs().max() <= tolerance
    assert (batch[1] - model(a).logits[0]).abs().max() <= tolerance


@pytest.mark.parametrize("cell_type", CELL_TYPES)
def test_cached_and_uncached_greedy_decoding_give_the_same_tokens(cell_type):
    model = LSTMForCausalLM(tiny_config(cell_type)).to(CUDA).eval()
    prompt = torch.randint(2, 40, (2, 5), device=CUDA)
    kwargs = dict(max_new_tokens=12, do_sample=False, pad_token_id=0)
    cached = model.generate(prompt, use_cache=True, **kwargs)
    uncached = model.generate(prompt, use_cache=False, **kwargs)
    assert torch.equal(cached, uncached)
    beams = model.generate(prompt, num_beams=3, **kwargs)
    assert beams.shape[0] == 2


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("cell_type", FUSED_CELL_TYPES)
def test_reduced_precision_models_train_a_step_and_generate_without_the_compaction_warning(cell_type, dtype):
    model = LSTMForCausalLM(tiny_config(cell_type, hidden_size=64)).to(CUDA)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = model.to(dtype)
        ids = torch.randint(2, 40, (4, 17), device=CUDA)
        loss = model(ids, labels=ids).loss
        loss.backward()
        torch.optim.SGD(model.parameters(), lr=0.1).step()
        out = model.eval().generate(ids[:, :3], max_new_tokens=5, do_sample=False, pad_token_id=0)
    assert torch.isfinite(loss) and out.shape == (4, 8)
    compaction = [w for w in caught if "contiguous chunk of memory" in str(w.message)]
    assert not compaction, compaction[0].message


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_training_through_the_cli(corpus, tmp_path, precision):
    out = tmp_path / precision
    process = run_cli(tiny_train_args(corpus, out, "--max_train_steps", "6", "--mixed_precision", precision))
    printed, _ = process.communicate(timeout=600)
    assert process.returncode == 0, printed
    results = json.loads((out / "all_results.json").read_text())
    assert results["mixed_precision"] == precision and results["matmul_peak_dtype"] == precision
    assert results["device"] == torch.cuda.get_device_name(0)
    assert 0 < results["model_flops_utilization"] < 1, results  # the peak is the GPU's, in that type


def test_an_fp16_checkpoint_carries_the_loss_scale_and_resumes(corpus, tmp_path):
    out = tmp_path / "fp16"
    extra = ("--max_train_steps", "4", "--checkpointing_steps", "2", "--mixed_precision", "fp16")
    process = run_cli(tiny_train_args(corpus, out, *extra))
    printed, _ = process.communicate(timeout=600)
    assert process.returncode == 0, printed
    state = json.loads((out / "step_4" / "trainer_state.json").read_text())
    assert state["grad_scaler"]["scale"] > 0
    more = ("--max_train_steps", "6", "--checkpointing_steps", "2", "--mixed_precision", "fp16")
    resumed = run_cli(tiny_train_args(corpus, out, *more, "--resume_from_checkpoint", "latest"))
    printed, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, printed
    assert json.loads((out / "step_6" / "trainer_state.json").read_text())["completed_steps"] == 6


def graphed_and_ordinary(cell_type, dtype=torch.float32, hidden_size=64):
    """The same model twice on the GPU: one-token steps as CUDA-graph replays, and on the ordinary path."""
    graphed = LSTMForCausalLM(tiny_config(cell_type, hidden_size=hidden_size)).to(CUDA, dtype).eval()
    ordinary = LSTMForCausalLM(tiny_config(cell_type, hidden_size=hidden_size, decode_cuda_graph=False))
    ordinary.load_state_dict(graphed.state_dict())
    return graphed, ordinary.to(CUDA, dtype).eval()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("batch", [1, 8])
@pytest.mark.parametrize("cell_type", FUSED_CELL_TYPES)
def test_cuda_graph_decoding_gives_the_tokens_of_the_ordinary_path(cell_type, batch, dtype):
    graphed, ordinary = graphed_and_ordinary(cell_type, dtype)
    ids = torch.randint(2, 40, (batch, 6), device=CUDA)
    mask = torch.ones_like(ids)
    mask[0, :2] = 0  # one left-padded row
    for kwargs in (dict(do_sample=False), dict(do_sample=True, top_k=8), dict(num_beams=2, do_sample=False)):
        outs = []
        for model in (graphed, ordinary):
            torch.manual_seed(3)
            outs.append(model.generate(ids, attention_mask=mask, max_new_tokens=20, pad_token_id=0, **kwargs))
        assert torch.equal(*outs), kwargs
    assert graphed._decode_graph.graphs is not None, "the steps were replayed from a captured graph"


@pytest.mark.parametrize("cell_type", FUSED_CELL_TYPES)
def test_a_replayed_step_gives_the_logits_and_state_of_the_ordinary_path(cell_type):
    graphed, ordinary = graphed_and_ordinary(cell_type)
    ids = torch.randint(2, 40, (3, 9), device=CUDA)
    with torch.no_grad():
        caches = [m(ids[:, :-1], use_cache=True).cache for m in (graphed, ordinary)]
        outs = [m(ids[:, -1:], cache=c) for m, c in zip((graphed, ordinary), caches)]
    assert (outs[0].logits - outs[1].logits).abs().max() <= 1e-5
    for a, b in zip(caches[0].states, caches[1].states):
        assert all((x - y).abs().max() <= 1e-6 for x, y in zip(a, b))


def test_a_bad_token_id_is_refused_before_it_reaches_the_device_and_the_gpu_stays_usable():
    graphed, _ = graphed_and_ordinary("lstm")
    with torch.no_grad():
        cache = graphed(torch.randint(2, 40, (2, 4), device=CUDA), use_cache=True).cache
        graphed(torch.tensor([[3], [4]], device=CUDA), cache=cache)  # captured
        with pytest.raises(ValueError, match="token id 40, outside"):
            graphed(torch.tensor([[3], [40]], device=CUDA), cache=cache)
        out = graphed(torch.tensor([[3], [4]], device=CUDA), cache=cache)
    torch.cuda.synchronize()
    assert torch.isfinite(out.logits).all() and cache.seen_tokens == 6


def test_cuda_graph_decoding_after_training_steps_reads_the_new_weights():
    graphed, ordinary = graphed_and_ordinary("lstm")
    ids = torch.randint(2, 40, (2, 8), device=CUDA)
    kwargs = dict(max_new_tokens=10, do_sample=False, pad_token_id=0)
    assert torch.equal(graphed.generate(ids, **kwargs), ordinary.generate(ids, **kwargs))
    for model in (graphed, ordinary):
        model.train()
        for _ in range(3):
            model(ids, labels=ids).loss.backward()
            torch.optim.SGD(model.parameters(), lr=2.0).step()
            model.zero_grad()
        model.eval()
    assert torch.equal(graphed.generate(ids, **kwargs), ordinary.generate(ids, **kwargs))


@pytest.mark.parametrize("cell_type", FUSED_CELL_TYPES)
def test_checkpointed_cudnn_layers_give_the_same_gradients(cell_type):
    """Activation checkpointing re-runs cuDNN's forward in the backward pass (the CPU kernels:
    tests/test_activation_checkpointing.py): the same loss and gradients, weight-drop and dropout included."""
    from hf_lstm.builders import enable_activation_checkpointing

    def step(checkpointed):
        torch.manual_seed(0)
        config = tiny_config(
            cell_type, hidden_size=64, num_hidden_layers=3, weight_dropout=0.3, hidden_dropout=0.2
        )
        model = LSTMForCausalLM(config).to(CUDA).train()
        if checkpointed:
            enable_activation_checkpointing(model)
        ids = torch.randint(2, 40, (4, 33), device=CUDA, generator=torch.Generator(CUDA).manual_seed(1))
        torch.manual_seed(5)
        loss = model(ids, labels=ids).loss
        loss.backward()
        return loss.item(), {n: p.grad for n, p in model.named_parameters()}

    (loss, grads), (loss_checkpointed, grads_checkpointed) = step(False), step(True)
    assert loss_checkpointed == pytest.approx(loss, rel=1e-6)
    for name, grad in grads.items():
        torch.testing.assert_close(grads_checkpointed[name], grad, rtol=1e-5, atol=1e-6, msg=name)
