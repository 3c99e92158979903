"""Tiny hand-built ONNX graphs for the TensorRT checks and the engine build tests."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402


def make_model(nodes, inputs, outputs, initializers=()):
    graph = helper.make_graph(nodes, "tiny", inputs, outputs, initializer=list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    model.ir_version = 10  # onnx 1.23 writes 14, which ONNX Runtime 1.31 refuses
    return model


def tensor(name, elem_type, shape):
    return helper.make_tensor_value_info(name, elem_type, shape)


def conv_model(op_type="Relu"):
    """x (N, 3, 8, 8) -> Conv(4 filters) -> op_type -> y."""
    weight = numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "w")
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node(op_type, ["c"], ["y"], name="act"),
    ]
    x, y = tensor("x", TensorProto.FLOAT, ["N", 3, 8, 8]), tensor("y", TensorProto.FLOAT, None)
    return make_model(nodes, [x], [y], [weight])


def qdq_model(
    *,
    conv="Conv",
    act_zero=0,
    act_type=TensorProto.INT8,
    act_scale=0.02,
    weight_axis=0,
    weight_scale=None,
):
    """x -> Q/DQ (per-tensor activation) -> Conv or ConvTranspose with int8 weights through a per-channel DQ."""
    channels_out = 4
    if conv == "Conv":
        weight = np.ones((channels_out, 3, 3, 3), np.int8)  # (K, C, R, S)
    else:
        weight = np.ones((3, channels_out, 3, 3), np.int8)  # (C, K, R, S)
    if weight_scale is None:
        weight_scale = np.full(weight.shape[weight_axis], 0.01, np.float32)
    act_dtype = helper.tensor_dtype_to_np_dtype(act_type)
    inits = [
        numpy_helper.from_array(np.asarray(act_scale, np.float32), "x_scale"),  # scalar: per tensor
        numpy_helper.from_array(np.asarray(act_zero, act_dtype), "x_zero"),
        numpy_helper.from_array(weight, "w_q"),
        numpy_helper.from_array(np.asarray(weight_scale, np.float32), "w_scale"),
        numpy_helper.from_array(np.zeros(len(weight_scale), np.int8), "w_zero"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zero"], ["xq"], name="q_x"),
        helper.make_node("DequantizeLinear", ["xq", "x_scale", "x_zero"], ["xd"], name="dq_x"),
        helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zero"], ["w"], name="dq_w", axis=weight_axis),
        helper.make_node(conv, ["xd", "w"], ["y"], name="conv", pads=[1, 1, 1, 1]),
    ]
    x, y = tensor("x", TensorProto.FLOAT, ["N", 3, 8, 8]), tensor("y", TensorProto.FLOAT, ["N", channels_out, 8, 8])
    return make_model(nodes, [x], [y], inits)
