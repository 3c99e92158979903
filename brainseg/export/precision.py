"""Precision lives in the ONNX file: a float16 and an INT8 Q/DQ graph next to the fp32 one.

FP16 is written at export time: the graph's members are converted to float16 in torch and
traced, so weights and convolution math are float16 while the pre- and post-processing
(normalisation, sigmoid, mean, threshold) and the I/O stay float32, joined by Cast nodes that
torch puts exactly at the members' edges. TensorRT builds that file strongly typed as it is.
ONNX Runtime 1.31's CPU provider has no float16 kernel for Conv, ConvTranspose, Resize, Relu,
Add, Mul, MaxPool or InstanceNormalization on x86; it still runs the file, because its
InsertCastTransformer wraps such nodes in Casts to float32 and FuseFp16InitializerToFp32Node
up-casts their float16 weights once at load. So an ORT CPU check of the fp16 file measures the
weights' float16 rounding, not float16 activation arithmetic (a GPU check measures both).

INT8 is explicit Q/DQ from `onnxruntime.quantization.quantize_static` on an fp32 file, with
per-channel symmetric int8 weights and per-tensor activations; the graph's pre- and
post-processing is never quantized. Two activation types, because the two targets disagree:
- "int8_symmetric" (default): int8 activations with zero point 0, float weights behind a Q/DQ
  pair, float biases, one Q/DQ pair per consumer: what TensorRT's explicit quantization parses
  (it rejects int32 bias DequantizeLinear and non-zero zero points).
- "uint8": asymmetric uint8 activations, int8 weights and int32 biases: ONNX Runtime's CPU
  provider fuses these into QLinearConv (u8 x s8 kernels, VNNI where the CPU has it) and runs
  them faster than int8_symmetric, whose int8 activations get no such kernel (docs/benchmarks.md,
  "Export latency": `export_latency_quick.json`), but TensorRT cannot build it.

Importable without torch: torch is imported inside `export_fp16` only.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from brainseg.artifacts.sessions import import_onnx
from brainseg.errors import BrainsegError, ConfigError, require
from brainseg.export.onnx_io import export_onnx, save_model

if TYPE_CHECKING:
    import onnx
    import torch

ACTIVATION_TYPES = ("int8_symmetric", "uint8")
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
WEIGHTED_OPS = frozenset({"Conv", "ConvTranspose", "MatMul", "Gemm"})
# weights reach a weighted op through these: an initializer, a Cast (fp16), or a Q -> DQ pair (int8)
_WEIGHT_PATH_OPS = frozenset({"Identity", "Cast", "QuantizeLinear", "DequantizeLinear"})


def export_fp16(
    graph: torch.nn.Module,
    path: str | Path,
    *,
    example: torch.Tensor,
    input_names: Sequence[str],
    output_names: Sequence[str],
    opset: int = 17,
    dynamic_batch: bool = True,
) -> dict:
    """Export a float32 EnsembleGraph or MemberGraph as a float16 graph with float32 I/O.

    The members are converted to float16 in a copy (`graph` itself is not changed), traced
    and written with `export_onnx`. Returns `precision_summary` of the file, after checking
    that every convolution weight is float16 and no input or output is.
    """
    import torch

    half = graph.with_compute_dtype(torch.float16)
    export_onnx(
        half, path, example=example, input_names=input_names, output_names=output_names, opset=opset,
        dynamic_batch=dynamic_batch,
    )
    summary = precision_summary(path)
    check_fp16(summary, path)
    return summary


def check_fp16(summary: Mapping[str, Any], path: str | Path) -> None:
    """Raise BrainsegError unless `summary` describes float16 weights behind float32/uint8 I/O."""
    weights = summary["weight_dtypes"]
    if not weights or set(weights) != {"float16"}:
        raise BrainsegError(f"{path}: expected float16 convolution weights only, found {dict(weights)}")
    io_types = {**summary["inputs"], **summary["outputs"]}
    half_io = sorted(name for name, dtype in io_types.items() if dtype == "float16")
    if half_io:
        raise BrainsegError(f"{path}: inputs and outputs must stay float32/uint8, but {half_io} are float16")


def precision_summary(model: str | Path | onnx.ModelProto) -> dict:
    """What precision a graph holds: I/O dtypes, weighted-op weight dtypes, initializer dtypes, Q/DQ counts.

    `weight_dtypes` counts the weight dtype of each Conv/ConvTranspose/MatMul/Gemm, following
    Cast and Q/DQ nodes: "float16", "float32", or e.g. "int8 (Q/DQ)".
    """
    onnx = import_onnx()
    if isinstance(model, str | Path):
        model = onnx.load(str(model))
    graph = model.graph
    index = _GraphIndex(graph)
    weights = collections.Counter(
        index.weight_dtype(node.input[1]) for node in graph.node if node.op_type in WEIGHTED_OPS and len(node.input) > 1
    )
    op_counts = collections.Counter(node.op_type for node in graph.node)
    return {
        "inputs": {value.name: _dtype_name(value.type.tensor_type.elem_type) for value in graph.input},
        "outputs": {value.name: _dtype_name(value.type.tensor_type.elem_type) for value in graph.output},
        "weight_dtypes": dict(weights),
        "initializer_dtypes": dict(collections.Counter(_dtype_name(t.data_type) for t in graph.initializer)),
        "quantize_linear": op_counts["QuantizeLinear"],
        "dequantize_linear": op_counts["DequantizeLinear"],
    }


def quantize_int8(
    fp32_path: str | Path,
    out_path: str | Path,
    *,
    calibration: Iterable[Mapping[str, np.ndarray]],
    method: str = "minmax",
    activation_type: str = "int8_symmetric",
    exclude_nodes: Sequence[str] = (),
    float_heads: bool = True,
) -> dict:
    """Write an INT8 Q/DQ version of an fp32 graph, calibrated on `calibration`.

    `calibration` yields input dicts (real slices, as `run` takes them). `method` is "minmax",
    "entropy" or "percentile" (the histogram methods hold all calibration activations in memory:
    keep the set to a few dozen slices). `activation_type` is "int8_symmetric" (TensorRT) or
    "uint8" (fast on ONNX Runtime CPU), see the module docstring. Nodes before the first and
    after the last weighted op (the graph's pre- and post-processing) stay float, and so do
    `exclude_nodes`, given by name as in the fp32 file (see `boundary_nodes` for stems and heads).
    With `float_heads` each model's last convolution stays float too, so the logits reach the
    sigmoid and the threshold unquantized (an int8 logit moves probabilities near 0.5 in steps
    of a few hundredths); a head has a handful of output channels, so this costs ~nothing.

    Returns {"activation_type", "method", "calibration_batches", "quantize_linear",
    "dequantize_linear", "quantized_ops", "quantized_op_types", "excluded_nodes"}.
    """
    quantization = _import_quantization()
    _check_choice("activation_type", activation_type, ACTIVATION_TYPES)
    _check_choice("method", method, CALIBRATION_METHODS)
    onnx = import_onnx()
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_path.parent, prefix=f".{out_path.name}.") as tmp:
        prepared, quantized = Path(tmp) / "prepared.onnx", Path(tmp) / "quantized.onnx"
        # constant folding first turns biases into initializers, so every conv can be quantized;
        # symbolic shape inference fails on FPN and is not needed for convolutions
        quantization.shape_inference.quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        model = onnx.load(str(prepared))
        _name_unnamed_nodes(model.graph)
        onnx.save(model, str(prepared))
        requested = [*exclude_nodes, *(boundary_nodes(model)["last"] if float_heads else [])]
        excluded = _nodes_to_exclude(model, requested)
        reader = _CalibrationReader(calibration, [value.name for value in model.graph.input])
        with _quiet_quantizer():
            quantization.quantize_static(
                str(prepared), str(quantized), reader,
                **_quantize_options(quantization, activation_type, method, excluded),
            )
        save_model(onnx.load(str(quantized)), out_path)
    return {
        "activation_type": activation_type,
        "method": method,
        "calibration_batches": reader.count,
        **_qdq_summary(onnx.load(str(out_path)).graph, excluded),
        "excluded_nodes": excluded,
    }


def nodes_outside_trunk(model: onnx.ModelProto) -> list[str]:
    """Names of the nodes before the first or after the last weighted op: pre- and post-processing.

    A node is in the trunk when a weighted op (Conv, ConvTranspose, MatMul, Gemm) is among its
    ancestors-or-self and among its descendants-or-self; cast, normalisation and layout change
    come before every convolution, sigmoid, mean, threshold and the FPN's final upsampling after.
    """
    index = _GraphIndex(model.graph)
    weighted = index.names_of(WEIGHTED_OPS)
    below = index.closure(weighted, index.children) | set(weighted)
    above = index.closure(weighted, index.parents) | set(weighted)
    return [node.name for node in model.graph.node if node.name not in below or node.name not in above]


def boundary_nodes(model: str | Path | onnx.ModelProto) -> dict[str, list[str]]:
    """The weighted ops with no weighted op before them ("first": stems) or after them ("last": heads).

    Candidates for `quantize_int8(exclude_nodes=...)` when INT8 costs Dice at the graph's edges.
    """
    if isinstance(model, str | Path):
        model = import_onnx().load(str(model))
    index = _GraphIndex(model.graph)
    weighted = index.names_of(WEIGHTED_OPS)
    after_weighted = index.closure([c for name in weighted for c in index.children(name)], index.children)
    before_weighted = index.closure([p for name in weighted for p in index.parents(name)], index.parents)
    return {
        "first": [name for name in weighted if name not in after_weighted],
        "last": [name for name in weighted if name not in before_weighted],
    }


class _GraphIndex:
    """Producers, consumers and initializers of one graph, by name."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.nodes = {node.name: node for node in graph.node}
        self.producer = {output: node for node in graph.node for output in node.output}
        self.consumers: dict[str, list[str]] = collections.defaultdict(list)
        for node in graph.node:
            for name in node.input:
                self.consumers[name].append(node.name)
        self.initializers = {tensor.name: tensor for tensor in graph.initializer}

    def names_of(self, op_types: frozenset[str]) -> list[str]:
        return [name for name, node in self.nodes.items() if node.op_type in op_types]

    def children(self, name: str) -> list[str]:
        return [child for output in self.nodes[name].output for child in self.consumers[output]]

    def parents(self, name: str) -> list[str]:
        return [self.producer[value].name for value in self.nodes[name].input if value in self.producer]

    @staticmethod
    def closure(start: Iterable[str], step: Callable[[str], list[str]]) -> set[str]:
        """Every name reachable from `start` by repeating `step` (start included)."""
        seen: set[str] = set()
        stack = list(start)
        while stack:
            name = stack.pop()
            if name not in seen:
                seen.add(name)
                stack.extend(step(name))
        return seen

    def weight_dtype(self, value: str) -> str:
        """The dtype a weighted op's weight is stored in, looking through Cast, Identity and Q/DQ."""
        quantized = None
        while value not in self.initializers:
            node = self.producer.get(value)
            if node is None or node.op_type not in _WEIGHT_PATH_OPS:
                return "computed"
            if node.op_type == "DequantizeLinear" and quantized is None:
                quantized = self._zero_point_dtype(node)
            value = node.input[0]
        stored = _dtype_name(self.initializers[value].data_type)
        return f"{quantized} (Q/DQ)" if quantized else stored

    def _zero_point_dtype(self, node: onnx.NodeProto) -> str:
        if len(node.input) > 2 and node.input[2] in self.initializers:
            return _dtype_name(self.initializers[node.input[2]].data_type)
        return "uint8"  # the ONNX default when no zero point is given


class _CalibrationReader:
    """Feeds `quantize_static` from an iterable of input dicts, checking each one's names."""

    def __init__(self, batches: Iterable[Mapping[str, np.ndarray]], input_names: Sequence[str]) -> None:
        self.batches: Iterator[Mapping[str, np.ndarray]] = iter(batches)
        self.input_names = set(input_names)
        self.count = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self.batches, None)
        if batch is None:
            if self.count == 0:
                raise ConfigError("calibration gave no input batches; pass a few dozen real validation slices")
            return None
        if set(batch) != self.input_names:
            raise ConfigError(
                f"calibration batch has inputs {sorted(batch)}, the graph takes {sorted(self.input_names)}"
            )
        self.count += 1
        return {name: np.ascontiguousarray(array) for name, array in batch.items()}


def _quantize_options(quantization: Any, activation_type: str, method: str, excluded: list[str]) -> dict:
    """Keyword arguments for quantize_static: QDQ, per-channel symmetric int8 weights, chosen activations."""
    symmetric = activation_type == "int8_symmetric"
    extra: dict[str, Any] = {"WeightSymmetric": True, "ActivationSymmetric": symmetric}
    if symmetric:  # the layout TensorRT's explicit quantization parses
        extra.update(AddQDQPairToWeight=True, DedicatedQDQPair=True, QuantizeBias=False)
    # No CalibMaxIntermediateOutputs: onnxruntime's collect_data drops every full chunk without
    # merging its ranges, so only the batches after the last full chunk would count. MinMax keeps
    # two scalars per tensor and batch, so holding them all is cheap.
    methods = quantization.CalibrationMethod
    return {
        "quant_format": quantization.QuantFormat.QDQ,
        "per_channel": True,
        "weight_type": quantization.QuantType.QInt8,
        "activation_type": quantization.QuantType.QInt8 if symmetric else quantization.QuantType.QUInt8,
        "calibrate_method": {"minmax": methods.MinMax, "entropy": methods.Entropy, "percentile": methods.Percentile}[
            method
        ],
        "nodes_to_exclude": excluded,
        "extra_options": extra,
    }


def _nodes_to_exclude(model: onnx.ModelProto, requested: Sequence[str]) -> list[str]:
    names = {node.name for node in model.graph.node}
    unknown = sorted(set(requested) - names)
    if unknown:
        raise ConfigError(
            f"exclude_nodes names no node of the graph: {unknown}; use node names of the fp32 file "
            "(boundary_nodes(path) lists each model's first and last convolution)"
        )
    return sorted(set(nodes_outside_trunk(model)) | set(requested))


def _qdq_summary(graph: onnx.GraphProto, excluded: Sequence[str]) -> dict:
    """Q/DQ counts, and the ops that run on dequantized input (Shape, which only reads sizes, left out)."""
    index, skip = _GraphIndex(graph), {"QuantizeLinear", "DequantizeLinear", "Shape"}
    quantized = collections.Counter(
        node.op_type
        for node in graph.node
        if node.op_type not in skip and node.name not in excluded and _from_dequantize(index, node.input[0])
    )
    ops = collections.Counter(node.op_type for node in graph.node)
    return {
        "quantize_linear": ops["QuantizeLinear"],
        "dequantize_linear": ops["DequantizeLinear"],
        "quantized_ops": sum(quantized.values()),
        "quantized_op_types": dict(quantized),
    }


def _from_dequantize(index: _GraphIndex, value: str) -> bool:
    producer = index.producer.get(value)
    return producer is not None and producer.op_type == "DequantizeLinear"


def _name_unnamed_nodes(graph: onnx.GraphProto) -> None:
    """Exclusion works by node name; give the nameless ones (optimiser-made) a unique one."""
    taken = {node.name for node in graph.node}
    for number, node in enumerate(graph.node):
        if not node.name:
            name = f"{node.op_type}_{number}"
            while name in taken:
                name += "_"
            node.name = name
            taken.add(name)


class _QuantizerNotes(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR or "onnxruntime" not in record.pathname


@contextlib.contextmanager
def _quiet_quantizer() -> Iterator[None]:
    """Drop onnxruntime.quantization's per-tensor notes (hundreds of lines about bias copies and
    GroupNorm scale axes), which it logs on the root logger; its errors still show."""
    root, notes = logging.getLogger(), _QuantizerNotes()
    root.addFilter(notes)
    try:
        yield
    finally:
        root.removeFilter(notes)


def _import_quantization() -> Any:
    # shape_inference is a submodule that `import onnxruntime.quantization` does not load
    require("onnxruntime.quantization.shape_inference", "export", package="onnxruntime")
    return require("onnxruntime.quantization", "export", package="onnxruntime")


def _check_choice(option: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ConfigError(f"{option} {value!r} is not supported; choose from: {', '.join(choices)}")


def _dtype_name(elem_type: int) -> str:
    return import_onnx().helper.tensor_dtype_to_np_dtype(elem_type).name
