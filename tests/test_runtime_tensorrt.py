"""The TensorRT backend against stand-ins for TensorRT and the CUDA runtime (`tensorrt_standins`).

The stand-ins implement the documented calls the backend makes (TensorRT 10/11 Python API;
cuda-python's runtime module) over numpy arrays, so results prove the copies, addresses, shapes
and teardown are right. The same backend against real CUDA is in test_runtime_tensorrt_gpu.py.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from tensorrt_standins import (
    C,
    CudaError,
    FakeCudart,
    H,
    K,
    W,
    check_outputs,
    engine_files,
    fake_tensorrt,
    images,
    write_provenance,
)

from brainseg.artifacts import cuda
from brainseg.artifacts.layout import provenance_file
from brainseg.errors import ArtifactError, BrainsegError, ConfigError, DataError
from brainseg.runtime.backends.tensorrt import TensorRTBackend

# --- fixtures ------------------------------------------------------------------------------------


@pytest.fixture
def cudart(monkeypatch):
    fake = FakeCudart()
    monkeypatch.setattr(cuda, "import_cudart", lambda: fake)
    return fake


@pytest.fixture
def install_trt(cudart, monkeypatch):
    def install(**options):
        trt, calls = fake_tensorrt(cudart, **options)
        monkeypatch.setitem(sys.modules, "tensorrt", trt)  # what `import tensorrt` now finds
        return calls

    return install


@pytest.fixture
def engine(tmp_path):
    return engine_files(tmp_path)


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
    provenance_file(engine[0]).unlink()
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
        "import brainseg.runtime.backends.tensorrt\n"
        "loaded = sorted(m for m in ('torch', 'tensorrt', 'cuda') if m in sys.modules)\n"
        "assert not loaded, loaded\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
