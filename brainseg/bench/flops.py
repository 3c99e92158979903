"""Arithmetic work of an ONNX graph: floating-point (or integer) operations per forward pass.

Counts the weighted ops only (convolutions and matrix products), which carry nearly all of a
CNN's arithmetic; activations, normalisation, resizing and bias additions are left out. One
multiply-add counts as 2 operations, the convention peak rates (`brainseg.bench.peak`) use too,
so achieved / peak is a fair share.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from brainseg.errors import ConfigError, DataError, require

if TYPE_CHECKING:
    import onnx

Shape = tuple[int, ...]
# Ops that stand between a weight initializer and the op using it in fp16 and Q/DQ int8 graphs.
WEIGHT_HOPS = ("Cast", "DequantizeLinear")


def graph_flops(path_or_model: str | Path | onnx.ModelProto, *, batch: int = 1) -> dict:
    """Operations (2 per multiply-add) of one forward pass over `batch` slices.

    The graph's symbolic batch axis (the first axis of each input) is fixed to `batch`, then
    ONNX shape inference (with data propagation) resolves the intermediate shapes. Counted per node:
    Conv, ConvInteger, QLinearConv: 2 * N * Cout * Hout * Wout * (Cin / group) * kh * kw;
    ConvTranspose: 2 * N * Cin * Hin * Win * (Cout / group) * kh * kw;
    MatMul, MatMulInteger, QLinearMatMul, Gemm: 2 * M * N * K (times any leading batch axes).
    Only the top-level graph is walked (not If / Loop bodies).

    Returns {"flops": int, "by_op": {op_type: int}, "unknown": [names of counted-op nodes whose
    shapes could not be resolved, so are missing from the total]}.
    """
    if batch < 1:
        raise ConfigError(f"batch must be >= 1, got {batch}")
    onnx = require("onnx", "export")
    model = _with_batch(_load(path_or_model), batch)
    # data_prop carries Shape -> Reshape arithmetic through: exported GroupNorm (the FPN decoder) needs it
    model = onnx.shape_inference.infer_shapes(model, data_prop=True)
    shapes = _known_shapes(model.graph)
    producers = {output: node for node in model.graph.node for output in node.output}

    def shape_of(name: str) -> Shape | None:
        return _shape_through_hops(name, shapes, producers)

    flops, by_op, unknown = 0, {}, []
    for index, node in enumerate(model.graph.node):
        count = COUNTERS.get(node.op_type)
        if count is None:
            continue
        ops = count(node, shape_of)
        if ops is None:
            unknown.append(node.name or f"{node.op_type}#{index}")
            continue
        flops += ops
        by_op[node.op_type] = by_op.get(node.op_type, 0) + ops
    return {"flops": flops, "by_op": by_op, "unknown": unknown}


def flops_per_slice(path: str | Path) -> int:
    """Operations of one forward pass over a single slice (`graph_flops` at batch 1)."""
    return graph_flops(path, batch=1)["flops"]


def _load(path_or_model: str | Path | onnx.ModelProto) -> onnx.ModelProto:
    onnx = require("onnx", "export")
    if isinstance(path_or_model, onnx.ModelProto):
        copy = onnx.ModelProto()
        copy.CopyFrom(path_or_model)  # the batch axis is fixed below; leave the caller's model alone
        return copy
    path = Path(path_or_model)
    if not path.is_file():
        raise DataError(f"{path}: ONNX file not found")
    return onnx.load(str(path), load_external_data=False)  # dims live in the graph; weights are not needed


def _with_batch(model: onnx.ModelProto, batch: int) -> onnx.ModelProto:
    """Set each graph input's symbolic first axis to `batch`; a fixed different batch is an error."""
    initializers = {init.name for init in model.graph.initializer}
    for value in model.graph.input:
        dims = value.type.tensor_type.shape.dim
        if value.name in initializers or not dims:
            continue
        first = dims[0]
        if first.HasField("dim_value"):
            if first.dim_value != batch:
                raise ConfigError(
                    f"graph input {value.name!r} has a fixed batch of {first.dim_value}, so it cannot be "
                    f"counted at batch {batch}; export it with a dynamic batch axis or count at {first.dim_value}"
                )
            continue
        first.dim_value = batch  # replaces dim_param: the two share a oneof
    return model


def _known_shapes(graph: onnx.GraphProto) -> dict[str, Shape]:
    """Fully static shapes by value name, from initializers, inputs, outputs and inferred value_info."""
    shapes = {init.name: tuple(init.dims) for init in graph.initializer}
    for value in [*graph.input, *graph.value_info, *graph.output]:
        tensor = value.type.tensor_type
        if not tensor.HasField("shape"):
            continue
        dims = tensor.shape.dim
        if all(dim.HasField("dim_value") for dim in dims):
            shapes.setdefault(value.name, tuple(dim.dim_value for dim in dims))
    return shapes


def _shape_through_hops(name: str, shapes: dict[str, Shape], producers: dict) -> Shape | None:
    """The value's shape, or failing that the shape of the initializer one Cast/DequantizeLinear back."""
    if name in shapes:
        return shapes[name]
    producer = producers.get(name)
    if producer is not None and producer.op_type in WEIGHT_HOPS and producer.input:
        return shapes.get(producer.input[0])
    return None


def _conv(weight: int) -> Callable:
    """Counter for Conv-like ops: output elements x (Cin / group) x kernel area, x 2."""

    def count(node, shape_of) -> int | None:
        out, w = shape_of(node.output[0]), shape_of(node.input[weight])
        if out is None or w is None:
            return None
        return 2 * math.prod(out) * math.prod(w[1:])  # out (N, Cout, *spatial); w (Cout, Cin/g, *k)

    return count


def _conv_transpose(node, shape_of) -> int | None:
    x, w = shape_of(node.input[0]), shape_of(node.input[1])
    if x is None or w is None:
        return None
    return 2 * math.prod(x) * math.prod(w[1:])  # x (N, Cin, *spatial_in); w (Cin, Cout/g, *k)


def _matmul(left: int) -> Callable:
    """Counter for MatMul-like ops: output elements x K, x 2 (numpy broadcasting semantics)."""

    def count(node, shape_of) -> int | None:
        a, out = shape_of(node.input[left]), shape_of(node.output[0])
        if a is None or out is None or not a:
            return None
        return 2 * math.prod(out) * a[-1]  # a (..., M, K) or (K,); out (..., M, N)

    return count


def _gemm(node, shape_of) -> int | None:
    a, out = shape_of(node.input[0]), shape_of(node.output[0])
    if a is None or out is None or len(a) != 2:
        return None
    trans_a = next((attr.i for attr in node.attribute if attr.name == "transA"), 0)
    return 2 * math.prod(out) * (a[0] if trans_a else a[1])  # out (M, N); a (M, K), or (K, M) transposed


COUNTERS: dict[str, Callable] = {
    "Conv": _conv(weight=1),
    "ConvInteger": _conv(weight=1),
    "QLinearConv": _conv(weight=3),  # x, x_scale, x_zero_point, w, ...
    "ConvTranspose": _conv_transpose,
    "MatMul": _matmul(left=0),
    "MatMulInteger": _matmul(left=0),
    "QLinearMatMul": _matmul(left=0),
    "Gemm": _gemm,
}
