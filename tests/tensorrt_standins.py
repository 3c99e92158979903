"""Stand-ins for TensorRT and the CUDA runtime, for testing the TensorRT backend where neither exists.

Neither TensorRT nor a GPU is on the development machines. The stand-ins below implement the
documented calls the backend makes (TensorRT 10/11 Python API; cuda-python's runtime module) over
numpy arrays: a "device pointer" is the address of a numpy array the fake runtime owns, async work
is queued on a stream and runs only when the stream is synchronised, and work issued while a stream
is capturing goes into a graph instead of running. The fake engine reads its input from and writes
its outputs to that "device memory", so results prove the copies, addresses and shapes are right.
"""

from __future__ import annotations

import dataclasses
import enum
import types

import numpy as np

from brainseg.artifacts.layout import provenance_file
from brainseg.artifacts.provenance import EngineProvenance
from brainseg.fileio import sha256_file

TRT_SKIP = "TensorRT is not installed here (its PyPI libs cannot be fetched); these run on a GPU machine with TensorRT"
H, W, C, K = 6, 5, 3, 2  # tiny slices: (H, W, C) in, K output channels


class CudaError(enum.IntEnum):
    cudaSuccess = 0
    cudaErrorMemoryAllocation = 2
    cudaErrorNotReady = 600
    cudaErrorLaunchFailure = 719
    cudaErrorStreamCaptureUnsupported = 900


def reference(image: np.ndarray) -> dict[str, np.ndarray]:
    """What the fake engine computes: (N, H, W, C) -> three (N, K, H, W) maps."""
    scale = np.arange(1, K + 1, dtype=np.float32)[None, :, None, None] / K  # (1, K, 1, 1)
    probability = (image.astype(np.float32).mean(axis=-1) / 255.0)[:, None] * scale
    return {
        "probability": probability,
        "mask": (probability > 0.5).astype(np.uint8),
        "disagreement": probability * (1 - probability),
    }


# --- the CUDA runtime stand-in ---------------------------------------------------------------------


class FakeCudart:
    """cuda-python's runtime calls used by the backend, over numpy arrays; counts and fails on request."""

    cudaMemcpyKind = types.SimpleNamespace(cudaMemcpyHostToDevice=1, cudaMemcpyDeviceToHost=2)
    cudaStreamCaptureMode = types.SimpleNamespace(cudaStreamCaptureModeGlobal=0, cudaStreamCaptureModeThreadLocal=1)

    def __init__(self):
        self.host, self.device = {}, {}  # address -> uint8 array
        self.streams, self.graphs, self.execs = {}, {}, {}  # handle -> work list / capture
        self.calls, self.failures, self._next = [], {}, 1000
        self.events, self.clock = {}, 0.0  # event -> "GPU time" (ms) when it ran; advanced by the work

    def fail(self, name: str, nth: int = 1, error=CudaError.cudaErrorLaunchFailure) -> None:
        """Make the nth call of `name` from now on return `error`."""
        self.failures[name] = (self.calls.count(name) + nth, error)

    def live(self) -> dict[str, int]:
        counts = {"host": self.host, "device": self.device, "streams": self.streams, "events": self.events}
        counts.update(graphs=self.graphs, execs=self.execs)
        return {kind: len(items) for kind, items in counts.items() if items}

    def _call(self, name: str):
        self.calls.append(name)
        due, error = self.failures.get(name, (None, None))
        return error if due == self.calls.count(name) else None

    def _handle(self) -> int:
        self._next += 1
        return self._next

    def _alloc(self, pool, name, size):
        if error := self._call(name):
            return error, None
        array = np.zeros(size, np.uint8)
        pool[array.ctypes.data] = array
        return CudaError.cudaSuccess, array.ctypes.data

    def _free(self, pool, name, pointer):
        if error := self._call(name):
            return (error,)
        del pool[pointer]  # KeyError: freed twice or never allocated
        return (CudaError.cudaSuccess,)

    def cudaSetDevice(self, device):
        self.current_device = device
        return (self._call("cudaSetDevice") or CudaError.cudaSuccess,)

    def cudaGetDevice(self):
        return CudaError.cudaSuccess, self.current_device

    def cudaGetDeviceProperties(self, device):
        return CudaError.cudaSuccess, types.SimpleNamespace(name=b"Fake GPU\x00\x00", major=8, minor=7)

    def cudaMallocHost(self, size):
        return self._alloc(self.host, "cudaMallocHost", size)

    def cudaMalloc(self, size):
        return self._alloc(self.device, "cudaMalloc", size)

    def cudaFreeHost(self, pointer):
        return self._free(self.host, "cudaFreeHost", pointer)

    def cudaFree(self, pointer):
        return self._free(self.device, "cudaFree", pointer)

    def cudaStreamCreate(self):
        if error := self._call("cudaStreamCreate"):
            return error, None
        stream = self._handle()
        self.streams[stream] = {"queue": [], "capture": None}
        return CudaError.cudaSuccess, stream

    def cudaStreamDestroy(self, stream):
        if error := self._call("cudaStreamDestroy"):
            return (error,)
        assert not self.streams.pop(stream)["queue"], "stream destroyed with work still queued"
        return (CudaError.cudaSuccess,)

    def enqueue(self, stream, work) -> None:
        state = self.streams[int(stream)]
        (state["queue"] if state["capture"] is None else state["capture"]).append(work)

    def cudaMemcpyAsync(self, dst, src, count, kind, stream):
        if error := self._call("cudaMemcpyAsync"):
            return (error,)
        to_device = kind == self.cudaMemcpyKind.cudaMemcpyHostToDevice
        source, target = (self.host, self.device) if to_device else (self.device, self.host)
        assert src in source and dst in target, "copy between pointers of the wrong kind"
        assert count <= min(source[src].size, target[dst].size), "copy past the end of a buffer"

        def copy():
            target[dst][:count] = source[src][:count]
            self.clock += count / 1e6  # 1 ms per MB

        self.enqueue(stream, copy)
        return (CudaError.cudaSuccess,)

    def cudaEventCreate(self):
        if error := self._call("cudaEventCreate"):
            return error, None
        event = self._handle()
        self.events[event] = None
        return CudaError.cudaSuccess, event

    def cudaEventDestroy(self, event):
        del self.events[event]
        return (self._call("cudaEventDestroy") or CudaError.cudaSuccess,)

    def cudaEventRecord(self, event, stream):
        assert event in self.events, "recording an event that was never created"
        self.enqueue(stream, lambda: self.events.__setitem__(event, self.clock))
        return (self._call("cudaEventRecord") or CudaError.cudaSuccess,)

    def cudaEventElapsedTime(self, start, end):
        if self.events[start] is None or self.events[end] is None:
            return CudaError.cudaErrorNotReady, None
        return CudaError.cudaSuccess, self.events[end] - self.events[start]

    def cudaStreamSynchronize(self, stream):
        state = self.streams[int(stream)]
        if error := self._call("cudaStreamSynchronize"):
            return (error,)
        if state["capture"] is not None:
            return (CudaError.cudaErrorStreamCaptureUnsupported,)
        while state["queue"]:
            state["queue"].pop(0)()
        return (CudaError.cudaSuccess,)

    def cudaStreamBeginCapture(self, stream, mode):
        if error := self._call("cudaStreamBeginCapture"):
            return (error,)
        self.streams[stream]["capture"] = []
        return (CudaError.cudaSuccess,)

    def cudaStreamEndCapture(self, stream):
        work, self.streams[stream]["capture"] = self.streams[stream]["capture"], None
        if error := self._call("cudaStreamEndCapture"):
            return error, None
        graph = self._handle()
        self.graphs[graph] = work
        return CudaError.cudaSuccess, graph

    def cudaGraphInstantiate(self, graph, flags):
        if error := self._call("cudaGraphInstantiate"):
            return error, None
        graph_exec = self._handle()
        self.execs[graph_exec] = list(self.graphs[graph])
        return CudaError.cudaSuccess, graph_exec

    def cudaGraphLaunch(self, graph_exec, stream):
        if error := self._call("cudaGraphLaunch"):
            return (error,)
        for work in self.execs[graph_exec]:
            self.enqueue(stream, work)
        return (CudaError.cudaSuccess,)

    def cudaGraphExecDestroy(self, graph_exec):
        return self._free(self.execs, "cudaGraphExecDestroy", graph_exec)

    def cudaGraphDestroy(self, graph):
        return self._free(self.graphs, "cudaGraphDestroy", graph)


# --- the TensorRT stand-in -------------------------------------------------------------------------


def fake_tensorrt(cudart: FakeCudart, *, profile=(1, 2, 4), dtype="uint8", version="10.3.0", context_fails=None):
    """A tensorrt module whose engine computes `reference` on "device memory" of `cudart`."""
    calls = {"deserialized": 0, "contexts": 0, "executions": [], "shapes": [], "addresses": []}
    io_dtypes = {"image": dtype, "probability": "float32", "mask": "uint8", "disagreement": "float32"}

    class Context:
        def __init__(self):
            self.shape, self.addresses, self.needs_warmup = None, {}, True

        def set_input_shape(self, name, shape):
            calls["shapes"].append((name, tuple(shape)))
            if name != "image" or not profile[0] <= shape[0] <= profile[2] or tuple(shape[1:]) != (H, W, C):
                return False
            self.shape, self.needs_warmup = tuple(shape), True
            return True

        def get_tensor_shape(self, name):
            batch = -1 if self.shape is None else self.shape[0]
            return (batch, H, W, C) if name == "image" else (batch, K, H, W)

        def set_tensor_address(self, name, address):
            calls["addresses"].append((name, address))
            self.addresses[name] = address
            return True

        def execute_async_v3(self, stream_handle):
            capturing = cudart.streams[stream_handle]["capture"] is not None
            if capturing and self.needs_warmup:
                return False  # TensorRT's setup after a shape change cannot be captured
            calls["executions"].append((id(self), self.shape[0], capturing))
            self.needs_warmup = False
            cudart.enqueue(stream_handle, self._run)
            return True

        def _run(self):
            # Like kernels reading shapes from the context's scratch memory: the shape when it runs counts.
            batch = self.shape[0]
            cudart.clock += 2.0 * batch  # the engine: 2 ms per slice of "GPU time"
            image = cudart.device[self.addresses["image"]].view(np.dtype(dtype))[: batch * H * W * C]
            for name, value in reference(image.reshape(batch, H, W, C)).items():
                cudart.device[self.addresses[name]][: value.nbytes] = value.reshape(-1).view(np.uint8)

    class Engine:
        num_io_tensors = 4

        def get_tensor_name(self, index):
            return list(io_dtypes)[index]

        def get_tensor_mode(self, name):
            return TensorIOMode.INPUT if name == "image" else TensorIOMode.OUTPUT

        def get_tensor_dtype(self, name):
            return io_dtypes[name]

        def get_tensor_profile_shape(self, name, profile_index):
            assert name == "image" and profile_index == 0
            return [(batch, H, W, C) for batch in profile]

        def create_execution_context(self):
            calls["contexts"] += 1
            return None if calls["contexts"] == context_fails else Context()

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, blob):
            calls["deserialized"] += 1
            return Engine() if blob == b"fake engine" else None

    class Logger:
        WARNING = "warning"

        def __init__(self, level):
            pass

    TensorIOMode = types.SimpleNamespace(INPUT="input", OUTPUT="output")
    module = types.SimpleNamespace(
        __version__=version, Runtime=Runtime, Logger=Logger, TensorIOMode=TensorIOMode, nptype=np.dtype
    )
    return module, calls


def provenance(**changes) -> EngineProvenance:
    """A provenance record matching the stand-ins (fp16, TensorRT 10.3.0, Fake GPU 8.7, batch 1-4), as changed."""
    base = EngineProvenance(onnx_sha256="ab" * 32, precision="fp16", tensorrt_version="10.3.0", gpu_name="Fake GPU",
                            compute_capability="8.7", profile=(1, 2, 4), strongly_typed=True,
                            built_at="2026-01-01T00:00:00+00:00")
    return dataclasses.replace(base, **changes)


def write_provenance(engine_path, onnx_path, **changes):
    record = provenance(**{"onnx_sha256": sha256_file(onnx_path), **changes})
    provenance_file(engine_path).write_text(record.to_json())


def engine_files(folder):
    """An engine file, its ONNX file, and a provenance matching the stand-ins, in `folder`."""
    onnx_path, engine_path = folder / "ensemble.fp16.onnx", folder / "ensemble.fp16.engine"
    onnx_path.write_bytes(b"an ONNX graph")
    engine_path.write_bytes(b"fake engine")
    write_provenance(engine_path, onnx_path)
    return engine_path, onnx_path


def images(n, dtype="uint8", seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, H, W, C)).astype(dtype)


def check_outputs(got, image):
    expected = reference(image)
    assert set(got) == set(expected)
    for name, value in expected.items():
        assert got[name].dtype == value.dtype and got[name].shape == value.shape, name
        np.testing.assert_allclose(got[name], value, rtol=1e-6, err_msg=name)
