"""TensorRT support checks, engine provenance and the engine build.

The op list, Q/DQ rules and provenance logic run everywhere; building an engine needs TensorRT
and a GPU, and those tests skip with a reason elsewhere.
"""

from __future__ import annotations

import dataclasses
import enum
import re
import subprocess
import sys
import types

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from brainseg.errors import BrainsegError, ConfigError, DataError  # noqa: E402
from brainseg.export import tensorrt_build  # noqa: E402
from brainseg.export.tensorrt_build import EngineProvenance, provenance_path  # noqa: E402
from brainseg.export.trt_support import check_qdq_for_tensorrt, supported_ops, unsupported_ops  # noqa: E402
from brainseg.fileio import sha256_file  # noqa: E402

TRT_SKIP = "TensorRT is not installed here (its PyPI libs cannot be fetched); these run on a GPU machine with TensorRT"


def make_model(nodes, inputs, outputs, initializers=()):
    graph = helper.make_graph(nodes, "tiny", inputs, outputs, initializer=list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    model.ir_version = 10  # onnx 1.23 writes 14, which ONNX Runtime 1.31 refuses
    return model


def tensor(name, elem_type, shape):
    return helper.make_tensor_value_info(name, elem_type, shape)


def conv_model(op_type="Relu"):
    """x (N, 3, 8, 8) -> Conv(4 filters) -> op_type -> y."""
    weight = numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "w")
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node(op_type, ["c"], ["y"], name="act"),
    ]
    x, y = tensor("x", TensorProto.FLOAT, ["N", 3, 8, 8]), tensor("y", TensorProto.FLOAT, None)
    return make_model(nodes, [x], [y], [weight])


def qdq_model(
    *,
    conv="Conv",
    act_zero=0,
    act_type=TensorProto.INT8,
    act_scale=0.02,
    weight_axis=0,
    weight_scale=None,
):
    """x -> Q/DQ (per-tensor activation) -> Conv or ConvTranspose with int8 weights through a per-channel DQ."""
    channels_out = 4
    if conv == "Conv":
        weight = np.ones((channels_out, 3, 3, 3), np.int8)  # (K, C, R, S)
    else:
        weight = np.ones((3, channels_out, 3, 3), np.int8)  # (C, K, R, S)
    if weight_scale is None:
        weight_scale = np.full(weight.shape[weight_axis], 0.01, np.float32)
    act_dtype = helper.tensor_dtype_to_np_dtype(act_type)
    inits = [
        numpy_helper.from_array(np.asarray(act_scale, np.float32), "x_scale"),  # scalar: per tensor
        numpy_helper.from_array(np.asarray(act_zero, act_dtype), "x_zero"),
        numpy_helper.from_array(weight, "w_q"),
        numpy_helper.from_array(np.asarray(weight_scale, np.float32), "w_scale"),
        numpy_helper.from_array(np.zeros(len(weight_scale), np.int8), "w_zero"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zero"], ["xq"], name="q_x"),
        helper.make_node("DequantizeLinear", ["xq", "x_scale", "x_zero"], ["xd"], name="dq_x"),
        helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zero"], ["w"], name="dq_w", axis=weight_axis),
        helper.make_node(conv, ["xd", "w"], ["y"], name="conv", pads=[1, 1, 1, 1]),
    ]
    x, y = tensor("x", TensorProto.FLOAT, ["N", 3, 8, 8]), tensor("y", TensorProto.FLOAT, ["N", channels_out, 8, 8])
    return make_model(nodes, [x], [y], inits)


# --- the operator list -------------------------------------------------------------------------


def test_op_list_has_a_source_header_and_parses():
    from importlib import resources

    text = (resources.files("brainseg.export") / "data" / "tensorrt_onnx_ops.txt").read_text(encoding="utf-8")
    header = [line for line in text.splitlines() if line.startswith("#")]
    assert any("onnx/onnx-tensorrt" in line and "Source" in line for line in header)
    assert any("docs/operators.md" in line for line in header)
    assert any(re.search(r"Read on \d{4}-\d{2}-\d{2}", line) for line in header)
    ops = supported_ops()
    assert len(ops) > 100
    assert all(re.fullmatch(r"[A-Z][A-Za-z0-9]*", op) for op in ops), sorted(op for op in ops if " " in op)
    assert {"Conv", "ConvTranspose", "Resize", "QuantizeLinear", "DequantizeLinear", "Sigmoid"} <= ops
    assert {"Concat", "MaxPool", "Cast", "Transpose", "Div", "Sub", "Greater", "ReduceMean"} <= ops
    # rows marked "N" in operators.md stay out
    assert not ops & {"QLinearConv", "ConvInteger", "DynamicQuantizeLinear", "MatMulInteger", "Unique"}


def test_unsupported_ops_finds_a_made_up_op_and_other_domains(tmp_path):
    model = conv_model("FancyActivation")
    model.graph.node.append(helper.make_node("BiasGelu", ["y"], ["z"], domain="com.microsoft", name="ms"))
    model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    assert unsupported_ops(model) == {"FancyActivation": 1, "com.microsoft::BiasGelu": 1}
    path = tmp_path / "model.onnx"
    onnx.save(model, path)
    assert unsupported_ops(path) == {"FancyActivation": 1, "com.microsoft::BiasGelu": 1}


def test_unsupported_ops_is_empty_for_supported_ops_and_looks_into_subgraphs():
    model = conv_model("Sigmoid")
    assert unsupported_ops(model) == {}
    branch = helper.make_graph(
        [helper.make_node("MadeUpOp", ["y"], ["b"], name="inner")], "branch", [], [tensor("b", TensorProto.FLOAT, None)]
    )
    plain = helper.make_graph(
        [helper.make_node("Identity", ["y"], ["b2"])], "plain", [], [tensor("b2", TensorProto.FLOAT, None)]
    )
    model.graph.node.append(helper.make_node("If", ["cond"], ["out"], then_branch=branch, else_branch=plain))
    model.graph.input.append(tensor("cond", TensorProto.BOOL, []))
    assert unsupported_ops(model) == {"MadeUpOp": 1}


def test_unsupported_ops_reports_a_missing_file(tmp_path):
    with pytest.raises(DataError, match="not found"):
        unsupported_ops(tmp_path / "absent.onnx")


# --- explicit quantization ---------------------------------------------------------------------


def test_correct_per_channel_int8_qdq_passes():
    model = qdq_model()
    onnx.checker.check_model(model, full_check=True)
    assert check_qdq_for_tensorrt(model) == []
    ort = pytest.importorskip("onnxruntime")  # the graph is not only valid ONNX but runs
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (y,) = session.run(None, {"x": np.ones((2, 3, 8, 8), np.float32)})
    assert y.shape == (2, 4, 8, 8)


def test_non_zero_zero_point_is_flagged_with_the_node_names():
    problems = check_qdq_for_tensorrt(qdq_model(act_zero=3))
    assert len(problems) == 2
    assert any("'q_x'" in p and "zero point must be 0" in p for p in problems)
    assert any("'dq_x'" in p and "[3.0]" in p for p in problems)


def test_uint8_qdq_is_flagged():
    problems = check_qdq_for_tensorrt(qdq_model(act_type=TensorProto.UINT8))
    assert [p.split(":")[0] for p in problems] == ["QuantizeLinear 'q_x'", "DequantizeLinear 'dq_x'"]
    assert all("uint8" in p for p in problems)


def test_quantize_without_zero_point_defaults_to_uint8_and_is_flagged():
    model = qdq_model()
    for node in model.graph.node:
        if node.name in ("q_x", "dq_x"):
            del node.input[2]
    problems = check_qdq_for_tensorrt(model)
    assert len(problems) == 2 and all("uint8" in p for p in problems)


def test_per_channel_activation_scale_is_flagged():
    model = qdq_model(act_scale=[0.1, 0.1, 0.1], act_zero=[0, 0, 0])  # one scale per input channel (axis 1)
    problems = check_qdq_for_tensorrt(model)
    assert len(problems) == 2 and all("on an activation" in p for p in problems)


def test_weight_axis_must_match_the_consumer():
    problems = check_qdq_for_tensorrt(qdq_model(weight_axis=1))  # Conv weights (K, C, R, S): axis 1 is C
    assert len(problems) == 1 and "'dq_w'" in problems[0] and "expects axis 0" in problems[0]
    assert check_qdq_for_tensorrt(qdq_model(conv="ConvTranspose", weight_axis=1)) == []
    problems = check_qdq_for_tensorrt(qdq_model(conv="ConvTranspose", weight_axis=0))
    assert len(problems) == 1 and "ConvTranspose 'conv'" in problems[0] and "expects axis 1" in problems[0]


def test_scale_count_sign_and_constness_are_checked():
    problems = check_qdq_for_tensorrt(qdq_model(weight_scale=[0.01, 0.01]))
    assert any("2 scales for 4 channels" in p for p in problems)
    problems = check_qdq_for_tensorrt(qdq_model(weight_scale=[0.01, -0.01, 0.01, 0.01]))
    assert problems == ["DequantizeLinear 'dq_w': scale must be positive and finite, smallest is -0.01"]
    model = qdq_model()
    model.graph.initializer.pop(0)  # x_scale becomes a graph input: not a build-time constant
    model.graph.input.append(tensor("x_scale", TensorProto.FLOAT, []))
    problems = check_qdq_for_tensorrt(model)
    assert len(problems) == 2 and all("not a build-time constant" in p for p in problems)


# --- provenance --------------------------------------------------------------------------------


def provenance(**changes) -> EngineProvenance:
    base = EngineProvenance(
        onnx_sha256="ab" * 32,
        precision="int8",
        tensorrt_version="10.3.0",
        gpu_name="Orin (nvgpu)",
        compute_capability="8.7",
        profile=(1, 8, 32),
        strongly_typed=True,
        built_at="2026-11-21T10:00:00+00:00",
    )
    return dataclasses.replace(base, **changes)


def test_provenance_json_roundtrip():
    stored = provenance()
    text = stored.to_json()
    assert EngineProvenance.from_json(text) == stored
    assert isinstance(EngineProvenance.from_json(text).profile, tuple)
    for broken in ("{}", "not json", '{"profile": 3}'):
        with pytest.raises(DataError):
            EngineProvenance.from_json(broken)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("onnx_sha256", "cd" * 32),
        ("precision", "fp16"),
        ("tensorrt_version", "11.4.0"),
        ("gpu_name", "NVIDIA H100 80GB HBM3"),
        ("compute_capability", "9.0"),
        ("strongly_typed", False),
    ],
)
def test_mismatches_name_the_field_and_both_values(field, value):
    stored = provenance()
    found = stored.mismatches(provenance(**{field: value}))
    assert found == [f"{field}: engine {getattr(stored, field)}, this machine {value}"]


def test_built_at_and_a_profile_inside_the_engines_do_not_mismatch():
    stored = provenance()
    assert stored.mismatches(provenance(built_at="2030-01-01T00:00:00+00:00")) == []
    assert stored.mismatches(provenance(profile=(1, 4, 16))) == []
    assert stored.mismatches(provenance(profile=(1, 8, 64))) == ["profile: engine serves batch 1-32, requested 1-64"]


# --- the provenance check before deserialising ---------------------------------------------------


@pytest.fixture
def stored_engine(tmp_path):
    """An engine file that is not a valid engine (reading it as one would fail) and its provenance."""
    engine = tmp_path / "ensemble.int8.engine"
    engine.write_bytes(b"not an engine")
    provenance_path(engine).write_text(provenance().to_json())
    return engine


def test_mismatch_without_rebuild_names_both_tensorrt_versions(stored_engine, tmp_path, monkeypatch):
    here = provenance(tensorrt_version="11.4.0")
    monkeypatch.setattr(tensorrt_build, "current_provenance", lambda *args, **kwargs: here)
    monkeypatch.setattr(tensorrt_build, "build_engine", pytest.fail)
    with pytest.raises(BrainsegError, match=r"tensorrt_version: engine 10\.3\.0, this machine 11\.4\.0"):
        tensorrt_build.load_engine_checked(stored_engine, tmp_path / "model.onnx", "int8", rebuild=False)


def test_matching_engine_is_returned_and_a_mismatch_rebuilds(stored_engine, tmp_path, monkeypatch):
    monkeypatch.setattr(tensorrt_build, "current_provenance", lambda *args, **kwargs: provenance(built_at="now"))
    calls = []
    monkeypatch.setattr(tensorrt_build, "build_engine", lambda *args, **kwargs: calls.append((args, kwargs)))
    onnx_path = tmp_path / "model.onnx"
    assert tensorrt_build.load_engine_checked(stored_engine, onnx_path, "int8") == stored_engine
    assert calls == []
    monkeypatch.setattr(tensorrt_build, "current_provenance", lambda *args, **kwargs: provenance(gpu_name="Thor"))
    assert tensorrt_build.load_engine_checked(stored_engine, onnx_path, "int8") == stored_engine
    ((args, kwargs),) = calls
    assert args == (onnx_path, stored_engine) and kwargs["precision"] == "int8"
    assert kwargs["timing_cache"] == tmp_path / tensorrt_build.TIMING_CACHE_NAME


def test_missing_provenance_counts_as_a_mismatch(stored_engine, tmp_path, monkeypatch):
    provenance_path(stored_engine).unlink()
    monkeypatch.setattr(tensorrt_build, "current_provenance", lambda *args, **kwargs: provenance())
    with pytest.raises(BrainsegError, match="no provenance file"):
        tensorrt_build.load_engine_checked(stored_engine, tmp_path / "model.onnx", "int8", rebuild=False)


# --- requests checked before TensorRT is needed --------------------------------------------------


@pytest.fixture
def onnx_file(tmp_path):
    path = tmp_path / "tiny.onnx"
    onnx.save(conv_model("Sigmoid"), path)
    return path


def test_build_rejects_bad_requests_before_importing_tensorrt(onnx_file, tmp_path):
    engine = tmp_path / "tiny.engine"
    with pytest.raises(ConfigError, match="fp32, fp16, int8"):
        tensorrt_build.build_engine(onnx_file, engine, precision="bf16")
    with pytest.raises(ConfigError, match="min <= opt <= max"):
        tensorrt_build.build_engine(onnx_file, engine, precision="fp32", batch=(8, 1, 32))
    with pytest.raises(DataError, match="not found"):
        tensorrt_build.build_engine(tmp_path / "absent.onnx", engine, precision="fp32")


def test_missing_tensorrt_names_the_extra_and_where_tensorrt_comes_from(onnx_file, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt -> ImportError
    with pytest.raises(BrainsegError, match=r"brainseg\[gpu\].*JetPack"):
        tensorrt_build.build_engine(onnx_file, tmp_path / "tiny.engine", precision="fp32")


def test_cuda_errors_become_exceptions_naming_the_call():
    class FakeError(enum.IntEnum):
        cudaSuccess = 0
        cudaErrorInsufficientDriver = 35

    assert tensorrt_build.cuda_call("cudaGetDevice", (FakeError.cudaSuccess, 0)) == 0
    with pytest.raises(BrainsegError, match=r"cudaGetDevice failed: cudaErrorInsufficientDriver \(35\)"):
        tensorrt_build.cuda_call("cudaGetDevice", (FakeError.cudaErrorInsufficientDriver, None))


def test_modules_import_without_tensorrt_or_cuda():
    code = (
        "import sys; sys.modules['tensorrt'] = None; sys.modules['cuda'] = None\n"
        "import brainseg.export.tensorrt_build, brainseg.export.trt_support\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


# --- build_engine's control flow, against a stand-in for the tensorrt module ----------------------
# The stand-in mirrors the documented Python API calls build_engine makes and records them; the
# real API is exercised by the tensorrt-marked tests below.


def fake_tensorrt(version="10.3.0", input_shape=(-1, 64, 64, 3), parse_ok=True):
    calls = {"flags": [], "shapes": []}

    class Logger:
        WARNING, VERBOSE = "warning", "verbose"

        def __init__(self, level):
            calls["log_level"] = level

    class TimingCache:
        def __init__(self, blob):
            self.blob = bytes(blob)

        def serialize(self):
            return self.blob + b"+timed"

    class Config:
        max_aux_streams = None

        def set_memory_pool_limit(self, pool, size):
            calls["workspace"] = (pool, size)

        def set_flag(self, flag):
            calls["flags"].append(flag)

        def add_optimization_profile(self, profile):
            calls["profiles"] = calls.get("profiles", 0) + 1

        def create_timing_cache(self, blob):
            return TimingCache(blob)

        def set_timing_cache(self, cache, ignore_mismatch):
            self.cache, calls["cache_in"] = cache, cache.blob
            return True

        def get_timing_cache(self):
            return self.cache

    class Profile:
        def set_shape(self, name, low, opt, high):
            calls["shapes"].append((name, low, opt, high))

    class Network:
        num_inputs = 1

        def get_input(self, index):
            return types.SimpleNamespace(name="image", shape=input_shape)

    class Builder:
        def __init__(self, logger):
            pass

        def create_network(self, flags):
            calls["network_flags"] = flags
            return Network()

        def create_builder_config(self):
            calls["config"] = Config()
            return calls["config"]

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            return b"ENGINE"

    class ParserError:
        def __init__(self, index):
            self.index = index

        def node(self):
            return self.index

        def node_name(self):
            return f"n{self.index}"

        def node_operator(self):
            return "FancyActivation"

        def desc(self):
            return "no importer registered"

    class OnnxParser:
        num_errors = 0 if parse_ok else 2

        def __init__(self, network, logger):
            pass

        def parse_from_file(self, path):
            calls["parsed"] = path
            return parse_ok

        def get_error(self, index):
            return ParserError(index)

    module = types.SimpleNamespace(
        __version__=version,
        Logger=Logger,
        Builder=Builder,
        OnnxParser=OnnxParser,
        NetworkDefinitionCreationFlag=types.SimpleNamespace(STRONGLY_TYPED=5),
        MemoryPoolType=types.SimpleNamespace(WORKSPACE="workspace"),
    )
    return module, calls


@pytest.fixture
def fake_gpu(monkeypatch):
    monkeypatch.setattr(tensorrt_build, "gpu_identity", lambda device=None: ("Fake GPU", "8.7"))


def test_build_is_strongly_typed_profiled_and_reuses_the_timing_cache(onnx_file, tmp_path, monkeypatch, fake_gpu):
    trt, calls = fake_tensorrt()
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    engine, cache = tmp_path / "out" / "tiny.engine", tmp_path / "timing.cache"
    built = tensorrt_build.build_engine(
        onnx_file, engine, precision="fp16", batch=(1, 2, 4), timing_cache=cache, workspace_gib=0.5, aux_streams=2
    )
    assert engine.read_bytes() == b"ENGINE" and cache.read_bytes() == b"+timed"
    assert EngineProvenance.from_json(provenance_path(engine).read_text()) == built
    assert (built.tensorrt_version, built.gpu_name, built.profile) == ("10.3.0", "Fake GPU", (1, 2, 4))
    assert calls["network_flags"] == 1 << 5 and calls["flags"] == []  # strongly typed, no precision flags
    assert calls["shapes"] == [("image", (1, 64, 64, 3), (2, 64, 64, 3), (4, 64, 64, 3))]
    assert calls["profiles"] == 1 and calls["workspace"] == ("workspace", 1 << 29)
    assert calls["config"].max_aux_streams == 2 and calls["parsed"] == str(onnx_file)
    tensorrt_build.build_engine(onnx_file, engine, precision="fp16", batch=(1, 2, 4), timing_cache=cache)
    assert calls["cache_in"] == b"+timed" and cache.read_bytes() == b"+timed+timed"


def test_parser_errors_are_reported_together_and_nothing_is_written(onnx_file, tmp_path, monkeypatch, fake_gpu):
    trt, _ = fake_tensorrt(parse_ok=False)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    engine = tmp_path / "tiny.engine"
    with pytest.raises(BrainsegError) as caught:
        tensorrt_build.build_engine(onnx_file, engine, precision="fp32")
    message = str(caught.value)
    assert "node 0 'n0' (FancyActivation): no importer registered" in message and "'n1'" in message
    assert not engine.exists() and not provenance_path(engine).exists()


def test_a_failed_engine_write_leaves_no_stale_provenance(onnx_file, tmp_path, monkeypatch, fake_gpu):
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt()[0])
    engine = tmp_path / "tiny.engine"
    provenance_path(engine).write_text(provenance().to_json())  # from an earlier build
    real_write = tensorrt_build.write_atomic

    def disk_full_for_engines(path, data):
        if path == engine:
            raise OSError("No space left on device")
        real_write(path, data)

    monkeypatch.setattr(tensorrt_build, "write_atomic", disk_full_for_engines)
    with pytest.raises(OSError):
        tensorrt_build.build_engine(onnx_file, engine, precision="fp32")
    assert not provenance_path(engine).exists()


def test_inputs_without_a_dynamic_batch_axis_are_refused(onnx_file, tmp_path, monkeypatch, fake_gpu):
    trt, _ = fake_tensorrt(input_shape=(1, 64, 64, 3))
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    with pytest.raises(ConfigError, match="dynamic batch"):
        tensorrt_build.build_engine(onnx_file, tmp_path / "tiny.engine", precision="fp32")


def test_engine_from_another_tensorrt_is_refused_or_rebuilt(onnx_file, tmp_path, monkeypatch, fake_gpu):
    engine = tmp_path / "tiny.engine"
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt(version="10.3.0")[0])
    tensorrt_build.build_engine(onnx_file, engine, precision="fp32")
    assert tensorrt_build.load_engine_checked(engine, onnx_file, "fp32") == engine
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt(version="11.4.0")[0])
    with pytest.raises(BrainsegError, match=r"engine 10\.3\.0, this machine 11\.4\.0"):
        tensorrt_build.load_engine_checked(engine, onnx_file, "fp32", rebuild=False)
    assert tensorrt_build.load_engine_checked(engine, onnx_file, "fp32") == engine
    stored = EngineProvenance.from_json(provenance_path(engine).read_text())
    assert stored.tensorrt_version == "11.4.0"
    assert (tmp_path / tensorrt_build.TIMING_CACHE_NAME).is_file()


# --- with TensorRT and a GPU ---------------------------------------------------------------------


@pytest.mark.tensorrt
def test_build_writes_engine_provenance_and_timing_cache(onnx_file, tmp_path):
    trt = pytest.importorskip("tensorrt", reason=TRT_SKIP)
    engine, cache = tmp_path / "tiny.engine", tmp_path / "timing.cache"
    built = tensorrt_build.build_engine(onnx_file, engine, precision="fp32", batch=(1, 2, 4), timing_cache=cache)
    assert engine.stat().st_size > 0 and cache.stat().st_size > 0
    stored = EngineProvenance.from_json(provenance_path(engine).read_text())
    assert stored == built
    assert stored.tensorrt_version == trt.__version__ and stored.profile == (1, 2, 4) and stored.strongly_typed
    assert stored.onnx_sha256 == sha256_file(onnx_file)
    assert re.fullmatch(r"\d+\.\d+", stored.compute_capability)
    before = engine.stat().st_mtime_ns
    assert tensorrt_build.load_engine_checked(engine, onnx_file, "fp32", batch=(1, 2, 4)) == engine
    assert engine.stat().st_mtime_ns == before  # matched, not rebuilt
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    assert runtime.deserialize_cuda_engine(engine.read_bytes()) is not None


@pytest.mark.tensorrt
def test_int8_qdq_graph_builds(tmp_path):
    pytest.importorskip("tensorrt", reason=TRT_SKIP)
    path = tmp_path / "qdq.onnx"
    onnx.save(qdq_model(), path)
    built = tensorrt_build.build_engine(path, tmp_path / "qdq.engine", precision="int8", batch=(1, 1, 2))
    assert built.precision == "int8"


@pytest.mark.tensorrt
def test_parser_errors_name_the_node(tmp_path):
    pytest.importorskip("tensorrt", reason=TRT_SKIP)
    path = tmp_path / "bad.onnx"
    onnx.save(conv_model("FancyActivation"), path)
    with pytest.raises(BrainsegError, match=r"'act' \(FancyActivation\)"):
        tensorrt_build.build_engine(path, tmp_path / "bad.engine", precision="fp32")
