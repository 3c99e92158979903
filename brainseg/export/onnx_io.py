"""Writing, checking, simplifying and running ONNX files.

Importable without torch (a Jetson has none): torch is imported inside `export_onnx` only, and
onnx / onnxruntime / onnxslim inside the functions that use them.
"""

from __future__ import annotations

import collections
import contextlib
import os
import tempfile
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from brainseg.errors import BrainsegError, DataError, missing_extra

if TYPE_CHECKING:
    import onnx
    import onnxruntime
    import torch

# onnx 1.23 writes IR version 14, which onnxruntime 1.31 refuses; TensorRT 10's parser is built
# against onnx 1.16 (IR 10). Opset 17 needs IR 8, so capping at 10 costs nothing.
MAX_IR_VERSION = 10
BATCH_AXIS = "batch"


def import_onnx() -> Any:
    """The onnx module, or the error naming the extra that installs it."""
    try:
        import onnx
    except ImportError as err:
        raise missing_extra("onnx", "export") from err
    return onnx


def import_onnxruntime() -> Any:
    """The onnxruntime module, or the error naming the extra that installs it."""
    try:
        import onnxruntime
    except ImportError as err:
        raise missing_extra("onnxruntime", "export") from err
    return onnxruntime


def export_onnx(
    module: torch.nn.Module,
    path: str | Path,
    *,
    example: torch.Tensor,
    input_names: Sequence[str],
    output_names: Sequence[str],
    opset: int = 17,
    dynamic_batch: bool = True,
) -> Path:
    """Export `module` traced on `example` to `path`, checked and loadable by ONNX Runtime.

    Uses the TorchScript exporter: it needs no extra package (the dynamo exporter needs
    onnxscript), supports opset 17, and tracing on the static example size resolves the
    registry's pad-to-multiple `if`, so no Pad op is written. With `dynamic_batch` every input
    and output gets a symbolic first axis named "batch". The file is written atomically.
    """
    import torch

    onnx = import_onnx()
    names = [*input_names, *output_names]
    dynamic_axes = {name: {0: BATCH_AXIS} for name in names} if dynamic_batch else None
    path = Path(path)
    module.eval()
    with _temporary_sibling(path) as tmp, torch.no_grad(), warnings.catch_warnings():
        # the TorchScript exporter is deprecated in favour of dynamo, which would need onnxscript
        warnings.simplefilter("ignore", category=DeprecationWarning)
        warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
        torch.onnx.export(
            module, (example,), str(tmp), dynamo=False, opset_version=opset, input_names=list(input_names),
            output_names=list(output_names), dynamic_axes=dynamic_axes, do_constant_folding=True,
        )
        save_model(onnx.load(str(tmp)), path)
    return path


def save_model(model: onnx.ModelProto, path: str | Path) -> Path:
    """Cap the IR version, run the ONNX checker, prove ONNX Runtime loads it, then write atomically."""
    onnx = import_onnx()
    if model.ir_version > MAX_IR_VERSION:
        model.ir_version = MAX_IR_VERSION
    onnx.checker.check_model(model)
    path = Path(path)
    with _temporary_sibling(path) as tmp:
        onnx.save(model, str(tmp))
        try:
            ort_session(tmp, threads=1)
        except Exception as err:  # onnxruntime raises its own exception types, not exported stably
            raise BrainsegError(f"{path}: ONNX Runtime cannot load the exported graph ({err})") from err
        os.replace(tmp, path)
    return path


def simplify(path: str | Path) -> dict:
    """Simplify an ONNX file in place with onnxslim (constant folding, dead and Identity nodes).

    Returns {"tool", "nodes_before", "nodes_after"}. Mostly removes what the TorchScript
    exporter leaves behind (Identity and Constant nodes, shape arithmetic on static sizes).
    """
    onnx = import_onnx()
    try:
        import onnxslim
    except ImportError as err:
        raise missing_extra("onnxslim", "export") from err
    model = onnx.load(str(path))
    before = sum(op_types(model).values())
    slim = onnxslim.slim(model)
    save_model(slim, path)
    after = sum(op_types(slim).values())
    return {"tool": f"onnxslim {onnxslim.__version__}", "nodes_before": before, "nodes_after": after}


def ort_session(
    path: str | Path, *, threads: int | None = None, providers: Sequence[str] = ("CPUExecutionProvider",),
    spinning: bool = False,
) -> onnxruntime.InferenceSession:
    """An ONNX Runtime session with all graph optimisations; its threads sleep between calls unless `spinning`.

    Spinning threads keep a core busy after each call; with several sessions run in turn (the
    members of an ensemble, a benchmark) that made each ~38% slower on a 2-core machine. One
    session called back to back is the opposite case: waking the sleeping workers for each of
    the graph's few hundred ops cost the quick int8 ensemble 27 ms against 21 ms spinning, so the
    runtime's single inference loop asks for `spinning`. `threads` sets the intra-op thread
    count (None: one per physical core).
    """
    ort = import_onnxruntime()
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: ONNX file not found")
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
    return ort.InferenceSession(str(path), sess_options=options, providers=list(providers))


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


def op_types(model: str | Path | onnx.ModelProto) -> collections.Counter:
    """How many nodes of each op type the model holds, counting those inside subgraphs (If, Loop, Scan)."""
    if isinstance(model, str | Path):
        model = import_onnx().load(str(model), load_external_data=False)
    return collections.Counter(node.op_type for node in iter_nodes(model.graph))


def iter_nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    """Every node of `graph`, subgraphs of control-flow nodes included, depth first."""
    for node in graph.node:
        yield node
        for attribute in node.attribute:
            if attribute.HasField("g"):
                yield from iter_nodes(attribute.g)
            for subgraph in attribute.graphs:
                yield from iter_nodes(subgraph)


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


@contextlib.contextmanager
def _temporary_sibling(path: Path) -> Iterator[Path]:
    """A temporary path next to `path` (same filesystem, so os.replace is atomic), removed on exit."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(name)
    finally:
        Path(name).unlink(missing_ok=True)
