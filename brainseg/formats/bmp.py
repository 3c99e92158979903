"""BMP files (uncompressed only) checked against their header before OpenCV decodes them.

seg-serve does not take BMP; seg-run and training read `.bmp` slices. A BMP's header declares its
size and where its pixels start; RLE-compressed BMPs can declare any size in a few bytes (their
end-of-bitmap code leaves the rest undefined), so only uncompressed ones (BI_RGB, BI_BITFIELDS)
are read, and the file must hold every row the header declares.
"""

from __future__ import annotations

import struct

from brainseg.errors import FormatError
from brainseg.formats.image_header import ImageHeader, cut_short
from brainseg.formats.limits import check_pixels

_INFO_SIZES = (40, 52, 56, 108, 124)  # BITMAPINFOHEADER and its successors; 12 is the OS/2 core header
_COMPRESSIONS = {0: "BI_RGB", 1: "RLE8", 2: "RLE4", 3: "BI_BITFIELDS", 4: "JPEG", 5: "PNG", 6: "BI_ALPHABITFIELDS"}


def inspect_bmp(data: bytes, max_pixels: int | None = None) -> ImageHeader:
    """The `ImageHeader` of an uncompressed BMP; FormatError for a compressed one, an invalid
    header, or pixels that lie past the end of the file."""
    data = bytes(data)
    if len(data) < 26:
        raise cut_short("BMP", len(data), 26)
    pixels_at, info = struct.unpack_from("<I I", data, 10)
    if info == 12:
        width, height, _, bits = struct.unpack_from("<HHHH", data, 18)
        compression = 0
    elif info in _INFO_SIZES:
        if len(data) < 34:
            raise cut_short("BMP", len(data), 34)
        width, height, _, bits, compression = struct.unpack_from("<iiHHI", data, 18)
    else:
        raise FormatError(f"BMP header is {info} bytes, not one of 12, {', '.join(map(str, _INFO_SIZES))}")
    height = abs(height)  # negative: rows stored top-down
    if compression not in (0, 3):
        raise FormatError(f"BMP is compressed ({_COMPRESSIONS.get(compression, compression)}); only uncompressed "
                          "BMP is read")
    if width <= 0 or height <= 0 or bits not in (1, 4, 8, 16, 24, 32):  # OpenCV ignores the planes
        raise FormatError(f"BMP declares {width}x{height} pixels at {bits} bits per pixel")
    if max_pixels is not None:
        check_pixels(width, height, max_pixels)
    row_bytes = (width * bits + 31) // 32 * 4
    end = pixels_at + row_bytes * height
    if pixels_at < 14 + info or end > len(data):
        raise FormatError(f"BMP is truncated: its pixels run from byte {pixels_at} to {end}, "
                          f"the file holds {len(data)}")
    channels = 4 if bits == 32 else 3
    return ImageHeader("BMP", width, height, channels, 1, len(data) + width * height * channels + 2**20, data)
