"""seg-run's readers: a discovered scan read into the artifacts' input form, NIfTI and DICOM round trips."""

from __future__ import annotations

from dataclasses import replace

import cv2
import numpy as np
import pytest
from scan_files import (
    F32,
    LPS_PERMUTED,
    MODALITIES,
    U8,
    U8_GRAY,
    brain,
    nib,
    one,
    skip_reason,
    solid,
    write_case,
    write_dicom,
    write_nifti,
    write_rgb,
)

from brainseg.data.brats import axial_slices, read_brats
from brainseg.runtime.io.discovery import discover
from brainseg.runtime.io.loading import load
from brainseg.runtime.io.nifti import nifti_bytes, read_nifti, to_original

# ---------------------------------------------------------------- loading 2-D images


def test_kaggle_series_loads_in_natural_order_as_rgb_uint8(tmp_path):
    for n in (10, 2, 1):
        write_rgb(tmp_path / "P" / f"P_{n}.tif", solid(n))
        write_rgb(tmp_path / "P" / f"P_{n}_mask.tif", np.zeros((16, 16), np.uint8))
    data = load(one([tmp_path]), U8)
    assert data.image.shape == (3, 16, 16, 3) and data.image.dtype == np.uint8
    assert data.image[:, 5, 5].tolist() == [[1, 100, 200], [2, 100, 200], [10, 100, 200]]
    assert data.slice_names == ["P_1", "P_2", "P_10"]
    assert data.spacing is None and data.nifti is None and data.notes == []


def test_16bit_series_is_rescaled_by_one_peak_and_gray_replicated(tmp_path):
    for n, peak in ((1, 1000), (2, 4000)):
        gray = np.zeros((16, 16), np.uint16)
        gray[4:8, 4:8] = peak
        write_rgb(tmp_path / "P" / f"P_{n}.png", gray)
    data = load(one([tmp_path / "P"]), U8)
    assert data.image.shape == (2, 16, 16, 3)
    assert data.image[:, 5, 5].tolist() == [[64, 64, 64], [255, 255, 255]]  # 1000 * 255 / 4000
    assert any("16-bit" in note and "4000" in note for note in data.notes)
    assert "grayscale replicated to 3 channels" in data.notes
    single = load(one([tmp_path / "P" / "P_1.png"]), U8)
    assert single.image[0, 5, 5, 0] == 255  # a single slice: its own maximum


def test_channel_counts_are_adapted_or_refused(tmp_path):
    rgba = np.dstack([solid(7), np.full((16, 16), 128, np.uint8)])
    cv2.imwrite(str(tmp_path / "rgba.png"), cv2.cvtColor(rgba, cv2.COLOR_RGBA2BGRA))
    assert load(one([tmp_path / "rgba.png"]), U8).image[0, 0, 0].tolist() == [7, 100, 200]  # alpha dropped
    colour = one([write_rgb(tmp_path / "colour.png", solid(7))])
    error = skip_reason(colour, U8_GRAY)
    assert error.path == str(tmp_path / "colour.png") and error.reason == "has 3 channels; the artifacts expect 1"
    grey_rgb = load(one([write_rgb(tmp_path / "grey.png", solid(9, green=9, blue=9))]), U8_GRAY)
    assert grey_rgb.image.shape == (1, 16, 16, 1) and "3 identical channels taken as grayscale" in grey_rgb.notes
    four = one([write_nifti(tmp_path / "four.nii.gz", np.stack([brain(i) for i in range(4)], axis=-1))])
    assert skip_reason(four, U8).reason == "has 4 channels; the artifacts expect 3"


def test_damaged_images_are_skipped_with_a_reason_naming_the_file(tmp_path):
    good = write_rgb(tmp_path / "t.png", solid(1, size=32))
    good.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    (tmp_path / "e.png").write_bytes(b"")
    for name, words in (("t.png", "truncated"), ("e.png", "empty")):
        error = skip_reason(one([tmp_path / name]), U8)
        assert error.path == str(tmp_path / name) and words in error.reason


def test_series_whose_slices_differ_in_size_is_skipped(tmp_path):
    write_rgb(tmp_path / "P" / "P_1.png", solid(1, size=16))
    write_rgb(tmp_path / "P" / "P_2.png", solid(1, size=20))
    error = skip_reason(one([tmp_path / "P"]), U8)
    assert error.path == str(tmp_path / "P" / "P_2.png") and "P_1.png is (16, 16, 3) uint8" in error.reason


def test_2d_images_are_refused_by_float32_artifacts(tmp_path):
    error = skip_reason(one([write_rgb(tmp_path / "a.png", solid(1))], F32), F32)
    assert "2-D image" in error.reason and "NIfTI" in error.reason


# ---------------------------------------------------------------- loading volumes


def test_brats_case_matches_training_zscore_orientation_and_order(tmp_path):
    lps = np.diag([-1.0, -1.2, 2.0, 1.0])
    write_case(tmp_path / "case", "case", affine=lps)
    data = load(one([tmp_path], F32), F32)
    [(_, volume)] = read_brats(tmp_path, MODALITIES, "wt", lambda path, reason: pytest.fail(reason))
    assert data.image.shape == (6, 9, 8, 4) and data.image.dtype == np.float32  # (Z, H=Y, W=X, C)
    kept = [int(name.split(":z")[1]) for name in volume.slice_names]
    np.testing.assert_allclose(data.image[kept], volume.image, atol=1e-6)
    assert not data.image[[z for z in range(6) if z not in kept]].any()  # empty slices kept, all zero
    assert data.slice_names == [f"z{z}" for z in range(6)]
    assert (data.spacing, data.slice_step) == (volume.spacing, volume.slice_step)


def test_brats_modalities_of_different_shapes_are_skipped(tmp_path):
    write_case(tmp_path / "case", "C")
    write_nifti(tmp_path / "case" / "C_t1.nii.gz", brain(0, shape=(8, 9, 7)))
    error = skip_reason(one([tmp_path], F32), F32)
    assert error.path == str(tmp_path / "case" / "C_t1.nii.gz") and "C_t2.nii.gz is (8, 9, 6)" in error.reason


def test_brats_modalities_on_different_grids_are_skipped(tmp_path):
    write_case(tmp_path / "case", "C")
    write_nifti(tmp_path / "case" / "C_t1.nii.gz", brain(0), np.diag([1.0, 1.2, 3.0, 1.0]))  # same shape, 3 mm
    error = skip_reason(one([tmp_path], F32), F32)
    assert error.path == str(tmp_path / "case" / "C_t1.nii.gz") and "different affine from C_t2.nii.gz" in error.reason


def test_volume_to_uint8_maps_zero_to_zero_and_p995_to_255(tmp_path):
    volume = np.zeros((10, 10, 10), np.float32)
    volume[:, :, 5:] = np.arange(1, 501, dtype=np.float32).reshape(10, 10, 5)
    data = load(one([write_nifti(tmp_path / "v.nii.gz", volume)]), U8)
    assert data.image.shape == (10, 10, 10, 3) and data.image.dtype == np.uint8
    assert data.image[:5].max() == 0 and data.image.max() == 255
    high = np.percentile(np.arange(1, 501), 99.5)
    assert data.image[5:, ..., 0].min() == round(255 / high)
    assert any("99.5th percentile" in note for note in data.notes)
    stored = (np.arange(1000).reshape(10, 10, 10) % 200).astype(np.uint8)
    passed = load(one([write_nifti(tmp_path / "u8.nii", stored)]), U8_GRAY)
    assert np.array_equal(to_original(passed.image, passed.nifti)[..., 0], stored) and passed.notes == []


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
def test_damaged_volumes_are_skipped(tmp_path, suffix):
    nan = brain(0)
    nan[3, 3, 3] = np.nan
    write_nifti(tmp_path / f"nan{suffix}", nan)
    (tmp_path / f"empty{suffix}").write_bytes(b"")
    cut = write_nifti(tmp_path / f"cut{suffix}", brain(1))
    cut.write_bytes(cut.read_bytes()[:-200])
    for name, words in (("nan", "1 NaN or infinite voxels"), ("empty", "empty"), ("cut", "the NIfTI is truncated")):
        error = skip_reason(one([tmp_path / f"{name}{suffix}"]), U8)
        assert error.path == str(tmp_path / f"{name}{suffix}") and words in error.reason
    flat = one([write_nifti(tmp_path / f"zero{suffix}", np.zeros((4, 4, 4), np.float32))], F32)
    assert "zero everywhere" in skip_reason(flat, replace(F32, channels=1)).reason


# ---------------------------------------------------------------- NIfTI round trip


def test_axial_slices_go_back_to_the_original_voxel_grid_exactly(tmp_path):
    original = np.random.default_rng(3).integers(0, 1000, (5, 6, 7)).astype(np.int16)
    path = write_nifti(tmp_path / "lps.nii.gz", original, LPS_PERMUTED)
    ras, info = read_nifti(path)
    assert ras.shape == (6, 7, 5, 1)  # voxel axes reordered to R, A, S
    axial = axial_slices(ras)  # (Z, H, W, 1)
    assert np.array_equal(to_original(axial[..., 0], info), original)
    regions = np.stack([axial[..., 0], axial[..., 0] + 1, -axial[..., 0]], axis=-1)  # (Z, H, W, 3)
    assert np.array_equal(to_original(regions, info)[..., 2], -original)
    data = load(one([path]), replace(F32, channels=1))
    assert data.spacing == pytest.approx((1.3, 0.9)) and data.slice_step == pytest.approx(2.5)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
def test_nifti_bytes_keep_affine_and_grid_and_reset_scaling(tmp_path, suffix):
    original = np.random.default_rng(4).integers(0, 6, (5, 6, 7)).astype(np.int16)
    image = nib.Nifti1Image(original, LPS_PERMUTED)
    image.header.set_slope_inter(2.0, 5.0)  # stored values v mean 2 v + 5
    nib.save(image, str(tmp_path / "in.nii.gz"))
    assert nib.load(str(tmp_path / "in.nii.gz")).dataobj.slope == 2
    ras, info = read_nifti(tmp_path / "in.nii.gz")
    mask = to_original((axial_slices(ras)[..., 0] > 10).astype(np.uint8), info)
    out = tmp_path / f"mask{suffix}"
    out.write_bytes(nifti_bytes(mask, info, dtype=np.uint8, compress=suffix == ".nii.gz"))
    written = nib.load(str(out))
    assert np.allclose(written.affine, LPS_PERMUTED) and written.shape == (5, 6, 7)
    assert written.get_data_dtype() == np.uint8 and written.dataobj.slope == 1 and written.dataobj.inter == 0
    assert np.array_equal(np.asarray(written.dataobj), (original * 2 + 5 > 10).astype(np.uint8))
    with pytest.raises(ValueError, match="voxel grid"):
        nifti_bytes(mask[:-1], info)


# ---------------------------------------------------------------- DICOM


def test_dicom_series_is_ordered_by_position_rescaled_and_oriented(tmp_path):
    for name, z, value in (("a.dcm", 10.0, 300), ("b.dcm", 0.0, 100), ("c.dcm", 5.0, 200)):
        pixels = np.full((4, 5), (value + 10) // 2)  # stored; slope 2, intercept -10 give `value`
        pixels[1, 2] = (value + 60) // 2  # a marker at row 1, column 2
        write_dicom(tmp_path / "dcm" / name, pixels, z, "1.2.3", 7)
    (tmp_path / "dcm" / "bad.dcm").write_bytes(b"not dicom at all")
    scans, skipped = discover([tmp_path], None)
    assert [(s.key, s.kind) for s in scans] == [("dcm", "dicom")]
    assert [p.name for p in scans[0].paths] == ["b.dcm", "c.dcm", "a.dcm"]
    assert [s.path for s in skipped] == [str(tmp_path / "dcm" / "bad.dcm")]
    data = load(scans[0], replace(F32, channels=1))
    assert data.image.shape == (3, 4, 5, 1)  # (slices, rows, columns)
    order = data.image[:, 0, 0, 0]
    assert order[0] < order[1] < order[2]  # inferior (z=0, value 100) first
    assert np.unravel_index(np.argmax(data.image[0, ..., 0]), (4, 5)) == (1, 5 - 1 - 2)  # patient left on the left
    assert data.spacing == pytest.approx((0.5, 0.7)) and data.slice_step == pytest.approx(5.0)
    mask = nifti_bytes(to_original(data.image[..., 0] > 0, data.nifti), data.nifti)  # a fresh header: DICOM has none
    (tmp_path / "mask.nii.gz").write_bytes(mask)
    written = nib.load(str(tmp_path / "mask.nii.gz"))
    assert written.shape == (5, 4, 3) and np.allclose(written.affine, data.nifti["affine"])
    assert np.allclose(written.affine[:3, 3], [0, 0, 0]) and np.allclose(np.diag(written.affine), [-0.7, -0.5, 5, 1])
    u8 = load(scans[0], U8_GRAY)
    high = np.percentile(np.repeat([100, 200, 300, 150, 250, 350], [19, 19, 19, 1, 1, 1]), 99.5)
    expected = [round(v * 255 / high) for v in (100, 200, 300)]  # stored values with slope and intercept applied
    assert u8.image[:, 0, 0, 0].tolist() == expected


@pytest.mark.parametrize("positions, reason", [
    ((0.0, 5.0, 10.0, 20.0, 25.0), "spacing is 10 mm here but 5 mm elsewhere"),  # the slice at 15 mm is missing
    ((0.0, 5.0, 5.0, 10.0), "shares its slice position with"),
])
def test_dicom_series_with_a_missing_or_doubled_slice_is_skipped(tmp_path, positions, reason):
    for index, z in enumerate(positions):
        write_dicom(tmp_path / "dcm" / f"{index}.dcm", np.full((4, 5), 100), z, "1.2.3", 7)
    scans, _ = discover([tmp_path], None)
    assert reason in skip_reason(scans[0], replace(F32, channels=1)).reason


def test_dicom_series_for_multi_sequence_artifacts_names_the_series_and_the_channels(tmp_path):
    for z in (0.0, 5.0, 10.0):
        write_dicom(tmp_path / "dcm" / f"{z}.dcm", np.full((4, 5), 100), z, "1.2.3", 7)
    scans, _ = discover([tmp_path], None)
    error = skip_reason(scans[0], F32)  # BraTS artifacts: four sequences
    assert "series 7 (MR) is one 1-channel sequence" in error.reason
    assert f"need 4 channels ({', '.join(MODALITIES)})" in error.reason and "\n" not in error.reason
