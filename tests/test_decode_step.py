"""The one-token decode step and its decode-time weight copies (`ColumnMajorCopies`): the same outputs as the
parameters give, rebuilt whenever a weight changes, never built for training, never saved."""

import contextlib
import copy
import pickle

import pytest
import torch
from safetensors.torch import load_file

from conftest import ForcedKernel, tiny_config
from hf_lstm import LSTMConfig, LSTMForCausalLM
from hf_lstm import modeling_hf_lstm as modeling

WITH_CACHE = ("lstm", "gru", "rnn")  # the cells torch has a single-step op for
TOLERANCE = 1e-5


def make(cell_type="lstm", **overrides):
    return LSTMForCausalLM(tiny_config(cell_type, hidden_size=32, **overrides)).eval()


def twin(model, **overrides):
    """A model with `model`'s weights and config, except `overrides` (e.g. the copies turned off)."""
    config = LSTMConfig.from_dict({**model.config.to_dict(), **overrides})
    other = LSTMForCausalLM(config).to(model.dtype).eval()
    other.load_state_dict(model.state_dict())
    return other


def decode(model, ids):
    """The logits of every position, computed one token per call with the cache (what generate() does)."""
    with torch.no_grad():
        cache, logits = None, []
        for t in range(ids.shape[1]):
            out = model(ids[:, t : t + 1], cache=cache, use_cache=True)
            cache = out.cache
            logits.append(out.logits)
    return torch.cat(logits, dim=1)


def holds_copies(model) -> list[bool]:
    """Per layer, then the output layer: whether decode-time copies are held."""
    owners = [*model.model.layers, model]
    return [owner._decode_copies.matrices is not None for owner in owners]


def ids_for(model, batch=2, length=6):
    return torch.randint(2, model.config.vocab_size, (batch, length))


@contextlib.contextmanager
def threads(n: int):
    """torch's intra-op thread count set to `n` inside the block (the output layer's copy depends on it)."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("embedding_size", [None, 20])
@pytest.mark.parametrize("cell_type", WITH_CACHE)
def test_the_copies_give_what_the_parameters_give(cell_type, embedding_size):
    model = make(cell_type, embedding_size=embedding_size)
    ids = ids_for(model)
    fast = decode(model, ids)
    assert all(holds_copies(model)), "a one-token step in eval mode without gradients reads the copies"
    plain = decode(twin(model, decode_cache_weights=False), ids)
    reference = decode(twin(model, implementation="reference", decode_cache_weights=False), ids)
    with torch.no_grad():
        whole = model(ids).logits  # the fused kernel over the whole sequence
    for other in (plain, reference, whole):
        assert (fast - other).abs().max() < TOLERANCE


def restored(copy: torch.Tensor, out_features: int) -> torch.Tensor:
    """The matrix a decode-time copy holds, (out, in), from its column blocks (blocks, in, width)."""
    return copy.transpose(1, 2).reshape(-1, copy.shape[1])[:out_features]


def side_by_side(*tensors: torch.Tensor) -> torch.Tensor:
    """What a copy stacks: matrices and bias columns, [W_ih | b_ih | W_hh | b_hh] or [W | b]."""
    return torch.cat([t if t.dim() == 2 else t[:, None] for t in tensors], 1)


def layer_matrix(rnn) -> torch.Tensor:
    return side_by_side(rnn.weight_ih_l0, rnn.bias_ih_l0, rnn.weight_hh_l0, rnn.bias_hh_l0)


def test_the_copies_are_the_same_matrices_stored_column_major():
    model = make()
    with threads(1):
        decode(model, ids_for(model))
    rnn = model.model.layers[0].rnn
    (copy_,) = model.model.layers[0]._decode_copies.matrices  # [W_ih | b_ih | W_hh | b_hh]^T, one block
    stacked = layer_matrix(rnn)
    assert copy_.shape == (1, stacked.shape[1], stacked.shape[0]) and copy_.is_contiguous()
    assert torch.equal(copy_[0], stacked.t()) and copy_.data_ptr() != rnn.weight_ih_l0.data_ptr()
    (w_out,) = model._decode_copies.matrices
    assert torch.equal(w_out[0], side_by_side(model.lm_head.weight, model.lm_head.bias).t())
    assert w_out.is_contiguous()


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("n", [2, 3])
def test_on_several_threads_the_copies_are_cut_into_a_column_block_per_thread(n, batch):
    # vocab 40 in 3 blocks: 14 + 14 + 12, the last padded with zeros that never reach the logits
    model = make(embedding_size=20)
    ids = ids_for(model, batch=batch)
    with threads(n):
        fast = decode(model, ids)
        projection, w_out = model._decode_copies.matrices
        assert w_out.shape == (n, 21, -(-40 // n)) and w_out.is_contiguous()  # W and the bias row
        assert torch.equal(restored(w_out, 40), side_by_side(model.lm_head.weight, model.lm_head.bias))
        assert not w_out.transpose(1, 2).reshape(-1, 21)[40:].any()
        assert projection.shape == (n, 32, -(-20 // n))  # the projection too (no bias)
        (stacked,) = model.model.layers[1]._decode_copies.matrices  # and the recurrent layers'
        assert stacked.shape == (n, 32 + 1 + 32 + 1, -(-128 // n))
        assert torch.equal(restored(stacked, 128), layer_matrix(model.model.layers[1].rnn))
        plain = decode(twin(model, decode_cache_weights=False), ids)
        assert fast.shape == plain.shape and (fast - plain).abs().max() < TOLERANCE
    with threads(1):  # the thread count changed: one block again
        assert (decode(model, ids) - plain).abs().max() < TOLERANCE
        assert model._decode_copies.matrices[1].shape == (1, 21, 40)


def test_peephole_keeps_its_reference_path():
    model = make("peephole")
    ids = ids_for(model)
    fast = decode(model, ids)
    assert holds_copies(model) == [False, False, True]  # only the output layer has a fast layout
    assert (fast - decode(twin(model, decode_cache_weights=False), ids)).abs().max() < TOLERANCE


@pytest.mark.parametrize("cell_type", WITH_CACHE)
def test_greedy_generate_equals_the_reference_path_token_for_token(cell_type):
    torch.manual_seed(3)
    model = LSTMForCausalLM(tiny_config(cell_type, vocab_size=200, hidden_size=64)).eval()
    reference = twin(model, implementation="reference", decode_cache_weights=False)
    prompt = torch.randint(2, 200, (2, 5))
    kwargs = dict(max_new_tokens=30, min_new_tokens=30, do_sample=False, pad_token_id=0)
    fast = model.generate(prompt, attention_mask=torch.ones_like(prompt), **kwargs)
    slow = reference.generate(prompt, attention_mask=torch.ones_like(prompt), **kwargs)
    assert all(holds_copies(model))
    assert torch.equal(fast, slow)


def _train_steps(model, steps=3, mode_switch=True):
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    if mode_switch:
        model.train()
    for _ in range(steps):
        ids = ids_for(model, length=8)
        model(ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    if mode_switch:
        model.eval()


@pytest.mark.parametrize("mode_switch", [True, False], ids=["train-then-eval", "updated-in-eval-mode"])
@pytest.mark.parametrize("cell_type", WITH_CACHE)
def test_training_steps_rebuild_the_copies(cell_type, mode_switch):
    # Without a mode switch nothing drops the copies: the optimizer's in-place updates must be seen through
    # the parameters' version counters.
    model = make(cell_type, embedding_size=20)
    ids = ids_for(model)
    before = decode(model, ids)
    _train_steps(model, mode_switch=mode_switch)
    after = decode(model, ids)
    assert (after - before).abs().max() > 1e-3, "training changed the weights"
    assert (after - decode(twin(model, decode_cache_weights=False), ids)).abs().max() < TOLERANCE


def test_training_never_builds_copies_and_gradients_reach_the_parameters():
    model = make().train()
    ids = ids_for(model, length=1)
    model(ids, labels=ids).loss.backward()
    assert not any(holds_copies(model))
    model.eval()
    model.zero_grad()
    out = model(ids, use_cache=True)  # eval mode, gradients on: the parameters are read
    out.logits.sum().backward()
    assert not any(holds_copies(model))
    assert model.model.layers[0].rnn.weight_hh_l0.grad is not None and model.lm_head.weight.grad is not None


def test_load_state_dict_rebuilds_the_copies():
    model, other = make(), make()
    other.load_state_dict({k: v + 0.01 * torch.randn_like(v) for k, v in other.state_dict().items()})
    ids = ids_for(model)
    decode(model, ids)
    model.load_state_dict(other.state_dict())
    assert (decode(model, ids) - decode(twin(other, decode_cache_weights=False), ids)).abs().max() < TOLERANCE


def test_resize_token_embeddings_rebuilds_the_copies():
    model = make()
    decode(model, ids_for(model))
    model.resize_token_embeddings(57)
    model.eval()
    ids = ids_for(model)
    ids[0, -1] = 56  # a new token id
    with threads(1):
        fast = decode(model, ids)
    assert fast.shape[-1] == 57 and model._decode_copies.matrices[0].shape == (1, 33, 57)
    assert (fast - decode(twin(model, decode_cache_weights=False), ids)).abs().max() < TOLERANCE


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_a_dtype_round_trip_rebuilds_the_copies(dtype):
    model = make()
    ids = ids_for(model)
    decode(model, ids)
    model.to(dtype)
    assert not any(holds_copies(model)), ".to() drops the copies"
    in_dtype = decode(model, ids)
    assert in_dtype.dtype == dtype and model.model.layers[0]._decode_copies.matrices[0].dtype == dtype
    tolerance = TOLERANCE if dtype == torch.float64 else 0.05
    assert (in_dtype - decode(twin(model, decode_cache_weights=False), ids)).abs().max() < tolerance
    model.to(torch.float32)  # back: bfloat16 rounded the weights, so stale copies would show
    assert (decode(model, ids) - decode(twin(model, decode_cache_weights=False), ids)).abs().max() < TOLERANCE


def test_a_change_through_data_is_seen_after_eval():
    # `.data` bumps no version counter; eval() (like train() and .to()) drops the copies
    model = make()
    ids = ids_for(model)
    decode(model, ids)
    model.lm_head.weight.data.mul_(2)
    model.eval()
    assert (decode(model, ids) - decode(twin(model, decode_cache_weights=False), ids)).abs().max() < TOLERANCE


def test_state_dict_and_saved_folder_hold_no_copies(tmp_path):
    model = make(embedding_size=20)
    expected = set(make(embedding_size=20).state_dict())
    decode(model, ids_for(model))
    assert all(holds_copies(model))
    assert set(model.state_dict()) == expected
    assert not any("copies" in name for name, _ in model.named_buffers())
    model.save_pretrained(tmp_path)
    saved = load_file(tmp_path / "model.safetensors")
    assert set(saved) <= expected  # the tied output weight is saved once
    assert sum(t.numel() for t in saved.values()) == sum(p.numel() for p in model.parameters())


def test_the_copies_cost_one_more_copy_of_the_matrices():
    model = make(embedding_size=20)
    decode(model, ids_for(model))
    owners = [*model.model.layers, model]
    held = sum(w.numel() for owner in owners for w in owner._decode_copies.matrices)
    layers = sum(p.numel() for layer in model.model.layers for p in layer.rnn.parameters())
    outputs = sum(p.numel() for m in (model.output_projection, model.lm_head) for p in m.parameters())
    assert held == layers + outputs  # every matrix and bias once more (128 = 4 x 32 divides by 1 thread)


def test_turned_off_they_are_never_built_and_turning_off_frees_them():
    model = make(decode_cache_weights=False)
    decode(model, ids_for(model))
    assert not any(holds_copies(model))
    model = make()
    decode(model, ids_for(model))
    model.config.decode_cache_weights = False
    decode(model, ids_for(model))
    assert not any(holds_copies(model))
    model.config.decode_cache_weights = True
    decode(model, ids_for(model))
    assert all(holds_copies(model))
    model.drop_decode_copies()
    assert not any(holds_copies(model))


def test_the_option_is_validated_and_old_configs_default_to_it():
    with pytest.raises(ValueError, match="decode_cache_weights"):
        LSTMConfig(decode_cache_weights="yes")
    old = tiny_config().to_dict()
    del old["decode_cache_weights"]
    assert LSTMConfig.from_dict(old).decode_cache_weights is True


def test_inference_mode_and_gate_output_work():
    model = make()
    ids = ids_for(model)
    with torch.inference_mode():
        out = model(ids[:, :1], use_cache=True)
        out = model(ids[:, 1:2], cache=out.cache, use_cache=True)
    assert torch.isfinite(out.logits).all()
    fast = decode(model, ids)  # copies made under inference mode are usable outside it
    assert (fast - decode(twin(model, decode_cache_weights=False), ids)).abs().max() < TOLERANCE
    with torch.no_grad():
        gates = model(ids[:, :1], output_gates=True).gates  # the readable equations, as before
    assert set(gates[0]) == {"forget", "input", "output", "candidate", "cell"}


def test_a_hooked_output_layer_runs_as_itself():
    model = make()
    seen = []
    model.lm_head.register_forward_hook(lambda module, args, output: seen.append(output.shape))
    decode(model, ids_for(model, length=3))
    assert len(seen) == 3 and model._decode_copies.matrices is None


def test_a_deep_copy_or_a_pickle_carries_no_copies_and_builds_its_own():
    model = make()
    ids = ids_for(model)
    decode(model, ids)
    assert not any(holds_copies(pickle.loads(pickle.dumps(model))))
    clone = copy.deepcopy(model)
    assert not any(holds_copies(clone)) and all(holds_copies(model))
    with torch.no_grad():
        for p in clone.parameters():
            p.mul_(0.5)
    assert (decode(clone, ids) - decode(twin(clone, decode_cache_weights=False), ids)).abs().max() < TOLERANCE


@pytest.mark.parametrize("n", [1, 2])
@pytest.mark.parametrize("kernel", ["bag", "matmul"])
@pytest.mark.parametrize("cell_type", WITH_CACHE)
def test_both_batch1_kernels_give_what_the_parameters_give(cell_type, kernel, n, monkeypatch):
    """At batch 1 a product reads its copy as weighted row sums or as a matrix product, whichever this
    machine runs faster (`choose_batch1_kernel`); both must give the parameters' logits and greedy tokens."""
    monkeypatch.setattr(modeling, "_BATCH1_KERNEL", ForcedKernel(kernel))
    model = make(cell_type, embedding_size=20)
    ids = ids_for(model, batch=1, length=8)
    with threads(n):
        fast = decode(model, ids)
        plain = decode(twin(model, decode_cache_weights=False), ids)
        kwargs = dict(max_new_tokens=12, min_new_tokens=12, do_sample=False, pad_token_id=0)
        tokens = model.generate(ids, **kwargs)
        slow = twin(model, implementation="reference", decode_cache_weights=False)
        reference = slow.generate(ids, **kwargs)
    assert all(holds_copies(model))
    assert (fast - plain).abs().max() < TOLERANCE
    assert torch.equal(tokens, reference)


def test_the_batch1_kernel_is_chosen_once_per_model_shape_for_the_whole_step(monkeypatch):
    """One timing per model shape and thread count, over every product a step reads, when the batch-1 plan
    is made; one choice for all of them; later steps and a second model of the same shape time nothing. A
    model whose copies are small is not timed."""
    timed = []
    monkeypatch.setattr(modeling, "_BATCH1_KERNEL", {})
    best_time = modeling._best_time
    monkeypatch.setattr(modeling, "_best_time", lambda run: timed.append(run) or best_time(run))
    small = make("lstm")
    with threads(1):
        decode(small, ids_for(small, batch=1, length=2))
    assert not timed and set(modeling._BATCH1_KERNEL.values()) == {"bag"}
    modeling._BATCH1_KERNEL.clear()
    model = LSTMForCausalLM(tiny_config("lstm", vocab_size=2000, hidden_size=512)).eval()  # 17 MB of copies
    ids = ids_for(model, batch=1, length=3)
    generator = torch.get_rng_state()
    with threads(1):
        decode(model, ids)
        assert len(timed) == 2  # the two kernels, each over a whole step's products
        assert torch.equal(torch.get_rng_state(), generator)  # a seeded sampling is not moved by the timing
        decode(model, ids)
        decode(twin(model), ids)
    assert len(timed) == 2
    # the first layer's [x, 1] and [h, 1] (one shape here), the second's [x, 1, h, 1], the output layer's
    assert len(modeling._BATCH1_KERNEL) == 3
    assert len(set(modeling._BATCH1_KERNEL.values())) == 1
    assert set(modeling._BATCH1_KERNEL.values()) <= {"bag", "matmul"}
