"""seg-run's scan discovery: which files make up a scan, its key, and what is skipped and why."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scan_files import F32, MODALITIES, U8, brain, one, solid, write_case, write_dicom, write_nifti, write_rgb

from brainseg.errors import DataError
from brainseg.runtime.io.discovery import discover


def test_discover_mixed_folder_kinds_keys_order_and_skips(tmp_path):
    root = tmp_path / "scans"
    write_rgb(root / "b.tif", solid(1))
    write_rgb(root / "a.png", solid(2))
    for n in (10, 2, 1):
        write_rgb(root / "patient" / f"P_{n}.tif", solid(n))
        write_rgb(root / "patient" / f"P_{n}_mask.tif", np.zeros((16, 16), np.uint8))
    write_nifti(root / "vol.nii.gz", brain(0))
    write_case(root / "case", "C")
    write_nifti(root / "lone" / "L_flair.nii.gz", brain(0))  # one modality file alone is no case
    (root / "notes.txt").write_text("not a scan")
    (root / "README").write_text("not a scan")
    write_rgb(root / ".hidden.png", solid(3))
    write_rgb(root / ".git" / "x.png", solid(3))

    scans, skipped = discover([root], F32.modalities)

    assert [(s.key, s.kind) for s in scans] == [
        ("a", "slice"), ("b", "slice"), ("case", "brats"), ("lone/L_flair", "nifti"), ("patient", "kaggle_3m"),
        ("vol", "nifti"),
    ]
    by_key = {s.key: s for s in scans}
    assert [p.name for p in by_key["patient"].paths] == ["P_1.tif", "P_2.tif", "P_10.tif"]
    assert [p.name for p in by_key["case"].paths] == [f"C_{m}.nii.gz" for m in MODALITIES]
    assert all(s.root == root for s in scans)
    assert [(s.path, s.reason) for s in skipped] == [
        (str(root / "README"), "no file suffix; expected an image, NIfTI (.nii, .nii.gz) or DICOM (.dcm) file"),
        (str(root / "notes.txt"), "unsupported file type '.txt'"),
    ]


def test_without_manifest_modalities_each_nifti_is_its_own_scan(tmp_path):
    write_case(tmp_path / "case", "C")
    scans, skipped = discover([tmp_path], U8.modalities)
    assert [(s.key, s.kind) for s in scans] == [(f"case/C_{m}", "nifti") for m in sorted(MODALITIES)]
    assert skipped == []  # the seg label is ignored, not skipped


def test_brats_case_missing_a_modality_is_skipped_naming_the_file(tmp_path):
    write_case(tmp_path / "BraTS-1", "BraTS-1", modalities=["t2", "t1", "t1ce"], sep="-")
    scans, skipped = discover([tmp_path], F32.modalities)
    assert scans == []
    assert len(skipped) == 1 and skipped[0].path == str(tmp_path / "BraTS-1")
    assert "missing BraTS-1-flair.nii.gz" in skipped[0].reason


def test_brats_2023_case_serves_2021_modalities_and_a_case_with_both_names_is_skipped(tmp_path):
    write_case(tmp_path / "new", "BraTS-GLI-00001-000", modalities=["t2w", "t2f", "t1n", "t1c"], sep="-")
    write_case(tmp_path / "both", "x", modalities=["t2", "flair", "t1", "t1ce"])
    write_nifti(tmp_path / "both" / "x-t1n.nii.gz", brain(9))
    scans, skipped = discover([tmp_path], F32.modalities)  # 2021 names: t2, flair, t1, t1ce
    assert [s.key for s in scans] == ["new"]
    assert [p.name for p in scans[0].paths] == [f"BraTS-GLI-00001-000-{m}.nii.gz" for m in ("t2w", "t2f", "t1n", "t1c")]
    reason = "BraTS case x has several files for one modality (t1 = t1n: x-t1n.nii.gz, x_t1.nii.gz)"
    assert [(s.path, s.reason) for s in skipped] == [(str(tmp_path / "both"), reason)]


def test_missing_path_is_an_error_and_nothing_found_is_not(tmp_path):
    with pytest.raises(DataError, match="nowhere"):
        discover([tmp_path / "nowhere"], None)
    (tmp_path / "empty").mkdir()
    assert discover([tmp_path / "empty"], None) == ([], [])


def test_keys_are_unique_safe_and_deterministic(tmp_path):
    root, other = tmp_path / "root", tmp_path / "root2"
    for path in (root / "x.png", root / "x.tif", root / "we ird#name.png", root / "a..b.png",
                 root / "sub" / "x.png", other / "x.png"):
        write_rgb(path, solid(1))
    found = [discover([root, other, root / "x.png"], None) for _ in range(2)]
    assert found[0] == found[1]
    scans, skipped = found[0]
    assert skipped == []
    keyed = {s.key: s.paths[0] for s in scans}
    assert keyed == {
        "a_b": root / "a..b.png", "sub/x": root / "sub" / "x.png", "we_ird_name": root / "we ird#name.png",
        "x_png": root / "x.png", "x_png_2": other / "x.png", "x_tif": root / "x.tif",
    }
    assert [s.key for s in scans] == sorted(keyed)
    assert one([root / "sub" / "x.png"]).key == "x"
    for n in (1, 2):
        write_rgb(tmp_path / "P" / f"P_{n}.png", solid(n))
    assert one([tmp_path / "P", tmp_path / "P" / "P_1.png"]).key == "P"  # P_1 already belongs to the series


def test_a_root_that_is_a_series_is_named_after_itself(tmp_path):
    for n in (1, 2):
        write_rgb(tmp_path / "TCGA_A" / f"TCGA_A_{n}.png", solid(n))
    scan = one([tmp_path / "TCGA_A"])
    assert (scan.key, scan.kind) == ("TCGA_A", "kaggle_3m")


def test_numbered_images_with_a_repeated_number_are_single_slices(tmp_path):
    for name in ("s_1.png", "s_01.tif", "s_2.png"):
        write_rgb(tmp_path / name, solid(1))
    scans, _ = discover([tmp_path], U8.modalities)
    assert sorted(s.kind for s in scans) == ["slice"] * 3


def test_dicom_folder_with_two_series_gives_two_scans(tmp_path):
    for series, number in (("1.2.3", 3), ("1.2.4", 4)):
        for z in (0.0, 1.0):
            write_dicom(tmp_path / "dcm" / f"{number}_{int(z)}.dcm", np.ones((4, 4)), z, series, number)
    scans, _ = discover([tmp_path / "dcm"], U8.modalities)
    assert [s.key for s in scans] == ["dcm/series3", "dcm/series4"]


def test_dicom_without_pydicom_is_skipped_with_the_extra_named(tmp_path, monkeypatch):
    (tmp_path / "dcm").mkdir()
    (tmp_path / "dcm" / "x.dcm").write_bytes(b"\0" * 200)
    (tmp_path / "dcm" / "y.dcm").write_bytes(b"\0" * 200)
    monkeypatch.setitem(sys.modules, "pydicom", None)
    scans, skipped = discover([tmp_path], U8.modalities)
    assert scans == [] and [s.path for s in skipped] == [str(tmp_path / "dcm")]
    assert "pydicom is not installed" in skipped[0].reason and "brainseg[dicom]" in skipped[0].reason


def test_runtime_readers_import_neither_torch_nor_optional_readers():
    code = (
        "import sys\n"
        "sys.modules['torch'] = None\n"  # any import of torch now raises ImportError
        "import brainseg.runtime.io.discovery, brainseg.runtime.io.loading, brainseg.runtime.io.nifti\n"
        "print(sorted(m for m in ('nibabel', 'pydicom') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parents[1])
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
