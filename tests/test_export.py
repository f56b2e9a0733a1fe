"""Deployment without Python: `torch.export` and, through it, ONNX (run by ONNX Runtime, a real client).

An exported program is traced once, with example inputs, and must then give eager's numbers for other batch
sizes and other padding: nothing may be decided from the example's values (which tokens, which positions
padded). It reads whole sequences from the zero state and returns no cache."""

import pytest
import torch
from torch.export import Dim

from conftest import CELL_TYPES, tiny_config
from hf_lstm import LSTMForCausalLM, LSTMForSequenceClassification, LSTMForTokenClassification

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
    with pytest.raises(ValueError, match="returns no cache .*export with use_cache=False"):
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
