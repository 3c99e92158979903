"""Scan files for the runtime's tests: slices, NIfTI volumes, BraTS cases and DICOM series on disk."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest

from brainseg.artifacts.manifest import InputSpec
from brainseg.errors import InputSkipped
from brainseg.runtime.io.discovery import discover
from brainseg.runtime.io.loading import load
from brainseg.runtime.io.scans import Scan

nib = pytest.importorskip("nibabel")

U8 = InputSpec(name="image", dtype="uint8", layout="NHWC", channels=3, height=32, width=32, normalisation={},
               modalities=None)
U8_GRAY = replace(U8, channels=1)
MODALITIES = ("t2", "flair", "t1", "t1ce")  # deliberately not alphabetical
F32 = replace(U8, dtype="float32", channels=4, modalities=MODALITIES)
LPS_PERMUTED = np.array([  # voxel axis 0 -> superior, 1 -> patient left, 2 -> posterior; anisotropic
    [0.0, -0.9, 0.0, 12.0],
    [0.0, 0.0, -1.3, 40.0],
    [2.5, 0.0, 0.0, -30.0],
    [0.0, 0.0, 0.0, 1.0],
])


def write_rgb(path: Path, rgb: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = rgb if rgb.ndim == 2 or rgb.shape[2] == 1 else cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    if not cv2.imwrite(str(path), image):
        raise RuntimeError(f"cv2 could not write {path}")
    return path


def solid(value: int, size: int = 16, green: int = 100, blue: int = 200) -> np.ndarray:
    rgb = np.zeros((size, size, 3), np.uint8)
    rgb[...] = (value, green, blue)
    return rgb


def write_nifti(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.diag([1.0, 1.2, 2.0, 1.0]) if affine is None else affine), str(path))
    return path


def brain(seed: int, shape=(8, 9, 6)) -> np.ndarray:
    """A float32 volume with a non-zero 'brain' block and a zero background."""
    volume = np.zeros(shape, np.float32)
    volume[2:6, 2:7, 1:5] = np.random.default_rng(seed).uniform(50, 500, (4, 5, 4))
    return volume


def write_case(folder: Path, case: str, modalities=MODALITIES, affine=None, sep="_") -> Path:
    for i, modality in enumerate(modalities):
        write_nifti(folder / f"{case}{sep}{modality}.nii.gz", brain(i), affine)
    seg = np.zeros((8, 9, 6), np.uint8)
    seg[3:5, 3:5, 2:4] = 1
    write_nifti(folder / f"{case}{sep}seg.nii.gz", seg, affine)
    return folder


def one(paths, spec=U8) -> Scan:
    scans, skipped = discover(paths, spec.modalities)
    assert len(scans) == 1 and skipped == [], (scans, skipped)
    return scans[0]


def skip_reason(scan: Scan, spec: InputSpec) -> InputSkipped:
    with pytest.raises(InputSkipped) as info:
        load(scan, spec)
    return info.value


def write_dicom(path: Path, pixels: np.ndarray, z: float, series: str, number: int) -> Path:
    pydicom = pytest.importorskip("pydicom")
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
    ds.SeriesInstanceUID, ds.SeriesNumber, ds.InstanceNumber = series, number, int(z)
    ds.Modality = "MR"  # a DICOM SEG references its source's study and frame of reference: one per series here
    ds.StudyInstanceUID, ds.FrameOfReferenceUID = f"{series}.1", f"{series}.2"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds.ImagePositionPatient, ds.ImageOrientationPatient = [0, 0, z], [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing, ds.RescaleSlope, ds.RescaleIntercept = [0.5, 0.7], 2, -10
    path.parent.mkdir(parents=True, exist_ok=True)
    pydicom.dcmwrite(path, ds, enforce_file_format=True)
    return path
