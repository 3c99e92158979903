"""gpu_check's cuda-plumbing part: brainseg's TensorRT backend on a real GPU, a CuPy kernel standing in for the engine.

TensorRT is not on the lent GPU machines, but what `TensorRTBackend` does around the engine is:
pinned host buffers (cudaMallocHost), async copies and the engine's work on one stream, CUDA
events around the stages (`infer_stages`), and the copy-in, run, copy-out sequence captured as a
CUDA graph and replayed. Here a stand-in `tensorrt` module (the calls the backend makes, TensorRT
10/11 API) hands the backend an engine whose `execute_async_v3` launches one CuPy elementwise
kernel on the backend's own stream, so every one of those steps runs on the GPU through
cuda-python, the engine's provenance is checked against this GPU, and each output is compared
with numpy. torch is not imported (the runtime never does).
"""

from __future__ import annotations

import sys
import tempfile
import time
import types
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from gpu_check_record import PartRecord

ENGINE_BYTES = b"brainseg gpu_check stand-in engine"
STANDIN_VERSION = "stand-in (CuPy kernel)"
IO_DTYPES = {"image": "uint8", "probability": "float32", "mask": "uint8", "disagreement": "float32"}


def reference_outputs(image: np.ndarray) -> dict[str, np.ndarray]:
    """What the stand-in engine computes: (N, H, W, C) uint8 -> (N, 1, H, W) probability, mask, disagreement."""
    probability = (image.astype(np.float32).sum(axis=-1) / np.float32(255 * image.shape[-1]))[:, None]
    return {"probability": probability, "mask": (probability >= 0.5).astype(np.uint8),
            "disagreement": probability * (1 - probability)}


def cupy_launcher(slice_shape: tuple[int, int, int], device: int):
    """launch(stream, addresses, batch): the stand-in engine's CuPy kernel, queued on the backend's own stream."""
    import cupy

    kernel = cupy.ElementwiseKernel(
        "raw uint8 image, int32 channels", "float32 probability, uint8 mask, float32 disagreement",
        """float total = 0.0f;
        for (int c = 0; c < channels; ++c) total += image[i * channels + c];
        probability = total / (channels * 255.0f);
        mask = probability >= 0.5f;
        disagreement = probability * (1.0f - probability);""", "gpu_check_standin_engine")
    height, width, channels = slice_shape

    def device_array(address: int, count: int, dtype: str):
        memory = cupy.cuda.UnownedMemory(address, count * np.dtype(dtype).itemsize, None, device)  # backend frees it
        return cupy.ndarray((count,), dtype, cupy.cuda.MemoryPointer(memory, 0))

    def launch(stream: int, addresses: dict, batch: int) -> None:
        pixels = batch * height * width  # one thread per output pixel: (N, 1, H, W) outputs are in pixel order
        outputs = [device_array(addresses[n], pixels, IO_DTYPES[n]) for n in ("probability", "mask", "disagreement")]
        with cupy.cuda.ExternalStream(int(stream), device):
            kernel(device_array(addresses["image"], pixels * channels, "uint8"), channels, *outputs)

    return launch


def standin_tensorrt(slice_shape: tuple[int, int, int], profile: tuple[int, int, int], launch):
    """A `tensorrt` module with the calls TensorRTBackend makes (TensorRT 10/11 API); its engine calls `launch`."""

    class Context:
        def __init__(self):
            self.shape, self.addresses = None, {}

        def set_input_shape(self, name, shape):
            fits = name == "image" and profile[0] <= shape[0] <= profile[2] and tuple(shape[1:]) == slice_shape
            self.shape = tuple(shape) if fits else self.shape
            return fits

        def get_tensor_shape(self, name):
            batch = -1 if self.shape is None else self.shape[0]
            return (batch, *slice_shape) if name == "image" else (batch, 1, *slice_shape[:2])

        def set_tensor_address(self, name, address):
            self.addresses[name] = int(address)
            return True

        def execute_async_v3(self, stream_handle):
            launch(stream_handle, self.addresses, self.shape[0])
            return True

    engine = types.SimpleNamespace(
        num_io_tensors=len(IO_DTYPES), get_tensor_name=lambda index: list(IO_DTYPES)[index],
        get_tensor_mode=lambda name: "input" if name == "image" else "output", get_tensor_dtype=IO_DTYPES.get,
        get_tensor_profile_shape=lambda name, index: [(batch, *slice_shape) for batch in profile],
        create_execution_context=Context)
    runtime = types.SimpleNamespace(deserialize_cuda_engine=lambda blob: engine if blob == ENGINE_BYTES else None)
    return types.SimpleNamespace(
        __version__=STANDIN_VERSION, nptype=np.dtype, Runtime=lambda logger: runtime,
        Logger=type("Logger", (), {"WARNING": "warning", "__init__": lambda self, level: None}),
        TensorIOMode=types.SimpleNamespace(INPUT="input", OUTPUT="output"))


def _engine_files(folder: Path, profile: tuple[int, int, int]) -> tuple[Path, Path]:
    """A stand-in engine, an ONNX placeholder and a provenance record for this GPU, for the backend's check."""
    from brainseg.artifacts import cuda
    from brainseg.artifacts.layout import provenance_file
    from brainseg.artifacts.provenance import EngineProvenance
    from brainseg.fileio import sha256_file

    onnx_path, engine_path = folder / "ensemble.fp16.onnx", folder / "ensemble.fp16.engine"
    onnx_path.write_bytes(b"placeholder: the stand-in engine was built from no ONNX file")
    engine_path.write_bytes(ENGINE_BYTES)
    gpu_name, capability = cuda.gpu_identity(0)
    record = EngineProvenance(
        onnx_sha256=sha256_file(onnx_path), precision="fp16", tensorrt_version=STANDIN_VERSION, gpu_name=gpu_name,
        compute_capability=capability, profile=profile, strongly_typed=True,
        built_at=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    provenance_file(engine_path).write_text(record.to_json())
    return engine_path, onnx_path


def _check(got: dict, image: np.ndarray) -> None:
    for name, expected in reference_outputs(image).items():
        if got[name].shape != expected.shape or not np.allclose(got[name], expected, rtol=1e-6, atol=0):
            raise AssertionError(f"{name} differs from numpy at batch {len(image)} (shape {got[name].shape})")


def _plumbing_row(backend, size: int, batch: int, reps: int, graph: bool) -> dict:
    """`reps` checked calls at one batch; without a graph also `infer_stages` (CUDA events around each stage)."""
    rng = np.random.default_rng(batch)
    images = [rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8) for _ in range(2)]
    walls, stages = [], []
    for rep in range(reps):
        image = images[rep % 2]  # new bytes on every call: a replay of stale input would fail the check
        started = time.perf_counter()
        got = backend.infer(image)
        walls.append((time.perf_counter() - started) * 1000)
        _check(got, image)
        if not graph:
            got, times = backend.infer_stages(image)
            _check(got, image)
            stages.append(times)
    row = {"size": size, "batch": batch, "cuda_graph": graph, "checked_calls": reps * (1 if graph else 2),
           "infer_wall_ms_median": round(float(np.median(walls)), 4)}
    if stages:
        row.update({key: round(float(np.median([s[key] for s in stages])), 4) for key in stages[0]})
        row.update(bytes_in=images[0].nbytes, bytes_out=batch * size * size * 9)  # float32 + uint8 + float32
        for key, nbytes in (("h2d", row["bytes_in"]), ("d2h", row["bytes_out"])):
            row[f"{key}_gb_per_s"] = round(nbytes / row[f"{key}_ms"] / 1e6, 2) if row[f"{key}_ms"] > 0 else None
    return row


def cuda_plumbing(args, record: PartRecord, make_launcher=cupy_launcher) -> None:
    """TensorRTBackend on this GPU with a stand-in engine: plain calls at each batch, then graphs at the ends."""
    from brainseg.bench.environment import describe_environment
    from brainseg.runtime.backends.tensorrt import TensorRTBackend

    record.data["environment"] = describe_environment()
    record.data["engine"] = "stand-in: one CuPy elementwise kernel (channel mean / 255, mask, p(1-p))"
    batches = sorted(set(args.plumbing_batches))
    profile = (batches[0], batches[len(batches) // 2], batches[-1])
    previous = sys.modules.get("tensorrt")
    try:
        for size in args.sizes:
            sys.modules["tensorrt"] = standin_tensorrt((size, size, 3), profile, make_launcher((size, size, 3), 0))
            with tempfile.TemporaryDirectory() as folder:
                engine = _engine_files(Path(folder), profile)
                for graph_batch in (None, batches[0], batches[-1]):
                    if record.out_of_time(f"{size}px, graph batch {graph_batch}"):
                        return
                    with TensorRTBackend(*engine, "fp16", cuda_graph=graph_batch is not None,
                                         graph_batch=graph_batch) as backend:
                        record.data.setdefault("backend", backend.describe())
                        for batch in batches if graph_batch is None else [graph_batch]:
                            record.add(_plumbing_row(backend, size, batch, args.plumbing_reps, graph_batch is not None))
    finally:
        sys.modules.pop("tensorrt", None)
        if previous is not None:
            sys.modules["tensorrt"] = previous
