"""seg-run's per-scan outputs: PNG masks and overlays, volumes, results rows, resume and safety."""

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from brainseg.errors import DataError
from brainseg.runtime import outputs
from brainseg.runtime.io.scans import Prediction, Scan, ScanData
from brainseg.runtime.outputs import OutputOptions, ScanOutputError

RED = (255, 0, 0)


def _scan(key, kind="slice"):
    return Scan(key=key, kind=kind, paths=(Path(f"/in/{key}.png"),), root=Path("/in"))


def _data(key, image, kind="slice", names=None, **extra):
    names = names or [f"s{i}" for i in range(image.shape[0])]
    return ScanData(scan=_scan(key, kind), image=image, slice_names=names, **extra)


def _pred(mask, probability=None, disagreement=None):
    """Prediction from a (S, H, W[, K]) mask; probability 0.9 in the mask, disagreement 0 by default."""
    mask = mask.astype(np.uint8)
    mask = mask[..., None] if mask.ndim == 3 else mask
    if probability is None:
        probability = np.where(mask > 0, 0.9, 0.0)
    if disagreement is None:
        disagreement = np.zeros(mask.shape)
    as4 = [np.asarray(a, np.float32).reshape(mask.shape) for a in (probability, disagreement)]
    return Prediction(probability=as4[0], mask=mask, disagreement=as4[1])


def _rgb(shape, seed=0):
    """(S, H, W, 3) uint8 in 0..200, so no input pixel is pure red."""
    return np.random.default_rng(seed).integers(0, 201, size=(*shape, 3), dtype=np.uint8)


def _read_rgb(path):
    return cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def _square(shape, top, left, size):
    mask = np.zeros(shape, bool)
    mask[..., top : top + size, left : left + size] = True
    return mask


def _ring(mask2d):
    """Pixels of a 2-D mask with a 4-neighbour outside it (the outline of a solid square)."""
    padded = np.pad(mask2d, 1)
    inner = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask2d & ~inner


def _file_writer(axial, data):
    """Injected VolumeWriter: the array as .npy bytes, so the test can read exactly what was passed."""
    buffer = io.BytesIO()
    np.save(buffer, axial)
    return buffer.getvalue()


def _load_npy(path):
    with open(path, "rb") as handle:
        return np.load(handle)


# ------------------------------------------------------------------------------ 2-D masks, overlays


def test_mask_png_round_trips_at_the_input_size(tmp_path):
    mask = np.zeros((1, 20, 24), bool)
    mask[0, 3:9, 5:17] = True
    mask[0, 15, 20] = True
    outputs.write_scan(tmp_path, _data("slices/img_003", _rgb((1, 20, 24))), _pred(mask))
    png = cv2.imread(str(tmp_path / "masks/slices/img_003.png"), cv2.IMREAD_UNCHANGED)
    assert png.dtype == np.uint8 and png.shape == (20, 24)
    np.testing.assert_array_equal(png, mask[0] * 255)


def test_overlay_outlines_the_tumour_in_red_and_keeps_the_rest(tmp_path):
    image, mask = _rgb((1, 16, 16)), _square((1, 16, 16), 5, 4, 6)
    outputs.write_scan(tmp_path, _data("a", image), _pred(mask))
    overlay, ring = _read_rgb(tmp_path / "overlays/a.png"), _ring(mask[0])
    assert overlay.shape == (16, 16, 3)
    assert (overlay[ring] == RED).all()
    np.testing.assert_array_equal(overlay[~ring], image[0][~ring])


def test_float_source_overlay_is_a_stretched_gray_of_channel_0():
    image = np.zeros((8, 8, 2), np.float32)
    image[..., 0] = np.linspace(-3.0, 5.0, 64).reshape(8, 8)
    image[..., 1] = 100.0
    base = outputs.overlay_base(image)
    assert base.dtype == np.uint8 and base.shape == (8, 8, 3)
    assert base.min() == 0 and base.max() == 255
    assert (base[..., 0] == base[..., 1]).all() and (base[..., 1] == base[..., 2]).all()
    assert (np.diff(base[..., 0].ravel().astype(int)) >= 0).all()


def test_high_disagreement_is_outlined_in_yellow():
    disagreement = _square((12, 12, 1), 2, 2, 5) * 0.9
    overlay = outputs.draw_overlay(_rgb((12, 12)), np.zeros((12, 12, 1), np.uint8), disagreement)
    assert (overlay[_ring(disagreement[..., 0] > 0)] == outputs.DISAGREEMENT_RGB).all()


def test_nested_classes_become_a_count_scaled_label_png():
    mask = np.zeros((4, 4, 3), np.uint8)
    mask[0, 1:, 0] = 1
    mask[0, 2:, 1] = 1
    mask[0, 3, 2] = 1
    np.testing.assert_array_equal(outputs.mask_png_values(mask)[0], [0, 85, 170, 255])


def test_kaggle_3m_writes_one_mask_and_overlay_per_slice(tmp_path):
    names = ["TCGA_X_1", "TCGA_X_2", "TCGA_X_3"]
    mask = np.zeros((3, 10, 12), bool)
    mask[1, 2:6, 3:8] = True
    data = _data("TCGA_X", _rgb((3, 10, 12)), kind="kaggle_3m", names=names)
    outputs.write_scan(tmp_path, data, _pred(mask))
    for i, name in enumerate(names):
        png = cv2.imread(str(tmp_path / f"masks/TCGA_X/{name}.png"), cv2.IMREAD_UNCHANGED)
        np.testing.assert_array_equal(png, mask[i] * 255)
        assert _read_rgb(tmp_path / f"overlays/TCGA_X/{name}.png").shape == (10, 12, 3)
    assert not (tmp_path / "overlays/TCGA_X.png").exists()


# ------------------------------------------------------------------------------------------ volumes


def test_brats_regions_become_the_brats_labels():
    mask = np.zeros((1, 1, 5, 3), np.uint8)
    mask[0, 0, 1:, 0] = 1  # whole tumour
    mask[0, 0, 2:, 1] = 1  # tumour core inside it
    mask[0, 0, 3:, 2] = 1  # enhancing tumour inside that
    assert outputs.brats_label_map(mask)[0, 0].tolist() == [0, 2, 1, 4, 4]
    stray = np.zeros((1, 1, 2, 3), np.uint8)
    stray[0, 0, 1, 2] = 1  # enhancing tumour predicted outside the core is still enhancing tumour
    assert outputs.brats_label_map(stray)[0, 0].tolist() == [0, 4]


def test_volume_writes_labels_probability_and_one_overlay(tmp_path):
    mask = np.zeros((5, 8, 8, 3), np.uint8)
    mask[1, 2:4, 2:4, 0] = 1
    mask[3, 1:7, 1:7, 0] = 1  # largest area: the overlay shows slice 3
    mask[3, 2:5, 2:5, 1] = 1
    mask[3, 3, 3, 2] = 1
    image = np.random.default_rng(1).normal(size=(5, 8, 8, 4)).astype(np.float32)
    data = _data("BraTS_001", image, kind="brats", nifti={"affine": np.eye(4)}, spacing=(1.0, 1.0), slice_step=1.0)
    options = OutputOptions(save_probability=True)
    outputs.write_scan(tmp_path, data, _pred(mask), options, volume_writer=_file_writer)
    labels = _load_npy(tmp_path / "volumes/BraTS_001_seg.nii.gz")  # a BraTS-regions model: the BraTS label map
    assert labels.dtype == np.uint8 and set(np.unique(labels)) == {0, 1, 2, 4}
    np.testing.assert_array_equal(labels, outputs.brats_label_map(mask))
    assert not (tmp_path / "volumes/BraTS_001.nii.gz").exists()
    row = json.loads((tmp_path / ".rows/BraTS_001.json").read_text())
    assert (row["wt_volume_ml"], row["tc_volume_ml"], row["et_volume_ml"]) == (0.04, 0.009, 0.001)
    probability = _load_npy(tmp_path / "volumes/BraTS_001_probability.nii.gz")
    assert probability.dtype == np.float32 and probability.shape == (5, 8, 8, 3)
    expected = outputs.draw_overlay(image[3], mask[3], np.zeros((8, 8, 3)))
    np.testing.assert_array_equal(_read_rgb(tmp_path / "overlays/BraTS_001.png"), expected)
    assert not (tmp_path / "masks").exists()


def test_binary_probability_volume_is_3d_and_only_written_when_asked(tmp_path):
    data = _data("v", np.zeros((2, 6, 6, 1), np.float32), kind="nifti", nifti={})
    outputs.write_scan(tmp_path / "a", data, _pred(_square((2, 6, 6), 1, 1, 2)), volume_writer=_file_writer)
    assert not (tmp_path / "a/volumes/v_probability.nii.gz").exists()
    options = OutputOptions(save_probability=True)
    outputs.write_scan(tmp_path / "b", data, _pred(_square((2, 6, 6), 1, 1, 2)), options, volume_writer=_file_writer)
    assert _load_npy(tmp_path / "b/volumes/v_probability.nii.gz").shape == (2, 6, 6)


def test_a_dicom_series_gets_a_volume_and_one_without_geometry_is_refused(tmp_path):
    mask = _square((3, 8, 8), 2, 2, 3)
    data = _data("series1", np.zeros((3, 8, 8, 1), np.float32), kind="dicom", names=["IM1", "IM2", "IM3"],
                 nifti={"affine": np.eye(4), "header": None})
    outputs.write_scan(tmp_path, data, _pred(mask), volume_writer=_file_writer)
    assert _load_npy(tmp_path / "volumes/series1.nii.gz").shape == (3, 8, 8)
    assert not (tmp_path / "masks").exists() and (tmp_path / "overlays/series1.png").is_file()
    bare = _data("series2", np.zeros((3, 8, 8, 1), np.float32), kind="dicom")
    with pytest.raises(ValueError, match="without its geometry"):
        outputs.write_scan(tmp_path, bare, _pred(mask), volume_writer=_file_writer)


def test_overlay_slice_is_the_largest_or_the_middle():
    assert outputs.overlay_slice(_pred(np.zeros((5, 4, 4), bool))) == 2
    mask = np.zeros((5, 4, 4), bool)
    mask[0, :2, :2] = True
    mask[4, :3, :3] = True
    assert outputs.overlay_slice(_pred(mask)) == 4


# --------------------------------------------------------------------------------------------- rows


def _two_blobs(shape=(1, 32, 32)):
    mask = np.zeros(shape, bool)
    mask[..., 2:6, 2:7] = True  # 20 pixels
    mask[..., 20:23, 20:23] = True  # 9 pixels
    return mask


def test_row_counts_area_component_and_probability():
    mask = _two_blobs()
    probability = np.where(mask, 0.8, 0.0)
    probability[0, 3, 3] = 0.95
    row = outputs.scan_row(_data("a", _rgb((1, 32, 32)), spacing=(0.5, 0.5)), _pred(mask, probability))
    assert row["tumour_pixels"] == 29
    assert row["tumour_area_mm2"] == pytest.approx(29 * 0.25)
    assert row["tumour_volume_ml"] is None  # a slice has no volume
    assert row["largest_component_pixels"] == 20
    assert row["max_probability"] == pytest.approx(0.95)
    assert (row["slices"], row["height"], row["width"]) == (1, 32, 32)


def test_row_volume_in_ml_needs_spacing_and_slice_step():
    mask = _two_blobs((2, 32, 32))
    data = _data("v", np.zeros((2, 32, 32, 1), np.float32), kind="brats", spacing=(0.5, 0.5), slice_step=2.0)
    assert outputs.scan_row(data, _pred(mask))["tumour_volume_ml"] == pytest.approx(58 * 0.25 * 2.0 / 1000)
    data.slice_step = None
    assert outputs.scan_row(data, _pred(mask))["tumour_volume_ml"] is None


def test_mean_disagreement_covers_mask_and_probable_pixels_only():
    mask = _two_blobs()
    probability, disagreement = np.where(mask, 0.8, 0.0), np.where(mask, 0.2, 0.0)
    probability[0, 10, 10], disagreement[0, 10, 10] = 0.3, 0.5  # counted: above the 0.1 floor
    probability[0, 12, 12], disagreement[0, 12, 12] = 0.05, 1.0  # not counted
    row = outputs.scan_row(_data("a", _rgb((1, 32, 32))), _pred(mask, probability, disagreement))
    assert row["mean_disagreement"] == pytest.approx((29 * 0.2 + 0.5) / 30, abs=1e-6)
    empty = np.zeros_like(mask)
    row = outputs.scan_row(_data("a", _rgb((1, 32, 32))), _pred(empty, np.full(mask.shape, 0.05), np.ones(mask.shape)))
    assert row["mean_disagreement"] == 0.0 and row["qc_flag"] == ""


def test_qc_flag_is_strictly_above_the_threshold():
    mask = _two_blobs()
    pred, data = _pred(mask, disagreement=np.where(mask, 0.25, 0.0)), _data("a", _rgb((1, 32, 32)))
    assert outputs.scan_row(data, pred, qc_threshold=0.25)["qc_flag"] == ""
    assert outputs.scan_row(data, pred, qc_threshold=0.24)["qc_flag"] == "disagree"


def test_volume_components_are_26_connected_and_slices_are_not_joined():
    mask = np.zeros((3, 8, 8), bool)
    mask[0, 1:3, 1:3] = True
    mask[1, 3:5, 3:5] = True  # touches slice 0 only through a corner
    mask[2, 6:8, 0:2] = True  # far from both
    volume = _data("v", np.zeros((3, 8, 8, 1), np.float32), kind="nifti")
    assert outputs.scan_row(volume, _pred(mask))["largest_component_pixels"] == 8
    patient = _data("p", _rgb((3, 8, 8)), kind="kaggle_3m")
    assert outputs.scan_row(patient, _pred(mask))["largest_component_pixels"] == 4
    mask[1] = np.roll(mask[1], 1, axis=1)  # now two columns away from slice 0's blob
    assert outputs.scan_row(volume, _pred(mask))["largest_component_pixels"] == 4


def test_prediction_of_the_wrong_size_is_refused():
    with pytest.raises(ValueError, match="expected"):
        outputs.scan_row(_data("a", _rgb((1, 8, 8))), _pred(np.zeros((1, 8, 9), bool)))


# --------------------------------------------------------------------------------- resume, safety


def test_done_scan_is_kept_unless_overwrite(tmp_path):
    scan_data, first = _data("a", _rgb((1, 16, 16))), _pred(_square((1, 16, 16), 2, 2, 4))
    assert not outputs.is_done(tmp_path, scan_data.scan)
    row = outputs.write_scan(tmp_path, scan_data, first)
    assert outputs.is_done(tmp_path, scan_data.scan)
    files = sorted(p for p in tmp_path.rglob("*") if p.is_file())
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in files}
    second = _pred(_square((1, 16, 16), 6, 6, 8))
    assert outputs.write_scan(tmp_path, scan_data, second) == row
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in files} == before
    new_row = outputs.write_scan(tmp_path, scan_data, second, OutputOptions(overwrite=True))
    assert new_row["tumour_pixels"] == 64 and outputs.load_row(tmp_path, scan_data.scan) == new_row
    png = cv2.imread(str(tmp_path / "masks/a.png"), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(png, second.mask[0, ..., 0] * 255)


def test_interrupted_scan_keeps_finished_files_and_writes_its_row(tmp_path):
    scan_data = _data("a", _rgb((1, 8, 8)))
    (tmp_path / "masks").mkdir()
    (tmp_path / "masks/a.png").write_bytes(b"finished earlier")
    outputs.write_scan(tmp_path, scan_data, _pred(_square((1, 8, 8), 1, 1, 3)))
    assert (tmp_path / "masks/a.png").read_bytes() == b"finished earlier"
    assert (tmp_path / "overlays/a.png").is_file() and outputs.is_done(tmp_path, scan_data.scan)


@pytest.mark.parametrize("key", ["../evil", "/abs/evil", "a/../../evil", ""])
def test_escaping_key_is_refused_before_anything_is_written(tmp_path, key):
    out = tmp_path / "out"
    with pytest.raises(ScanOutputError):
        outputs.write_scan(out, _data(key, _rgb((1, 8, 8))), _pred(np.zeros((1, 8, 8), bool)))
    assert not outputs.is_done(out, _scan(key))
    assert [p.name for p in tmp_path.rglob("*")] == []
    assert issubclass(ScanOutputError, DataError)


def test_symlinked_subfolder_pointing_outside_is_refused(tmp_path):
    out, outside = tmp_path / "out", tmp_path / "outside"
    out.mkdir()
    outside.mkdir()
    (out / "masks").symlink_to(outside, target_is_directory=True)
    with pytest.raises(ScanOutputError, match="outside"):
        outputs.write_scan(out, _data("a", _rgb((1, 8, 8))), _pred(np.zeros((1, 8, 8), bool)))
    assert list(outside.iterdir()) == [] and not outputs.is_done(out, _scan("a"))


def test_repeated_slice_names_are_refused(tmp_path):
    data = _data("p", _rgb((2, 8, 8)), kind="kaggle_3m", names=["x", "x"])
    with pytest.raises(ScanOutputError, match="repeated"):
        outputs.write_scan(tmp_path, data, _pred(np.zeros((2, 8, 8), bool)))


# ------------------------------------------------------------------------------------------ tables


def test_results_csv_has_stable_columns_and_empty_mm_without_spacing(tmp_path):
    scans = [_data("b", _rgb((1, 8, 8))), _data("a", _rgb((1, 8, 8)), spacing=(0.5, 0.5), notes=["rescaled"])]
    for scan_data in scans:
        outputs.write_scan(tmp_path, scan_data, _pred(_square((1, 8, 8), 1, 1, 2)))
    rows = outputs.collect_rows(tmp_path, [s.scan for s in scans] + [_scan("not_run")])
    path = outputs.write_results_csv(tmp_path, rows)
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        assert tuple(reader.fieldnames) == outputs.ROW_COLUMNS
        table = list(reader)
    assert [r["key"] for r in table] == ["b", "a"]
    assert table[0]["tumour_area_mm2"] == "" and table[0]["tumour_volume_ml"] == ""
    assert float(table[1]["tumour_area_mm2"]) == pytest.approx(1.0) and table[1]["notes"] == "rescaled"
    assert table[0]["source"] == str(Path("/in/b.png")) and table[0]["tumour_pixels"] == "4"


def test_summary_json_is_pretty_and_plain(tmp_path):
    path = outputs.write_summary(tmp_path, {"out": tmp_path, "scans": np.int64(3), "skipped": []})
    assert json.loads(path.read_text()) == {"out": str(tmp_path), "scans": 3, "skipped": []}
    assert path.read_text().startswith("{\n  ")


def test_module_does_not_import_torch():
    code = "import sys, brainseg.runtime.outputs; print('torch' in sys.modules)"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert result.stdout.strip() == "False"
