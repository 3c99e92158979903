"""The artifacts contract: the manifest read through one typed object, its checks and its answers."""

import json

import pytest

from brainseg.artifacts import layout
from brainseg.artifacts.manifest import FORMAT, Manifest, file_entry, write_manifest
from brainseg.errors import ArtifactError


def _artifacts(tmp_path) -> dict:
    for name in ("ensemble.fp32.onnx", "ensemble.int8.onnx", "ensemble.int8-cpu.onnx", "unet.fp32.onnx"):
        (tmp_path / name).write_bytes(name.encode())
    raw = {
        "format": FORMAT, "threshold": 0.4, "ensemble": {"members": ["unet"], "weights": [1.0]},
        "postprocessing": {"chosen": {"tta": "flip", "components": "largest", "min_voxels": 64}},
        "input": {"name": "image", "dtype": "uint8", "layout": "NHWC", "channels": 3, "height": 64, "width": 48,
                  "normalisation": {"kind": "uint8", "mean": [0.1] * 3, "std": [0.2] * 3}, "modalities": None},
        "outputs": {"probability": {"dtype": "float32", "classes": 1}, "mask": {}, "disagreement": {}},
        "files": {
            "ensemble.fp32.onnx": file_entry(tmp_path, "ensemble.fp32.onnx", kind="ensemble", precision="fp32"),
            "ensemble.int8.onnx": file_entry(tmp_path, "ensemble.int8.onnx", kind="ensemble", precision="int8"),
            "ensemble.int8-cpu.onnx": file_entry(tmp_path, "ensemble.int8-cpu.onnx", kind="ensemble"),
            "unet.fp32.onnx": file_entry(tmp_path, "unet.fp32.onnx", kind="member", model="unet"),
        },
        "precisions": {
            "fp32": {"passed": True, "targets": {"gpu": {"file": "ensemble.fp32.onnx", "row": "fp32"},
                                                 "cpu": {"file": "ensemble.fp32.onnx", "row": "fp32"}}},
            "int8": {"passed": False, "targets": {"gpu": {"file": "ensemble.int8.onnx", "row": "int8"},
                                                  "cpu": {"file": "ensemble.int8-cpu.onnx", "row": "int8-cpu"}}},
        },
        "accuracy": {"reference": "pytorch-fp32", "table": {"pytorch-fp32": {"dice_mean": 0.9},
                                                             "fp32": {"dice_mean": 0.9}, "int8": {"dice_mean": 0.8},
                                                             "int8-cpu": {"dice_mean": 0.85}}},
        "versions": {}, "source_run": {"path": "runs/x"},
    }
    write_manifest(tmp_path, raw)
    return raw


def test_every_answer_comes_from_the_manifest(tmp_path):
    _artifacts(tmp_path)
    manifest = Manifest.load(tmp_path)
    assert (manifest.input.size, manifest.input.channels, manifest.input.dtype) == ((64, 48), 3, "uint8")
    assert manifest.threshold == 0.4 and manifest.classes == 1
    assert manifest.postprocessing.tta == "flip" and manifest.postprocessing.components == "largest"
    assert manifest.exported_precisions == ["fp32", "int8"]
    assert manifest.usable_precisions() == manifest.usable_precisions("cpu") == ["fp32"]
    assert manifest.dice("int8", "cpu") == 0.85 and manifest.dice("int8", "gpu") == 0.8
    assert manifest.reference_dice == 0.9
    assert manifest.member_files() == {"unet": "unet.fp32.onnx"}
    assert manifest.engine_path("fp32") == tmp_path / "ensemble.fp32.engine"
    assert manifest.source_run.name == "x"


def test_file_names_are_derived_in_one_place():
    assert layout.ensemble_file("int8", "cpu") == "ensemble.int8-cpu.onnx"
    assert layout.ensemble_file("int8", "gpu") == layout.ensemble_file("int8") == "ensemble.int8.onnx"
    assert layout.ensemble_file("fp16", "cpu") == "ensemble.fp16.onnx"
    assert layout.engine_file("ensemble.fp16.onnx") == "ensemble.fp16.engine"
    assert layout.member_file("fpn") == "fpn.fp32.onnx"


def test_tampered_file_is_refused(tmp_path):
    _artifacts(tmp_path)
    (tmp_path / "ensemble.fp32.onnx").write_bytes(b"other graph")
    with pytest.raises(ArtifactError, match="ensemble.fp32.onnx: sha256 differs"):
        Manifest.load(tmp_path)
    assert Manifest.load(tmp_path, verify=False).threshold == 0.4


def test_invalid_manifest_lists_its_problems(tmp_path):
    raw = _artifacts(tmp_path)
    del raw["input"]["dtype"]
    raw["precisions"]["fp16"] = {"passed": True, "targets": {"gpu": {"file": "nope.onnx", "row": "fp16"}}}
    raw["precisions"]["fp8"] = {"passed": True, "targets": {}}
    raw["precisions"]["bf16"] = {"passed": True, "targets": {"gpu": {"file": "ensemble.fp32.onnx", "row": "bf16"}}}
    (tmp_path / layout.MANIFEST).write_text(json.dumps(raw))
    with pytest.raises(ArtifactError, match=r"input lacks 'dtype'.*names 'nope.onnx' for the gpu.*unknown precision "
                                            r"'fp8'.*bf16 is computed by OpenVINO on the cpu only"):
        Manifest.load(tmp_path)


def test_a_folder_without_a_manifest_or_with_a_broken_one_is_named(tmp_path):
    with pytest.raises(ArtifactError, match="no manifest.json; is this a seg-export artifacts folder"):
        Manifest.load(tmp_path)
    (tmp_path / layout.MANIFEST).write_text("{not json")
    with pytest.raises(ArtifactError, match="manifest.json: unreadable"):
        Manifest.load(tmp_path)


def test_writing_an_invalid_manifest_is_a_bug_that_is_refused(tmp_path):
    raw = _artifacts(tmp_path)
    raw["precisions"]["fp32"]["targets"]["gpu"]["file"] = "missing.onnx"
    with pytest.raises(ValueError, match="refusing to write an invalid manifest"):
        write_manifest(tmp_path, raw)
