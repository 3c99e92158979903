"""Which backend and precision seg-run picks, and why."""

from __future__ import annotations

import pytest

from brainseg.errors import ArtifactError, ConfigError
from brainseg.export.manifest import load_manifest
from brainseg.runtime import backends
from brainseg.runtime.backends import choose_precision, open_backend, precision_file

pytest.importorskip("onnxruntime")


def _manifest(passed: dict[str, bool]) -> dict:
    return {"precisions": {name: {"file": f"ensemble.{name}.onnx", "passed": ok} for name, ok in passed.items()}}


def test_default_precision_is_fp16_on_gpu_int8_on_cpu_else_fp32():
    everything = _manifest({"fp32": True, "fp16": True, "int8": True})
    assert choose_precision(everything, None, on_gpu=True) == "fp16"
    assert choose_precision(everything, None, on_gpu=False) == "int8"
    assert choose_precision(_manifest({"fp32": True, "int8": False}), None, on_gpu=False) == "fp32"


def test_a_precision_that_failed_the_gate_or_was_not_exported_is_refused():
    manifest = _manifest({"fp32": True, "int8": False})
    with pytest.raises(ConfigError, match="int8 failed the export's accuracy gate; usable: fp32"):
        choose_precision(manifest, "int8", on_gpu=False)
    with pytest.raises(ConfigError, match="fp16 was not exported"):
        choose_precision(manifest, "fp16", on_gpu=False)
    with pytest.raises(ArtifactError, match="no precision"):
        choose_precision(_manifest({"fp32": False}), None, on_gpu=False)


def test_int8_file_follows_the_device(tiny_artifacts):
    manifest = load_manifest(tiny_artifacts)
    assert precision_file(manifest, "int8", target="cpu") == "ensemble.int8-cpu.onnx"
    assert precision_file(manifest, "int8", target="gpu") == "ensemble.int8.onnx"
    assert precision_file(manifest, "fp32", target="cpu") == "ensemble.fp32.onnx"


def test_auto_falls_back_to_onnxruntime_and_tensorrt_alone_is_an_error_when_absent(tiny_artifacts, monkeypatch):
    monkeypatch.setattr(backends, "_tensorrt_present", lambda: False)
    manifest = load_manifest(tiny_artifacts)
    runner, choice = open_backend(tiny_artifacts, manifest)
    with runner:
        assert (choice.backend, choice.precision, choice.file) == ("onnxruntime", "int8", "ensemble.int8-cpu.onnx")
        assert "CPUExecutionProvider" in choice.reason
        options = runner.session.get_session_options()
        assert options.get_session_config_entry("session.intra_op.allow_spinning") == "1"
    runner, _ = open_backend(tiny_artifacts, manifest, spinning=False)  # seg-run's default, beside its threads
    with runner:
        options = runner.session.get_session_options()
        assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    with pytest.raises(ArtifactError, match="--backend tensorrt: TensorRT is not installed"):
        open_backend(tiny_artifacts, manifest, backend="tensorrt")
    with pytest.raises(ConfigError, match="unknown backend"):
        open_backend(tiny_artifacts, manifest, backend="cuda")
