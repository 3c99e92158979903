"""What a volume's header declares, read before anything is allocated for its voxels.

A NIfTI header of 348 (NIfTI-1) or 540 (NIfTI-2) bytes says the volume's dims and bytes per voxel;
readers that trust it allocate what it declares (nibabel makes the array before it finds the
data missing). `nifti_header` reads those bytes alone, from a file or from bytes in memory,
inflating only the start of a gzip stream; `check_voxels` refuses a volume that declares more
voxels than a limit. seg-run's readers (`brainseg.runtime.io.nifti`, `.dicom`) and seg-serve's
wire checks (`brainseg.serve.formats`) share them. Standard library only.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

MAX_VOXELS = 512 * 512 * 320  # the default limit: a 512 x 512 x 320 volume (channels count as voxels)
NIFTI1_SIZE, NIFTI2_SIZE = 348, 540
_NIFTI1_MAGIC, _NIFTI2_MAGIC = b"n+1\0", b"n+2\0\r\n\x1a\n"
GZIP_MAGIC = b"\x1f\x8b"


class HeaderError(ValueError):
    """A header that is not a single-file NIfTI-1/2 one, or declares something impossible."""


@dataclass(frozen=True)
class NiftiHeader:
    """What a NIfTI header declares: its dims, bytes per voxel and where the voxels start."""

    dims: tuple[int, ...]
    bytes_per_voxel: float
    vox_offset: int

    @property
    def voxels(self) -> int:
        count = 1
        for n in self.dims:
            count *= n
        return count

    @property
    def shape(self) -> str:
        return "x".join(str(n) for n in self.dims)

    @property
    def file_bytes(self) -> int:
        """Bytes the single-file .nii needs: header and extensions, then every voxel."""
        return self.vox_offset + int(self.voxels * self.bytes_per_voxel)


def nifti_layout(head: bytes) -> tuple[str, int] | None:
    """(struct byte order, NIfTI version) of a single-file NIfTI header, or None."""
    if len(head) < 4:
        return None
    for order in ("<", ">"):
        size = struct.unpack(order + "i", head[:4])[0]
        if size == NIFTI1_SIZE and head[344:348] == _NIFTI1_MAGIC:
            return order, 1
        if size == NIFTI2_SIZE and head[4:12] == _NIFTI2_MAGIC:
            return order, 2
    return None


def parse_nifti_header(head: bytes) -> NiftiHeader:
    """The dims, voxel size and data offset of the NIfTI-1 or NIfTI-2 header at the start of `head`."""
    layout = nifti_layout(head)
    if layout is None:
        raise HeaderError("not a single-file NIfTI-1 or NIfTI-2 image (no n+1/n+2 header)")
    order, version = layout
    if version == 1:
        dims = struct.unpack(order + "8h", head[40:56])
        bitpix = struct.unpack(order + "h", head[72:74])[0]
        offset = struct.unpack(order + "f", head[108:112])[0]
    else:
        bitpix = struct.unpack(order + "h", head[14:16])[0]
        dims = struct.unpack(order + "8q", head[16:80])
        offset = struct.unpack(order + "q", head[168:176])[0]
    rank = dims[0]
    if not 1 <= rank <= 7 or any(n < 1 for n in dims[1:rank + 1]):
        raise HeaderError(f"the NIfTI header declares impossible dims {list(dims)}")
    if bitpix <= 0 or bitpix % 8 or offset != offset or not 0 <= offset <= 2**31:
        raise HeaderError(f"the NIfTI header declares {bitpix} bits per voxel at offset {offset}")
    minimum = NIFTI1_SIZE + 4 if version == 1 else NIFTI2_SIZE + 4
    return NiftiHeader(tuple(int(n) for n in dims[1:rank + 1]), bitpix / 8, max(int(offset), minimum))


def inflate(body: bytes, most: int) -> bytes:
    """Up to `most` bytes of the gzip stream(s) in `body`, never more; HeaderError for a broken stream."""
    pieces: list[bytes] = []
    have, rest = 0, body
    try:
        while rest and have < most:
            stream = zlib.decompressobj(wbits=31)
            piece = stream.decompress(rest, most - have)
            pieces.append(piece)
            have += len(piece)
            if not stream.eof:
                break  # the limit was reached, or the stream is cut short
            rest = stream.unused_data
    except zlib.error as err:
        raise HeaderError(f"the gzip stream is corrupt ({err})") from None
    return b"".join(pieces)


def nifti_header(path: Path, content: bytes | None = None) -> NiftiHeader:
    """The header of the .nii or .nii.gz at `path` (or in `content`), reading its first bytes only."""
    if content is not None:
        head = inflate(content, NIFTI2_SIZE) if content[:2] == GZIP_MAGIC else content[:NIFTI2_SIZE]
        return parse_nifti_header(head)
    try:
        with open(path, "rb") as file:
            start = file.read(2)
        with (gzip.open(path, "rb") if start == GZIP_MAGIC else open(path, "rb")) as file:
            head = file.read(NIFTI2_SIZE)
    except (OSError, EOFError, zlib.error) as err:
        raise HeaderError(f"its header cannot be read ({type(err).__name__}: {err})") from None
    return parse_nifti_header(head)


def check_voxels(voxels: int, shape: str, limit: int | None) -> str | None:
    """Why a volume declaring `voxels` (as `shape`) is refused under `limit`, or None when it is not."""
    if limit is None or voxels <= limit:
        return None
    return f"declares {shape} = {voxels} voxels; the limit is {limit} (--max-voxels)"
