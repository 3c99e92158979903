"""The artifacts contract: the manifest read through one typed object, its checks and its answers."""

import json
from dataclasses import replace

import pytest

from brainseg.artifacts import layout, variants
from brainseg.artifacts.manifest import FORMAT, Manifest, ManifestData, file_entry, write_manifest
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
            "ensemble.fp32.onnx": file_entry(tmp_path, "ensemble.fp32.onnx", kind="ensemble",
                                             precision="fp32").to_dict(),
            "ensemble.int8.onnx": file_entry(tmp_path, "ensemble.int8.onnx", kind="ensemble",
                                             precision="int8").to_dict(),
            "ensemble.int8-cpu.onnx": file_entry(tmp_path, "ensemble.int8-cpu.onnx", kind="ensemble").to_dict(),
            "unet.fp32.onnx": file_entry(tmp_path, "unet.fp32.onnx", kind="member", model="unet").to_dict(),
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
    write_manifest(tmp_path, ManifestData.from_dict(raw))
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


def test_file_and_row_names_are_derived_from_the_variant_table():
    names = {(v.precision, v.target, v.runtime): (v.onnx_file, v.row) for v in variants.VARIANTS}
    assert names[("int8", "cpu", "onnxruntime")] == ("ensemble.int8-cpu.onnx", "int8-cpu")
    assert names[("int8", "gpu", "onnxruntime")] == ("ensemble.int8.onnx", "int8")
    assert names[("fp16", "cpu", "onnxruntime")] == names[("fp16", "gpu", "onnxruntime")] == \
        ("ensemble.fp16.onnx", "fp16")
    assert names[("int8", "cpu", "openvino")] == ("ensemble.int8-cpu.onnx", "int8-cpu@openvino")
    assert names[("bf16", "cpu", "openvino")] == ("ensemble.fp32.onnx", "bf16")
    assert names[("fp16", "gpu", "tensorrt")] == ("ensemble.fp16.onnx", "engine-fp16")
    assert variants.variant("fp16", "gpu", "tensorrt").engine_file == "ensemble.fp16.engine"
    assert variants.variant("int8", "gpu").int8_activations == "int8_symmetric"
    assert variants.variant("int8", "cpu").int8_activations == "uint8"
    assert variants.member_file("fpn") == "fpn.fp32.onnx"
    assert variants.OPENVINO_ONLY == ("bf16",) and variants.FILE_PRECISIONS == ("fp32", "fp16", "int8")
    assert len({v.row for v in variants.VARIANTS if v.runtime != "onnxruntime"}) == 6, "rows must not collide"
    with pytest.raises(ValueError, match="no variant bf16/gpu/tensorrt; the variants are fp32/gpu/onnxruntime"):
        variants.variant("bf16", "gpu", "tensorrt")


def test_tampered_file_is_refused(tmp_path):
    _artifacts(tmp_path)
    (tmp_path / "ensemble.fp32.onnx").write_bytes(b"other graph")
    with pytest.raises(ArtifactError, match="ensemble.fp32.onnx: sha256 differs"):
        Manifest.load(tmp_path)
    assert Manifest.load(tmp_path, verify=False).threshold == 0.4


def test_invalid_manifest_lists_its_problems(tmp_path):
    raw = _artifacts(tmp_path)
    raw["precisions"]["fp16"] = {"passed": True, "targets": {"gpu": {"file": "nope.onnx", "row": "fp16"}}}
    raw["precisions"]["fp8"] = {"passed": True, "targets": {"cpu": {"file": "ensemble.fp32.onnx", "row": "fp8"}}}
    raw["precisions"]["bf16"] = {"passed": True, "targets": {"gpu": {"file": "ensemble.fp32.onnx", "row": "bf16"}}}
    (tmp_path / layout.MANIFEST).write_text(json.dumps(raw))
    with pytest.raises(ArtifactError, match=r"names 'nope.onnx' for the gpu.*unknown precision "
                                            r"'fp8'.*bf16 is computed by OpenVINO on the cpu only"):
        Manifest.load(tmp_path)
    # a key missing or of the wrong type is named by its path in the document
    for path, change, message in ((("input", "dtype"), None, "missing key 'input.dtype'"),
                                  (("input", "channels"), "3", "input.channels should be int, is str"),
                                  (("precisions", "fp32", "targets"), {}, "precisions.fp32: lists no target files")):
        broken = json.loads(json.dumps(raw))
        broken["precisions"] = {k: v for k, v in broken["precisions"].items() if k in ("fp32", "int8")}
        parent = broken
        for key in path[:-1]:
            parent = parent[key]
        parent.pop(path[-1]) if change is None else parent.__setitem__(path[-1], change)
        (tmp_path / layout.MANIFEST).write_text(json.dumps(broken))
        with pytest.raises(ArtifactError, match=message):
            Manifest.load(tmp_path)


def test_a_folder_without_a_manifest_or_with_a_broken_one_is_named(tmp_path):
    with pytest.raises(ArtifactError, match="no manifest.json; is this a seg-export artifacts folder"):
        Manifest.load(tmp_path)
    (tmp_path / layout.MANIFEST).write_text("{not json")
    with pytest.raises(ArtifactError, match="manifest.json: unreadable"):
        Manifest.load(tmp_path)


def test_writing_an_invalid_manifest_is_a_bug_that_is_refused(tmp_path):
    data = ManifestData.from_dict(_artifacts(tmp_path))
    fp32 = data.precisions["fp32"]
    wrong = replace(fp32, targets={**fp32.targets, "gpu": replace(fp32.targets["gpu"], file="missing.onnx")})
    with pytest.raises(ValueError, match="refusing to write an invalid manifest: .*'missing.onnx' for the gpu"):
        write_manifest(tmp_path, replace(data, precisions={**data.precisions, "fp32": wrong}))


def test_the_engines_and_tensorrt_sections_are_read_back_and_told_by_seg_doctor(tmp_path):
    from brainseg.doctor import _export_notes

    raw = _artifacts(tmp_path)
    raw["engines"] = {"asked": "auto", "reason": "engines: not built: TensorRT is not installed here",
                      "built": {"fp16": {"row": "engine-fp16", "passed": False, "file": None}}}
    raw["tensorrt"] = {"ensemble.fp32.onnx": {"unsupported_ops": {"com.microsoft::Gelu": 2}, "qdq_problems": []},
                       "ensemble.int8.onnx": {"unsupported_ops": {}, "qdq_problems": ["node q1: zero point 3"]}}
    write_manifest(tmp_path, ManifestData.from_dict(raw))
    manifest = Manifest.load(tmp_path)
    assert manifest.engines.built["fp16"].file is None and not manifest.engines.built["fp16"].passed
    assert _export_notes(manifest) == [
        "engines: not built: TensorRT is not installed here",
        "TensorRT would refuse ensemble.fp32.onnx: op com.microsoft::Gelu x2",
        "TensorRT would refuse ensemble.int8.onnx: node q1: zero point 3"]
    raw["tensorrt"]["ensemble.fp32.onnx"]["unsupported_ops"] = ["Gelu"]  # a list where counts belong
    (tmp_path / layout.MANIFEST).write_text(json.dumps(raw))
    with pytest.raises(ArtifactError, match="tensorrt.ensemble.fp32.onnx.unsupported_ops should be dict, is list"):
        Manifest.load(tmp_path)
