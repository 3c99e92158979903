"""This machine's peak arithmetic rates, measured with ONNX Runtime on the CPU.

The benchmarks run their CPU models through ONNX Runtime, so a large matrix product through the
same engine (same kernels, same threads, same session options) is the fairest ceiling to report
achieved throughput against: the share of MatMulInteger's rate here that the int8 ensemble reaches.
A vendor's datasheet peak would hide how far the engine itself is from the silicon.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from brainseg.artifacts.sessions import MAX_IR_VERSION, ort_session
from brainseg.bench.stats import time_calls
from brainseg.errors import ConfigError, require

if TYPE_CHECKING:
    import onnx
    import onnxruntime

# kind -> (ONNX op, left operand dtype, right operand dtype, what the report calls it)
KINDS = {
    "fp32": ("MatMul", np.float32, np.float32, "ONNX Runtime MatMul fp32"),
    # u8 x s8 is the path ONNX Runtime's quantized convolutions take on x86 (VNNI / AVX2 kernels)
    "int8": ("MatMulInteger", np.uint8, np.int8, "ONNX Runtime MatMulInteger u8 x s8"),
}
OPSET = 17


def measure_peak(kind: str, *, threads: int | None = None, size: int = 1024, seconds: float = 1.0) -> dict:
    """Time a size x size x size matrix product in ONNX Runtime on the CPU and return its rate.

    kind "fp32" multiplies two float32 matrices (MatMul); kind "int8" multiplies uint8 by int8
    with int32 accumulation (MatMulInteger), whose rate is really GOP/s (integer operations),
    stored under the same "gflops" key so that report tables stay uniform. The rate is
    2 * size**3 operations over the *median* call time (the best call would overstate what
    sustained work gets). `threads` is the intra-op thread count (None: ONNX Runtime's
    default, one per physical core); the session options are `ort_session`'s.

    Returns {"kind", "gflops", "size", "threads", "method", "median_ms", "calls"}.
    """
    _check_kind(kind)
    if size < 1 or not seconds > 0:
        raise ConfigError(f"size must be >= 1 and seconds > 0, got size={size}, seconds={seconds}")
    _, left_dtype, right_dtype, method = KINDS[kind]
    session = _session(matmul_model(kind, size), threads)
    rng = np.random.default_rng(0)
    feed = {"a": _random_matrix(rng, left_dtype, size), "b": _random_matrix(rng, right_dtype, size)}
    samples = time_calls(lambda: session.run(None, feed), warmup=2, seconds=seconds)
    median_ms = float(np.median(samples))
    return {
        "kind": kind,
        "gflops": round(2.0 * size**3 / (median_ms * 1e-3) / 1e9, 2) if median_ms > 0 else math.inf,
        "size": size,
        "threads": threads,
        "method": method,
        "median_ms": round(median_ms, 3),
        "calls": len(samples),
    }


def matmul_model(kind: str, size: int) -> onnx.ModelProto:
    """The graph `measure_peak` times: one node `c = op(a, b)` over two size x size graph inputs.

    Both operands are inputs, not initializers, so no graph optimisation can fold the product
    into a constant ahead of time.
    """
    _check_kind(kind)
    op_type, left_dtype, right_dtype, _ = KINDS[kind]
    onnx = require("onnx", "export")
    helper = onnx.helper
    out_dtype = np.int32 if op_type == "MatMulInteger" else left_dtype
    graph = helper.make_graph(
        [helper.make_node(op_type, ["a", "b"], ["c"])],
        f"peak_{op_type}",
        [helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(np.dtype(dtype)), [size, size])
         for name, dtype in (("a", left_dtype), ("b", right_dtype))],
        [helper.make_tensor_value_info("c", helper.np_dtype_to_tensor_dtype(np.dtype(out_dtype)), [size, size])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = min(model.ir_version, MAX_IR_VERSION)
    return model


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ConfigError(f"unknown peak kind {kind!r}; choose one of {', '.join(KINDS)}")


def _session(model: onnx.ModelProto, threads: int | None) -> onnxruntime.InferenceSession:
    onnx = require("onnx", "export")
    onnx.checker.check_model(model)
    # through a file so the session gets exactly ort_session's options; it reads the file once
    with tempfile.TemporaryDirectory(prefix="brainseg-peak-") as folder:
        path = Path(folder) / "peak.onnx"
        onnx.save(model, str(path))
        return ort_session(path, threads=threads)


def _random_matrix(rng: np.random.Generator, dtype: type, size: int) -> np.ndarray:
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return rng.integers(info.min, info.max, size=(size, size), endpoint=True, dtype=dtype)
    return rng.standard_normal((size, size), dtype=np.float32).astype(dtype)
