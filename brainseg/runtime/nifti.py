"""Volume files for the runtime: read NIfTI files and DICOM series, write masks back as NIfTI.

Orientation follows training (`brainseg.data.brats`): a volume is brought to the closest
canonical orientation (RAS+; nibabel's `as_closest_canonical` for NIfTI) and cut into axial
slices with `axial_slices`: slice 0 inferior, row 0 anterior, column 0 the patient's left. The
readers return that RAS+ array and an `info` dict (`ScanData.nifti`):

    {"affine": the input's (4, 4) affine, "header": a copy of its NIfTI header (None for DICOM),
     "shape": the input's voxel shape (X, Y, Z), "to_axial": {"ornt": (3, 2) orientation
     transform from the input's axes to RAS+ (nibabel's convention)},
     "zooms": RAS+ voxel size in mm, "source_dtype": the stored dtype, e.g. "int16"}

so `to_original` can put an axial prediction back on the input's voxel grid and `write_like`
can save it with the input's affine. DICOM series get the same dict, with an affine built from
ImagePositionPatient, ImageOrientationPatient and PixelSpacing, so their masks can be written as
NIfTI too.

A file that cannot be used raises `UnreadableImage` (path and a one-line reason). nibabel and
pydicom are imported inside the functions that need them.
"""

from __future__ import annotations

import gzip
import re
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from brainseg.data.brats import axial_slices, import_nibabel, zscore_nonzero
from brainseg.data.imageio import UnreadableImage
from brainseg.errors import missing_extra
from brainseg.fileio import write_atomic

NIFTI_SUFFIXES = (".nii.gz", ".nii")
BRATS_MODALITY_NAMES = ("t1", "t1ce", "t2", "flair", "t1n", "t1c", "t2w", "t2f")
LABEL = "seg"
_MODALITY_FILE = re.compile(r"^(?P<case>.+)[_-](?P<modality>[A-Za-z0-9]+)$")
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])

__all__ = ["BRATS_MODALITY_NAMES", "NIFTI_SUFFIXES", "brats_cases", "dicom_series", "file_stem", "file_suffix",
           "import_pydicom", "is_label", "read_dicom", "read_nifti", "nifti_bytes", "to_original", "volume_to_input",
           "write_like"]


def file_suffix(name: str) -> str:
    """".nii.gz" for gzipped NIfTI files, else the last suffix (".png", ".nii")."""
    return ".nii.gz" if name.lower().endswith(".nii.gz") else Path(name).suffix


def file_stem(name: str) -> str:
    """The name without `file_suffix`: "case_t1.nii.gz" -> "case_t1"."""
    return name[: len(name) - len(file_suffix(name))]


def is_label(name: str) -> bool:
    """Whether a NIfTI file name is a segmentation label: `<case>_seg` or `<case>-seg`."""
    match = _MODALITY_FILE.match(file_stem(name))
    return bool(match) and match["modality"].lower() == LABEL


def brats_cases(
    files: Sequence[Path], modalities: Sequence[str]
) -> tuple[dict[str, list[tuple[str, Path]]], list[Path]]:
    """Group one folder's NIfTI files into BraTS cases: ({case: [(modality, path)]}, the rest).

    A case is two or more files `<case>_<modality>` / `<case>-<modality>` with one `<case>`,
    where the modality is in `BRATS_MODALITY_NAMES` or `modalities`, or is the label "seg" (the
    label counts towards the two but is left out of the case). Without `modalities` there are no
    cases. The rest is sorted and still holds any label files.
    """
    if not modalities:
        return {}, sorted(files)
    known = {*BRATS_MODALITY_NAMES, *modalities, LABEL}
    groups: dict[str, list[tuple[str, Path]]] = {}
    rest = []
    for path in files:
        match = _MODALITY_FILE.match(file_stem(path.name))
        if match and match["modality"].lower() in known:
            groups.setdefault(match["case"], []).append((match["modality"].lower(), path))
        else:
            rest.append(path)
    cases = {}
    for case, members in sorted(groups.items()):
        images = [(m, p) for m, p in members if m != LABEL]
        if len(members) >= 2 and images:
            cases[case] = images
        else:
            rest.extend(path for _, path in members)
    return cases, sorted(rest)


def read_nifti(path: Path) -> tuple[np.ndarray, dict]:
    """Read a 3-D volume, or a 4-D one with channels last, as float32 RAS+ (X, Y, Z, C) plus `info`.

    Raises:
        UnreadableImage: the file is empty, not NIfTI, truncated, not 3-D or 4-D, or has NaN or
            infinite voxels.
    """
    nib = import_nibabel()
    path = Path(path)
    if path.is_file() and path.stat().st_size == 0:
        raise UnreadableImage(path, "file is empty (0 bytes)")
    try:
        original = nib.load(str(path))
        canonical = nib.as_closest_canonical(original)
        data = canonical.get_fdata(dtype=np.float32)
    except (nib.filebasedimages.ImageFileError, OSError, EOFError, ValueError, zlib.error) as exc:
        raise UnreadableImage(path, f"cannot read NIfTI ({_one_line(exc)})") from exc
    if data.ndim == 3:
        data = data[..., None]
    if data.ndim != 4:
        raise UnreadableImage(path, f"is {data.ndim}-D {data.shape}; expected 3-D, or 4-D with channels last")
    check_finite(path, data)
    info = {
        "affine": original.affine.copy(),
        "header": original.header.copy(),
        "shape": tuple(int(n) for n in original.shape[:3]),
        "to_axial": {"ornt": nib.orientations.io_orientation(original.affine)},
        "zooms": tuple(float(z) for z in canonical.header.get_zooms()[:3]),
        "source_dtype": str(original.get_data_dtype()),
    }
    return data, info


def check_finite(path: Path, data: np.ndarray) -> None:
    """Raise `UnreadableImage` naming `path` if `data` holds NaN or infinite values."""
    finite = np.isfinite(data)
    if not finite.all():
        raise UnreadableImage(path, f"has {int(finite.size - finite.sum())} NaN or infinite voxels")


def volume_to_input(
    data: np.ndarray, info: dict, dtype: str, sources: Sequence[Path], notes: list[str]
) -> np.ndarray:
    """RAS+ (X, Y, Z, C) float32 -> (Z, H, W, C) axial slices, all of them, in `dtype`.

    float32: each channel z-scored over its non-zero voxels, zeros kept at 0 (training's
    `zscore_nonzero`; an all-zero or constant channel raises its `CaseSkipped` naming
    `sources[c]`). uint8: a volume stored as 8-bit passes unchanged; otherwise each channel is
    rescaled so that 0 -> 0 and the 99.5th percentile of its non-zero voxels -> 255, clipped (a
    channel with negative values maps the 0.5th percentile of its non-zero voxels to 0 instead),
    and a note says so.
    """
    if dtype == "float32":
        data = np.stack([zscore_nonzero(sources[c], data[..., c]) for c in range(data.shape[-1])], axis=-1)
    elif not (info["source_dtype"] == "uint8" and data.min() >= 0 and data.max() <= 255
              and np.array_equal(data, np.rint(data))):
        data = np.stack([_stretch(data[..., c]) for c in range(data.shape[-1])], axis=-1)
        notes.append("rescaled to 8-bit per channel (99.5th percentile of non-zero voxels -> 255)")
    return axial_slices(data.astype(dtype, copy=False))


def _stretch(values: np.ndarray) -> np.ndarray:
    nonzero = values[values != 0]
    if nonzero.size == 0:
        return np.zeros(values.shape, np.uint8)
    low = min(0.0, float(np.percentile(nonzero, 0.5)))
    high = float(np.percentile(nonzero, 99.5))
    scale = 255.0 / (high - low) if high > low else 0.0
    return np.clip(np.rint((values - low) * scale), 0, 255).astype(np.uint8)


def to_original(axial: np.ndarray, info: dict) -> np.ndarray:
    """(Z, H, W[, K]) axial slices -> (X, Y, Z[, K]) on the input's own voxel grid and axis order.

    The exact inverse of the reader's reorientation and `axial_slices`: voxel values are moved,
    never interpolated.
    """
    ras = np.moveaxis(axial[:, ::-1], (0, 1, 2), (2, 1, 0))  # (X, Y, Z[, K]) in RAS+
    ornt = np.asarray(info["to_axial"]["ornt"])
    order = [int(axis) for axis in ornt[:, 0]]
    original = ras.transpose(order + list(range(3, ras.ndim)))
    flips = tuple(axis for axis, flip in enumerate(ornt[:, 1]) if flip < 0)
    original = np.flip(original, flips) if flips else original
    if original.shape[:3] != tuple(info["shape"]):
        raise ValueError(f"axial array {axial.shape} does not fit the input's voxel shape {tuple(info['shape'])}")
    return np.ascontiguousarray(original)


def write_like(path: Path, data: np.ndarray, info: dict, *, dtype=np.uint8) -> None:
    """Write (X, Y, Z[, K]) `data` as NIfTI with the input's affine and a copy of its header.

    `path` must end in .nii.gz (gzip-compressed) or .nii; the file appears atomically (a
    temporary file in the same folder, then a rename). See `nifti_bytes` for the header.
    """
    path = Path(path)
    if not path.name.lower().endswith(NIFTI_SUFFIXES):
        raise ValueError(f"{path}: a NIfTI output must end in .nii.gz or .nii")
    write_atomic(path, nifti_bytes(data, info, dtype=dtype, compress=path.name.lower().endswith(".gz")))


def nifti_bytes(data: np.ndarray, info: dict, *, dtype=np.uint8, compress: bool = True) -> bytes:
    """(X, Y, Z[, K]) `data` as the bytes of a NIfTI file (gzip-compressed when `compress`).

    The input's affine and a copy of its header are kept; the header's data type becomes
    `dtype`, its scaling is reset (slope 1, intercept 0) and its display window cleared.
    """
    nib = import_nibabel()
    if tuple(data.shape[:3]) != tuple(info["shape"]):
        raise ValueError(f"data {data.shape} is not on the input's voxel grid {tuple(info['shape'])}")
    header = info["header"].copy() if info.get("header") is not None else None
    image_class = nib.Nifti2Image if isinstance(header, nib.Nifti2Header) else nib.Nifti1Image
    image = image_class(np.asarray(data).astype(dtype), info["affine"], header)
    image.header.set_data_dtype(dtype)
    image.header.set_slope_inter(1.0, 0.0)
    image.header["cal_min"], image.header["cal_max"] = 0.0, 0.0  # the input's window means nothing here
    payload = image.to_bytes()
    return gzip.compress(payload, compresslevel=1, mtime=0) if compress else payload


# ---------------------------------------------------------------- DICOM


def import_pydicom():
    """The pydicom module, or the error that names the `dicom` extra."""
    try:
        import pydicom
    except ImportError as exc:
        raise missing_extra("pydicom", "dicom") from exc
    return pydicom


def dicom_series(paths: Sequence[Path]) -> tuple[list[tuple[str, list[Path]]], list[tuple[Path, str]]]:
    """Group DICOM files by SeriesInstanceUID, each series in slice order.

    Returns ([(label, paths)], [(path, reason)] for files whose header cannot be read); a label
    is "series<SeriesNumber>" (or "series<index>" when the number is absent), ordered by UID.
    """
    pydicom = import_pydicom()
    groups: dict[str, list] = {}
    bad = []
    for path in paths:
        try:
            header = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception as exc:  # pydicom raises many types for a broken file
            bad.append((path, f"cannot read DICOM header ({_one_line(exc)})"))
            continue
        groups.setdefault(str(header.get("SeriesInstanceUID", "")), []).append((path, header))
    series = []
    for index, uid in enumerate(sorted(groups), start=1):
        members = _slice_order(groups[uid])
        number = members[0][1].get("SeriesNumber")
        series.append((f"series{number if number not in (None, '') else index}", [p for p, _ in members]))
    return series, bad


def read_dicom(paths: Sequence[Path]) -> tuple[np.ndarray, dict]:
    """Read one grayscale series as float32 RAS+ (X, Y, Z, 1) plus `info` (see the module docstring).

    Slices are ordered along the slice normal by ImagePositionPatient (InstanceNumber when a
    position is missing, and then the orientation is assumed axial); RescaleSlope and
    RescaleIntercept are applied (MONOCHROME1 is not inverted). Reorientation to RAS+ takes each
    voxel axis to its nearest patient axis: exact for axial, coronal and sagittal series,
    approximate for oblique ones.
    """
    pydicom = import_pydicom()
    members = []
    for path in paths:
        try:
            members.append((Path(path), pydicom.dcmread(path)))
        except Exception as exc:  # pydicom raises many types for a broken file
            raise UnreadableImage(path, f"cannot read DICOM ({_one_line(exc)})") from exc
    members = _slice_order(members)
    planes = [_dicom_pixels(path, ds) for path, ds in members]
    for (path, _), plane in zip(members, planes, strict=True):
        if plane.shape != planes[0].shape:
            raise UnreadableImage(path, f"is {plane.shape} but {members[0][0].name} is {planes[0].shape}")
    volume = np.stack([plane.T for plane in planes], axis=-1)  # (columns, rows, slices) = (X, Y, Z)
    check_finite(members[0][0], volume)
    affine = _dicom_affine([ds for _, ds in members])
    ornt = _nearest_axes(affine)
    zooms = np.linalg.norm(affine[:3, :3], axis=0)
    ras = np.flip(volume, tuple(i for i in range(3) if ornt[i, 1] < 0)).transpose(np.argsort(ornt[:, 0]))
    info = {
        "affine": affine, "header": None, "shape": tuple(volume.shape), "to_axial": {"ornt": ornt},
        "zooms": tuple(float(zooms[i]) for i in np.argsort(ornt[:, 0])),
        "source_dtype": _stored_dtype(members[0][1]),
    }
    return np.ascontiguousarray(ras[..., None], dtype=np.float32), info


def _slice_order(members: list) -> list:
    """(path, dataset) pairs sorted by position along the slice normal, else InstanceNumber."""
    if all("ImagePositionPatient" in ds and "ImageOrientationPatient" in ds for _, ds in members):
        normal = _normal(members[0][1])
        return sorted(members, key=lambda m: (float(np.dot(normal, _floats(m[1].ImagePositionPatient))), str(m[0])))
    return sorted(members, key=lambda m: (int(m[1].get("InstanceNumber") or 0), str(m[0])))


def _dicom_pixels(path: Path, ds) -> np.ndarray:
    if int(ds.get("SamplesPerPixel", 1)) != 1:
        raise UnreadableImage(path, f"has {ds.SamplesPerPixel} samples per pixel; only grayscale DICOM is supported")
    try:
        pixels = ds.pixel_array
    except Exception as exc:  # decoder errors depend on the installed handlers
        raise UnreadableImage(path, f"cannot decode the pixel data ({_one_line(exc)})") from exc
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


def _nearest_axes(affine: np.ndarray) -> np.ndarray:
    """(3, 2) orientation: for each voxel axis, its nearest RAS+ axis and direction (+1 or -1)."""
    directions = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0)
    ornt = np.zeros((3, 2))
    free = [0, 1, 2]
    for axis in np.argsort(-np.abs(directions).max(axis=0)):  # most clearly aligned axis first
        world = max(free, key=lambda w: abs(directions[w, axis]))
        free.remove(world)
        ornt[axis] = (world, 1.0 if directions[world, axis] >= 0 else -1.0)
    return ornt


def _stored_dtype(ds) -> str:
    """The stored pixel type, e.g. "int16", before RescaleSlope/Intercept."""
    signed = int(ds.get("PixelRepresentation", 0) or 0) == 1
    return f"{'int' if signed else 'uint'}{int(ds.get('BitsAllocated', 16) or 16)}"


def _normal(ds) -> np.ndarray:
    orientation = _floats(ds.get("ImageOrientationPatient") or (1, 0, 0, 0, 1, 0))
    return np.cross(orientation[:3], orientation[3:])


def _one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"


def _floats(values) -> np.ndarray:
    return np.array([float(v) for v in values])
