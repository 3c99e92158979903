"""Run an ensemble engine with TensorRT through cuda-python: pinned buffers, one stream, an optional CUDA graph.

The engine takes one input ("image", (N, H, W, C) uint8 or float32) with a dynamic batch inside its
optimisation profile and gives every output with the batch first ("probability", "mask",
"disagreement", each (N, K, H, W)). Buffers are allocated once, for the profile's largest batch;
a call copies its n slices in, runs, and copies n rows of each output back, all on one stream.

The engine's provenance is checked before it is deserialised; a mismatch is an ArtifactError
naming both sides (rebuild with `seg-export engine`). TensorRT and cuda-python are imported when
a backend is created, never at import time, and torch not at all.
"""

from __future__ import annotations

import ctypes
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from brainseg.artifacts import cuda
from brainseg.artifacts.cuda import cuda_call
from brainseg.artifacts.provenance import check_engine, import_tensorrt
from brainseg.errors import ArtifactError, BrainsegError, ConfigError, DataError


@dataclass
class _Buffer:
    """One IO tensor's pinned host array and device allocation, both sized for the profile's largest batch."""

    name: str
    host: np.ndarray  # (max_batch, ...) view of pinned memory; valid until the backend closes
    device: int

    def nbytes(self, batch: int) -> int:
        return batch * self.host[0].nbytes


class TensorRTBackend:
    """Runs one TensorRT engine on one GPU; a context manager that frees all it allocated.

    Args:
        engine_path: the serialised engine, with `<engine>.provenance.json` beside it.
        onnx_path: the ONNX file it was built from (hashed for the provenance check).
        precision: the precision the engine must have been built for ("fp32", "fp16", "int8").
        device: CUDA device index.
        cuda_graph: capture the whole copy-in, run, copy-out sequence for one batch size as a CUDA
            graph and replay it when a batch has that size; other sizes run normally.
        graph_batch: the batch size the graph is captured for; the profile's max batch by default.
    """

    name = "tensorrt"

    def __init__(
        self,
        engine_path: Path,
        onnx_path: Path,
        precision: str,
        *,
        device: int = 0,
        cuda_graph: bool = False,
        graph_batch: int | None = None,
    ):
        self.engine_path, self.precision, self.device = Path(engine_path), precision, device
        self._resources = ExitStack()
        self._closed = False
        self._graph_exec = self.graph_batch = None
        self._events = None  # CUDA events around the stages, made on the first infer_stages
        try:
            self._open(Path(onnx_path), cuda_graph, graph_batch)
        except BaseException:
            self.close()
            raise

    # --- setup ---------------------------------------------------------------------------------

    def _open(self, onnx_path: Path, cuda_graph: bool, graph_batch: int | None) -> None:
        self._trt, self._cudart = import_tensorrt(), cuda.import_cudart()
        cuda_call("cudaSetDevice", self._cudart.cudaSetDevice(self.device))
        # CUDA trouble surfaces here rather than inside the provenance check.
        self.device_name, self.compute_capability = cuda.gpu_identity(self.device)
        check_engine(self.engine_path, onnx_path, self.precision)
        self._load_engine()
        self._context = self._new_context()
        self._input, self._outputs = self._allocate_buffers()
        self._bind(self._context)  # the buffers never move, so their addresses are set once
        self._stream = cuda_call("cudaStreamCreate", self._cudart.cudaStreamCreate())
        self._own("cudaStreamDestroy", self._cudart.cudaStreamDestroy, self._stream)
        # Registered last so it runs first on close: no copy may still be in flight when buffers are freed.
        self._resources.callback(self._synchronize)
        if cuda_graph:
            self._capture_graph(self.max_batch if graph_batch is None else graph_batch)

    def _load_engine(self) -> None:
        trt = self._trt
        self._logger = trt.Logger(trt.Logger.WARNING)  # held for as long as the runtime that logs to it
        self._runtime, self._contexts = trt.Runtime(self._logger), []
        self._resources.callback(self._release_tensorrt)  # contexts, then engine, then runtime
        self._engine = self._runtime.deserialize_cuda_engine(self.engine_path.read_bytes())
        if self._engine is None:
            raise ArtifactError(f"TensorRT could not deserialise {self.engine_path}; rebuild it with seg-export engine")
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        inputs = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        if len(inputs) != 1:
            raise ArtifactError(f"{self.engine_path} has inputs {inputs}; the runtime feeds exactly one (image)")
        self._input_name, self._output_names = inputs[0], [n for n in names if n != inputs[0]]
        low, opt, high = (tuple(int(d) for d in s) for s in self._engine.get_tensor_profile_shape(inputs[0], 0))
        self.profile = (low[0], opt[0], high[0])
        self.max_batch = high[0]
        self.input_spec = (np.dtype(trt.nptype(self._engine.get_tensor_dtype(inputs[0]))), high[1:])

    def _new_context(self):
        context = self._engine.create_execution_context()
        if context is None:
            raise BrainsegError(f"TensorRT could not create an execution context for {self.engine_path} (GPU memory?)")
        self._contexts.append(context)
        return context

    def _allocate_buffers(self) -> tuple[_Buffer, list[_Buffer]]:
        # Output shapes are only known once the input shape is set; at the max batch they are the largest.
        self._set_batch(self._context, self.max_batch)
        buffers = []
        for name in (self._input_name, *self._output_names):
            shape = tuple(int(d) for d in self._context.get_tensor_shape(name))
            if not shape or shape[0] != self.max_batch or min(shape) < 1:
                raise ArtifactError(f"{self.engine_path}: tensor {name!r} has shape {shape} at batch {self.max_batch}")
            buffers.append(self._allocate(name, np.dtype(self._trt.nptype(self._engine.get_tensor_dtype(name))), shape))
        return buffers[0], buffers[1:]

    def _allocate(self, name: str, dtype: np.dtype, shape: tuple[int, ...]) -> _Buffer:
        nbytes = int(np.prod(shape)) * dtype.itemsize
        # Pinned (page-locked) host memory: the only kind cudaMemcpyAsync copies without blocking the host.
        host_ptr = int(cuda_call("cudaMallocHost", self._cudart.cudaMallocHost(nbytes)))
        self._own("cudaFreeHost", self._cudart.cudaFreeHost, host_ptr)
        device_ptr = int(cuda_call("cudaMalloc", self._cudart.cudaMalloc(nbytes)))
        self._own("cudaFree", self._cudart.cudaFree, device_ptr)
        host = np.frombuffer((ctypes.c_uint8 * nbytes).from_address(host_ptr), dtype=dtype).reshape(shape)
        return _Buffer(name, host, device_ptr)

    def _bind(self, context) -> None:
        for buffer in (self._input, *self._outputs):
            if not context.set_tensor_address(buffer.name, buffer.device):
                raise BrainsegError(f"TensorRT set_tensor_address({buffer.name!r}) failed for {self.engine_path}")

    def _capture_graph(self, batch: int) -> None:
        low, _, high = self.profile
        if not low <= batch <= high:
            raise ConfigError(f"graph_batch {batch} is outside the engine's batch profile {low}-{high}")
        # A graph bakes in its context's shapes and scratch memory, so it gets a context of its own:
        # running other batch sizes on the main context cannot change what the graph replays.
        context = self._new_context()
        self._set_batch(context, batch)
        self._bind(context)
        self._input.host[:batch] = 0
        # Warm-up: the first enqueue after a shape change does setup work that must not be captured.
        self._enqueue(context, batch)
        self._synchronize()
        mode = self._cudart.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        cuda_call("cudaStreamBeginCapture", self._cudart.cudaStreamBeginCapture(self._stream, mode))
        try:
            self._enqueue(context, batch)
        finally:
            graph = self._end_capture()
        self._graph_exec = cuda_call("cudaGraphInstantiate", self._cudart.cudaGraphInstantiate(graph, 0))
        self._own("cudaGraphExecDestroy", self._cudart.cudaGraphExecDestroy, self._graph_exec)
        self.graph_batch = batch

    def _end_capture(self):
        # Always leave capture mode, even when the enqueue failed; a partial graph is still ours to destroy.
        error, graph = self._cudart.cudaStreamEndCapture(self._stream)
        if graph is not None and int(graph) != 0:
            self._own("cudaGraphDestroy", self._cudart.cudaGraphDestroy, graph)
        return cuda_call("cudaStreamEndCapture", (error, graph))

    # --- inference -----------------------------------------------------------------------------

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Run one batch (n, H, W, C), n within the profile; return host copies of every output's first n rows."""
        if self._closed:
            raise BrainsegError(f"the TensorRT backend for {self.engine_path} is closed")
        n = self._check_batch(batch)
        self._input.host[:n] = batch
        if n == self.graph_batch:
            cuda_call("cudaGraphLaunch", self._cudart.cudaGraphLaunch(self._graph_exec, self._stream))
        else:
            if n != self._context_batch:
                self._set_batch(self._context, n)
            self._enqueue(self._context, n)
        self._synchronize()
        return {out.name: out.host[:n].copy() for out in self._outputs}

    def infer_stages(self, batch: np.ndarray) -> tuple[dict[str, np.ndarray], dict[str, float]]:
        """`infer` without the CUDA graph, timed on the GPU with CUDA events between its stages.

        Returns the outputs and {"h2d_ms", "compute_ms", "d2h_ms"}: the copy in, the engine, and
        the copies out, as the GPU's own clock saw them (host overhead not included).
        """
        if self._closed:
            raise BrainsegError(f"the TensorRT backend for {self.engine_path} is closed")
        n = self._check_batch(batch)
        self._input.host[:n] = batch
        if n != self._context_batch:
            self._set_batch(self._context, n)
        events, cudart = self._stage_events(), self._cudart

        def mark(index: int) -> None:
            cuda_call("cudaEventRecord", cudart.cudaEventRecord(events[index], self._stream))

        self._enqueue(self._context, n, mark=mark)
        self._synchronize()
        stages = [cuda_call("cudaEventElapsedTime", cudart.cudaEventElapsedTime(events[i], events[i + 1]))
                  for i in range(3)]
        outputs = {out.name: out.host[:n].copy() for out in self._outputs}
        return outputs, dict(zip(("h2d_ms", "compute_ms", "d2h_ms"), (float(t) for t in stages), strict=True))

    def _stage_events(self) -> list:
        if self._events is None:
            events = []
            for _ in range(4):
                event = cuda_call("cudaEventCreate", self._cudart.cudaEventCreate())
                self._own("cudaEventDestroy", self._cudart.cudaEventDestroy, event)
                events.append(event)
            self._events = events
        return self._events

    def _check_batch(self, batch: np.ndarray) -> int:
        dtype, shape = self.input_spec
        got = (getattr(batch, "dtype", type(batch).__name__), getattr(batch, "shape", None))
        if not isinstance(batch, np.ndarray) or batch.dtype != dtype or batch.shape[1:] != shape:
            raise DataError(
                f"batch has dtype {got[0]} and shape {got[1]}; {self.engine_path.name} takes {dtype} slices "
                f"shaped (n, {', '.join(map(str, shape))}). Convert them as the artifacts' manifest says."
            )
        low, _, high = self.profile
        if not low <= len(batch) <= high:
            raise DataError(
                f"batch of {len(batch)} slices is outside the engine's batch profile {low}-{high}; "
                f"send batches of {low} to {high} slices (or rebuild the engine with a wider profile)"
            )
        return len(batch)

    def _set_batch(self, context, batch: int) -> None:
        shape = (batch, *self.input_spec[1])
        if not context.set_input_shape(self._input_name, shape):
            raise BrainsegError(
                f"TensorRT set_input_shape({self._input_name!r}, {shape}) failed for {self.engine_path}"
            )
        if context is self._context:
            self._context_batch = batch

    def _enqueue(self, context, batch: int, mark=None) -> None:
        """Queue copy-in, execution and copy-out of `batch` rows on the stream; nothing waits here.

        `mark(i)`, when given, is called at the stage boundaries i = 0..3 (to record CUDA events).
        """
        cudart, stream, kind = self._cudart, self._stream, self._cudart.cudaMemcpyKind
        mark = mark or (lambda index: None)
        image = self._input
        mark(0)
        copy_in = cudart.cudaMemcpyAsync(
            image.device, image.host.ctypes.data, image.nbytes(batch), kind.cudaMemcpyHostToDevice, stream
        )
        cuda_call("cudaMemcpyAsync", copy_in)
        mark(1)
        if not context.execute_async_v3(int(stream)):
            raise BrainsegError(f"TensorRT execute_async_v3 failed for {self.engine_path} at batch {batch}")
        mark(2)
        for out in self._outputs:
            copy_out = cudart.cudaMemcpyAsync(
                out.host.ctypes.data, out.device, out.nbytes(batch), kind.cudaMemcpyDeviceToHost, stream
            )
            cuda_call("cudaMemcpyAsync", copy_out)
        mark(3)

    def _synchronize(self) -> None:
        cuda_call("cudaStreamSynchronize", self._cudart.cudaStreamSynchronize(self._stream))

    # --- reporting and teardown ----------------------------------------------------------------

    def describe(self) -> dict:
        """What runs: backend, precision, device, engine, batch profile, input and CUDA graph."""
        dtype, shape = self.input_spec
        return {
            "backend": self.name,
            "precision": self.precision,
            "device": self.device_name,
            "device_index": self.device,
            "compute_capability": self.compute_capability,
            "engine": str(self.engine_path),
            "tensorrt_version": self._trt.__version__,
            "profile": {"min": self.profile[0], "opt": self.profile[1], "max": self.profile[2]},
            "input": {"name": self._input_name, "dtype": str(dtype), "shape": list(shape)},
            "outputs": list(self._output_names),
            "cuda_graph": self.graph_batch is not None,
            "graph_batch": self.graph_batch,
        }

    def close(self) -> None:
        """Free every CUDA allocation, the stream, the graph and the TensorRT objects; safe to call twice."""
        if not self._closed:
            self._closed = True
            self._resources.close()  # last acquired, first released; one failure does not stop the rest

    def __enter__(self) -> TensorRTBackend:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _own(self, free_name: str, free, handle) -> None:
        self._resources.callback(lambda: cuda_call(free_name, free(handle)))

    def _release_tensorrt(self) -> None:
        # TensorRT objects are freed when their last reference goes; contexts must go before their engine.
        self._contexts = self._context = None
        self._engine = self._runtime = None

