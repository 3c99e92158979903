"""Reading BraTS cases into z-scored axial volumes, with every bad case skipped for a reason."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from data_files import BRATS_SHAPE, HOT, ZOOMS, brats_arrays, make_brats, nib, skip_for, truncate, write_brats_case

from brainseg.data.names import BRATS_2023_MODALITIES, BRATS_MODALITIES
from brainseg.data.readers import read_dataset
from brainseg.data.volume import Dataset
from brainseg.errors import BrainsegError, ConfigError, DataError

pytestmark = pytest.mark.filterwarnings("ignore::brainseg.data.readers.SkippedInputWarning")


def test_brats_volumes_are_zscored_axial_brain_slices(tmp_path):
    dataset = read_dataset(make_brats(tmp_path))
    assert dataset.layout == "brats" and dataset.skipped == []
    assert [v.patient_id for v in dataset.volumes] == ["BraTS_000", "BraTS_001"]
    volume = dataset.volumes[0]
    x, y, _ = BRATS_SHAPE
    assert volume.image.shape == (4, y, x, 4) and volume.image.dtype == np.float32
    assert volume.slice_names == ["BraTS_000:z2", "BraTS_000:z3", "BraTS_000:z4", "BraTS_000:z5"]
    assert volume.spacing == (ZOOMS[1], ZOOMS[0])
    assert volume.slice_step == ZOOMS[2]
    for c in range(4):
        channel = volume.image[..., c]
        brain = channel[channel != 0]
        assert brain.size == 8 * 6 * 4
        assert abs(brain.mean()) < 1e-5 and abs(brain.std() - 1) < 1e-4
    assert volume.mask.shape == (4, y, x, 1) and int(volume.mask.sum()) == 13


def test_brats_modality_order_and_orientation(tmp_path):
    write_brats_case(tmp_path, "ras", brats_arrays())
    write_brats_case(tmp_path, "lps", brats_arrays(), flip=True)
    dataset = read_dataset(tmp_path, modalities=("flair", "t1"))
    ras, lps = dataset.volumes[1], dataset.volumes[0]
    assert ras.image.shape[-1] == 2
    for c, modality in enumerate(("flair", "t1")):
        hx, hy, hz = HOT[modality]
        expected = (hz - 2, BRATS_SHAPE[1] - 1 - hy, hx)  # slice, row (anterior first), column
        assert np.unravel_index(np.argmax(ras.image[..., c]), ras.image.shape[:3]) == expected
    np.testing.assert_allclose(lps.image, ras.image, atol=1e-6)
    assert np.array_equal(lps.mask, ras.mask)


@pytest.mark.parametrize("et_label", [4, 3])
def test_brats_whole_tumour_and_regions(tmp_path, et_label):
    write_brats_case(tmp_path, "case", brats_arrays(et_label=et_label))
    wt = read_dataset(tmp_path, target="wt").volumes[0].mask
    regions = read_dataset(tmp_path, target="brats-regions").volumes[0].mask
    assert wt.shape[-1] == 1 and regions.shape[-1] == 3
    assert regions.reshape(-1, 3).sum(axis=0).tolist() == [13, 7, 3]  # WT, TC, ET
    assert np.array_equal(regions[..., 0], wt[..., 0])
    assert set(np.unique(regions).tolist()) == {0, 1}


def test_brats_2023_names_and_plain_nii(tmp_path):
    arrays = brats_arrays()
    renamed = dict(zip(("t1n", "t1c", "t2w", "t2f", "seg"), arrays.values(), strict=True))
    write_brats_case(tmp_path, "BraTS-GLI-00001-000", renamed, sep="-", suffix=".nii")
    dataset = read_dataset(tmp_path, modalities=("t1n", "t1c", "t2w", "t2f"))
    assert dataset.volumes[0].image.shape == (4, BRATS_SHAPE[1], BRATS_SHAPE[0], 4)


def test_either_year_s_modality_names_read_the_other_year_s_files(tmp_path):
    arrays = brats_arrays()
    write_brats_case(tmp_path / "2021", "case", arrays)
    renamed = dict(zip((*BRATS_2023_MODALITIES, "seg"), arrays.values(), strict=True))
    write_brats_case(tmp_path / "2023", "BraTS-GLI-00001-000", renamed, sep="-")
    old_names, new_names = ("flair", "t1", "t1ce", "t2"), ("t2f", "t1n", "t1c", "t2w")  # not the files' order
    reference = read_dataset(tmp_path / "2021", modalities=old_names, target="brats-regions").volumes[0]
    for year in ("2021", "2023"):
        for names in (old_names, new_names):
            dataset = read_dataset(tmp_path / year, modalities=names, target="brats-regions")
            assert dataset.skipped == [], (year, names)
            np.testing.assert_array_equal(dataset.volumes[0].image, reference.image, err_msg=f"{year} {names}")
            np.testing.assert_array_equal(dataset.volumes[0].mask, reference.mask, err_msg=f"{year} {names}")
    assert BRATS_MODALITIES == ("t1", "t1ce", "t2", "flair")  # the default channels keep 2021's names


def test_a_case_with_both_years_files_of_one_sequence_is_skipped_naming_both(tmp_path):
    def with_t1n(folder):
        nib.save(nib.Nifti1Image(brats_arrays()["t1"], np.diag([*ZOOMS, 1.0])), folder / "bad-t1n.nii.gz")

    dataset = brats_case_with(tmp_path, with_t1n)
    assert skip_for(dataset, "bad").reason == (
        "several t1 files (t1 = t1n, its BraTS 2021 and 2023 names): bad-t1n.nii.gz, bad_t1.nii.gz; keep one"
    )


def test_modalities_naming_one_sequence_twice_are_refused(tmp_path):
    make_brats(tmp_path, cases=1)
    with pytest.raises(ConfigError, match=r"name one sequence twice: t1 = t1n"):
        read_dataset(tmp_path, modalities=("t1", "t1n", "t2"))


def brats_case_with(tmp_path: Path, damage) -> Dataset:
    """Two good cases and one damaged by `damage(folder)`; returns what was read."""
    make_brats(tmp_path, cases=2)
    folder = write_brats_case(tmp_path, "bad", brats_arrays())
    damage(folder)
    dataset = read_dataset(tmp_path)
    assert [v.patient_id for v in dataset.volumes] == ["BraTS_000", "BraTS_001"]
    assert len(dataset.skipped) == 1
    return dataset


def test_brats_missing_modality_or_seg_is_skipped(tmp_path):
    dataset = brats_case_with(tmp_path / "a", lambda f: (f / "bad_t1ce.nii.gz").unlink())
    assert skip_for(dataset, "bad").reason == "missing bad_t1ce.nii.gz or bad_t1c.nii.gz (or .nii)"
    dataset = brats_case_with(tmp_path / "b", lambda f: (f / "bad_seg.nii.gz").unlink())
    assert skip_for(dataset, "bad").reason == "missing bad_seg.nii.gz (or .nii)"


def test_brats_truncated_or_garbage_nifti_is_skipped(tmp_path):
    dataset = brats_case_with(tmp_path / "a", lambda f: truncate(f / "bad_flair.nii.gz", 0.5))
    assert "the NIfTI is truncated" in skip_for(dataset, "bad_flair.nii.gz").reason
    dataset = brats_case_with(
        tmp_path / "b", lambda f: (f / "bad_t2.nii.gz").write_bytes(b"junk" * 100)
    )
    assert "not a single-file NIfTI" in skip_for(dataset, "bad_t2.nii.gz").reason


def test_brats_truncated_uncompressed_nifti_is_skipped(tmp_path):
    write_brats_case(tmp_path, "good", brats_arrays(), suffix=".nii")
    folder = write_brats_case(tmp_path, "bad", brats_arrays(), suffix=".nii")
    truncate(folder / "bad_t1.nii", 0.8)
    dataset = read_dataset(tmp_path)
    assert [v.patient_id for v in dataset.volumes] == ["good"]
    assert "the NIfTI is truncated: its header declares" in skip_for(dataset, "bad_t1.nii").reason


def test_brats_nan_voxels_shape_mismatch_and_unknown_labels_are_skipped(tmp_path):
    def with_nan(folder):
        data = brats_arrays()["t2"]
        data[5, 5, 3] = np.nan
        nib.save(nib.Nifti1Image(data, np.diag([*ZOOMS, 1.0])), folder / "bad_t2.nii.gz")

    def with_shape(folder):
        nib.save(
            nib.Nifti1Image(np.ones((12, 10, 7), np.float32), np.eye(4)), folder / "bad_t1.nii.gz"
        )

    def with_label(folder):
        seg = brats_arrays()["seg"]
        seg[4, 4, 4] = 5
        nib.save(nib.Nifti1Image(seg, np.diag([*ZOOMS, 1.0])), folder / "bad_seg.nii.gz")

    dataset = brats_case_with(tmp_path / "a", with_nan)
    assert skip_for(dataset, "bad_t2.nii.gz").reason == "has 1 NaN or infinite voxels"
    dataset = brats_case_with(tmp_path / "b", with_shape)
    assert (
        skip_for(dataset, "bad").reason
        == "bad_t1.nii.gz is (12, 10, 7) but bad_seg.nii.gz is (12, 10, 8)"
    )
    dataset = brats_case_with(tmp_path / "c", with_label)
    assert "segmentation labels [5] found" in skip_for(dataset, "bad_seg.nii.gz").reason


def test_brats_mixed_label_conventions_and_grids_are_skipped(tmp_path):
    def with_3_and_4(folder):
        seg = brats_arrays(et_label=4)["seg"]
        seg[seg == 1] = 3  # BraTS 2023's enhancing label beside the older one
        nib.save(nib.Nifti1Image(seg, np.diag([*ZOOMS, 1.0])), folder / "bad_seg.nii.gz")

    def with_grid(folder):
        nib.save(nib.Nifti1Image(brats_arrays()["t1"], np.diag([*ZOOMS[:2], 9.0, 1.0])), folder / "bad_t1.nii.gz")

    dataset = brats_case_with(tmp_path / "a", with_3_and_4)
    assert "both label 3 and label 4" in skip_for(dataset, "bad_seg.nii.gz").reason
    dataset = brats_case_with(tmp_path / "b", with_grid)
    assert skip_for(dataset, "bad").reason == "bad_t1.nii.gz and bad_seg.nii.gz have different affines (not one grid)"


def test_brats_all_cases_skipped_raises(tmp_path):
    folder = write_brats_case(tmp_path, "only", brats_arrays())
    (folder / "only_t2.nii.gz").unlink()
    with pytest.raises(
        DataError, match=r"\(brats layout\) has no usable volume: 1 inputs skipped: .*only_t2"
    ):
        read_dataset(tmp_path)


def test_brats_without_nibabel_names_the_extra(tmp_path, monkeypatch):
    make_brats(tmp_path, cases=1)
    monkeypatch.setitem(sys.modules, "nibabel", None)
    with pytest.raises(BrainsegError, match=r"pip install 'brainseg\[nifti\]'"):
        read_dataset(tmp_path)


def test_brats_stream_reads_each_case_only_when_it_is_reached(tmp_path):
    from brainseg.data.readers import stream_dataset

    make_brats(tmp_path, cases=3)
    stream = stream_dataset(tmp_path, target="brats-regions")
    volumes = iter(stream)
    assert next(volumes).patient_id == "BraTS_000" and stream.layout == "brats"
    truncate(tmp_path / "BraTS_002" / "BraTS_002_t2.nii.gz")  # after the stream began, before it reached the case
    assert [v.patient_id for v in volumes] == ["BraTS_001"]
    assert [s.path for s in stream.skipped] == [str(tmp_path / "BraTS_002" / "BraTS_002_t2.nii.gz")]
    stream.check_read(2)
    with pytest.raises(DataError, match="no usable volume: 1 inputs skipped"):
        stream.check_read(0)
