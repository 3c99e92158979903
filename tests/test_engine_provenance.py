"""Engine provenance: the record beside an engine, its comparison with this machine, the check before
anything deserialises an engine, and the CUDA error checker. Runs everywhere, without TensorRT."""

from __future__ import annotations

import enum

import pytest
import tensorrt_standins as standins

from brainseg.artifacts import cuda
from brainseg.artifacts.layout import TIMING_CACHE, provenance_file
from brainseg.artifacts.provenance import EngineProvenance
from brainseg.deploy import tensorrt_build
from brainseg.errors import BrainsegError, DataError

# --- provenance --------------------------------------------------------------------------------


def provenance(**changes) -> EngineProvenance:
    """An int8 engine's record for a Jetson Orin, batch 1-32, as changed."""
    orin = {"precision": "int8", "gpu_name": "Orin (nvgpu)", "profile": (1, 8, 32), "built_at": "2026-11-21T10:00:00"}
    return standins.provenance(**{**orin, **changes})


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
    provenance_file(engine).write_text(provenance().to_json())
    return engine


def test_mismatch_without_rebuild_names_both_tensorrt_versions(stored_engine, tmp_path, monkeypatch):
    here = provenance(tensorrt_version="11.4.0")
    monkeypatch.setattr(tensorrt_build, "current_provenance", lambda *args, **kwargs: here)
    monkeypatch.setattr(tensorrt_build, "build_engine", pytest.fail)
    with pytest.raises(BrainsegError, match=r"tensorrt_version: engine 10\.3\.0, this machine 11\.4\.0"):
        tensorrt_build.ensure_engine(stored_engine, tmp_path / "model.onnx", "int8", rebuild=False)


def test_matching_engine_is_returned_and_a_mismatch_rebuilds(stored_engine, tmp_path, monkeypatch):
    monkeypatch.setattr(tensorrt_build, "current_provenance", lambda *args, **kwargs: provenance(built_at="now"))
    calls = []
    monkeypatch.setattr(tensorrt_build, "build_engine", lambda *args, **kwargs: calls.append((args, kwargs)))
    onnx_path = tmp_path / "model.onnx"
    assert tensorrt_build.ensure_engine(stored_engine, onnx_path, "int8") == stored_engine
    assert calls == []
    monkeypatch.setattr(tensorrt_build, "current_provenance", lambda *args, **kwargs: provenance(gpu_name="Thor"))
    assert tensorrt_build.ensure_engine(stored_engine, onnx_path, "int8") == stored_engine
    ((args, kwargs),) = calls
    assert args == (onnx_path, stored_engine) and kwargs["precision"] == "int8"
    assert kwargs["timing_cache"] == tmp_path / TIMING_CACHE


def test_missing_provenance_counts_as_a_mismatch(stored_engine, tmp_path, monkeypatch):
    provenance_file(stored_engine).unlink()
    monkeypatch.setattr(tensorrt_build, "current_provenance", lambda *args, **kwargs: provenance())
    with pytest.raises(BrainsegError, match="no provenance file"):
        tensorrt_build.ensure_engine(stored_engine, tmp_path / "model.onnx", "int8", rebuild=False)


def test_cuda_errors_become_exceptions_naming_the_call():
    class FakeError(enum.IntEnum):
        cudaSuccess = 0
        cudaErrorInsufficientDriver = 35

    assert cuda.cuda_call("cudaGetDevice", (FakeError.cudaSuccess, 0)) == 0
    with pytest.raises(BrainsegError, match=r"cudaGetDevice failed: cudaErrorInsufficientDriver \(35\)"):
        cuda.cuda_call("cudaGetDevice", (FakeError.cudaErrorInsufficientDriver, None))
