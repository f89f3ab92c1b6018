"""dlbook.export: torch.export / ONNX export, the ONNX model check, ONNX Runtime against PyTorch."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn
from onnx import TensorProto, helper

from dlbook import export, transfer


@pytest.fixture(scope="module")
def cnn() -> nn.Module:
    torch.manual_seed(0)
    return transfer.SmallCNN(width=4).eval()


@pytest.fixture(scope="module")
def cnn_onnx(cnn) -> bytes:
    return export.export_onnx(cnn, torch.rand(3, 1, 16, 16))


def _relu_model(domain: str = "", external: bool = False) -> bytes:
    """A one-node ONNX model y = Relu(x) + w, optionally with a foreign-domain node or external weights."""
    w = helper.make_tensor("w", TensorProto.FLOAT, [2], [1.0, 2.0])
    if external:
        w.data_location = TensorProto.EXTERNAL
        w.ClearField("float_data")
        entry = w.external_data.add()
        entry.key, entry.value = "location", "../../etc/passwd"
    nodes = [helper.make_node("Relu", ["x"], ["r"], domain=domain), helper.make_node("Add", ["r", "w"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])], initializer=[w])
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    return helper.make_model(graph, opset_imports=opsets).SerializeToString()


@pytest.mark.parametrize("batch", [1, 2, 64])
def test_onnx_export_matches_pytorch_at_any_batch_size(cnn, cnn_onnx, batch) -> None:
    session = export.onnx_session(cnn_onnx)
    assert isinstance(export.input_shape(session)[0], str), "the batch axis should be symbolic"
    x = torch.rand(batch, 1, 16, 16, generator=torch.Generator().manual_seed(batch))
    with torch.no_grad():
        expected = cnn(x).numpy()
    got = export.run_onnx(session, x)
    assert got.dtype == np.float32 and got.shape == expected.shape
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-5)


def test_fixed_batch_export_only_accepts_its_batch(cnn) -> None:
    session = export.onnx_session(export.export_onnx(cnn, torch.rand(4, 1, 16, 16), dynamic_batch=False))
    assert export.input_shape(session) == [4, 1, 16, 16]
    export.run_onnx(session, torch.rand(4, 1, 16, 16))
    with pytest.raises(Exception, match="(?i)dimension|shape"):
        export.run_onnx(session, torch.rand(5, 1, 16, 16))


def test_export_program_is_dynamic_and_equal_to_eager(cnn) -> None:
    program = export.export_program(cnn, torch.rand(2, 1, 16, 16))
    x = torch.rand(9, 1, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x), cnn(x))


def test_export_puts_the_model_in_eval_mode() -> None:
    torch.manual_seed(1)
    mlp = nn.Sequential(nn.Linear(6, 8), nn.Dropout(0.5), nn.Linear(8, 2)).train()
    session = export.onnx_session(export.export_onnx(mlp, torch.randn(3, 6)))
    x = torch.randn(5, 6)
    with torch.no_grad():
        np.testing.assert_allclose(export.run_onnx(session, x), mlp(x).numpy(), atol=1e-5)


def test_export_rejects_bad_examples(cnn) -> None:
    with pytest.raises(ValueError, match="at least 2 inputs, got shape \\(1, 1, 16, 16\\)"):
        export.export_onnx(cnn, torch.rand(1, 1, 16, 16))
    with pytest.raises(TypeError, match="expected a torch.nn.Module, got str"):
        export.export_onnx("model", torch.rand(2, 1, 16, 16))
    with pytest.raises(TypeError, match="got ndarray"):
        export.export_program(cnn, np.zeros((2, 1, 16, 16), np.float32))


def test_compare_reports_float_rounding_and_no_accuracy_change(cnn, cnn_onnx) -> None:
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(300, 1, 16, 16, generator=g), torch.randint(0, 10, (300,), generator=g)
    result = export.compare(cnn, export.onnx_session(cnn_onnx), x, y, batch_size=128)
    assert 0 <= result.max_abs_diff <= 1e-5
    assert result.accuracy_drop == 0.0
    with torch.no_grad():
        assert result.torch_accuracy == pytest.approx((cnn(x).argmax(1) == y).float().mean().item())
    with pytest.raises(ValueError, match="expected as many labels as inputs, got 299 labels for 300 inputs"):
        export.compare(cnn, export.onnx_session(cnn_onnx), x, y[:-1])


def test_int8_onnx_model_is_integer_and_close(cnn, cnn_onnx) -> None:
    int8 = export.quantize_onnx_int8(cnn_onnx)
    ops = {node.op_type for node in export.check_onnx_model(int8).graph.node}
    assert {"ConvInteger", "MatMulInteger", "DynamicQuantizeLinear"} <= ops
    assert "Conv" not in ops and "Gemm" not in ops
    x = torch.rand(32, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = cnn(x).numpy()
    got = export.run_onnx(export.onnx_session(int8), x)  # 12.5 % off with 8-bit weights on AVX2-only CPUs
    assert np.abs(got - ref).max() < 0.05 * np.abs(ref).max() + 1e-3


def test_check_onnx_model_refuses_what_is_not_a_self_contained_standard_model() -> None:
    assert export.check_onnx_model(_relu_model()).graph.node[0].op_type == "Relu"
    with pytest.raises(TypeError, match="expected the ONNX model as bytes, got str"):
        export.check_onnx_model("model.onnx")
    with pytest.raises(ValueError, match="expected the bytes of an ONNX model"):
        export.check_onnx_model(b"\xff\xfe not a protobuf \x00\x01")
    with pytest.raises(ValueError, match="external data"):
        export.onnx_session(_relu_model(external=True))
    with pytest.raises(ValueError, match="custom.ops::Relu is not a standard ONNX operator"):
        export.onnx_session(_relu_model(domain="custom.ops"))
    # external data hidden in a subgraph (an If branch) is found too
    branch = helper.make_graph([helper.make_node("Constant", [], ["c"], value=onnx.TensorProto.FromString(
        onnx.ModelProto.FromString(_relu_model(external=True)).graph.initializer[0].SerializeToString()))],
        "branch", [], [helper.make_tensor_value_info("c", TensorProto.FLOAT, [2])])
    cond = helper.make_tensor("cond", TensorProto.BOOL, [], [True])
    graph = helper.make_graph([helper.make_node("If", ["cond"], ["y"], then_branch=branch, else_branch=branch)], "g",
                              [], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])], initializer=[cond])
    with pytest.raises(ValueError, match="external data"):
        export.check_onnx_model(helper.make_model(graph).SerializeToString())
    empty = onnx.helper.make_model(onnx.helper.make_graph([], "g", [], [])).SerializeToString()
    with pytest.raises(ValueError, match="without any node"):
        export.check_onnx_model(empty)


def test_onnx_session_runs_a_hand_built_model() -> None:
    session = export.onnx_session(_relu_model())
    x = np.array([[-1.0, 3.0], [2.0, -5.0]], np.float32)
    np.testing.assert_allclose(export.run_onnx(session, x, batch_size=1), np.maximum(x, 0) + [1.0, 2.0])
