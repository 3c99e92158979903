"""NIfTI volumes for the runtime: read one into RAS+ axial order, and put a prediction back on its grid.

Orientation follows training (`brainseg.data.brats`): a volume is brought to the closest
canonical orientation (RAS+; nibabel's `as_closest_canonical`) and cut into axial slices with
`axial_slices`: slice 0 inferior, row 0 anterior, column 0 the patient's left. The readers (this
module's `read_nifti`, and `brainseg.runtime.io.dicom.read_dicom`) return that RAS+ array and an
`info` dict (`ScanData.nifti`):

    {"affine": the input's (4, 4) affine, "header": a copy of its NIfTI header (None for DICOM),
     "shape": the input's voxel shape (X, Y, Z), "to_axial": {"ornt": (3, 2) orientation
     transform from the input's axes to RAS+ (nibabel's convention)},
     "zooms": RAS+ voxel size in mm, "source_dtype": the stored dtype, e.g. "int16"}

so `to_original` can put an axial prediction back on the input's voxel grid and `nifti_bytes`
can encode it with the input's affine (and header, when there is one).

A file that cannot be used raises `InputSkipped` (path and a one-line reason), whatever nibabel
raised. The header is checked by `brainseg.formats.nifti` before nibabel sees a byte, and nibabel
reads the volume from memory, never past what the header declares. nibabel is imported inside the
functions that need it.
"""

from __future__ import annotations

import gzip
import warnings
from pathlib import Path

import numpy as np

from brainseg.data.nifti_file import open_nifti
from brainseg.errors import InputSkipped, one_line, require
from brainseg.formats.limits import MAX_VOXELS

_RAS = np.array([[0, 1], [1, 1], [2, 1]], dtype=float)  # the orientation of a RAS+ array


def read_nifti(path: Path, content: bytes | None = None, *, max_voxels: int = MAX_VOXELS) -> tuple[np.ndarray, dict]:
    """Read a 3-D volume, or a 4-D one with channels last, as float32 RAS+ (X, Y, Z, C) plus `info`.

    With `content` (the bytes of a .nii, or of a .nii.gz), they are read from memory and `path`
    only names them in errors: nothing is written to disk. The header is read and checked first
    (`brainseg.data.nifti_file.open_nifti`): nothing is allocated for voxels until it has passed,
    and a gzip stream is inflated no further than the file the header declares.

    Raises:
        InputSkipped: the file is empty, not a single-file NIfTI-1/2, truncated, corrupt, not 3-D
            or 4-D, or has NaN or infinite voxels, or nibabel refuses it (its error, on one line);
            `InputTooLarge` when it declares more than `max_voxels` voxels.
    """
    nib = require("nibabel", "nifti")
    path = Path(path)
    original = open_nifti(path, content, max_voxels=max_voxels)
    try:
        with warnings.catch_warnings():  # nibabel warns about oddities it reads anyway
            warnings.simplefilter("ignore")
            canonical = nib.as_closest_canonical(original)
            data = canonical.get_fdata(dtype=np.float32)
            info = {
                "affine": original.affine.copy(),
                "header": original.header.copy(),
                "shape": tuple(int(n) for n in original.shape[:3]),
                "to_axial": {"ornt": nib.orientations.io_orientation(original.affine)},
                "zooms": tuple(float(z) for z in canonical.header.get_zooms()[:3]),
                "source_dtype": str(original.get_data_dtype()),
            }
    except Exception as exc:  # nibabel raises many types for a header it cannot make sense of
        raise InputSkipped(path, f"cannot read NIfTI ({one_line(exc)})") from None
    if data.ndim == 3:
        data = data[..., None]
    if data.ndim != 4:
        raise InputSkipped(path, f"is {data.ndim}-D {data.shape}; expected 3-D, or 4-D with channels last")
    check_finite(path, data)
    return data, info


def check_finite(path: Path, data: np.ndarray) -> None:
    """Raise `InputSkipped` naming `path` if `data` holds NaN or infinite values."""
    finite = np.isfinite(data)
    if not finite.all():
        raise InputSkipped(path, f"has {int(finite.size - finite.sum())} NaN or infinite voxels")


def to_original(axial: np.ndarray, info: dict) -> np.ndarray:
    """(Z, H, W[, K]) axial slices -> (X, Y, Z[, K]) on the input's own voxel grid and axis order.

    The exact inverse of the reader's reorientation and `axial_slices`: voxel values are moved,
    never interpolated.
    """
    orientations = require("nibabel", "nifti").orientations
    ras = np.moveaxis(axial[:, ::-1], (0, 1, 2), (2, 1, 0))  # (X, Y, Z[, K]) in RAS+
    to_input = orientations.ornt_transform(_RAS, np.asarray(info["to_axial"]["ornt"]))
    original = orientations.apply_orientation(ras, to_input)
    if original.shape[:3] != tuple(info["shape"]):
        raise ValueError(f"axial array {axial.shape} does not fit the input's voxel shape {tuple(info['shape'])}")
    return np.ascontiguousarray(original)


def nifti_bytes(data: np.ndarray, info: dict, *, dtype=np.uint8, compress: bool = True) -> bytes:
    """(X, Y, Z[, K]) `data` as the bytes of a NIfTI file (gzip-compressed when `compress`).

    The input's affine and a copy of its header are kept; the header's data type becomes
    `dtype`, its scaling is reset (slope 1, intercept 0) and its display window cleared.
    """
    nib = require("nibabel", "nifti")
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
