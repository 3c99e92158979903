"""Triton model configurations for brainseg graphs, checked against Triton's own schema.

A configuration is built as a plain dict in the field names of Triton's `model_config.proto`,
parsed into tritonclient's `ModelConfig` message (an unknown field or enum value fails here, not
when the server loads the model) and written in protobuf text format, the format of
`config.pbtxt`; the written text is parsed back before it counts as written.

The tensors come from the manifest (input name, dtype and slice size; class count) and are
checked against the ONNX graph the model serves, whose first axis decides the batching: a
symbolic batch axis lets Triton batch requests (`max_batch_size` > 0, dims without the batch
axis); a fixed one cannot be batched by Triton, whose backends require a -1 first axis for that,
so such a model gets `max_batch_size: 0` and dims that include the batch.

tritonclient (the `triton` extra) and onnx (the `export` extra) are imported inside the functions
that use them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from brainseg.artifacts.layout import ENSEMBLE_OUTPUTS
from brainseg.artifacts.manifest import Manifest
from brainseg.artifacts.sessions import import_onnx
from brainseg.errors import ArtifactError, require

ONNXRUNTIME = {"platform": "onnxruntime_onnx", "backend": "onnxruntime"}
TENSORRT = {"platform": "tensorrt_plan", "backend": "tensorrt"}
INSTANCE_KINDS = {"gpu": "KIND_GPU", "cpu": "KIND_CPU"}
# ONNX Runtime's TensorRT provider, as Triton's onnxruntime backend names its precision_mode values
ORT_TENSORRT_PRECISION = {"fp16": "FP16", "int8": "INT8"}
# Engines the provider builds are keyed by graph, GPU and TensorRT version, so one folder serves all
ORT_TENSORRT_CACHE = "/tmp/brainseg-ort-tensorrt-cache"
_TRITON_TYPES = {
    "bool": "TYPE_BOOL", "uint8": "TYPE_UINT8", "int8": "TYPE_INT8", "int32": "TYPE_INT32", "int64": "TYPE_INT64",
    "float16": "TYPE_FP16", "float32": "TYPE_FP32", "float64": "TYPE_FP64",
}


def import_model_config() -> Any:
    """tritonclient's `model_config_pb2`, or the error naming the `triton` extra."""
    return require("tritonclient.grpc.model_config_pb2", "triton", package="tritonclient")


@dataclass(frozen=True)
class TensorSpec:
    """One tensor as Triton sees it: `dims` per item (no batch axis) unless the graph's batch is fixed."""

    name: str
    dtype: str  # numpy name: "uint8", "float32"
    dims: tuple[int, ...]

    def to_config(self) -> dict:
        return {"name": self.name, "data_type": triton_type(self.dtype), "dims": list(self.dims)}


@dataclass(frozen=True)
class GraphSignature:
    """The tensors an ONNX file declares: {name: (dtype, full shape)}, None for a symbolic axis."""

    path: Path
    inputs: dict[str, tuple[str, tuple[int | None, ...]]]
    outputs: dict[str, tuple[str, tuple[int | None, ...]]]

    @property
    def batch(self) -> int | None:
        """The first input's batch axis: None when symbolic (Triton may batch), else its fixed size."""
        _, shape = next(iter(self.inputs.values()))
        return shape[0] if shape else None


@dataclass(frozen=True)
class Batching:
    """How Triton batches one model: `max_batch` 0 means the graph's batch is fixed and not Triton's to choose."""

    max_batch: int
    preferred: tuple[int, ...] = ()
    max_queue_delay_us: int = 0

    def to_config(self) -> dict:
        if self.max_batch == 0:
            return {"max_batch_size": 0}
        return {"max_batch_size": self.max_batch,
                "dynamic_batching": {"preferred_batch_size": list(self.preferred),
                                     "max_queue_delay_microseconds": self.max_queue_delay_us}}


def triton_type(dtype: str) -> str:
    """"uint8" -> "TYPE_UINT8"; ArtifactError for a dtype Triton has no type for."""
    if dtype not in _TRITON_TYPES:
        raise ArtifactError(f"tensor dtype {dtype} has no Triton type; known: {', '.join(_TRITON_TYPES)}")
    return _TRITON_TYPES[dtype]


def read_signature(path: Path) -> GraphSignature:
    """The inputs (initialisers left out) and outputs an ONNX file declares, read without running it."""
    onnx = import_onnx()
    from google.protobuf.message import DecodeError

    try:
        graph = onnx.load(str(path), load_external_data=False).graph
    except (DecodeError, OSError, ValueError) as exc:
        raise ArtifactError(f"{path}: not a readable ONNX model ({exc})") from exc
    initialisers = {tensor.name for tensor in graph.initializer}

    def describe(value: Any) -> tuple[str, tuple[int | None, ...]]:
        tensor = value.type.tensor_type
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type)).name
        return dtype, tuple(dim.dim_value if dim.HasField("dim_value") else None for dim in tensor.shape.dim)

    inputs = {v.name: describe(v) for v in graph.input if v.name not in initialisers}
    if not inputs:
        raise ArtifactError(f"{path}: the graph declares no input")
    return GraphSignature(Path(path), inputs, {v.name: describe(v) for v in graph.output})


def graph_tensors(manifest: Manifest, signature: GraphSignature) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """The served graph's inputs and outputs, per item, from the manifest; ArtifactError where the graph disagrees.

    Output dtypes are read from the graph, since the manifest's typed view does not expose them.
    """
    spec = manifest.input
    sizes = {"H": spec.height, "W": spec.width, "C": spec.channels}
    inputs = [TensorSpec(spec.name, spec.dtype, tuple(sizes[axis] for axis in spec.layout if axis != "N"))]
    item = (manifest.classes, spec.height, spec.width)  # (K, H, W): every ensemble output is NCHW
    outputs = [TensorSpec(name, signature.outputs.get(name, ("?", ()))[0], item) for name in ENSEMBLE_OUTPUTS]
    problems = _disagreements("input", inputs, signature.inputs) + _disagreements("output", outputs, signature.outputs)
    if problems:
        raise ArtifactError(f"{signature.path}: the graph does not match {manifest.path.name}: {'; '.join(problems)}")
    return inputs, outputs


def _disagreements(kind: str, expected: Sequence[TensorSpec], found: dict) -> list[str]:
    names = [spec.name for spec in expected]
    if sorted(names) != sorted(found):
        return [f"{kind}s are {sorted(found)}, expected {sorted(names)}"]
    problems = []
    for spec in expected:
        dtype, shape = found[spec.name]
        want = (None, *spec.dims)  # (N, ...): the batch axis is checked by whoever chooses the batching
        fixed_ok = len(shape) == len(want) and all(
            got is None or wanted is None or got == wanted for got, wanted in zip(shape, want, strict=True))
        if dtype != spec.dtype or not fixed_ok:
            problems.append(f"{kind} {spec.name!r} is {dtype} {_shape_text(shape)}, expected {spec.dtype} "
                            f"{_shape_text(want)}")
    return problems


def _shape_text(shape: Sequence[int | None]) -> str:
    return "(" + ", ".join("?" if dim is None else str(dim) for dim in shape) + ")"


def with_fixed_batch(tensors: Sequence[TensorSpec], batch: int) -> list[TensorSpec]:
    """Tensors whose dims carry a fixed batch axis, for a model with max_batch_size 0."""
    return [TensorSpec(t.name, t.dtype, (batch, *t.dims)) for t in tensors]


def ort_tensorrt_cache(model: str, sha256: str) -> str:
    """Where ONNX Runtime's TensorRT provider keeps `model`'s engines on the server: a folder of its
    own, named by the model and its file's sha256. ONNX Runtime's cache key hashes the model file's
    name (model.onnx for every Triton model), tensor names and versions, not the weights, so a shared
    folder would let one model, or a retrained export of it, load another's engine."""
    return f"{ORT_TENSORRT_CACHE}/{model}-{sha256[:16]}"


def ort_tensorrt_accelerator(precision: str, image: TensorSpec, batch: tuple[int, int, int] | None,
                             cache: str) -> dict:
    """Triton's onnxruntime backend running `precision`'s graph through ONNX Runtime's TensorRT provider.

    The Q/DQ (int8) and float16 graphs carry their precision in the file; precision_mode lets
    TensorRT pick the matching kernels. `batch` (min, opt, max) becomes one optimisation profile,
    so the provider builds once instead of again for each larger batch it meets; None: fixed shapes.
    `cache`: the model's own engine folder (`ort_tensorrt_cache`).
    """
    parameters = {"precision_mode": ORT_TENSORRT_PRECISION[precision], "trt_engine_cache_enable": "1",
                  "trt_engine_cache_path": cache}
    if batch is not None:
        item = "x".join(str(dim) for dim in image.dims)
        for key, size in zip(("min", "opt", "max"), batch, strict=True):
            parameters[f"trt_profile_{key}_shapes"] = f"{image.name}:{size}x{item}"
    return {"execution_accelerators": {"gpu_execution_accelerator": [{"name": "tensorrt", "parameters": parameters}]}}


def model_config(name: str, runtime: dict, *, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec],
                 batching: Batching, kind: str, instances: int, optimization: dict | None = None) -> dict:
    """One model's configuration as a dict in Triton's field names; `runtime` is ONNXRUNTIME or TENSORRT."""
    config = {"name": name, **runtime, **batching.to_config(),
              "input": [t.to_config() for t in inputs], "output": [t.to_config() for t in outputs],
              "instance_group": [{"count": instances, "kind": INSTANCE_KINDS[kind]}]}
    if optimization:
        config["optimization"] = optimization
    return config


def to_pbtxt(config: dict, header: Sequence[str] = ()) -> str:
    """`config` in protobuf text format, checked against Triton's schema; `header` lines become comments.

    Raises ArtifactError naming the field when `config` is not a valid ModelConfig (a bug here).
    """
    from google.protobuf import json_format, text_format

    schema = import_model_config()
    try:
        message = json_format.ParseDict(config, schema.ModelConfig())
    except json_format.ParseError as exc:
        raise ArtifactError(f"model {config.get('name')!r}: not a valid Triton model config ({exc})") from exc
    text = "".join(f"# {line}\n" for line in header) + text_format.MessageToString(message)
    if parse_pbtxt(text) != message:
        raise ArtifactError(f"model {config.get('name')!r}: config.pbtxt does not read back as written")
    return text


def parse_pbtxt(text: str) -> Any:
    """A config.pbtxt's text as Triton's ModelConfig message (text_format.ParseError when it is not one)."""
    from google.protobuf import text_format

    return text_format.Parse(text, import_model_config().ModelConfig())
