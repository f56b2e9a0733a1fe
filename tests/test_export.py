"""Deployment without Python: `torch.export` and, through it, ONNX (run by ONNX Runtime, a real client).

An exported program is traced once, with example inputs, and must then give eager's numbers for other batch
sizes and other padding: nothing may be decided from the example's values (which tokens, which positions
padded). The model itself exports as whole sequences from the zero state; `hf_lstm.export.RecurrentStep`
takes and returns the state as tensors, so that an exported program can generate."""

import pytest
import torch
from torch.export import Dim

from conftest import CELL_TYPES, tiny_config
from hf_lstm import LSTMForCausalLM, LSTMForSequenceClassification, LSTMForTokenClassification
from hf_lstm.export import RecurrentStep

EXAMPLE_IDS = torch.tensor([[3, 4, 5, 6, 7], [8, 9, 10, 11, 12]])
EXAMPLE_MASK = torch.tensor([[0, 1, 1, 1, 1], [1, 1, 1, 1, 1]])
# other rows and other padding: left, inside, right, none, and a row with no real token
OTHER_MASK = torch.tensor(
    [[0, 0, 1, 1, 1], [1, 0, 1, 0, 1], [1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]]
)
HEADS = {
    "causal": LSTMForCausalLM,
    "sequence": LSTMForSequenceClassification,
    "token": LSTMForTokenClassification,
}


def export(model, masked: bool):
    batch = Dim("batch", min=1, max=1024)
    kwargs = {"attention_mask": EXAMPLE_MASK} if masked else {}
    shapes = {name: {0: batch} for name in ("input_ids", *kwargs)}
    return torch.export.export(model, (EXAMPLE_IDS,), kwargs=kwargs, dynamic_shapes=shapes)


def other_inputs(masked: bool) -> dict:
    ids = torch.randint(0, 40, OTHER_MASK.shape, generator=torch.Generator().manual_seed(1))
    return {"input_ids": ids, **({"attention_mask": OTHER_MASK} if masked else {})}


def run(program, inputs: dict):
    """An exported program takes its inputs as they were given when tracing: the ids positionally."""
    rest = {name: tensor for name, tensor in inputs.items() if name != "input_ids"}
    return program.module()(inputs["input_ids"], **rest)


@pytest.mark.parametrize("masked", [False, True], ids=["unpadded", "padded"])
@pytest.mark.parametrize("cell_type", CELL_TYPES)
@pytest.mark.parametrize("head", ["causal", "sequence", "token"])
def test_an_exported_program_gives_eagers_numbers_for_other_batches_and_padding(head, cell_type, masked):
    bidirectional = head != "causal" and cell_type in ("lstm", "peephole")  # both directions, both paths
    model = HEADS[head](tiny_config(cell_type, bidirectional=bidirectional, num_labels=3)).eval()
    program = export(model, masked)
    inputs = other_inputs(masked)
    exported, eager = run(program, inputs).logits, model(**inputs).logits
    assert exported.shape == eager.shape
    torch.testing.assert_close(exported, eager, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("masked", [False, True], ids=["unpadded", "padded"])
def test_the_exported_graph_runs_torchs_fused_kernel_not_an_unrolled_loop(masked):
    program = export(LSTMForCausalLM(tiny_config("lstm", num_hidden_layers=2)).eval(), masked)
    ops = [str(node.target) for node in program.graph.nodes if node.op == "call_function"]
    assert ops.count("aten.lstm.input") == 2, ops
    # no value read back to Python; no sort (ONNX has no stable one)
    read_back = ("aten.item", "aten._local_scalar_dense", "aten.sort")
    assert not any(op.startswith(read_back) for op in ops), ops


def test_exporting_with_a_cache_is_refused_with_the_reason():
    model = LSTMForCausalLM(tiny_config()).eval()
    with pytest.raises(ValueError, match="returns no cache .*use_cache=False, or export .*RecurrentStep"):
        torch.export.export(model, (EXAMPLE_IDS,), kwargs={"use_cache": True})


def test_outside_export_token_ids_and_masks_are_still_checked():
    model = LSTMForCausalLM(tiny_config()).eval()
    export(model, masked=True)  # tracing switches the checks off only while it runs
    with pytest.raises(ValueError, match="token id 40"):
        model(torch.tensor([[1, 40]]))
    with pytest.raises(ValueError, match="only 0 .* and 1"):
        model(torch.tensor([[1, 2]]), attention_mask=torch.tensor([[1, 2]]))


def test_onnx_export_runs_in_onnx_runtime_with_eagers_numbers(tmp_path):
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    model = LSTMForCausalLM(tiny_config("lstm")).eval()
    batch = Dim("batch", min=1, max=1024)
    onnx_program = torch.onnx.export(
        model,
        (EXAMPLE_IDS,),
        kwargs={"attention_mask": EXAMPLE_MASK},
        dynamic_shapes={"input_ids": {0: batch}, "attention_mask": {0: batch}},
        output_names=["logits"],
        dynamo=True,
        verbose=False,
    )
    onnx_program.save(str(tmp_path / "model.onnx"))
    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    inputs = other_inputs(masked=True)
    (logits,) = session.run(["logits"], {name: tensor.numpy() for name, tensor in inputs.items()})
    torch.testing.assert_close(torch.from_numpy(logits), model(**inputs).logits, rtol=1e-5, atol=1e-5)


# -- generating from an exported program: the state as tensors --------------------------------------------

PROMPTS = torch.tensor([[0, 0, 5, 6, 7], [3, 4, 5, 6, 7], [0, 9, 8, 7, 6]])
PROMPT_MASK = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 1, 1, 1, 1]])  # left-padded


def greedy_by_steps(step_fn, initial_state, new_tokens: int) -> torch.Tensor:
    """Greedy decoding with a one-token step function `(ids, mask, *state) -> (logits, *state)`: the
    left-padded prompts token by token (a padded position keeps its row's state), then `new_tokens` tokens."""
    state = initial_state
    for t in range(PROMPTS.shape[1]):
        logits, *state = step_fn(PROMPTS[:, t : t + 1], PROMPT_MASK[:, t : t + 1], *state)
    tokens = []
    for _ in range(new_tokens):
        token = torch.as_tensor(logits).argmax(-1, keepdim=True)
        tokens.append(token)
        logits, *state = step_fn(token, torch.ones_like(token), *state)
    return torch.cat(tokens, dim=1)


def reference_tokens(model, new_tokens: int) -> torch.Tensor:
    out = model.generate(
        PROMPTS, attention_mask=PROMPT_MASK, max_new_tokens=new_tokens, do_sample=False, pad_token_id=0
    )
    return out[:, PROMPTS.shape[1] :]


@pytest.mark.parametrize("cell_type", CELL_TYPES)
def test_an_exported_recurrent_step_generates_greedy_tokens(cell_type):
    model = LSTMForCausalLM(tiny_config(cell_type, initializer_range=0.5)).eval()
    step = RecurrentStep(model)
    program = torch.export.export(step, step.example_inputs(batch=2), dynamic_shapes=step.dynamic_shapes())
    got = greedy_by_steps(program.module(), step.initial_state(len(PROMPTS)), new_tokens=8)
    assert torch.equal(got, reference_tokens(model, 8))


def test_an_exported_prefill_matches_the_models_own_forward_and_state():
    """A program traced on whole (padded) prompts: the last logits and the state after them."""
    model = LSTMForCausalLM(tiny_config("lstm")).eval()
    step = RecurrentStep(model)
    example = step.example_inputs(batch=2, seq_len=PROMPTS.shape[1])
    program = torch.export.export(step, example, dynamic_shapes=step.dynamic_shapes())
    logits, h, c = program.module()(PROMPTS, PROMPT_MASK, *step.initial_state(len(PROMPTS)))
    eager = model(PROMPTS, attention_mask=PROMPT_MASK, use_cache=True)
    torch.testing.assert_close(logits, eager.logits[:, -1], rtol=1e-5, atol=1e-5)
    for k, (eager_h, eager_c) in enumerate(eager.cache.states):
        torch.testing.assert_close(h[k], eager_h, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(c[k], eager_c, rtol=1e-5, atol=1e-5)


def test_recurrent_step_refuses_what_it_cannot_export():
    with pytest.raises(ValueError, match="call model.eval"):
        RecurrentStep(LSTMForCausalLM(tiny_config()).train())
    with pytest.raises(ValueError, match="takes an LSTMForCausalLM"):
        RecurrentStep(LSTMForSequenceClassification(tiny_config()).eval())
    step = RecurrentStep(LSTMForCausalLM(tiny_config("lstm")).eval())
    ids, mask, h, _ = step.example_inputs()
    with pytest.raises(ValueError, match="state is h, c; got 1"):
        step(ids, mask, h)


def test_onnx_runtime_generates_greedy_tokens_from_an_exported_step(tmp_path):
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    model = LSTMForCausalLM(tiny_config("lstm", initializer_range=0.5)).eval()
    step = RecurrentStep(model)
    names = ["input_ids", "attention_mask", *step.state_names]
    onnx_program = torch.onnx.export(
        step,
        step.example_inputs(batch=2),
        dynamic_shapes=step.dynamic_shapes(),
        input_names=names,
        output_names=["logits", *(f"{name}_out" for name in step.state_names)],
        dynamo=True,
        verbose=False,
    )
    onnx_program.save(str(tmp_path / "step.onnx"))
    session = ort.InferenceSession(str(tmp_path / "step.onnx"), providers=["CPUExecutionProvider"])

    def run_step(*inputs):
        return session.run(None, {name: torch.as_tensor(t).numpy() for name, t in zip(names, inputs)})

    got = greedy_by_steps(run_step, step.initial_state(len(PROMPTS)), new_tokens=8)
    assert torch.equal(got, reference_tokens(model, 8))
