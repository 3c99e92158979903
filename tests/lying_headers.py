"""Bodies whose headers lie: they declare a size far beyond what they hold (the bombs of the
seg-serve and reader tests), and a complete image of a size that costs more than it weighs."""

from __future__ import annotations

import gzip
import struct
import zlib


def png_claiming(width: int, height: int) -> bytes:
    """A PNG signature and IHDR declaring width x height 8-bit RGB, and nothing after it."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))


def nifti_claiming(*dims: int) -> bytes:
    """A gzip'd single-file NIfTI-1 header declaring `dims` of uint8 and holding no voxels (about 60 bytes)."""
    header = bytearray(352)
    struct.pack_into("<i", header, 0, 348)
    struct.pack_into("<8h", header, 40, len(dims), *dims, *([1] * (7 - len(dims))))
    struct.pack_into("<hh", header, 70, 2, 8)  # uint8, 8 bits
    struct.pack_into("<8f", header, 76, *([1.0] * 8))  # pixdim
    struct.pack_into("<f", header, 108, 352.0)
    header[344:348] = b"n+1\0"
    return gzip.compress(bytes(header))


def png_of_zeros(width: int, height: int) -> bytes:
    """A complete, valid 8-bit gray PNG of width x height zeros: about height x width / 1000 bytes."""
    stream = zlib.compressobj(9)
    row = bytes(width + 1)  # filter byte 0, then the row
    idat = b"".join(stream.compress(row) for _ in range(height)) + stream.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
