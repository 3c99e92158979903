"""Which backend and precision seg-run picks, and why."""

from __future__ import annotations

import copy
import json

import pytest

from brainseg.artifacts.manifest import FORMAT, Manifest
from brainseg.errors import ArtifactError, ConfigError
from brainseg.runtime import backends
from brainseg.runtime.backends import choose_precision
from brainseg.runtime.segmenter import Segmenter, SegmenterOptions

pytest.importorskip("onnxruntime")


def _manifest(tmp_path, passed: dict[str, bool], targets: dict[str, tuple[str, ...]] | None = None) -> Manifest:
    """A manifest (not verified against files) whose precisions passed or failed as given."""
    targets = targets or {}
    precisions, files = {}, {}
    for name, ok in passed.items():
        uses = {}
        for target in targets.get(name, ("gpu", "cpu")):
            file = f"ensemble.{name}{'-cpu' if (name, target) == ('int8', 'cpu') else ''}.onnx"
            files[file] = {"sha256": "0" * 64, "bytes": 1, "kind": "ensemble", "precision": name}
            uses[target] = {"file": file, "row": file.split(".")[1]}
        precisions[name] = {"passed": ok, "targets": uses}
    raw = {"format": FORMAT, "input": {"name": "image", "dtype": "uint8", "layout": "NHWC", "channels": 3,
                                       "height": 8, "width": 8, "normalisation": {}},
           "outputs": {"probability": {"classes": 1}}, "threshold": 0.5, "ensemble": {}, "files": files,
           "precisions": precisions, "accuracy": {"table": {}}, "versions": {}, "source_run": {}}
    (tmp_path / "manifest.json").write_text(json.dumps(raw))
    return Manifest.load(tmp_path, verify=False)


def test_default_precision_is_fp16_on_gpu_int8_on_cpu_else_fp32(tmp_path):
    everything = _manifest(tmp_path, {"fp32": True, "fp16": True, "int8": True})
    assert choose_precision(everything, None, target="gpu") == "fp16"
    assert choose_precision(everything, None, target="cpu") == "int8"
    assert choose_precision(_manifest(tmp_path, {"fp32": True, "int8": False}), None, target="cpu") == "fp32"


def test_a_precision_that_failed_the_gate_or_was_not_exported_is_refused(tmp_path):
    manifest = _manifest(tmp_path, {"fp32": True, "int8": False})
    with pytest.raises(ConfigError, match="int8 failed the export's accuracy gate; usable: fp32"):
        choose_precision(manifest, "int8", target="cpu")
    with pytest.raises(ConfigError, match="fp16 was not exported"):
        choose_precision(manifest, "fp16", target="cpu")
    with pytest.raises(ArtifactError, match="no precision"):
        choose_precision(_manifest(tmp_path, {"fp32": False}), None, target="cpu")


def test_an_int8_file_made_for_the_cpu_is_never_handed_to_a_gpu(tmp_path):
    # --int8-activations uint8 writes only the CPU file, whose uint8 activations TensorRT rejects
    manifest = _manifest(tmp_path, {"fp32": True, "int8": True}, targets={"int8": ("cpu",)})
    assert choose_precision(manifest, None, target="cpu") == "int8"
    assert choose_precision(manifest, None, target="gpu") == "fp32"
    with pytest.raises(ConfigError, match="int8 has no gpu file"):
        choose_precision(manifest, "int8", target="gpu")
    with pytest.raises(ArtifactError, match="int8 has no file for the gpu"):
        manifest.engine_path("int8")


def test_int8_file_follows_the_device(tiny_artifacts):
    manifest = Manifest.load(tiny_artifacts)
    assert manifest.file_for("int8", "cpu") == "ensemble.int8-cpu.onnx"
    assert manifest.file_for("int8", "gpu") == "ensemble.int8.onnx"
    assert manifest.file_for("fp32", "cpu") == manifest.file_for("fp32", "gpu") == "ensemble.fp32.onnx"
    assert manifest.engine_path("int8").name == "ensemble.int8.engine"


def test_auto_falls_back_to_onnxruntime_and_tensorrt_alone_is_an_error_when_absent(tiny_artifacts, monkeypatch):
    monkeypatch.setattr(backends, "tensorrt_present", lambda: False)
    monkeypatch.setattr(backends, "openvino_present", lambda: False)  # OpenVINO's turn: test_runtime_openvino.py
    manifest = Manifest.load(tiny_artifacts)
    with Segmenter(manifest) as segmenter:
        choice = segmenter.choice
        assert (choice.backend, choice.precision, choice.file) == ("onnxruntime", "int8", "ensemble.int8-cpu.onnx")
        assert "CPUExecutionProvider" in choice.reason
        options = segmenter.backend.session.get_session_options()
        assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"  # the one default
    with Segmenter(manifest, SegmenterOptions(spinning=True)) as segmenter:
        options = segmenter.backend.session.get_session_options()
        assert options.get_session_config_entry("session.intra_op.allow_spinning") == "1"
    with pytest.raises(ArtifactError, match="--backend tensorrt: TensorRT is not installed"):
        Segmenter(manifest, SegmenterOptions(backend="tensorrt"))
    with pytest.raises(ConfigError, match="--backend must be one of auto, tensorrt, onnxruntime, openvino"):
        Segmenter(manifest, SegmenterOptions(backend="cuda"))


def test_a_manifest_from_another_format_is_refused_with_how_to_fix(tiny_artifacts, tmp_path):
    raw = json.loads((tiny_artifacts / "manifest.json").read_text())
    old = copy.deepcopy(raw)
    old["format"] = "brainseg-artifacts/1"
    (tmp_path / "manifest.json").write_text(json.dumps(old))
    with pytest.raises(ArtifactError, match="export the run again"):
        Manifest.load(tmp_path, verify=False)
