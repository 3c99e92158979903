"""DICOM series for the runtime: group files into series and read one as a RAS+ volume with its affine.

A series becomes the same `(data, info)` pair as a NIfTI file (see `brainseg.runtime.io.nifti`),
with an affine built from ImagePositionPatient, ImageOrientationPatient and PixelSpacing, so its
mask is written as a NIfTI volume aligned with the scanner's patient coordinates. pydicom is
imported inside the functions that need it; so is nibabel, which reorients the series and writes
its mask.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from brainseg.errors import BrainsegError, InputSkipped, LimitExceeded, one_line, require
from brainseg.formats.limits import MAX_VOXELS, check_voxels
from brainseg.runtime.io.nifti import check_finite

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
DEFLATED = "1.2.840.10008.1.2.1.99"  # Deflated Explicit VR Little Endian


def dicom_series(paths: Sequence[Path]) -> tuple[list[tuple[str, list[Path]]], list[tuple[Path, str]]]:
    """Group DICOM files by SeriesInstanceUID, each series in slice order.

    Returns ([(label, paths)], [(path, reason)] for files whose header cannot be read); a label
    is "series<SeriesNumber>" (or "series<index>" when the number is absent), ordered by UID.
    """
    pydicom = require("pydicom", "dicom")
    groups: dict[str, list] = {}
    bad = []
    for path in paths:
        try:
            syntax = str(pydicom.filereader.read_file_meta_info(path).get("TransferSyntaxUID", ""))
            if syntax == DEFLATED:  # pydicom inflates the whole dataset at once, however large it says it is
                bad.append((path, "uses the Deflated transfer syntax, which no header bounds; not read"))
                continue
            header = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception as exc:  # pydicom raises many types for a broken file
            bad.append((path, f"cannot read DICOM header ({one_line(exc)})"))
            continue
        groups.setdefault(str(header.get("SeriesInstanceUID", "")), []).append((path, header))
    series = []
    for index, uid in enumerate(sorted(groups), start=1):
        members = slice_order(groups[uid])
        number = members[0][1].get("SeriesNumber")
        series.append((f"series{number if number not in (None, '') else index}", [p for p, _ in members]))
    return series, bad


def read_dicom(paths: Sequence[Path], *, max_voxels: int = MAX_VOXELS) -> tuple[np.ndarray, dict]:
    """Read one grayscale series as float32 RAS+ (X, Y, Z, 1) plus `info` (see the module docstring).

    Slices are ordered along the slice normal by ImagePositionPatient (InstanceNumber when a
    position is missing, and then the orientation is assumed axial); RescaleSlope and
    RescaleIntercept are applied (MONOCHROME1 is not inverted). Reorientation to RAS+ takes each
    voxel axis to its nearest patient axis (nibabel's `io_orientation`): exact for axial, coronal
    and sagittal series, approximate for oblique ones. A series whose headers declare more than
    `max_voxels` voxels (files x rows x columns x frames x samples) is refused before any pixel
    data is decoded, and whatever pydicom or nibabel raise skips it with their error on one line.
    """
    try:
        return _read_series(paths, max_voxels)
    except BrainsegError:  # InputSkipped, or pydicom or nibabel is not installed
        raise
    except Exception as exc:  # pydicom and nibabel raise many types for tags that make no sense
        raise InputSkipped(paths[0], f"cannot read the DICOM series ({one_line(exc)})") from None


def _read_series(paths: Sequence[Path], max_voxels: int) -> tuple[np.ndarray, dict]:
    pydicom = require("pydicom", "dicom")
    orientations = require("nibabel", "nifti").orientations
    members = []
    for path in paths:
        try:
            members.append((Path(path), pydicom.dcmread(path)))
        except Exception as exc:  # pydicom raises many types for a broken file
            raise InputSkipped(path, f"cannot read DICOM ({one_line(exc)})") from exc
    _check_declared(members, max_voxels)
    members = slice_order(members)
    check_spacing(members)
    planes = [_dicom_pixels(path, ds) for path, ds in members]
    for (path, _), plane in zip(members, planes, strict=True):
        if plane.shape != planes[0].shape:
            raise InputSkipped(path, f"is {plane.shape} but {members[0][0].name} is {planes[0].shape}")
    volume = np.stack([plane.T for plane in planes], axis=-1)  # (columns, rows, slices) = (X, Y, Z)
    check_finite(members[0][0], volume)
    affine = _dicom_affine([ds for _, ds in members])
    ornt = orientations.io_orientation(affine)
    zooms = np.linalg.norm(affine[:3, :3], axis=0)
    ras = orientations.apply_orientation(volume, ornt)
    info = {
        "affine": affine, "header": None, "shape": tuple(volume.shape), "to_axial": {"ornt": ornt},
        "zooms": tuple(float(zooms[i]) for i in np.argsort(ornt[:, 0])),
        "source_dtype": _stored_dtype(members[0][1]),
        "series": _describe(members[0][1]),
    }
    return np.ascontiguousarray(ras[..., None], dtype=np.float32), info


def _check_declared(members: list, max_voxels: int) -> None:
    """InputSkipped when the series' headers declare more than `max_voxels` voxels in all."""
    path, first = members[0]
    rows, columns = int(first.get("Rows", 0) or 0), int(first.get("Columns", 0) or 0)
    per_file = rows * columns * int(first.get("NumberOfFrames", 1) or 1) * int(first.get("SamplesPerPixel", 1) or 1)
    try:
        extra = per_file // max(1, rows * columns)  # frames x samples per file
        check_voxels((columns, rows, len(members), *((extra,) if extra > 1 else ())), max_voxels)
    except LimitExceeded as err:
        raise LimitExceeded(f"the series {err.reason}").at(path) from None


def slice_order(members: list) -> list:
    """(path, dataset) pairs sorted by position along the slice normal, else InstanceNumber."""
    if all("ImagePositionPatient" in ds and "ImageOrientationPatient" in ds for _, ds in members):
        normal = _normal(members[0][1])
        return sorted(members, key=lambda m: (float(np.dot(normal, _floats(m[1].ImagePositionPatient))), str(m[0])))
    return sorted(members, key=lambda m: (int(m[1].get("InstanceNumber") or 0), str(m[0])))


def check_spacing(members: list) -> None:
    """Raise `InputSkipped` when ordered (path, dataset) slices are not evenly spaced along the normal.

    Two slices at one position, or a step that differs from the others by more than 10% (or
    0.05 mm), means a slice is missing or the series mixes acquisitions: its voxels would not sit
    where its affine says. A series without positions cannot be checked and passes.
    """
    if len(members) < 3 or not all("ImagePositionPatient" in ds for _, ds in members):
        return
    normal = _normal(members[0][1])
    where = np.array([float(np.dot(normal, _floats(ds.ImagePositionPatient))) for _, ds in members])
    steps = np.diff(where)
    doubled = np.flatnonzero(steps <= 1e-6)
    if doubled.size:
        first, second = members[doubled[0]][0], members[doubled[0] + 1][0]
        raise InputSkipped(second, f"shares its slice position with {first.name}; not one volume")
    typical = float(np.median(steps))
    off = np.abs(steps - typical) > max(0.1 * typical, 0.05)
    if off.any():
        at = int(np.flatnonzero(off)[0])
        raise InputSkipped(
            members[at + 1][0],
            f"slice spacing is {steps[at]:.3g} mm here but {typical:.3g} mm elsewhere in the series "
            f"({int(off.sum())} uneven step{'s' if off.sum() > 1 else ''}: a slice missing or two series mixed)",
        )


def _dicom_pixels(path: Path, ds) -> np.ndarray:
    if int(ds.get("SamplesPerPixel", 1)) != 1:
        raise InputSkipped(path, f"has {ds.SamplesPerPixel} samples per pixel; only grayscale DICOM is supported")
    try:
        pixels = ds.pixel_array
    except Exception as exc:  # decoder errors depend on the installed handlers
        raise InputSkipped(path, f"cannot decode the pixel data ({one_line(exc)})") from exc
    slope = float(ds.get("RescaleSlope", 1) or 1)
    return pixels.astype(np.float32) * slope + float(ds.get("RescaleIntercept", 0) or 0)


def _dicom_affine(datasets: list) -> np.ndarray:
    """RAS+ affine of the (column, row, slice) voxel array of an ordered series."""
    first = datasets[0]
    row_step, column_step = (_floats(first.PixelSpacing) if "PixelSpacing" in first else (1.0, 1.0))
    orientation = _floats(first.get("ImageOrientationPatient") or (1, 0, 0, 0, 1, 0))
    along_row, along_column = orientation[:3], orientation[3:]
    thickness = float(first.get("SpacingBetweenSlices") or first.get("SliceThickness") or 1.0)
    slice_step = _normal(first) * thickness
    if len(datasets) > 1 and all("ImagePositionPatient" in ds for ds in datasets):
        span = _floats(datasets[-1].ImagePositionPatient) - _floats(first.ImagePositionPatient)
        if np.linalg.norm(span) > 1e-6:  # else all slices share one position; keep the thickness
            slice_step = span / (len(datasets) - 1)
    lps = np.eye(4)
    lps[:3, 0] = along_row * column_step
    lps[:3, 1] = along_column * row_step
    lps[:3, 2] = slice_step
    lps[:3, 3] = _floats(first.get("ImagePositionPatient") or (0, 0, 0))
    return _LPS_TO_RAS @ lps


def _describe(ds) -> str:
    """The series as a person names it: "series 7 'AX T2 FLAIR' (MR)"."""
    number, text, modality = ds.get("SeriesNumber"), str(ds.get("SeriesDescription") or "").strip(), ds.get("Modality")
    parts = (f"series {number}" if number not in (None, "") else "series",
             f"'{text}'" if text else "", f"({modality})" if modality else "")
    return " ".join(part for part in parts if part)


def _stored_dtype(ds) -> str:
    """The stored pixel type, e.g. "int16", before RescaleSlope/Intercept."""
    signed = int(ds.get("PixelRepresentation", 0) or 0) == 1
    return f"{'int' if signed else 'uint'}{int(ds.get('BitsAllocated', 16) or 16)}"


def _normal(ds) -> np.ndarray:
    orientation = _floats(ds.get("ImageOrientationPatient") or (1, 0, 0, 0, 1, 0))
    return np.cross(orientation[:3], orientation[3:])


def _floats(values) -> np.ndarray:
    return np.array([float(v) for v in values])
