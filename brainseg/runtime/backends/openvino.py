"""OpenVINO backend: the exported ensemble ONNX files on Intel's CPU runtime.

OpenVINO reads the same files ONNX Runtime runs (the fp32 graph and the uint8 Q/DQ `int8-cpu`
graph) and compiles them for the CPU. Two of its defaults matter for honest numbers:

- On a CPU with native bf16 (AVX512-BF16 or AMX) it computes float layers in bf16 unless told
  otherwise. Here the compute type follows the precision asked: fp32 and int8 force f32 for the
  float layers (what the export's gate scored); bf16 asks for bf16 and refuses a CPU without it,
  rather than let OpenVINO quietly run f32 under a bf16 label.
- Its threads default to every core; `threads` sets them, and a latency hint keeps one stream.

`openvino` is imported when a backend is created (`pip install 'brainseg[openvino]'`).
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import numpy as np

from brainseg.artifacts.layout import ENSEMBLE_OUTPUTS
from brainseg.errors import ArtifactError, ConfigError, DataError, require
from brainseg.machine import is_x86 as is_x86  # re-exported: the backend choice and tests ask it here

EXTRA = "openvino"
DEVICE = "CPU"
# what each precision computes its float layers in (the int8 file's Q/DQ layers run in int8 either way)
COMPUTE = {"fp32": "f32", "fp16": "f32", "int8": "f32", "bf16": "bf16"}


def import_openvino() -> ModuleType:
    return require("openvino", EXTRA)


def native_bf16(core=None) -> bool:
    """Whether OpenVINO finds native bf16 arithmetic on this CPU (AVX512-BF16 or AMX)."""
    ov = import_openvino()
    core = core or ov.Core()
    return "BF16" in core.get_property(DEVICE, "OPTIMIZATION_CAPABILITIES")


def _output_name(port) -> str:
    """The graph's own name of an output ("mask"), not one OpenVINO's converter gave the same tensor."""
    names = port.get_names()
    return next((name for name in ENSEMBLE_OUTPUTS if name in names), port.get_any_name())


class OpenVinoBackend:
    """Run one ensemble ONNX file with OpenVINO on the CPU; `infer(batch)` returns the graph's outputs.

    Args:
        onnx_path: the ensemble graph (fp32 file for fp32 and bf16, `int8-cpu` file for int8).
        precision: fp32, fp16, int8 or bf16; sets the float layers' compute type (see COMPUTE).
        threads: inference threads; None for OpenVINO's own choice (one per core).
        defaults: compile with OpenVINO's own settings (its compute type, its streams), as a user
            trying it would: seg-bench's peer row. Not for seg-run, since that may not be what the
            export's gate scored.
    """

    name = "openvino"

    def __init__(self, onnx_path: Path, precision: str, *, threads: int | None = None,
                 defaults: bool = False) -> None:
        ov = import_openvino()
        self.onnx_path = Path(onnx_path)
        if not self.onnx_path.is_file():
            raise DataError(f"{self.onnx_path}: ONNX file not found")
        if precision not in COMPUTE:
            raise ConfigError(f"OpenVINO runs fp32, fp16, int8 or bf16, not {precision!r}")
        self.precision, self.compute = precision, COMPUTE[precision]
        core = ov.Core()
        if self.compute == "bf16" and not native_bf16(core):
            raise ConfigError(f"bf16 needs a CPU with native bf16 (AVX512-BF16 or AMX); "
                              f"{core.get_property(DEVICE, 'FULL_DEVICE_NAME')} has none")
        config = {} if defaults else \
            {"INFERENCE_PRECISION_HINT": self.compute, "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1}
        if threads is not None:
            config["INFERENCE_NUM_THREADS"] = threads
        try:
            model = core.read_model(str(self.onnx_path))
            self.compiled = core.compile_model(model, DEVICE, config)
        except RuntimeError as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ArtifactError(f"{self.onnx_path}: OpenVINO cannot compile it: {first}") from err
        ran = self.compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
        if defaults:
            self.compute = ran
        elif ran != self.compute:  # OpenVINO falls back silently; say what ran instead of a wrong label
            raise ConfigError(f"{self.onnx_path.name}: asked OpenVINO for {self.compute}, it chose {ran}")
        self.threads = threads
        self.request = self.compiled.create_infer_request()
        image = self.compiled.inputs[0]
        self.input_name = image.get_any_name()
        self.input_dtype = np.dtype(image.get_element_type().to_dtype())
        self.input_shape = tuple(dim.get_length() for dim in image.get_partial_shape()[1:])
        self.outputs = [_output_name(port) for port in self.compiled.outputs]
        self.max_batch = None  # the batch dimension is dynamic

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """(n, H, W, C) slices in the graph's input dtype -> the graph's outputs by name, each (n, K, H, W)."""
        if batch.dtype != self.input_dtype or batch.shape[1:] != self.input_shape:
            raise ValueError(f"batch is {batch.dtype}{list(batch.shape)}; the graph takes "
                             f"{self.input_dtype}[n, {', '.join(map(str, self.input_shape))}]")
        # infer() hands back arrays of their own (share_outputs=False), not views of the request's buffers
        results = self.request.infer({self.input_name: np.ascontiguousarray(batch)})
        return {name: results[port] for name, port in zip(self.outputs, self.compiled.outputs, strict=True)}

    def describe(self) -> dict:
        ov = import_openvino()
        return {"backend": self.name, "device": DEVICE, "precision": self.precision, "compute": self.compute,
                "file": self.onnx_path.name, "openvino": ov.__version__.split("-")[0],
                "threads": self.threads or "per core"}

    def close(self) -> None:
        self.request = self.compiled = None

    def __enter__(self) -> OpenVinoBackend:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
