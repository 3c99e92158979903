"""The TensorRT backend on a real GPU: real cuda-python with a stand-in engine, then a real TensorRT engine.

Skipped, with the reason, where cuda-python, a CUDA device or TensorRT is missing.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
from tensorrt_standins import TRT_SKIP, C, FakeCudart, H, W, engine_files, fake_tensorrt, images

from brainseg.artifacts import cuda
from brainseg.deploy import tensorrt_build
from brainseg.errors import BrainsegError
from brainseg.runtime.backends.tensorrt import TensorRTBackend


@pytest.fixture
def engine(tmp_path):
    return engine_files(tmp_path)


# --- real cuda-python on a GPU, TensorRT still a stand-in ----------------------------------------


def real_cudart_or_skip():
    try:
        runtime = cuda.import_cudart()
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
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(cuda, "gpu_identity", lambda device=None: ("Fake GPU", "8.7"))
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
