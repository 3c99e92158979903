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

A file that cannot be used raises `InputSkipped` (path and a one-line reason). nibabel is
imported inside the functions that need it.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from brainseg.errors import InputSkipped, require
from brainseg.runtime.io import declared

_RAS = np.array([[0, 1], [1, 1], [2, 1]], dtype=float)  # the orientation of a RAS+ array


def one_line(exc: BaseException) -> str:
    """An exception as "Type: message" on one line (some readers' messages span several)."""
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"


def read_nifti(path: Path, content: bytes | None = None, *, max_voxels: int | None = None) -> tuple[np.ndarray, dict]:
    """Read a 3-D volume, or a 4-D one with channels last, as float32 RAS+ (X, Y, Z, C) plus `info`.

    With `content` (the bytes of a .nii, or of a .nii.gz), they are read from memory and `path`
    only names them in errors: nothing is written to disk. With `max_voxels`, the header is read
    first and a volume that declares more voxels is refused before anything is allocated for it.

    Raises:
        InputSkipped: the file is empty, not NIfTI, truncated, not 3-D or 4-D, or has NaN or
            infinite voxels, or declares more than `max_voxels` voxels.
    """
    nib = require("nibabel", "nifti")
    path = Path(path)
    if (content is not None and not content) or (content is None and path.is_file() and path.stat().st_size == 0):
        raise InputSkipped(path, "file is empty (0 bytes)")
    if max_voxels is not None:
        _check_declared(path, content, max_voxels)
    try:
        original = nib.load(str(path)) if content is None else _image_from_bytes(nib, content)
        canonical = nib.as_closest_canonical(original)
        data = canonical.get_fdata(dtype=np.float32)
    except (nib.filebasedimages.ImageFileError, OSError, EOFError, ValueError, zlib.error) as exc:
        raise InputSkipped(path, f"cannot read NIfTI ({one_line(exc)})") from exc
    if data.ndim == 3:
        data = data[..., None]
    if data.ndim != 4:
        raise InputSkipped(path, f"is {data.ndim}-D {data.shape}; expected 3-D, or 4-D with channels last")
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


def _check_declared(path: Path, content: bytes | None, max_voxels: int) -> None:
    """InputSkipped when the header declares more than `max_voxels` voxels; a header that cannot be
    parsed is left to nibabel, which says why in its own words."""
    try:
        header = declared.nifti_header(path, content)
    except declared.HeaderError:
        return
    reason = declared.check_voxels(header.voxels, header.shape, max_voxels)
    if reason:
        raise InputSkipped(path, reason)


def _image_from_bytes(nib, content: bytes):
    """A NIfTI-1 or NIfTI-2 image read from the bytes of a single-file .nii (or .nii.gz)."""
    if content[:2] == b"\x1f\x8b":
        content = gzip.decompress(content)
    header_size = int.from_bytes(content[:4], "little")
    if header_size not in (348, 540):
        header_size = int.from_bytes(content[:4], "big")
    kind = nib.Nifti2Image if header_size == 540 else nib.Nifti1Image
    return kind.from_bytes(content)


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
