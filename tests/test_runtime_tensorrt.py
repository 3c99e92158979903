"""The TensorRT backend, against stand-ins for TensorRT and the CUDA runtime, and for real where they exist.

Neither TensorRT nor a GPU is on the development machines. The stand-ins below implement the
documented calls the backend makes (TensorRT 10/11 Python API; cuda-python's runtime module) over
numpy arrays: a "device pointer" is the address of a numpy array the fake runtime owns, async work
is queued on a stream and runs only when the stream is synchronised, and work issued while a stream
is capturing goes into a graph instead of running. The fake engine reads its input from and writes
its outputs to that "device memory", so results prove the copies, addresses and shapes are right.
"""

from __future__ import annotations

import enum
import subprocess
import sys
import types

import numpy as np
import pytest

from brainseg.errors import ArtifactError, BrainsegError, ConfigError, DataError
from brainseg.export import tensorrt_build
from brainseg.export.tensorrt_build import EngineProvenance, provenance_path
from brainseg.fileio import sha256_file
from brainseg.runtime.tensorrt_backend import TensorRTBackend

TRT_SKIP = "TensorRT is not installed here (its PyPI libs cannot be fetched); these run on a GPU machine with TensorRT"
H, W, C, K = 6, 5, 3, 2  # tiny slices: (H, W, C) in, K output channels


class CudaError(enum.IntEnum):
    cudaSuccess = 0
    cudaErrorMemoryAllocation = 2
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


# --- fixtures ------------------------------------------------------------------------------------


@pytest.fixture
def cudart(monkeypatch):
    fake = FakeCudart()
    monkeypatch.setattr(tensorrt_build, "_import_cudart", lambda: fake)
    return fake


@pytest.fixture
def install_trt(cudart, monkeypatch):
    def install(**options):
        trt, calls = fake_tensorrt(cudart, **options)
        monkeypatch.setattr(tensorrt_build, "_import_tensorrt", lambda: trt)
        return calls

    return install


@pytest.fixture
def engine(tmp_path):
    """An engine file, its ONNX file, and a provenance matching the stand-ins (fp16, TensorRT 10.3.0, Fake GPU)."""
    onnx_path, engine_path = tmp_path / "ensemble.fp16.onnx", tmp_path / "ensemble.fp16.engine"
    onnx_path.write_bytes(b"an ONNX graph")
    engine_path.write_bytes(b"fake engine")
    write_provenance(engine_path, onnx_path)
    return engine_path, onnx_path


def write_provenance(engine_path, onnx_path, **changes):
    fields = dict(
        onnx_sha256=sha256_file(onnx_path),
        precision="fp16",
        tensorrt_version="10.3.0",
        gpu_name="Fake GPU",
        compute_capability="8.7",
        profile=(1, 2, 4),
        strongly_typed=True,
        built_at="2026-01-01T00:00:00+00:00",
    )
    provenance_path(engine_path).write_text(EngineProvenance(**{**fields, **changes}).to_json())


def images(n, dtype="uint8", seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, H, W, C)).astype(dtype)


def check_outputs(got, image):
    expected = reference(image)
    assert set(got) == set(expected)
    for name, value in expected.items():
        assert got[name].dtype == value.dtype and got[name].shape == value.shape, name
        np.testing.assert_allclose(got[name], value, rtol=1e-6, err_msg=name)


# --- buffers, inference, teardown ----------------------------------------------------------------


def test_buffers_are_sized_from_the_profile_max(engine, cudart, install_trt):
    install_trt(profile=(1, 2, 4))
    with TensorRTBackend(*engine, "fp16") as backend:
        assert backend.max_batch == 4 and backend.profile == (1, 2, 4)
        assert backend.input_spec == (np.dtype(np.uint8), (H, W, C))
        maps = 4 * K * H * W
        sizes = sorted(array.size for array in cudart.host.values())
        assert sizes == sorted([4 * H * W * C, maps * 4, maps, maps * 4])  # image, probability, mask, disagreement
        assert sorted(array.size for array in cudart.device.values()) == sizes


@pytest.mark.parametrize("dtype", ["uint8", "float32"])
def test_infer_returns_the_engines_result_below_and_at_the_max_batch(engine, cudart, install_trt, dtype):
    calls = install_trt(dtype=dtype)
    with TensorRTBackend(*engine, "fp16") as backend:
        first = images(3, dtype, seed=1)
        got = backend.infer(first)
        check_outputs(got, first)
        full = images(4, dtype, seed=2)
        check_outputs(backend.infer(full), full)
        check_outputs(got, first)  # results are copies, not views of the reused pinned buffers
    assert ("image", (3, H, W, C)) in calls["shapes"] and ("image", (4, H, W, C)) in calls["shapes"]
    assert {name for name, _ in calls["addresses"]} == {"image", "probability", "mask", "disagreement"}
    assert "cudaGraphLaunch" not in cudart.calls and "cudaStreamBeginCapture" not in cudart.calls


def test_stage_timing_reads_cuda_events_around_copy_in_engine_and_copy_out(engine, cudart, install_trt):
    install_trt()
    with TensorRTBackend(*engine, "fp16", cuda_graph=True) as backend:
        batch = images(3, seed=4)
        outputs, stages = backend.infer_stages(batch)
        check_outputs(outputs, batch)
        out_bytes = 3 * K * H * W * (4 + 1 + 4)  # probability, mask, disagreement
        assert stages == pytest.approx({"h2d_ms": batch.nbytes / 1e6, "compute_ms": 6.0, "d2h_ms": out_bytes / 1e6})
        assert cudart.live()["events"] == 4
        backend.infer_stages(images(2))  # the events are made once and reused
        assert cudart.calls.count("cudaEventCreate") == 4
    assert cudart.live() == {}  # events destroyed with everything else


def test_every_allocation_is_freed_on_close(engine, cudart, install_trt):
    install_trt()
    backend = TensorRTBackend(*engine, "fp16", cuda_graph=True)
    backend.infer(images(2))
    assert cudart.live() == {"host": 4, "device": 4, "streams": 1, "graphs": 1, "execs": 1}
    backend.close()
    assert cudart.live() == {}
    backend.close()  # a second close does nothing
    with pytest.raises(BrainsegError, match="closed"):
        backend.infer(images(2))


@pytest.mark.parametrize(
    ("call", "nth", "cuda_graph"),
    [
        ("cudaMallocHost", 3, False),
        ("cudaMalloc", 4, False),
        ("cudaStreamCreate", 1, False),
        ("cudaStreamBeginCapture", 1, True),
        ("cudaGraphInstantiate", 1, True),
    ],
)
def test_a_cuda_failure_halfway_through_init_frees_what_was_allocated(
    engine, cudart, install_trt, call, nth, cuda_graph
):
    install_trt()
    cudart.fail(call, nth, CudaError.cudaErrorMemoryAllocation)
    with pytest.raises(BrainsegError, match=rf"CUDA call {call} failed: cudaErrorMemoryAllocation \(2\)"):
        TensorRTBackend(*engine, "fp16", cuda_graph=cuda_graph)
    assert cudart.live() == {}
    assert cudart.calls.count("cudaMallocHost") == cudart.calls.count("cudaFreeHost") + (call == "cudaMallocHost")


def test_a_tensorrt_failure_during_init_frees_what_was_allocated(engine, cudart, install_trt):
    install_trt(context_fails=2)  # the graph's own context
    with pytest.raises(BrainsegError, match="could not create an execution context"):
        TensorRTBackend(*engine, "fp16", cuda_graph=True)
    assert cudart.live() == {}


def test_a_failing_cuda_call_during_inference_is_named_and_close_still_frees(engine, cudart, install_trt):
    install_trt()
    backend = TensorRTBackend(*engine, "fp16")
    cudart.fail("cudaMemcpyAsync", 2)  # the first copy back to the host
    with pytest.raises(BrainsegError, match=r"cudaMemcpyAsync failed: cudaErrorLaunchFailure \(719\)"):
        backend.infer(images(2))
    backend.close()
    assert cudart.live() == {}


def test_a_failing_free_does_not_stop_the_other_frees(engine, cudart, install_trt):
    install_trt()
    backend = TensorRTBackend(*engine, "fp16")
    cudart.fail("cudaFree", 1)
    with pytest.raises(BrainsegError, match="cudaFree failed"):
        backend.close()
    assert cudart.live() == {"device": 1}  # only the one whose free failed


def test_batches_the_engine_cannot_take_are_refused_with_what_it_takes(engine, cudart, install_trt):
    install_trt()
    with TensorRTBackend(*engine, "fp16") as backend:
        with pytest.raises(DataError, match=r"batch of 5 slices is outside the engine's batch profile 1-4"):
            backend.infer(images(5))
        with pytest.raises(DataError, match=r"batch of 0 slices"):
            backend.infer(images(0))
        with pytest.raises(DataError, match=rf"dtype float32 .* takes uint8 slices shaped \(n, {H}, {W}, {C}\)"):
            backend.infer(images(2, "float32"))
        with pytest.raises(DataError, match=rf"shape \(2, {H}, {W}, 1\)"):
            backend.infer(images(2)[..., :1])
        with pytest.raises(DataError, match="dtype list"):
            backend.infer([[0]])
        assert "cudaMemcpyAsync" not in cudart.calls


# --- CUDA graphs -----------------------------------------------------------------------------------


def test_the_cuda_graph_replays_its_batch_size_and_other_sizes_run_normally(engine, cudart, install_trt):
    calls = install_trt()
    with TensorRTBackend(*engine, "fp16", cuda_graph=True) as backend:
        assert backend.graph_batch == 4 and backend.describe()["cuda_graph"] is True
        warm_up, captured = calls["executions"]
        assert warm_up[1:] == (4, False) and captured[1:] == (4, True)  # one run at the shape, then the capture
        for n, seed in [(4, 1), (3, 2), (4, 3), (1, 4), (4, 5)]:
            launches, executions = cudart.calls.count("cudaGraphLaunch"), len(calls["executions"])
            batch = images(n, seed=seed)
            check_outputs(backend.infer(batch), batch)
            replayed = cudart.calls.count("cudaGraphLaunch") == launches + 1
            assert replayed == (n == 4) and len(calls["executions"]) == executions + (n != 4)
    graph_context = captured[0]
    assert all(ctx != graph_context for ctx, _, _ in calls["executions"][2:])  # normal runs use the other context


def test_the_graph_batch_can_be_chosen_within_the_profile(engine, cudart, install_trt):
    install_trt()
    with TensorRTBackend(*engine, "fp16", cuda_graph=True, graph_batch=1) as backend:
        batch = images(1)
        check_outputs(backend.infer(batch), batch)
        assert cudart.calls.count("cudaGraphLaunch") == 1 and backend.describe()["graph_batch"] == 1
    with pytest.raises(ConfigError, match="graph_batch 8 is outside the engine's batch profile 1-4"):
        TensorRTBackend(*engine, "fp16", cuda_graph=True, graph_batch=8)
    assert cudart.live() == {}


# --- provenance, loading, imports ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"tensorrt_version": "10.0.1"}, r"tensorrt_version: engine 10\.0\.1, this machine 10\.3\.0"),
        ({"gpu_name": "Orin (nvgpu)"}, r"gpu_name: engine Orin \(nvgpu\), this machine Fake GPU"),
        ({"precision": "int8"}, r"precision: engine int8, this machine fp16"),
        ({"onnx_sha256": "ab" * 32}, r"onnx_sha256: engine abab"),
    ],
)
def test_an_engine_built_elsewhere_is_refused_before_deserialising(engine, cudart, install_trt, change, message):
    calls = install_trt()
    engine_path, onnx_path = engine
    write_provenance(engine_path, onnx_path, **change)
    with pytest.raises(ArtifactError, match=message):
        TensorRTBackend(engine_path, onnx_path, "fp16")
    assert calls["deserialized"] == 0 and cudart.live() == {}


def test_an_engine_without_provenance_is_refused(engine, cudart, install_trt):
    calls = install_trt()
    provenance_path(engine[0]).unlink()
    with pytest.raises(ArtifactError, match="no provenance file"):
        TensorRTBackend(*engine, "fp16")
    assert calls["deserialized"] == 0


def test_an_engine_with_a_narrower_profile_is_served_within_it(engine, cudart, install_trt):
    install_trt(profile=(1, 1, 2))
    write_provenance(*engine, profile=(1, 1, 2))
    with TensorRTBackend(*engine, "fp16") as backend:
        assert backend.max_batch == 2


def test_an_engine_tensorrt_cannot_read_is_an_artifact_error(engine, cudart, install_trt):
    install_trt()
    engine[0].write_bytes(b"truncated")
    write_provenance(*engine)  # provenance matches, the file does not deserialise
    with pytest.raises(ArtifactError, match="could not deserialise"):
        TensorRTBackend(*engine, "fp16")
    assert cudart.live() == {}


def test_describe_says_what_runs(engine, cudart, install_trt):
    install_trt()
    with TensorRTBackend(*engine, "fp16", device=0) as backend:
        info = backend.describe()
    assert info == {
        "backend": "tensorrt",
        "precision": "fp16",
        "device": "Fake GPU",
        "device_index": 0,
        "compute_capability": "8.7",
        "engine": str(engine[0]),
        "tensorrt_version": "10.3.0",
        "profile": {"min": 1, "opt": 2, "max": 4},
        "input": {"name": "image", "dtype": "uint8", "shape": [H, W, C]},
        "outputs": ["probability", "mask", "disagreement"],
        "cuda_graph": False,
        "graph_batch": None,
    }


def test_missing_tensorrt_names_the_extra_and_where_tensorrt_comes_from(engine, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt -> ImportError
    with pytest.raises(BrainsegError, match=r"brainseg\[gpu\].*JetPack"):
        TensorRTBackend(*engine, "fp16")


def test_importing_the_backend_imports_neither_torch_nor_tensorrt_nor_cuda():
    code = (
        "import sys\n"
        "import brainseg.runtime.tensorrt_backend\n"
        "loaded = sorted(m for m in ('torch', 'tensorrt', 'cuda') if m in sys.modules)\n"
        "assert not loaded, loaded\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


# --- real cuda-python on a GPU, TensorRT still a stand-in ----------------------------------------


def real_cudart_or_skip():
    try:
        runtime = tensorrt_build._import_cudart()
    except BrainsegError:
        pytest.skip("cuda-python is not installed here")
    error, count = runtime.cudaGetDeviceCount()
    if int(error) != 0 or count < 1:
        pytest.skip(f"no CUDA device here ({getattr(error, 'name', error)})")
    return runtime


@pytest.mark.gpu
def test_real_cuda_buffers_stream_and_graph_with_a_copying_engine(engine, monkeypatch):
    """Real pinned/device memory, copies, stream and graph capture; the 'engine' copies its input bytes out."""
    runtime = real_cudart_or_skip()
    trt, calls = fake_tensorrt(FakeCudart())

    def execute_by_copying(self, stream_handle):
        # a device-to-device copy of the image into "mask" stands in for the engine's kernels
        nbytes = self.shape[0] * H * W * C
        kind = runtime.cudaMemcpyKind.cudaMemcpyDeviceToDevice
        result = runtime.cudaMemcpyAsync(self.addresses["mask"], self.addresses["image"], nbytes, kind, stream_handle)
        return int(result[0]) == 0

    engine_class = type(trt.Runtime(None).deserialize_cuda_engine(b"fake engine"))
    context_class = type(engine_class().create_execution_context())
    monkeypatch.setattr(context_class, "execute_async_v3", execute_by_copying)
    monkeypatch.setattr(tensorrt_build, "_import_tensorrt", lambda: trt)
    monkeypatch.setattr(tensorrt_build, "gpu_identity", lambda device=None: ("Fake GPU", "8.7"))
    with TensorRTBackend(*engine, "fp16", cuda_graph=True) as backend:
        for n in (4, 3, 4):
            batch = images(n, seed=n)
            mask = backend.infer(batch)["mask"]  # (n, K, H, W) uint8 buffer holding the copied image bytes
            np.testing.assert_array_equal(mask.reshape(-1)[: batch.size], batch.reshape(-1))


# --- with TensorRT and a GPU ---------------------------------------------------------------------


def tiny_ensemble_onnx(path):
    """image (N, H, W, C) uint8 -> probability, mask, disagreement (N, 1, H, W), like the exported ensemble."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    consts = [
        numpy_helper.from_array(np.array(255.0, np.float32), "scale"),
        numpy_helper.from_array(np.array(0.5, np.float32), "half"),
        numpy_helper.from_array(np.array(1.0, np.float32), "one"),
    ]
    nodes = [
        helper.make_node("Cast", ["image"], ["x"], to=TensorProto.FLOAT),
        helper.make_node("Transpose", ["x"], ["nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("ReduceMean", ["nchw"], ["mean"], keepdims=1, axes=[1]),
        helper.make_node("Div", ["mean", "scale"], ["probability"]),
        helper.make_node("Greater", ["probability", "half"], ["above"]),
        helper.make_node("Cast", ["above"], ["mask"], to=TensorProto.UINT8),
        helper.make_node("Sub", ["one", "probability"], ["rest"]),
        helper.make_node("Mul", ["probability", "rest"], ["disagreement"]),
    ]
    out = [
        helper.make_tensor_value_info(n, t, ["N", 1, H, W])
        for n, t in [
            ("probability", TensorProto.FLOAT),
            ("mask", TensorProto.UINT8),
            ("disagreement", TensorProto.FLOAT),
        ]
    ]
    image = helper.make_tensor_value_info("image", TensorProto.UINT8, ["N", H, W, C])
    graph = helper.make_graph(nodes, "tiny_ensemble", [image], out, initializer=consts)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    onnx.save(model, path)


@pytest.mark.tensorrt
@pytest.mark.gpu
@pytest.mark.parametrize("cuda_graph", [False, True])
def test_real_engine_matches_numpy(tmp_path, cuda_graph):
    pytest.importorskip("tensorrt", reason=TRT_SKIP)
    real_cudart_or_skip()
    onnx_path, engine_path = tmp_path / "tiny.onnx", tmp_path / "tiny.engine"
    tiny_ensemble_onnx(onnx_path)
    tensorrt_build.build_engine(onnx_path, engine_path, precision="fp32", batch=(1, 2, 4))
    with TensorRTBackend(engine_path, onnx_path, "fp32", cuda_graph=cuda_graph) as backend:
        for n in (4, 3, 4):
            batch = images(n, seed=n)
            got = backend.infer(batch)
            probability = batch.astype(np.float32).mean(axis=-1)[:, None] / 255.0
            np.testing.assert_allclose(got["probability"], probability, rtol=1e-5, atol=1e-6)
            np.testing.assert_array_equal(got["mask"], (probability > 0.5).astype(np.uint8))
            np.testing.assert_allclose(got["disagreement"], probability * (1 - probability), rtol=1e-5, atol=1e-6)
