"""Loading a run for export, calibration slices and the manifest: including every bad input."""

import json
import shutil

import numpy as np
import pytest

from brainseg.data.volume import Volume
from brainseg.errors import ArtifactError, CheckpointError, DataError
from brainseg.export import manifest as mf
from brainseg.export.calibration import calibration_slices
from brainseg.export.source import load_run, validation_volumes


def test_load_run_reads_every_member_and_the_shared_facts(tiny_run):
    run = load_run(tiny_run)
    assert [m.name for m in run.members] == ["unet", "fpn", "resunet"]
    assert (run.img_size, run.in_channels, run.classes, run.input_dtype) == (64, 3, 1, "uint8")
    volumes = validation_volumes(run)
    assert sorted(v.patient_id for v in volumes) == sorted(run.split.val)


@pytest.fixture
def run_copy(tiny_run, tmp_path):
    return shutil.copytree(tiny_run, tmp_path / "run")


def test_missing_checkpoint_is_named(run_copy):
    (run_copy / "fpn" / "best.pt").unlink()
    with pytest.raises(CheckpointError, match=r"fpn/best.pt: checkpoint not found"):
        load_run(run_copy)


def test_corrupt_checkpoint_is_named(run_copy):
    path = run_copy / "unet" / "best.pt"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=r"unet/best.pt: not a readable checkpoint"):
        load_run(run_copy)


def test_checkpoint_of_another_architecture_is_named(run_copy):
    shutil.copy(run_copy / "fpn" / "best.pt", run_copy / "resunet" / "best.pt")
    with pytest.raises(CheckpointError, match=r"resunet/best.pt: holds a 'fpn' model, expected 'resunet'"):
        load_run(run_copy)


def test_not_a_run_folder(tmp_path):
    with pytest.raises(CheckpointError, match="not a seg-train run folder"):
        load_run(tmp_path)


def _volume(pid, tumour_slices, slices=6, size=40):
    mask = np.zeros((slices, size, size, 1), np.uint8)
    for s in tumour_slices:
        mask[s, 5:10, 5:10] = 1
    image = np.random.default_rng(0).integers(0, 255, (slices, size, size, 3), dtype=np.uint8)
    return Volume(pid, image, mask, [f"{pid}_{i}" for i in range(slices)])


def test_calibration_is_stratified_and_resized():
    volumes = [_volume("a", [1, 2]), _volume("b", [3], size=48)]
    slices = calibration_slices(volumes, img_size=32, count=4)
    assert slices.shape == (4, 32, 32, 3) and slices.dtype == np.uint8
    many = calibration_slices(volumes, img_size=32, count=100)
    assert len(many) == 12  # every slice, when fewer than asked


def test_calibration_without_tumour_slices_is_refused():
    with pytest.raises(DataError, match="has no tumour slices"):
        calibration_slices([_volume("a", [])], img_size=32)


def _artifacts(tmp_path):
    (tmp_path / "ensemble.fp32.onnx").write_bytes(b"graph")
    manifest = {
        "format": mf.FORMAT, "threshold": 0.5, "ensemble": {"members": ["unet"], "weights": [1.0]},
        "input": {"name": "image", "dtype": "uint8", "layout": "NHWC", "channels": 3, "height": 64, "width": 64,
                  "normalisation": {"kind": "uint8", "mean": [0.1] * 3, "std": [0.2] * 3}},
        "outputs": {"probability": {"dtype": "float32"}},
        "files": {"ensemble.fp32.onnx": mf.file_entry(tmp_path, "ensemble.fp32.onnx", kind="ensemble")},
        "precisions": {"fp32": {"file": "ensemble.fp32.onnx", "passed": True},
                       "int8": {"file": "ensemble.fp32.onnx", "passed": False}},
        "versions": {}, "source_run": {"path": "runs/x"},
    }
    mf.write_manifest(tmp_path, manifest)
    return manifest


def test_manifest_roundtrip_and_usable_precisions(tmp_path):
    written = _artifacts(tmp_path)
    loaded = mf.load_manifest(tmp_path)
    assert loaded == written
    assert mf.usable_precisions(loaded) == ["fp32"]


def test_tampered_file_is_refused(tmp_path):
    _artifacts(tmp_path)
    (tmp_path / "ensemble.fp32.onnx").write_bytes(b"other graph")
    with pytest.raises(ArtifactError, match="ensemble.fp32.onnx: sha256 differs"):
        mf.load_manifest(tmp_path)


def test_invalid_manifest_lists_its_problems(tmp_path):
    manifest = _artifacts(tmp_path)
    del manifest["input"]["dtype"]
    manifest["precisions"]["fp16"] = {"file": "nope.onnx", "passed": True}
    (tmp_path / mf.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match=r"input lacks 'dtype'.*precision fp16 names 'nope.onnx'"):
        mf.load_manifest(tmp_path)


def test_gate_marks_drops_beyond_the_budget():
    from brainseg.export.accuracy import apply_gate

    table = {"pytorch-fp32": {"headline_dice": 0.90}, "fp16": {"headline_dice": 0.8995},
             "int8": {"headline_dice": 0.890}}
    apply_gate(table, reference="pytorch-fp32", max_drop=0.005)
    assert [table[k]["passed"] for k in ("pytorch-fp32", "fp16", "int8")] == [True, True, False]
    assert table["int8"]["dice_drop"] == pytest.approx(0.01)


def test_fitted_weights_prefer_the_member_that_is_right():
    from brainseg.export.accuracy import fit_weights

    volumes = [_volume("a", [1, 2]), _volume("b", [3])]
    truth = [v.mask.astype(np.float32) for v in volumes]
    wrong = [1.0 - t for t in truth]
    weights, dice = fit_weights([wrong, truth], volumes, threshold=0.5, step=0.25)
    assert weights[1] > weights[0] and dice == pytest.approx(1.0)
    even, _ = fit_weights([truth, truth], volumes, threshold=0.5, step=0.25)
    assert even == [0.5, 0.5]  # a tie goes to equal weights
