"""NIfTI-1 and NIfTI-2 headers, read as nibabel will read them, before anything is allocated.

A single-file NIfTI (.nii, or .nii.gz once inflated) is a 348-byte (NIfTI-1) or 540-byte
(NIfTI-2) header, four bytes saying whether extensions follow, the extensions, and from
`vox_offset` on the voxels. nibabel trusts the header: it reserves dims x bytes per voxel before
it finds the data missing, and it reads each extension's declared size in one call. `parse_header`
therefore refuses a header that is cut short, declares impossible dims, a data type the runtime
cannot read, or voxels inside the header; `check_extensions` walks the extensions as nibabel does
and refuses one that runs past the voxels. What is left is bounded by `NiftiHeader.file_bytes`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from brainseg.errors import FormatError

NIFTI1_SIZE, NIFTI2_SIZE = 348, 540
HEAD_BYTES = NIFTI2_SIZE + 4  # enough for either header and the four bytes that say whether extensions follow
NIFTI1_MAGIC, NIFTI2_MAGIC = b"n+1\0", b"n+2\0\r\n\x1a\n"
MAX_EXTENSION_BYTES = 64 * 2**20  # between the header and the voxels
MAX_EXTENSIONS = 4096
READ_BYTES_PER_VOXEL = 32

# NIfTI data type codes the runtime reads (nibabel's names), and bytes per voxel
DATATYPES = {2: ("uint8", 1), 4: ("int16", 2), 8: ("int32", 4), 16: ("float32", 4), 64: ("float64", 8),
             256: ("int8", 1), 512: ("uint16", 2), 768: ("uint32", 4), 1024: ("int64", 8), 1280: ("uint64", 8)}
_NOT_READ = {1: "binary", 32: "complex64", 128: "RGB24", 1536: "float128", 1792: "complex128",
             2048: "complex256", 2304: "RGBA32"}


@dataclass(frozen=True)
class NiftiHeader:
    """What a NIfTI header declares: version, byte order, dims, voxel type and where the voxels start."""

    version: int  # 1 or 2
    byte_order: str  # "<" or ">", as `struct` writes it
    dims: tuple[int, ...]
    datatype: str  # numpy's name of the stored voxel type
    itemsize: int  # bytes per stored voxel
    vox_offset: int
    has_extensions: bool

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
    def header_size(self) -> int:
        return NIFTI1_SIZE if self.version == 1 else NIFTI2_SIZE

    @property
    def file_bytes(self) -> int:
        """Bytes of the single-file .nii: header, extensions, then every voxel."""
        return self.vox_offset + self.voxels * self.itemsize

    @property
    def read_bytes(self) -> int:
        """The most that reading the volume into the runtime's float32 or 8-bit slices holds at once
        (`read_nifti`, then `brainseg.runtime.io.loading`), not counting the body's own bytes: the
        inflated file, and 32 bytes per voxel for nibabel's array, its scaled and float32 copies and
        the reader's reorientation and rescaling (measured with `brainseg.fuzz.allocations`)."""
        return self.file_bytes + self.voxels * READ_BYTES_PER_VOXEL


def nifti_version(head: bytes | bytearray | memoryview) -> tuple[str, int] | None:
    """(struct byte order, NIfTI version) that the first bytes of a single-file NIfTI show, or None.

    A sniff: it needs the magic only (12 bytes for NIfTI-2, 348 for NIfTI-1), not the whole header."""
    if len(head) < 4:
        return None
    for order in ("<", ">"):
        size = struct.unpack_from(order + "i", head)[0]
        if size == NIFTI1_SIZE and bytes(head[344:348]) == NIFTI1_MAGIC:
            return order, 1
        if size == NIFTI2_SIZE and bytes(head[4:12]) == NIFTI2_MAGIC:
            return order, 2
    return None


def parse_header(head: bytes | bytearray | memoryview) -> NiftiHeader:
    """The NIfTI-1 or NIfTI-2 header at the start of `head`, checked; FormatError otherwise."""
    layout = nifti_version(head)
    if layout is None:
        if bytes(head[344:348]) == NIFTI1_MAGIC:
            size = struct.unpack_from("<i", head)[0]
            raise FormatError(f"the NIfTI-1 header says it is {size} bytes, not 348 (corrupt)")
        raise FormatError("not a single-file NIfTI-1 or NIfTI-2 image (no n+1/n+2 header)")
    order, version = layout
    size = NIFTI1_SIZE if version == 1 else NIFTI2_SIZE
    if len(head) < size + 4:
        raise FormatError(f"the NIfTI-{version} header is cut short: {len(head)} of its {size + 4} bytes")
    if version == 1:
        code = struct.unpack_from(order + "h", head, 70)[0]
        dims = struct.unpack_from(order + "8h", head, 40)
        offset = struct.unpack_from(order + "f", head, 108)[0]
    else:
        code = struct.unpack_from(order + "h", head, 12)[0]
        dims = struct.unpack_from(order + "8q", head, 16)
        offset = struct.unpack_from(order + "q", head, 168)[0]
    rank = dims[0]
    if not 1 <= rank <= 7 or any(n < 1 for n in dims[1:rank + 1]):
        raise FormatError(f"the NIfTI header declares impossible dims {list(dims)}")
    if code not in DATATYPES:
        what = _NOT_READ.get(code, f"unknown data type code {code}")
        raise FormatError(f"the NIfTI header declares {what} voxels; the runtime reads integer and float voxels")
    if offset != offset or not size + 4 <= offset <= size + 4 + MAX_EXTENSION_BYTES:
        raise FormatError(f"the NIfTI header puts its voxels at byte {offset}; they must start between "
                          f"{size + 4} and {size + 4 + MAX_EXTENSION_BYTES} (after the header and its extensions)")
    name, itemsize = DATATYPES[code]
    return NiftiHeader(version, order, tuple(int(n) for n in dims[1:rank + 1]), name, itemsize, int(offset),
                       head[size] != 0)


def check_extensions(start: bytes | bytearray | memoryview, header: NiftiHeader) -> None:
    """FormatError unless the extensions in `start` (the file's first `vox_offset` bytes) end
    where nibabel will stop reading them: each one at least 16 bytes, a multiple of 16, and inside
    the space before the voxels."""
    if not header.has_extensions:
        return
    if len(start) < header.vox_offset:
        raise FormatError(f"the NIfTI is truncated: {len(start)} bytes, its header and extensions take "
                          f"{header.vox_offset}")
    at, room = header.header_size + 4, header.vox_offset - header.header_size - 4
    count = 0
    while room >= 16:  # nibabel reads another extension while 16 bytes or more are left
        esize, code = struct.unpack_from(header.byte_order + "ii", start, at)
        if esize < 16 or esize % 16 or esize > room:
            raise FormatError(f"the NIfTI header extension at byte {at} (code {code}) declares {esize} bytes; "
                              f"it must be a multiple of 16 between 16 and the {room} bytes left before the voxels")
        count += 1
        if count > MAX_EXTENSIONS:
            raise FormatError(f"the NIfTI header has more than {MAX_EXTENSIONS} extensions")
        at, room = at + esize, room - esize
