"""Writing, checking and simplifying ONNX files.

Importable without torch: torch is imported inside `export_onnx` only, and onnx / onnxslim inside
the functions that use them. Running a file is `brainseg.artifacts.sessions`.
"""

from __future__ import annotations

import collections
import contextlib
import os
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from brainseg.artifacts.sessions import MAX_IR_VERSION, import_onnx, ort_session
from brainseg.errors import BrainsegError, require
from brainseg.fileio import FILE_MODE

if TYPE_CHECKING:
    import onnx
    import torch

BATCH_AXIS = "batch"


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
    onnxslim = require("onnxslim", "export")
    model = onnx.load(str(path))
    before = sum(op_types(model).values())
    slim = onnxslim.slim(model)
    save_model(slim, path)
    after = sum(op_types(slim).values())
    return {"tool": f"onnxslim {onnxslim.__version__}", "nodes_before": before, "nodes_after": after}


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


@contextlib.contextmanager
def _temporary_sibling(path: Path) -> Iterator[Path]:
    """A temporary path next to `path` (same filesystem, so os.replace is atomic), removed on exit."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(name, FILE_MODE)  # not mkstemp's owner-only mode: a server running as another user reads the graphs
    try:
        yield Path(name)
    finally:
        Path(name).unlink(missing_ok=True)
