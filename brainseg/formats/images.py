"""2-D images from outside: which format the first bytes show, and what the file declares.

`inspect_image` reads a PNG, JPEG, TIFF or BMP file's structure as its decoder will (one module
each: `png`, `jpeg`, `tiff`, `bmp`) and returns an `ImageHeader`: the size and sample layout
OpenCV will decode to, what its decoder holds on the way, and the bytes to hand it. Any other
format, or a file whose structure does not hold together, raises `FormatError`.
"""

from __future__ import annotations

from brainseg.errors import FormatError
from brainseg.formats import bmp, jpeg, png, tiff
from brainseg.formats.image_header import BMP_SIGNATURE, JPEG_SIGNATURE, PNG_SIGNATURE, TIFF_SIGNATURES, ImageHeader

_OTHERS = {b"RIFF": "WebP", b"GIF8": "GIF", b"\0\0\0\x0cjP  ": "JPEG 2000", b"II+\0": "BigTIFF", b"MM\0+": "BigTIFF",
           b"\x1f\x8b": "gzip", b"P5": "PGM", b"P6": "PPM", b"v/1\x01": "OpenEXR"}


def image_format(data: bytes | bytearray | memoryview) -> str | None:
    """"PNG", "JPEG", "TIFF" or "BMP" as the first bytes show, or None for anything else."""
    start = bytes(data[:8])
    if start.startswith(PNG_SIGNATURE):
        return "PNG"
    if start.startswith(JPEG_SIGNATURE):
        return "JPEG"
    if start[:4] in TIFF_SIGNATURES:
        return "TIFF"
    if start.startswith(BMP_SIGNATURE):
        return "BMP"
    return None


def inspect_image(data: bytes | bytearray | memoryview, max_pixels: int | None = None) -> ImageHeader:
    """The `ImageHeader` of a PNG, JPEG, TIFF or BMP file; FormatError for anything else or a
    file whose structure its decoder would not read as it declares, LimitExceeded (as soon as the
    size is read) for one that declares more than `max_pixels` pixels."""
    kind = image_format(data)
    if kind is None:
        raise FormatError(f"is not a PNG, JPEG, TIFF or BMP image{_what_else(data)}")
    inspect = {"PNG": png.inspect_png, "JPEG": jpeg.inspect_jpeg, "TIFF": tiff.inspect_tiff, "BMP": bmp.inspect_bmp}
    return inspect[kind](data, max_pixels)


def _what_else(data) -> str:
    start = bytes(data[:12])
    for magic, name in _OTHERS.items():
        if start.startswith(magic):
            return f" (its first bytes are those of {name})"
    return "" if start else " (it is empty)"


