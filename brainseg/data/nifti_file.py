"""NIfTI files from outside opened as nibabel images, reading no byte past what their header declares.

Every NIfTI reader of brainseg opens its files here: seg-run's and seg-serve's
(`brainseg.runtime.io.nifti`) and the BraTS reader of training and seg-eval (`brainseg.data.brats`).
The header is checked first (`brainseg.formats.nifti`: dims, voxel type, offset, extensions, and
--max-voxels), a gzip stream is inflated no further than the file the header declares
(`brainseg.formats.inflate`), and nibabel reads the checked bytes from memory; whatever nibabel
raises becomes `InputSkipped` with the file named. nibabel is imported inside the functions that
need it.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

from brainseg.errors import FormatError, InputSkipped, one_line, require
from brainseg.formats.inflate import GZIP_MAGIC, inflate
from brainseg.formats.limits import MAX_VOXELS, check_voxels
from brainseg.formats.nifti import HEAD_BYTES, NiftiHeader, check_extensions, parse_header


def open_nifti(path: Path, content: bytes | None = None, *, max_voxels: int = MAX_VOXELS):
    """The nibabel image (Nifti1Image or Nifti2Image) of the NIfTI at `path`, or in `content` (the
    bytes of a .nii or .nii.gz; `path` then only names them in errors), reading from memory.

    Raises:
        InputSkipped: what `nifti_content` refuses, or nibabel refuses the checked bytes (its
            error, on one line); `InputTooLarge` beyond `max_voxels`.
    """
    nib = require("nibabel", "nifti")
    header, content = nifti_content(Path(path), content, max_voxels)
    try:
        with warnings.catch_warnings():  # nibabel warns about oddities it reads anyway
            warnings.simplefilter("ignore")
            klass = nib.Nifti1Image if header.version == 1 else nib.Nifti2Image
            return klass.from_stream(_MemoryFile(content))
    except Exception as exc:  # nibabel raises many types for a header it cannot make sense of
        raise InputSkipped(path, f"cannot read NIfTI ({one_line(exc)})") from None


def nifti_content(path: Path, content: bytes | None, max_voxels: int) -> tuple[NiftiHeader, bytes | bytearray]:
    """The checked header of the NIfTI at `path` (or in `content`) and the bytes of its .nii,
    inflated when gzip'd, exactly as long as the header declares.

    Raises:
        InputSkipped: empty, not a single-file NIfTI-1/2, a corrupt gzip stream, a header or
            extension that `brainseg.formats.nifti` refuses, or fewer bytes than the header
            declares; `InputTooLarge` beyond `max_voxels`.
    """
    try:
        if content is not None:
            return _checked(content, len(content), max_voxels)
        with open(path, "rb") as file:
            return _checked(file, path.stat().st_size, max_voxels)
    except FormatError as err:
        raise err.at(path) from None
    except OSError as err:
        raise InputSkipped(path, f"cannot be read ({err.strerror or err})") from None


def _checked(source, size: int, max_voxels: int) -> tuple[NiftiHeader, bytes | bytearray]:
    """See `nifti_content`; `source` is bytes or a binary file of `size` bytes."""
    if size == 0:
        raise FormatError("file is empty (0 bytes)")
    start = _read(source, 2, 0)
    gzipped = start == GZIP_MAGIC
    header = parse_header(inflate(_rewound(source), HEAD_BYTES) if gzipped else _read(source, HEAD_BYTES, 0))
    check_voxels(header.dims, max_voxels)
    wanted = header.file_bytes
    if not gzipped and size < wanted:
        raise FormatError(f"the NIfTI is truncated: its header declares {wanted} bytes, the file holds {size}")
    content = inflate(_rewound(source), wanted) if gzipped else _read(source, wanted, 0)
    if len(content) < wanted:
        raise FormatError(f"the NIfTI is truncated: its header declares {wanted} bytes, the gzip stream holds "
                          f"{len(content)}")
    check_extensions(content, header)
    return header, content


def _read(source, count: int, offset: int) -> bytes | memoryview:
    if isinstance(source, bytes | bytearray | memoryview):
        return memoryview(source)[offset:offset + count]
    source.seek(offset)
    return source.read(count)


def _rewound(source):
    if not isinstance(source, bytes | bytearray | memoryview):
        source.seek(0)
    return source


class _MemoryFile(io.RawIOBase):
    """A read-only binary file over bytes in memory, without copying them (nibabel reads through it)."""

    def __init__(self, content: bytes | bytearray | memoryview) -> None:
        super().__init__()
        self._view = memoryview(content).cast("B")
        self._at = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, target) -> int:
        count = max(0, min(len(target), len(self._view) - self._at))
        memoryview(target).cast("B")[:count] = self._view[self._at:self._at + count]
        self._at += count
        return count

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._at, io.SEEK_END: len(self._view)}[whence]
        self._at = max(0, base + offset)
        return self._at

    def tell(self) -> int:
        return self._at
