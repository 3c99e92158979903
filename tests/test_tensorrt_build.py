"""Building a TensorRT engine: requests checked first, the builder's control flow against a stand-in for
the tensorrt module, and real builds where TensorRT and a GPU exist (skipped with the reason elsewhere)."""

from __future__ import annotations

import re
import subprocess
import sys
import types

import pytest

onnx = pytest.importorskip("onnx")
from onnx_models import conv_model, qdq_model  # noqa: E402
from test_engine_provenance import provenance  # noqa: E402

from brainseg.artifacts import cuda  # noqa: E402
from brainseg.artifacts.layout import TIMING_CACHE, provenance_file  # noqa: E402
from brainseg.artifacts.provenance import EngineProvenance  # noqa: E402
from brainseg.deploy import tensorrt_build  # noqa: E402
from brainseg.errors import BrainsegError, ConfigError, DataError  # noqa: E402
from brainseg.fileio import sha256_file  # noqa: E402

TRT_SKIP = "TensorRT is not installed here (its PyPI libs cannot be fetched); these run on a GPU machine with TensorRT"


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


def test_modules_import_without_tensorrt_or_cuda():
    code = (
        "import sys; sys.modules['tensorrt'] = None; sys.modules['cuda'] = None\n"
        "import brainseg.deploy.tensorrt_build, brainseg.deploy.tensorrt_checks, brainseg.artifacts.provenance\n"
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
    monkeypatch.setattr(cuda, "gpu_identity", lambda device=None: ("Fake GPU", "8.7"))


def test_build_is_strongly_typed_profiled_and_reuses_the_timing_cache(onnx_file, tmp_path, monkeypatch, fake_gpu):
    trt, calls = fake_tensorrt()
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    engine, cache = tmp_path / "out" / "tiny.engine", tmp_path / "timing.cache"
    built = tensorrt_build.build_engine(
        onnx_file, engine, precision="fp16", batch=(1, 2, 4), timing_cache=cache, workspace_gib=0.5, aux_streams=2
    )
    assert engine.read_bytes() == b"ENGINE" and cache.read_bytes() == b"+timed"
    assert EngineProvenance.from_json(provenance_file(engine).read_text()) == built
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
    assert not engine.exists() and not provenance_file(engine).exists()


def test_a_failed_engine_write_leaves_no_stale_provenance(onnx_file, tmp_path, monkeypatch, fake_gpu):
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt()[0])
    engine = tmp_path / "tiny.engine"
    provenance_file(engine).write_text(provenance().to_json())  # from an earlier build
    real_write = tensorrt_build.write_atomic

    def disk_full_for_engines(path, data):
        if path == engine:
            raise OSError("No space left on device")
        real_write(path, data)

    monkeypatch.setattr(tensorrt_build, "write_atomic", disk_full_for_engines)
    with pytest.raises(OSError):
        tensorrt_build.build_engine(onnx_file, engine, precision="fp32")
    assert not provenance_file(engine).exists()


def test_inputs_without_a_dynamic_batch_axis_are_refused(onnx_file, tmp_path, monkeypatch, fake_gpu):
    trt, _ = fake_tensorrt(input_shape=(1, 64, 64, 3))
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    with pytest.raises(ConfigError, match="dynamic batch"):
        tensorrt_build.build_engine(onnx_file, tmp_path / "tiny.engine", precision="fp32")


def test_engine_from_another_tensorrt_is_refused_or_rebuilt(onnx_file, tmp_path, monkeypatch, fake_gpu):
    engine = tmp_path / "tiny.engine"
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt(version="10.3.0")[0])
    tensorrt_build.build_engine(onnx_file, engine, precision="fp32")
    assert tensorrt_build.ensure_engine(engine, onnx_file, "fp32") == engine
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt(version="11.4.0")[0])
    with pytest.raises(BrainsegError, match=r"engine 10\.3\.0, this machine 11\.4\.0"):
        tensorrt_build.ensure_engine(engine, onnx_file, "fp32", rebuild=False)
    assert tensorrt_build.ensure_engine(engine, onnx_file, "fp32") == engine
    stored = EngineProvenance.from_json(provenance_file(engine).read_text())
    assert stored.tensorrt_version == "11.4.0"
    assert (tmp_path / TIMING_CACHE).is_file()


# --- with TensorRT and a GPU ---------------------------------------------------------------------


@pytest.mark.tensorrt
def test_build_writes_engine_provenance_and_timing_cache(onnx_file, tmp_path):
    trt = pytest.importorskip("tensorrt", reason=TRT_SKIP)
    engine, cache = tmp_path / "tiny.engine", tmp_path / "timing.cache"
    built = tensorrt_build.build_engine(onnx_file, engine, precision="fp32", batch=(1, 2, 4), timing_cache=cache)
    assert engine.stat().st_size > 0 and cache.stat().st_size > 0
    stored = EngineProvenance.from_json(provenance_file(engine).read_text())
    assert stored == built
    assert stored.tensorrt_version == trt.__version__ and stored.profile == (1, 2, 4) and stored.strongly_typed
    assert stored.onnx_sha256 == sha256_file(onnx_file)
    assert re.fullmatch(r"\d+\.\d+", stored.compute_capability)
    before = engine.stat().st_mtime_ns
    assert tensorrt_build.ensure_engine(engine, onnx_file, "fp32", batch=(1, 2, 4)) == engine
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
