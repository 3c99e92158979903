"""Small valid files of each format the readers take: the fuzzer's starting points.

Made in code (OpenCV for images, `struct` for NIfTI), deterministic, a few hundred bytes each, and
chosen to reach the parsers' branches: PNG in every colour type with ancillary chunks, palette and
interlacing; baseline, progressive and restart-marker JPEG; stripped, tiled, planar and compressed
TIFF; BMP; NIfTI-1 and NIfTI-2 in both byte orders, several voxel types, with scaling, extensions,
a 4-D volume, raw and gzip'd.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from functools import cache

import cv2
import numpy as np

FAMILIES = ("png", "jpeg", "tiff", "bmp", "nifti", "nifti_gz")


@cache
def seeds(family: str) -> tuple[bytes, ...]:
    """The seed files of one family (see FAMILIES)."""
    makers = {"png": _pngs, "jpeg": _jpegs, "tiff": _tiffs, "bmp": _bmps, "nifti": _niftis,
              "nifti_gz": lambda: [gzip.compress(raw, 6, mtime=0) for raw in _niftis()]}
    return tuple(makers[family]())


def _image(shape: tuple[int, ...], dtype=np.uint8) -> np.ndarray:
    rng = np.random.default_rng(sum(shape))
    top = 65535 if dtype == np.uint16 else 255
    ramp = np.linspace(0, top, int(np.prod(shape)), dtype=np.float64).reshape(shape)
    return np.clip(ramp + rng.normal(0, top / 20, shape), 0, top).astype(dtype)


def _encode(suffix: str, image: np.ndarray, params: tuple[int, ...] = ()) -> bytes:
    ok, data = cv2.imencode(suffix, image, list(params))
    if not ok:
        raise RuntimeError(f"OpenCV could not encode a {suffix} seed")
    return data.tobytes()


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _png(width: int, height: int, depth: int, colour: int, rows: bytes, extra: bytes = b"",
         interlace: int = 0) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, interlace)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + extra + _chunk(b"IDAT", zlib.compress(rows))
            + _chunk(b"IEND", b""))


def _pngs() -> list[bytes]:
    text = _chunk(b"tEXt", b"Comment\0brainseg seed") + _chunk(b"zTXt", b"Note\0\0" + zlib.compress(b"x" * 200))
    palette = _chunk(b"PLTE", bytes(range(48))) + _chunk(b"tRNS", b"\x80\x40")
    return [
        _encode(".png", _image((12, 16))),
        _encode(".png", _image((10, 14, 3))),
        _encode(".png", _image((9, 7), np.uint16)),
        _encode(".png", _image((8, 8, 4))),
        _png(5, 4, 8, 3, b"".join(b"\0" + bytes([x % 16 for x in range(5)]) for _ in range(4)), palette),
        _png(6, 3, 1, 0, b"\0\xa4" * 3, text),
        _png(7, 5, 8, 0, _adam7_rows(7, 5), text, interlace=1),
        _png(3, 3, 16, 2, b"".join(b"\0" + bytes(18) for _ in range(3)), _chunk(b"gAMA", struct.pack(">I", 45455))),
    ]


def _adam7_rows(width: int, height: int) -> bytes:
    """The filtered rows of an interlaced 8-bit gray image: its seven passes, each row with filter 0."""
    rows = b""
    for x0, y0, dx, dy in ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2),
                           (0, 1, 1, 2)):
        columns, lines = -(-(width - x0) // dx), -(-(height - y0) // dy)
        if columns > 0 and lines > 0:
            rows += (b"\0" + bytes(range(0, 9 * columns, 9))) * lines
    return rows


def _jpegs() -> list[bytes]:
    return [
        _encode(".jpg", _image((16, 24))),
        _encode(".jpg", _image((16, 16, 3)), (cv2.IMWRITE_JPEG_QUALITY, 50)),
        _encode(".jpg", _image((17, 23, 3)), (cv2.IMWRITE_JPEG_PROGRESSIVE, 1)),
        _encode(".jpg", _image((24, 16, 3)), (cv2.IMWRITE_JPEG_RST_INTERVAL, 1)),
        _encode(".jpg", _image((8, 8)), (cv2.IMWRITE_JPEG_OPTIMIZE, 1)),
    ]


def _tiffs() -> list[bytes]:
    tiff = cv2.IMWRITE_TIFF_COMPRESSION
    return [
        _encode(".tif", _image((10, 12)), (tiff, 1)),
        _encode(".tif", _image((9, 11, 3)), (tiff, 5)),
        _encode(".tif", _image((8, 8), np.uint16), (tiff, 8)),
        _encode(".tif", _image((7, 9, 4)), (tiff, 32773)),
        _encode(".tif", _image((6, 5, 3), np.uint16), (tiff, 1)),
        _tiled_tiff(),
        _planar_tiff(),
    ]


def _tiff(width: int, height: int, entries: list[tuple[int, int, int, bytes]], data: bytes) -> bytes:
    """A little-endian TIFF: header, pixel data at byte 8, then one directory of (tag, type, count, value)
    entries, whose values longer than 4 bytes follow it."""
    directory_at = 8 + len(data)
    table = 2 + 12 * len(entries) + 4
    extra, fields = b"", b""
    for tag, kind, count, value in sorted(entries):
        if len(value) <= 4:
            fields += struct.pack("<HHI", tag, kind, count) + value.ljust(4, b"\0")
        else:
            fields += struct.pack("<HHII", tag, kind, count, directory_at + table + len(extra))
            extra += value
    table_bytes = struct.pack("<H", len(entries)) + fields + b"\0" * 4
    return b"II*\0" + struct.pack("<I", directory_at) + data + table_bytes + extra


def _tiled_tiff() -> bytes:
    """A 20 x 18 gray image in four Deflate-compressed 16 x 16 tiles."""
    tiles = [zlib.compress(bytes((i * 37 + j) % 256 for j in range(256))) for i in range(4)]
    starts = np.cumsum([8] + [len(t) for t in tiles])[:4]
    offsets = struct.pack("<4I", *(int(s) for s in starts))
    counts = struct.pack("<4I", *(len(t) for t in tiles))
    short, long = 3, 4
    entries = [(256, short, 1, struct.pack("<H", 20)), (257, short, 1, struct.pack("<H", 18)),
               (258, short, 1, struct.pack("<H", 8)), (259, short, 1, struct.pack("<H", 8)),
               (262, short, 1, struct.pack("<H", 1)), (277, short, 1, struct.pack("<H", 1)),
               (322, short, 1, struct.pack("<H", 16)), (323, short, 1, struct.pack("<H", 16)),
               (324, long, 4, offsets), (325, long, 4, counts)]
    return _tiff(20, 18, entries, b"".join(tiles))


def _planar_tiff() -> bytes:
    """A 6 x 4 RGB image stored plane by plane, one strip per plane."""
    planes = [bytes((c * 80 + i) % 256 for i in range(24)) for c in range(3)]
    short, long = 3, 4
    entries = [(256, short, 1, struct.pack("<H", 6)), (257, short, 1, struct.pack("<H", 4)),
               (258, short, 3, struct.pack("<3H", 8, 8, 8)), (259, short, 1, struct.pack("<H", 1)),
               (262, short, 1, struct.pack("<H", 2)), (273, long, 3, struct.pack("<3I", 8, 32, 56)),
               (277, short, 1, struct.pack("<H", 3)), (278, short, 1, struct.pack("<H", 4)),
               (279, long, 3, struct.pack("<3I", 24, 24, 24)), (284, short, 1, struct.pack("<H", 2))]
    return _tiff(6, 4, entries, b"".join(planes))


def _bmps() -> list[bytes]:
    return [_encode(".bmp", _image((6, 9, 3))), _encode(".bmp", _image((5, 7))), _encode(".bmp", _image((4, 4, 4)))]


# NIfTI data type code -> numpy dtype
_CODES = {2: "u1", 4: "i2", 16: "f4", 64: "f8", 512: "u2"}


def _nifti(dims: tuple[int, ...], code: int, *, version: int = 1, order: str = "<", slope: float = 0.0,
           extension: bytes = b"", affine: tuple[float, ...] | None = None) -> bytes:
    """A single-file NIfTI-1 or NIfTI-2 with an sform, voxels counting up, and an optional extension."""
    size = 348 if version == 1 else 540
    ext = struct.pack(order + "ii", 8 + len(extension), 4) + extension if extension else b""  # a multiple of 16
    offset = size + 4 + len(ext)
    header = bytearray(size)
    rows = affine or (-1.0, 0.0, 0.0, 10.0, 0.0, 1.0, 0.0, -5.0, 0.0, 0.0, 2.0, 3.0)
    bits = np.dtype(_CODES[code]).itemsize * 8
    full = (len(dims), *dims, *([1] * (7 - len(dims))))
    if version == 1:
        struct.pack_into(order + "i", header, 0, 348)
        struct.pack_into(order + "8h", header, 40, *full)
        struct.pack_into(order + "hh", header, 70, code, bits)
        struct.pack_into(order + "8f", header, 76, 1.0, 1.0, 1.0, 2.0, 1.0, 1.0, 1.0, 1.0)
        struct.pack_into(order + "fff", header, 108, float(offset), slope, 1.0 if slope else 0.0)
        struct.pack_into(order + "hh", header, 252, 0, 1)  # qform 0, sform 1 (scanner)
        struct.pack_into(order + "12f", header, 280, *rows)
        header[344:348] = b"n+1\0"
    else:
        struct.pack_into(order + "i", header, 0, 540)
        header[4:12] = b"n+2\0\r\n\x1a\n"
        struct.pack_into(order + "hh", header, 12, code, bits)
        struct.pack_into(order + "8q", header, 16, *full)
        struct.pack_into(order + "8d", header, 104, 1.0, 1.0, 1.0, 2.0, 1.0, 1.0, 1.0, 1.0)
        struct.pack_into(order + "qdd", header, 168, offset, slope, 1.0 if slope else 0.0)
        struct.pack_into(order + "ii", header, 344, 0, 1)
        struct.pack_into(order + "12d", header, 400, *rows)
    voxels = int(np.prod(dims))
    data = (np.arange(voxels) % 97).astype(np.dtype(_CODES[code]).newbyteorder(order))
    flag = b"\1\0\0\0" if ext else b"\0\0\0\0"
    return bytes(header) + flag + ext + data.tobytes(order="F")


def _niftis() -> list[bytes]:
    oblique = (0.0, -1.0, 0.0, 4.0, 0.0, 0.0, 1.5, 0.0, -1.0, 0.0, 0.0, 9.0)
    return [
        _nifti((6, 5, 4), 2),
        _nifti((5, 4, 3), 4, order=">"),
        _nifti((4, 4, 3), 16, slope=2.0),
        _nifti((3, 4, 5), 64, version=2),
        _nifti((4, 3, 3, 2), 512, version=2, order=">"),
        _nifti((5, 5, 2), 4, extension=b"brainseg seed extension.", affine=oblique),
    ]
