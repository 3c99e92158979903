"""seg-bench building blocks: latency statistics, timing loop, environment probe, peak rates, graph FLOPs."""

import importlib.metadata
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from brainseg import machine
from brainseg.bench import environment
from brainseg.bench.stats import CV_WARNING, LatencyStats, summarize, time_calls
from brainseg.errors import ConfigError

# ---------------------------------------------------------------- stats


def test_summarize_known_samples():
    stats = summarize([1, 2, 3, 4, 5])
    assert (stats.count, stats.min_ms, stats.max_ms, stats.mean_ms) == (5, 1, 5, 3)
    assert stats.std_ms == pytest.approx(math.sqrt(2.5))  # sample std, ddof=1
    assert stats.p50_ms == pytest.approx(3)
    assert stats.p90_ms == pytest.approx(4.6)  # linear interpolation between ranks
    assert stats.p95_ms == pytest.approx(4.8)
    assert stats.p99_ms == pytest.approx(4.96)
    assert stats.cv == pytest.approx(math.sqrt(2.5) / 3)
    assert stats.throughput_per_s == pytest.approx(1000 / 3)


def test_summarize_noise_flag_and_single_sample():
    constant = summarize([7.0] * 10)
    assert constant.cv == 0 and not constant.noisy
    assert summarize([10, 10, 10, 13]).noisy  # cv ~ 0.13
    assert summarize([100, 101, 99, 100]).cv < CV_WARNING
    single = summarize([4.0])
    assert single.std_ms == 0 and single.p99_ms == 4.0


def test_summarize_throughput_counts_items_per_batch_and_dict_is_plain():
    stats = summarize([20.0, 20.0], batch=8)
    assert stats.throughput_per_s == pytest.approx(400.0)  # 8 slices per 20 ms
    data = stats.to_dict()
    assert data["batch"] == 8 and data["throughput_per_s"] == 400.0 and data["noisy"] is False
    assert set(LatencyStats.__dataclass_fields__) <= set(data)
    assert summarize([1 / 3, 1 / 3]).to_dict()["mean_ms"] == 0.333


def test_summarize_rejects_empty():
    with pytest.raises(ValueError, match="non-empty"):
        summarize([])


class FakeTimer:
    """A clock that advances only when the timed call runs (by the next duration) or sleep is called."""

    def __init__(self, durations):
        self.now, self.durations, self.calls, self.sleeps = 100.0, iter(durations), 0, []

    def clock(self):
        return self.now

    def call(self):
        self.calls += 1
        self.now += next(self.durations)

    def sleep(self, seconds):
        self.sleeps.append(seconds)
        self.now += seconds

    def time(self, **options):
        return time_calls(self.call, clock=self.clock, sleep=self.sleep, **options)


def test_time_calls_fixed_iterations_after_warmup():
    timer = FakeTimer([9.0, 9.0, 0.001, 0.002, 0.003])
    assert timer.time(warmup=2, iterations=3) == pytest.approx([1.0, 2.0, 3.0])
    assert timer.calls == 5 and timer.sleeps == []


def test_time_calls_for_seconds_keeps_at_least_two_samples():
    timer = FakeTimer([0.1] * 10)
    assert timer.time(warmup=0, seconds=0.35) == pytest.approx([100.0] * 4)
    timer = FakeTimer([1.0] * 10)
    assert timer.time(warmup=1, seconds=0.5) == pytest.approx([1000.0, 1000.0])


def test_time_calls_idle_gaps_are_slept_not_timed():
    timer = FakeTimer([0.01] * 10)
    assert timer.time(warmup=2, iterations=3, gap_s=0.5) == pytest.approx([10.0] * 3)
    assert timer.sleeps == [0.5] * 3  # before each timed call, none during warm-up
    timer = FakeTimer([0.1] * 10)
    # gaps count toward the budget: 0.1 + 0.4 + 0.1 = 0.6 < 1.0, then 1.1 >= 1.0
    assert len(timer.time(warmup=0, seconds=1.0, gap_s=0.4)) == 3


@pytest.mark.parametrize("options", [{}, {"iterations": 3, "seconds": 1.0}, {"iterations": 0},
                                     {"seconds": 0}, {"iterations": 2, "gap_s": -1}])
def test_time_calls_rejects_bad_options(options):
    with pytest.raises(ConfigError):
        time_calls(lambda: None, **options)


# ---------------------------------------------------------------- environment

VERSION_KEYS = ("tensorrt", "onnxruntime", "torch", "numpy", "opencv")


def test_cpu_results_folders_are_named_by_cores_and_vector_isa(monkeypatch):
    monkeypatch.setattr(environment, "_nvidia_gpus", lambda: [])
    monkeypatch.setattr(machine, "vector_isa", lambda: "avx2")
    assert environment.machine_name() == f"cpu-{os.cpu_count()}core-avx2"
    monkeypatch.setattr(environment, "_nvidia_gpus", lambda: [{"name": "NVIDIA H100 80GB HBM3"}])
    assert environment.machine_name() == "gpu-h100-80gb-hbm3"


def test_describe_environment_keys_and_types():
    info = environment.describe_environment()
    assert "hostname" not in info
    assert isinstance(info["cpu_model"], str) and info["cpu_model"]
    assert isinstance(info["cpu_cores_logical"], int) and info["cpu_cores_logical"] >= 1
    assert info["cpu_cores_usable"] is None or 1 <= info["cpu_cores_usable"] <= info["cpu_cores_logical"]
    assert isinstance(info["os"], str) and isinstance(info["python"], str)
    assert isinstance(info["gpu"], list)
    assert info["cuda"] is None or isinstance(info["cuda"], str)
    assert info["jetson_power_mode"] is None or isinstance(info["jetson_power_mode"], str)
    for key in VERSION_KEYS:
        assert info[key] is None or isinstance(info[key], str), key
    assert info["numpy"] == np.__version__
    assert info["onnxruntime_providers"] is None or "CPUExecutionProvider" in info["onnxruntime_providers"]


def test_describe_environment_does_not_import_torch():
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "from brainseg.bench import environment, flops, peak, stats\n"
        "info = environment.describe_environment()\n"
        "assert info['numpy'], info\n"
        "assert 'torch' not in [m for m in sys.modules if sys.modules[m] is not None]\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_describe_environment_without_nvidia_tools(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    info = environment.describe_environment()
    assert info["gpu"] == [] and info["jetson_power_mode"] is None


def test_describe_environment_parses_nvidia_smi(monkeypatch):
    output = "NVIDIA H100 80GB HBM3, 550.54.15, 81559\nNVIDIA A2, 550.54.15, [N/A]\n"
    monkeypatch.setattr(shutil, "which", lambda name: f"/usr/bin/{name}" if name == "nvidia-smi" else None)
    monkeypatch.setattr(subprocess, "run", lambda args, **kw: subprocess.CompletedProcess(args, 0, output, ""))
    assert environment.describe_environment()["gpu"] == [
        {"name": "NVIDIA H100 80GB HBM3", "driver": "550.54.15", "memory_mib": 81559},
        {"name": "NVIDIA A2", "driver": "550.54.15", "memory_mib": None},
    ]


def test_describe_environment_failed_probes_are_none(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("probe exploded")

    monkeypatch.setattr(importlib.metadata, "version", broken)
    monkeypatch.setattr(environment.os, "sched_getaffinity", broken, raising=False)
    monkeypatch.setattr(subprocess, "run", broken)
    monkeypatch.setattr(shutil, "which", lambda name: f"/usr/bin/{name}")
    info = environment.describe_environment()
    assert all(info[key] is None for key in VERSION_KEYS)
    assert info["cpu_cores_usable"] is None and info["gpu"] == [] and info["jetson_power_mode"] is None


# ---------------------------------------------------------------- peak


@pytest.mark.parametrize("kind", ["fp32", "int8"])
def test_measure_peak_returns_a_positive_rate(kind):
    pytest.importorskip("onnxruntime")
    from brainseg.bench.peak import measure_peak

    result = measure_peak(kind, threads=1, size=128, seconds=0.05)
    assert result["kind"] == kind and result["size"] == 128 and result["threads"] == 1
    assert math.isfinite(result["gflops"]) and result["gflops"] > 0
    assert result["method"].startswith("ONNX Runtime MatMul")


def test_peak_int8_graph_computes_the_integer_product():
    ort = pytest.importorskip("onnxruntime")
    from brainseg.bench.peak import matmul_model

    rng = np.random.default_rng(1)
    # small magnitudes: AVX2 u8 x s8 kernels may saturate int16 pair sums at full range
    a = rng.integers(0, 128, (16, 16), dtype=np.uint8)
    b = rng.integers(-64, 64, (16, 16), dtype=np.int8)
    session = ort.InferenceSession(matmul_model("int8", 16).SerializeToString(), providers=["CPUExecutionProvider"])
    (c,) = session.run(None, {"a": a, "b": b})
    np.testing.assert_array_equal(c, a.astype(np.int32) @ b.astype(np.int32))


def test_measure_peak_rejects_unknown_kind():
    from brainseg.bench.peak import measure_peak

    with pytest.raises(ConfigError, match="fp32, int8"):
        measure_peak("fp64")


# ---------------------------------------------------------------- flops

CONV = 2 * 4 * 8 * 8 * 3 * 3 * 3  # out 4x8x8, Cin 3, 3x3 kernel
CONV_T = 2 * 4 * 8 * 8 * 2 * 2 * 2  # in 4x8x8, Cout 2, 2x2 kernel (stride 2 -> 2x16x16)
MATMUL = 2 * (2 * 16) * 5 * 16  # (2, 16, 16) @ (16, 5): M=16 per channel, N=5, K=16


def _graph(weight="float", batch="batch", spatial=(8, 8)):
    """x (batch, 3, 8, 8) -> Conv(4x3x3x3, pad 1) -> ConvTranspose(4x2x2x2, stride 2) -> MatMul(16x5)."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    nodes, inits = [], []
    if weight == "float":
        inits.append(numpy_helper.from_array(w, "w"))
    elif weight == "int8":  # Q/DQ graphs: int8 initializer -> DequantizeLinear -> Conv
        inits += [numpy_helper.from_array(np.round(w * 40).astype(np.int8), "w_q"),
                  numpy_helper.from_array(np.array(0.025, np.float32), "w_scale"),
                  numpy_helper.from_array(np.array(0, np.int8), "w_zero")]
        nodes.append(helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zero"], ["w"]))
    elif weight == "fp16":  # fp16 graphs keep a float16 initializer behind a Cast
        inits.append(numpy_helper.from_array(w.astype(np.float16), "w_half"))
        nodes.append(helper.make_node("Cast", ["w_half"], ["w"], to=TensorProto.FLOAT))
    inits += [numpy_helper.from_array(rng.standard_normal((4, 2, 2, 2)).astype(np.float32), "wt"),
              numpy_helper.from_array(rng.standard_normal((16, 5)).astype(np.float32), "m")]
    nodes += [helper.make_node("Conv", ["x", "w"], ["y"], name="conv", pads=[1, 1, 1, 1]),
              helper.make_node("ConvTranspose", ["y", "wt"], ["z"], name="up", strides=[2, 2]),
              helper.make_node("MatMul", ["z", "m"], ["out"], name="head")]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, *spatial])
    out = helper.make_tensor_value_info("out", TensorProto.FLOAT, ["n", "c", "h_out", "w_out"])
    graph = helper.make_graph(nodes, "tiny", [x], [out], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    onnx.checker.check_model(model)
    return model


def test_graph_flops_counts_conv_conv_transpose_and_matmul(tmp_path):
    onnx = pytest.importorskip("onnx")
    from brainseg.bench.flops import flops_per_slice, graph_flops

    model = _graph()
    result = graph_flops(model)
    assert result["by_op"] == {"Conv": CONV, "ConvTranspose": CONV_T, "MatMul": MATMUL}
    assert result["flops"] == CONV + CONV_T + MATMUL and result["unknown"] == []
    assert graph_flops(model, batch=2)["flops"] == 2 * result["flops"]
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"  # caller's model untouched
    onnx.save(model, str(tmp_path / "tiny.onnx"))
    assert flops_per_slice(tmp_path / "tiny.onnx") == result["flops"]


@pytest.mark.parametrize("weight", ["int8", "fp16"])
def test_graph_flops_follows_dequantize_and_cast_weights(weight):
    from brainseg.bench.flops import graph_flops

    assert graph_flops(_graph(weight))["by_op"]["Conv"] == CONV


def test_graph_flops_finds_weights_one_hop_back_without_inferred_shapes(monkeypatch):
    onnx = pytest.importorskip("onnx")
    from brainseg.bench.flops import graph_flops

    model = _graph("int8", batch=1)
    del model.graph.node[2:]  # keep DequantizeLinear -> Conv, with the output's shape declared
    model.graph.output[0].CopyFrom(onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4, 8, 8]))
    monkeypatch.setattr(onnx.shape_inference, "infer_shapes", lambda model, **options: model)
    assert graph_flops(model)["by_op"] == {"Conv": CONV}


def test_graph_flops_reports_unresolved_nodes_and_fixed_batch():
    from brainseg.bench.flops import graph_flops

    result = graph_flops(_graph(spatial=("h", "w")))
    assert result["unknown"] == ["conv", "up", "head"] and result["flops"] == 0
    assert graph_flops(_graph(batch=1))["flops"] == CONV + CONV_T + MATMUL
    with pytest.raises(ConfigError, match="fixed batch of 1"):
        graph_flops(_graph(batch=1), batch=4)


def test_graph_flops_resolves_reshape_to_a_computed_shape():
    """GroupNorm exports as Reshape -> InstanceNormalization -> Reshape(x, Shape(x)): the FPN decoder's case."""
    pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    from brainseg.bench.flops import graph_flops

    inits = [numpy_helper.from_array(np.array([0, 3, -1], np.int64), "grouped"),
             numpy_helper.from_array(np.zeros((4, 3, 3, 3), np.float32), "w")]
    nodes = [helper.make_node("Reshape", ["x", "grouped"], ["flat"]),  # (N, 3, 64)
             helper.make_node("Shape", ["x"], ["x_shape"]),
             helper.make_node("Reshape", ["flat", "x_shape"], ["back"]),  # (N, 3, 8, 8) once data propagates
             helper.make_node("Conv", ["back", "w"], ["y"], name="conv", pads=[1, 1, 1, 1])]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4, "h", "w"])
    graph = helper.make_graph(nodes, "groupnorm", [x], [y], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    assert graph_flops(model) == {"flops": CONV, "by_op": {"Conv": CONV}, "unknown": []}
