"""Will TensorRT's ONNX parser take a graph: the operator list and the explicit-quantization rules.

Checked on the CPU, without TensorRT.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper  # noqa: E402
from onnx_models import conv_model, qdq_model, tensor  # noqa: E402

from brainseg.deploy.tensorrt_checks import check_qdq_for_tensorrt, supported_ops, unsupported_ops  # noqa: E402
from brainseg.errors import DataError  # noqa: E402

# --- the operator list -------------------------------------------------------------------------


def test_op_list_has_a_source_header_and_parses():
    from importlib import resources

    text = (resources.files("brainseg.deploy") / "data" / "tensorrt_onnx_ops.txt").read_text(encoding="utf-8")
    header = [line for line in text.splitlines() if line.startswith("#")]
    assert any("onnx/onnx-tensorrt" in line and "Source" in line for line in header)
    assert any("docs/operators.md" in line for line in header)
    assert any(re.search(r"Read on \d{4}-\d{2}-\d{2}", line) for line in header)
    ops = supported_ops()
    assert len(ops) > 100
    assert all(re.fullmatch(r"[A-Z][A-Za-z0-9]*", op) for op in ops), sorted(op for op in ops if " " in op)
    assert {"Conv", "ConvTranspose", "Resize", "QuantizeLinear", "DequantizeLinear", "Sigmoid"} <= ops
    assert {"Concat", "MaxPool", "Cast", "Transpose", "Div", "Sub", "Greater", "ReduceMean"} <= ops
    # rows marked "N" in operators.md stay out
    assert not ops & {"QLinearConv", "ConvInteger", "DynamicQuantizeLinear", "MatMulInteger", "Unique"}


def test_unsupported_ops_finds_a_made_up_op_and_other_domains(tmp_path):
    model = conv_model("FancyActivation")
    model.graph.node.append(helper.make_node("BiasGelu", ["y"], ["z"], domain="com.microsoft", name="ms"))
    model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    assert unsupported_ops(model) == {"FancyActivation": 1, "com.microsoft::BiasGelu": 1}
    path = tmp_path / "model.onnx"
    onnx.save(model, path)
    assert unsupported_ops(path) == {"FancyActivation": 1, "com.microsoft::BiasGelu": 1}


def test_unsupported_ops_is_empty_for_supported_ops_and_looks_into_subgraphs():
    model = conv_model("Sigmoid")
    assert unsupported_ops(model) == {}
    branch = helper.make_graph(
        [helper.make_node("MadeUpOp", ["y"], ["b"], name="inner")], "branch", [], [tensor("b", TensorProto.FLOAT, None)]
    )
    plain = helper.make_graph(
        [helper.make_node("Identity", ["y"], ["b2"])], "plain", [], [tensor("b2", TensorProto.FLOAT, None)]
    )
    model.graph.node.append(helper.make_node("If", ["cond"], ["out"], then_branch=branch, else_branch=plain))
    model.graph.input.append(tensor("cond", TensorProto.BOOL, []))
    assert unsupported_ops(model) == {"MadeUpOp": 1}


def test_unsupported_ops_reports_a_missing_file(tmp_path):
    with pytest.raises(DataError, match="not found"):
        unsupported_ops(tmp_path / "absent.onnx")


# --- explicit quantization ---------------------------------------------------------------------


def test_correct_per_channel_int8_qdq_passes():
    model = qdq_model()
    onnx.checker.check_model(model, full_check=True)
    assert check_qdq_for_tensorrt(model) == []
    ort = pytest.importorskip("onnxruntime")  # the graph is not only valid ONNX but runs
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (y,) = session.run(None, {"x": np.ones((2, 3, 8, 8), np.float32)})
    assert y.shape == (2, 4, 8, 8)


def test_non_zero_zero_point_is_flagged_with_the_node_names():
    problems = check_qdq_for_tensorrt(qdq_model(act_zero=3))
    assert len(problems) == 2
    assert any("'q_x'" in p and "zero point must be 0" in p for p in problems)
    assert any("'dq_x'" in p and "[3.0]" in p for p in problems)


def test_uint8_qdq_is_flagged():
    problems = check_qdq_for_tensorrt(qdq_model(act_type=TensorProto.UINT8))
    assert [p.split(":")[0] for p in problems] == ["QuantizeLinear 'q_x'", "DequantizeLinear 'dq_x'"]
    assert all("uint8" in p for p in problems)


def test_quantize_without_zero_point_defaults_to_uint8_and_is_flagged():
    model = qdq_model()
    for node in model.graph.node:
        if node.name in ("q_x", "dq_x"):
            del node.input[2]
    problems = check_qdq_for_tensorrt(model)
    assert len(problems) == 2 and all("uint8" in p for p in problems)


def test_per_channel_activation_scale_is_flagged():
    model = qdq_model(act_scale=[0.1, 0.1, 0.1], act_zero=[0, 0, 0])  # one scale per input channel (axis 1)
    problems = check_qdq_for_tensorrt(model)
    assert len(problems) == 2 and all("on an activation" in p for p in problems)


def test_weight_axis_must_match_the_consumer():
    problems = check_qdq_for_tensorrt(qdq_model(weight_axis=1))  # Conv weights (K, C, R, S): axis 1 is C
    assert len(problems) == 1 and "'dq_w'" in problems[0] and "expects axis 0" in problems[0]
    assert check_qdq_for_tensorrt(qdq_model(conv="ConvTranspose", weight_axis=1)) == []
    problems = check_qdq_for_tensorrt(qdq_model(conv="ConvTranspose", weight_axis=0))
    assert len(problems) == 1 and "ConvTranspose 'conv'" in problems[0] and "expects axis 1" in problems[0]


def test_scale_count_sign_and_constness_are_checked():
    problems = check_qdq_for_tensorrt(qdq_model(weight_scale=[0.01, 0.01]))
    assert any("2 scales for 4 channels" in p for p in problems)
    problems = check_qdq_for_tensorrt(qdq_model(weight_scale=[0.01, -0.01, 0.01, 0.01]))
    assert problems == ["DequantizeLinear 'dq_w': scale must be positive and finite, smallest is -0.01"]
    model = qdq_model()
    model.graph.initializer.pop(0)  # x_scale becomes a graph input: not a build-time constant
    model.graph.input.append(tensor("x_scale", TensorProto.FLOAT, []))
    problems = check_qdq_for_tensorrt(model)
    assert len(problems) == 2 and all("not a build-time constant" in p for p in problems)
