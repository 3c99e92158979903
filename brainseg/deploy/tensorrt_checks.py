"""Will TensorRT's ONNX parser take this graph? Operator coverage and explicit-quantization rules.

Checked on the CPU, without TensorRT, so an export can fail early on a development machine
instead of on the Jetson. `onnx` is imported inside the functions that need it.

Sources (facts, not code):
- operators: onnx/onnx-tensorrt docs/operators.md, TensorRT 10.15 table (see the header of
  data/tensorrt_onnx_ops.txt);
- Q/DQ rules: the IQuantizeLayer / IDequantizeLayer documentation in TensorRT 10's
  include/NvInfer.h (symmetric only, so zero points are 0; positive build-time-constant scales,
  scalar for per-tensor or 1-D for per-channel; per-channel only for weights; block scales only
  for INT4; in strongly typed networks a Quantize input has the scale's type) and the
  operators.md rows for QuantizeLinear / DequantizeLinear (zero point must be 0; UINT8 only as a
  network input or output type).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from brainseg.artifacts.sessions import import_onnx
from brainseg.errors import DataError

OPS_FILE = "tensorrt_onnx_ops.txt"
DEFAULT_DOMAINS = ("", "ai.onnx")
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")

# Which weight axis TensorRT takes per-channel scales on, by consumer and input index.
# Conv weights are (K, C/g, R, S): axis 0, the output channels (NvInfer.h's KCRS example).
# ConvTranspose weights are (C, K/g, R, S): axis 1, the output channels, as NVIDIA's TensorRT
# Model Optimizer emits them for TensorRT 10 (modelopt/onnx/quantization/ort_utils.py,
# QDQOpTypePerChannelSupportToAxis). TensorRT 8.x kernels took axis 0 only (NVIDIA/TensorRT
# issues #1694 and #2380), so where that matters, quantize ConvTranspose weights per tensor.
WEIGHT_AXIS = {("Conv", 1): 0, ("ConvTranspose", 1): 1}


@lru_cache(maxsize=1)
def supported_ops() -> frozenset[str]:
    """The default-domain ONNX operators TensorRT's ONNX parser imports (data/tensorrt_onnx_ops.txt)."""
    text = (resources.files("brainseg.deploy") / "data" / OPS_FILE).read_text(encoding="utf-8")
    names = (line.split("#", 1)[0].strip() for line in text.splitlines())
    return frozenset(name for name in names if name)


def unsupported_ops(model_or_path: Any) -> dict[str, int]:
    """Operators in the graph that TensorRT's parser does not import, with how often each occurs.

    Walks the main graph, every subgraph (If, Loop, Scan bodies) and the bodies of model-local
    functions, which the parser expands in place. Operators of another domain are reported as
    `domain::OpType`: TensorRT runs those only through a plugin. An empty dict means every
    operator is on the list; it says nothing about per-operator restrictions.
    """
    model = load_model(model_or_path)
    known = supported_ops()
    counts: Counter[str] = Counter()
    for node in _all_nodes(model):
        if node.domain in DEFAULT_DOMAINS:
            if node.op_type not in known:
                counts[node.op_type] += 1
        else:
            counts[f"{node.domain}::{node.op_type}"] += 1
    return dict(sorted(counts.items()))


def check_qdq_for_tensorrt(model_or_path: Any) -> list[str]:
    """Problems TensorRT would have with the explicit quantization (Q/DQ nodes) of a graph.

    Each problem is one line naming the node. Checked per QuantizeLinear / DequantizeLinear:
    scale is a build-time constant, float32/float16/bfloat16, all positive and finite; zero point
    (if given) is a constant of zeros; the quantized type is int8 or float8e4m3fn (int4 and
    float4e2m1 for weights only; uint8 and int16 never); per-channel scales only on weights, on the
    axis TensorRT expects for Conv / ConvTranspose weights (`WEIGHT_AXIS`), with one scale per
    channel; block (rank >= 2) scales only for int4; a Quantize input has the scale's type.
    Subgraphs are checked; Q/DQ inside model-local functions are not. An empty list means no
    problem was found.
    """
    onnx = import_onnx()
    model = load_model(model_or_path)
    problems: list[str] = []
    for view in _graph_views(onnx, model.graph, {}, {}):
        for node in view.nodes:
            if node.domain in DEFAULT_DOMAINS and node.op_type in QDQ_OPS:
                problems.extend(_check_qdq_node(onnx, node, view))
    return problems


def load_model(model_or_path: Any):
    """An `onnx.ModelProto` as given, or loaded from a path (external data included)."""
    onnx = import_onnx()
    if isinstance(model_or_path, onnx.ModelProto):
        return model_or_path
    from google.protobuf.message import DecodeError

    path = Path(model_or_path)
    if not path.is_file():
        raise DataError(f"{path}: ONNX file not found")
    try:
        return onnx.load(str(path))
    except (DecodeError, OSError, ValueError) as exc:
        raise DataError(f"{path}: not a readable ONNX model ({exc})") from exc


def _all_nodes(model):
    """Every node the parser would see: subgraphs walked, local-function calls replaced by their bodies."""
    functions = {(f.domain, f.name): f for f in model.functions}

    def walk(nodes, expanding: frozenset):
        for node in nodes:
            key = (node.domain, node.op_type)
            if key in functions and key not in expanding:
                yield from walk(functions[key].node, expanding | {key})
                continue
            yield node
            for attr in node.attribute:
                for graph in _subgraphs(attr):
                    yield from walk(graph.node, expanding)

    yield from walk(model.graph.node, frozenset())


def _subgraphs(attr) -> list:
    return ([attr.g] if attr.HasField("g") else []) + list(attr.graphs)


@dataclass
class _GraphView:
    """One graph with what the Q/DQ checks look up: constants and element types (outer scopes
    included), and who produces and consumes each tensor."""

    nodes: list
    constants: dict[str, tuple[Any, int]]  # name -> (numpy array, TensorProto element type)
    types: dict[str, int]  # name -> TensorProto element type, where the graph declares it
    producer: dict[str, Any]
    consumers: dict[str, list[tuple[Any, int]]]  # name -> [(node, input index)]


def _graph_views(onnx, graph, outer_constants: dict, outer_types: dict):
    from onnx import numpy_helper

    constants = dict(outer_constants)
    constants.update({t.name: (numpy_helper.to_array(t), t.data_type) for t in graph.initializer})
    for node in graph.node:
        if node.op_type == "Constant" and node.domain in DEFAULT_DOMAINS:
            value = _constant_value(onnx, node)
            if value is not None:
                constants[node.output[0]] = value
    types = dict(outer_types)
    for info in [*graph.input, *graph.output, *graph.value_info]:
        if info.type.HasField("tensor_type"):
            types[info.name] = info.type.tensor_type.elem_type
    types.update({name: dtype for name, (_, dtype) in constants.items()})
    consumers: dict[str, list] = defaultdict(list)
    for node in graph.node:
        for index, name in enumerate(node.input):
            consumers[name].append((node, index))
    producer = {name: node for node in graph.node for name in node.output}
    yield _GraphView(list(graph.node), constants, types, producer, consumers)
    for node in graph.node:
        for attr in node.attribute:
            for sub in _subgraphs(attr):
                yield from _graph_views(onnx, sub, constants, types)


def _constant_value(onnx, node) -> tuple[Any, int] | None:
    import numpy as np
    from onnx import numpy_helper

    for attr in node.attribute:
        if attr.name == "value":
            return numpy_helper.to_array(attr.t), attr.t.data_type
        if attr.name in ("value_float", "value_floats"):
            return np.asarray(onnx.helper.get_attribute_value(attr), np.float32), onnx.TensorProto.FLOAT
        if attr.name in ("value_int", "value_ints"):
            return np.asarray(onnx.helper.get_attribute_value(attr), np.int64), onnx.TensorProto.INT64
    return None


def _check_qdq_node(onnx, node, view: _GraphView) -> list[str]:
    label = f"{node.op_type} '{node.name}'" if node.name else f"{node.op_type} (output '{node.output[0]}')"
    inputs = list(node.input) + ["", ""]
    scale_name, zero_name = inputs[1], inputs[2]
    problems = []
    scale = view.constants.get(scale_name)
    if scale is None:
        problems.append(f"{label}: scale '{scale_name}' is not a build-time constant (initializer or Constant)")
    else:
        problems.extend(_scale_problems(onnx, label, scale))
    if zero_name:
        problems.extend(_zero_point_problems(label, zero_name, view.constants.get(zero_name)))
    qtype = _quantized_type(onnx, node, view)
    weight = _weight_of(node, view)
    problems.extend(_type_problems(onnx, label, qtype, weight is not None))
    if scale is not None:
        problems.extend(_granularity_problems(onnx, label, node, scale[0], weight, qtype, view))
        x_type = view.types.get(node.input[0])
        if node.op_type == "QuantizeLinear" and x_type is not None and x_type != scale[1]:
            problems.append(
                f"{label}: input is {_type_name(onnx, x_type)} but scale is {_type_name(onnx, scale[1])}; "
                "a strongly typed network needs them equal"
            )
    return problems


def _scale_problems(onnx, label: str, scale: tuple[Any, int]) -> list[str]:
    import numpy as np

    values, dtype = scale
    floats = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16)
    if dtype not in floats:
        return [f"{label}: scale is {_type_name(onnx, dtype)}; TensorRT needs float32, float16 or bfloat16 scales"]
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0 or not np.all(np.isfinite(values) & (values > 0)):
        low = f"{values.min():.6g}" if values.size else "none (empty)"
        return [f"{label}: scale must be positive and finite, smallest is {low}"]
    return []


def _zero_point_problems(label: str, name: str, zero: tuple[Any, int] | None) -> list[str]:
    import numpy as np

    if zero is None:
        return [f"{label}: zero point '{name}' is not a build-time constant"]
    values = np.asarray(zero[0]).astype(np.float64)
    if np.any(values != 0):
        found = sorted({float(v) for v in values[values != 0].ravel()[:4]})
        return [f"{label}: zero point must be 0 (TensorRT quantizes symmetrically), found {found}"]
    return []


def _quantized_type(onnx, node, view: _GraphView) -> int | None:
    """Element type of the quantized side of a Q/DQ node, or None when the graph does not say."""
    zero_name = (list(node.input) + ["", ""])[2]
    if zero_name:
        return view.types.get(zero_name)
    if node.op_type == "QuantizeLinear":
        output_dtype = next((a.i for a in node.attribute if a.name == "output_dtype"), 0)
        return output_dtype or onnx.TensorProto.UINT8  # ONNX's default without a zero point
    upstream = view.producer.get(node.input[0])
    if upstream is not None and upstream.op_type == "QuantizeLinear":
        return _quantized_type(onnx, upstream, view)
    return view.types.get(node.input[0])


def _type_problems(onnx, label: str, qtype: int | None, is_weight: bool) -> list[str]:
    tp = onnx.TensorProto
    if qtype is None or qtype in (tp.INT8, tp.FLOAT8E4M3FN):
        return []
    if is_weight and qtype in (tp.INT4, tp.FLOAT4E2M1):
        return []
    return [
        f"{label}: quantized type is {_type_name(onnx, qtype)}; TensorRT quantizes to int8 or float8e4m3fn "
        "(int4 and float4e2m1 for weights only); uint8 is allowed only as a network input or output type"
    ]


def _weight_of(node, view: _GraphView):
    """The constant tensor a Q/DQ node quantizes (directly, or DQ <- Q <- constant), else None."""
    source = node.input[0]
    if source in view.constants:
        return view.constants[source][0]
    upstream = view.producer.get(source)
    if node.op_type == "DequantizeLinear" and upstream is not None and upstream.op_type == "QuantizeLinear":
        return view.constants.get(upstream.input[0], (None,))[0]
    return None


def _granularity_problems(onnx, label: str, node, scale, weight, qtype, view: _GraphView) -> list[str]:
    if scale.ndim == 0 or scale.size == 1:
        return []  # per-tensor
    if scale.ndim >= 2:
        if weight is None or qtype != onnx.TensorProto.INT4:
            shape = tuple(scale.shape)
            return [f"{label}: block-wise scale {shape}; TensorRT supports block quantization for int4 weights only"]
        return []
    if weight is None:
        return [
            f"{label}: per-channel scale ({scale.size} values) on an activation; TensorRT quantizes activations "
            "per tensor and only weights per channel"
        ]
    axis = next((a.i for a in node.attribute if a.name == "axis"), 1)  # ONNX's default axis is 1
    if weight.ndim and axis < 0:
        axis += weight.ndim
    if not 0 <= axis < weight.ndim:
        return [f"{label}: axis {axis} is outside the weight's {weight.ndim} dimensions"]
    problems = []
    if weight.shape[axis] != scale.size:
        problems.append(f"{label}: {scale.size} scales for {weight.shape[axis]} channels on axis {axis}")
    for consumer, index in _weight_consumers(node, view):
        expected = WEIGHT_AXIS.get((consumer.op_type, index))
        if expected is not None and axis != expected:
            problems.append(
                f"{label}: per-channel axis {axis} for the weights of {consumer.op_type} '{consumer.name}'; "
                f"TensorRT expects axis {expected}"
            )
    return problems


def _weight_consumers(node, view: _GraphView) -> list[tuple[Any, int]]:
    """Nodes that use the dequantized weights: a DQ's consumers, or those of the DQs after a Q."""
    if node.op_type == "DequantizeLinear":
        return view.consumers.get(node.output[0], [])
    return [
        use
        for dq, _ in view.consumers.get(node.output[0], [])
        if dq.op_type == "DequantizeLinear"
        for use in view.consumers.get(dq.output[0], [])
    ]


def _type_name(onnx, dtype: int) -> str:
    return onnx.TensorProto.DataType.Name(dtype).lower()
