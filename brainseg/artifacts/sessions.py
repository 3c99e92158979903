"""ONNX Runtime sessions over artifact files, and input-checked calls into them.

onnxruntime is imported inside the functions that use it, so this module imports without it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from brainseg.errors import DataError, require

if TYPE_CHECKING:
    import onnxruntime

# onnx 1.23 writes IR version 14, which onnxruntime 1.31 refuses; TensorRT 10's parser is built
# against onnx 1.16 (IR 10). Opset 17 needs IR 8, so capping files at 10 costs nothing.
MAX_IR_VERSION = 10
# ONNX Runtime's CPU threads sleep between ops unless told to spin. This is the one default of that
# setting (`SegmenterOptions.spinning` takes it): spinning threads keep cores busy between calls,
# which seg-run's reader and writer threads need, and slow sessions that run in turn (docs/benchmarks.md).
DEFAULT_SPINNING = False


def import_onnx() -> Any:
    """The onnx module (files are read and checked with it), or the error naming the extra that installs it."""
    return require("onnx", "export")


def import_onnxruntime() -> Any:
    """The onnxruntime module, or the error naming the extra that installs it."""
    return require("onnxruntime", "export")


def ort_session(
    path: str | Path, *, threads: int | None = None, providers: Sequence[Any] = ("CPUExecutionProvider",),
    spinning: bool = DEFAULT_SPINNING,
) -> onnxruntime.InferenceSession:
    """An ONNX Runtime session with all graph optimisations; its threads sleep between calls unless `spinning`.

    Spinning threads keep a core busy after each call, so with several sessions run in turn (the
    members of an ensemble, a benchmark) each one's cores are taken by the others' spinning.
    One session called back to back is the opposite case: spinning spares waking the sleeping
    workers for each of the graph's few hundred ops. Both are measured in docs/benchmarks.md
    ("Export latency", `export_latency_quick.json`; the session levers, `session_knobs_quick.json`).
    `threads` sets the intra-op thread count (None: one per physical core).
    """
    ort = import_onnxruntime()
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: ONNX file not found")
    options = session_options(threads=threads, spinning=spinning)
    return ort.InferenceSession(str(path), sess_options=options, providers=list(providers))


def session_options(*, threads: int | None = None, spinning: bool = DEFAULT_SPINNING) -> onnxruntime.SessionOptions:
    """The options `ort_session` opens every session with, for a caller that changes one of them."""
    ort = import_onnxruntime()
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    spin = "1" if spinning else "0"
    options.add_session_config_entry("session.intra_op.allow_spinning", spin)
    options.add_session_config_entry("session.inter_op.allow_spinning", spin)
    options.log_severity_level = 3  # errors only: the optimiser's notes are noise here
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return options


def run(session: onnxruntime.InferenceSession, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run `session` on named inputs after checking names, dtypes and shapes; outputs by name.

    Raises ValueError saying what the graph expects when an input is missing, unexpected, or
    has the wrong dtype, rank or a wrong fixed dimension (symbolic ones such as "batch" take any size).
    """
    expected = {node.name: node for node in session.get_inputs()}
    missing, unexpected = sorted(set(expected) - set(inputs)), sorted(set(inputs) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"graph inputs are {_describe_inputs(expected.values())}; missing {missing or 'none'}, "
            f"unexpected {unexpected or 'none'}"
        )
    feed = {}
    for name, node in expected.items():
        array = np.asarray(inputs[name])
        _check_input(node, array)
        feed[name] = np.ascontiguousarray(array)
    names = [node.name for node in session.get_outputs()]
    return dict(zip(names, session.run(names, feed), strict=True))


def numpy_dtype(ort_type: str) -> np.dtype:
    """'tensor(uint8)' -> dtype('uint8'); 'tensor(float)' -> dtype('float32')."""
    name = ort_type.removeprefix("tensor(").removesuffix(")")
    return np.dtype({"float": "float32", "double": "float64"}.get(name, name))


def _check_input(node: Any, array: np.ndarray) -> None:
    dtype = numpy_dtype(node.type)
    rank_ok = array.ndim == len(node.shape)
    fixed_ok = rank_ok and all(
        not isinstance(want, int) or want == got for want, got in zip(node.shape, array.shape, strict=True)
    )
    if array.dtype != dtype or not fixed_ok:
        raise ValueError(
            f"input {node.name!r}: expected {dtype} {_shape_text(node.shape)}, "
            f"got {array.dtype} {tuple(array.shape)}"
        )


def _describe_inputs(nodes: Any) -> str:
    return ", ".join(f"{node.name!r} {numpy_dtype(node.type)} {_shape_text(node.shape)}" for node in nodes)


def _shape_text(shape: Sequence[int | str | None]) -> str:
    return "(" + ", ".join(str(dim) if dim is not None else "?" for dim in shape) + ")"
