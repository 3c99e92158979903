"""A volume whose header declares more voxels than --max-voxels is skipped before anything is allocated
for it, by every volume reader (NIfTI, 4-D NIfTI, a BraTS case, a DICOM series), and seg-run goes on."""

from __future__ import annotations

import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from lying_headers import nifti_claiming
from scan_files import F32, MODALITIES, U8, U8_GRAY, brain, one, write_case, write_dicom, write_nifti

from brainseg.errors import InputTooLarge
from brainseg.formats.limits import MAX_VOXELS, SizeLimits
from brainseg.runtime.io.discovery import discover
from brainseg.runtime.io.loading import load

pytest.importorskip("nibabel")


def _declaring(path: Path, dims: tuple[int, ...]) -> Path:
    """A .nii.gz at `path` whose header declares `dims` of uint8 and which holds no voxels at all."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(nifti_claiming(*dims))
    return path


def _refused_cheaply(scan, spec, max_voxels: int = MAX_VOXELS) -> InputTooLarge:
    """The InputSkipped of loading `scan`, checked to come at once and without a large allocation."""
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(InputTooLarge) as refused:
            load(scan, spec, limits=SizeLimits(max_voxels=max_voxels))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - started < 2.0
    assert peak < 20 * 2**20, f"{peak / 2**20:.0f} MiB allocated for a volume that was refused"
    return refused.value


def test_a_nifti_declaring_1024_cubed_is_skipped_naming_its_size_and_the_limit(tmp_path):
    scan = one([_declaring(tmp_path / "bomb.nii.gz", (1024, 1024, 1024))], U8)
    refused = _refused_cheaply(scan, U8)
    assert refused.reason == f"declares 1024x1024x1024 = {1024**3} voxels; the limit is {MAX_VOXELS} (--max-voxels)"


def test_channels_count_as_voxels(tmp_path):
    scan = one([_declaring(tmp_path / "four.nii.gz", (300, 300, 300, 4))], U8)  # 108M voxels over 4 channels
    assert "300x300x300x4" in _refused_cheaply(scan, U8).reason


def test_a_brats_case_with_one_huge_modality_is_skipped(tmp_path):
    case = write_case(tmp_path / "BraTS-001", "BraTS-001")
    _declaring(case / "BraTS-001_t1ce.nii.gz", (1024, 1024, 1024))
    scans, _ = discover([tmp_path], MODALITIES)
    assert len(scans) == 1
    refused = _refused_cheaply(scans[0], F32)
    assert Path(refused.path).name == "BraTS-001_t1ce.nii.gz" and "1024x1024x1024" in refused.reason


def test_a_dicom_series_declaring_a_huge_volume_is_skipped_before_its_pixels_are_decoded(tmp_path):
    pydicom = pytest.importorskip("pydicom")
    paths = [write_dicom(tmp_path / "series" / f"{i}.dcm", np.zeros((4, 4)), float(i), "1.2.3", 1) for i in range(2)]
    for path in paths:  # headers that lie: 60000 x 60000 per file, with 32 bytes of pixel data
        ds = pydicom.dcmread(path)
        ds.Rows, ds.Columns = 60000, 60000
        pydicom.dcmwrite(path, ds, enforce_file_format=True)
    refused = _refused_cheaply(one([tmp_path / "series"], U8_GRAY), U8_GRAY)
    assert refused.reason == (f"the series declares 60000x60000x2 = {60000 * 60000 * 2} voxels; the limit is "
                              f"{MAX_VOXELS} (--max-voxels)")


def test_a_volume_at_the_limit_is_read_and_one_voxel_over_it_is_not(tmp_path):
    data = brain(0)  # (8, 9, 6)
    scan = one([write_nifti(tmp_path / "v.nii.gz", data)], U8)
    assert load(scan, U8, limits=SizeLimits(max_voxels=data.size)).image.shape[0] == data.shape[2]
    assert "(--max-voxels)" in _refused_cheaply(scan, U8, max_voxels=data.size - 1).reason


@pytest.mark.slow
def test_seg_run_skips_the_huge_volume_and_segments_the_rest(tiny_artifacts, tmp_path):
    from brainseg.runtime.batch.pipeline import RunOptions, segment

    inputs = tmp_path / "in"
    write_nifti(inputs / "good.nii.gz", (brain(1) * 40).astype(np.uint8))
    _declaring(inputs / "bomb.nii.gz", (2048, 2048, 2048))
    started = time.perf_counter()
    summary = segment([inputs], tiny_artifacts, tmp_path / "out", RunOptions(overlays=False))
    assert time.perf_counter() - started < 60
    assert summary.done == 1 and summary.exit_code == 1
    (skipped,) = summary.skipped
    assert Path(skipped["path"]).name == "bomb.nii.gz" and "2048x2048x2048" in skipped["reason"]
    assert (tmp_path / "out" / "volumes" / "good.nii.gz").is_file()


@pytest.mark.parametrize("limit", ["max_pixels", "max_voxels"])
def test_seg_run_and_seg_serve_default_limits_are_the_runtime_defaults(limit):
    import inspect

    from brainseg.cli import run_command
    from brainseg.formats.limits import SizeLimits
    from brainseg.runtime.segmenter import SegmenterOptions
    from brainseg.serve.cli import serve_command
    from brainseg.serve.options import ServeOptions

    defaults = {inspect.signature(command).parameters[limit].default for command in (run_command, serve_command)}
    assert defaults == {getattr(SizeLimits(), limit)} == {getattr(SegmenterOptions(), limit)}
    assert getattr(ServeOptions(), limit) == getattr(SizeLimits(), limit)


def test_a_deflated_dicom_is_skipped_before_pydicom_inflates_it(tmp_path):
    pydicom = pytest.importorskip("pydicom")
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    path = write_dicom(tmp_path / "series" / "0.dcm", np.zeros((4, 4)), 0.0, "1.2.3", 1)
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    pydicom.dcmwrite(path, ds, enforce_file_format=True)
    assert pydicom.dcmread(path).Rows == 4  # a valid file, which pydicom reads by inflating all of it
    scans, skipped = discover([tmp_path / "series"], None)
    assert scans == [] and [Path(s.path).name for s in skipped] == ["0.dcm"]
    assert "Deflated transfer syntax" in skipped[0].reason
