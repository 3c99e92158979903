"""Loading a run for export, calibration slices, the gate and fitted weights: including every bad input."""

import shutil

import numpy as np
import pytest

from brainseg.data.volume import Volume
from brainseg.errors import CheckpointError, DataError
from brainseg.export.calibration import calibration_slices
from brainseg.export.trained_run import load_run, split_volumes


def test_load_run_reads_every_member_and_the_shared_facts(tiny_run):
    run = load_run(tiny_run)
    assert [m.name for m in run.members] == ["unet", "fpn", "resunet"]
    assert (run.img_size, run.in_channels, run.classes, run.input_dtype) == (64, 3, 1, "uint8")
    volumes = split_volumes(run, "val")
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


def test_gate_marks_drops_beyond_the_budget():
    from brainseg.export.accuracy import apply_gate

    table = {"pytorch-fp32": {"headline_dice": 0.90}, "fp16": {"headline_dice": 0.8995},
             "int8": {"headline_dice": 0.890}}
    apply_gate(table, reference="pytorch-fp32", max_drop=0.005)
    assert [table[k]["passed"] for k in ("pytorch-fp32", "fp16", "int8")] == [True, True, False]
    assert table["int8"]["dice_drop"] == pytest.approx(0.01)


def test_the_gate_is_per_region_so_a_lost_enhancing_tumour_fails():
    from brainseg.export.accuracy import add_drops, apply_gate

    def row(wt, tc, et):
        return {"headline_dice": (wt + tc + et) / 3,
                "region_dice": {"whole_tumour": wt, "tumour_core": tc, "enhancing_tumour": et}}

    # int8 gains on the whole tumour what it loses on the enhancing tumour: the mean barely moves
    table = {"pytorch-fp32": row(0.90, 0.80, 0.70), "int8": row(0.92, 0.80, 0.685)}
    assert table["pytorch-fp32"]["headline_dice"] - table["int8"]["headline_dice"] < 0.005
    apply_gate(table, reference="pytorch-fp32", max_drop=0.005)
    assert table["int8"]["dice_drop"] == pytest.approx(0.015) and not table["int8"]["passed"]
    assert table["pytorch-fp32"]["passed"]
    test = add_drops({"pytorch-fp32": row(0.9, 0.8, 0.7), "fp32": row(0.9, 0.79, 0.7)}, reference="pytorch-fp32")
    assert test["fp32"]["dice_drop"] == pytest.approx(0.01) and "passed" not in test["fp32"]


def test_fitted_weights_prefer_the_member_that_is_right():
    from brainseg.export.accuracy import fit_weights

    volumes = [_volume("a", [1, 2]), _volume("b", [3])]
    truth = [v.mask.astype(np.float32) for v in volumes]
    wrong = [1.0 - t for t in truth]
    weights, dice = fit_weights([wrong, truth], volumes, threshold=0.5, step=0.25)
    assert weights[1] > weights[0] and dice == pytest.approx(1.0)
    even, _ = fit_weights([truth, truth], volumes, threshold=0.5, step=0.25)
    assert even == [0.5, 0.5]  # a tie goes to equal weights
