"""PNG files walked chunk by chunk as libpng reads them, before libpng sees a byte.

libpng reserves a chunk's declared length before it reads the chunk, so a 53-byte file whose
tEXt chunk claims 2 GiB makes it allocate 2 GiB. `inspect_png` checks every chunk's length
against the bytes that follow it, the IHDR against the PNG specification, and the image data
against the smallest deflate stream that could hold the declared pixels (deflate inflates at
most 1032 bytes per byte). The decoder is then handed the critical chunks only (IHDR, PLTE, tRNS,
IDAT, IEND): OpenCV's pixels do not depend on the others (text, ICC profiles, EXIF, animation),
and libpng never parses them.
"""

from __future__ import annotations

import struct

from brainseg.errors import FormatError
from brainseg.formats.image_header import PNG_SIGNATURE, ImageHeader, cut_short
from brainseg.formats.limits import check_pixels

MAX_CHUNKS = 1 << 16
MAX_RATIO = 1032  # the most bytes deflate can inflate from one compressed byte
_KEPT = {b"IHDR", b"PLTE", b"tRNS", b"IDAT", b"IEND"}
# colour type -> (samples per pixel stored, allowed bit depths, channels OpenCV decodes to)
_COLOURS = {0: (1, (1, 2, 4, 8, 16), 1), 2: (3, (8, 16), 3), 3: (1, (1, 2, 4, 8), 3), 4: (2, (8, 16), 4),
            6: (4, (8, 16), 4)}


def inspect_png(data: bytes | bytearray | memoryview, max_pixels: int | None = None) -> ImageHeader:
    """The `ImageHeader` of a PNG file; FormatError for a chunk that runs past the file, a
    missing or invalid IHDR, too little image data for the declared pixels, or no IEND."""
    at, chunks, kept, idat, transparent = len(PNG_SIGNATURE), 0, [PNG_SIGNATURE], 0, False
    ihdr = None
    while True:
        if at + 12 > len(data):
            raise cut_short("PNG", len(data), at + 12)
        length, kind = struct.unpack_from(">I4s", data, at)
        if at + 12 + length > len(data):
            raise FormatError(f"PNG is truncated or corrupt: chunk {_name(kind)} at byte {at} declares {length} "
                              f"bytes, {len(data) - at - 12} follow it")
        if not kind.isalpha():
            raise FormatError(f"PNG chunk at byte {at} has an invalid type {_name(kind)} (corrupt)")
        chunks += 1
        if chunks > MAX_CHUNKS:
            raise FormatError(f"PNG has more than {MAX_CHUNKS} chunks")
        if (ihdr is None) != (kind == b"IHDR"):
            raise FormatError("PNG does not start with one IHDR chunk" if ihdr is None else "PNG has two IHDR chunks")
        if kind == b"IHDR":
            ihdr = _ihdr(bytes(data[at + 8:at + 8 + length]))
            if max_pixels is not None:
                check_pixels(ihdr[0], ihdr[1], max_pixels)
        idat += length if kind == b"IDAT" else 0
        transparent |= kind == b"tRNS"
        if kind in _KEPT:
            kept.append(data[at:at + 12 + length])
        if kind == b"IEND":
            break
        at += 12 + length
    width, height, depth, colour = ihdr
    samples, _, channels = _COLOURS[colour]
    row_bytes = -(-width * samples * depth // 8)
    if idat * MAX_RATIO < height * row_bytes:
        raise FormatError(f"PNG image data is {idat} bytes; {width}x{height} pixels need at least "
                          f"{height * row_bytes // MAX_RATIO} (truncated or corrupt)")
    if transparent and colour in (2, 3):
        channels = 4
    payload = b"".join(kept)
    return ImageHeader("PNG", width, height, channels, 2 if depth == 16 else 1,
                       work_bytes=len(payload) + 4 * (row_bytes + 1) + 2**18,
                       payload=payload)


def _ihdr(body: bytes) -> tuple[int, int, int, int]:
    """(width, height, bit depth, colour type) of a valid IHDR chunk's 13 bytes."""
    if len(body) != 13:
        raise FormatError(f"PNG IHDR chunk is {len(body)} bytes, not 13")
    width, height, depth, colour, compression, filtering, interlace = struct.unpack(">IIBBBBB", body)
    if not (0 < width < 2**31 and 0 < height < 2**31):
        raise FormatError(f"PNG declares {width}x{height} pixels")
    if colour not in _COLOURS or depth not in _COLOURS[colour][1]:
        raise FormatError(f"PNG declares colour type {colour} at {depth} bits, which the PNG specification "
                          "does not allow")
    if compression or filtering or interlace > 1:
        raise FormatError(f"PNG declares compression {compression}, filter {filtering}, interlace {interlace}; "
                          "only 0, 0 and 0 or 1 exist")
    return width, height, depth, colour


def _name(kind: bytes) -> str:
    return repr(kind.decode("latin-1"))
