"""read_dataset(patients=...): only the asked patients are read, the others' files never opened."""

import pytest
from data_files import make_brats, make_folders, make_kaggle, nib, truncate

from brainseg.data.readers import read_dataset
from brainseg.errors import DataError


def test_kaggle_reads_only_the_asked_patients(tmp_path):
    root = make_kaggle(tmp_path)
    truncate(root / "TCGA_B" / "TCGA_B_1.tif")  # would be skipped with a reason if it were opened
    dataset = read_dataset(root, patients={"TCGA_A", "TCGA_C"})
    assert [v.patient_id for v in dataset.volumes] == ["TCGA_A", "TCGA_C"] and dataset.skipped == []
    assert read_dataset(root).skipped, "the truncated slice is found when every patient is read"


def test_folders_reads_only_the_asked_patients(tmp_path):
    root = make_folders(tmp_path)
    truncate(root / "images" / "P2_1.png")
    dataset = read_dataset(root, patients=["P1"])
    assert [v.patient_id for v in dataset.volumes] == ["P1"] and dataset.skipped == []
    with pytest.raises(DataError):
        read_dataset(root, patients=["NOBODY"])


@pytest.mark.skipif(nib is None, reason="nibabel is not installed (the nifti extra)")
def test_brats_reads_only_the_asked_cases(tmp_path):
    root = make_brats(tmp_path, cases=3)
    truncate(root / "BraTS_001" / "BraTS_001_flair.nii.gz")
    dataset = read_dataset(root, patients=("BraTS_000", "BraTS_002"))
    assert [v.patient_id for v in dataset.volumes] == ["BraTS_000", "BraTS_002"] and dataset.skipped == []
