"""Classic TIFF files' first directory, read as libtiff reads it, before libtiff sees a byte.

libtiff allocates what the directory declares: a strip or tile buffer of the declared tile size
(TileWidth 2^20 on a 64 x 64 image: hundreds of MiB for a 384-byte file), arrays of the declared
value counts, and it decodes strips whose compressed size cannot hold what they declare.
`inspect_tiff` refuses a directory that lists a tag twice (the project and libtiff would disagree
on which value counts), a value of unknown type in a tag it reads, or one that lies past the end of
the file (libtiff skips entries of unknown type in other tags, and so does this reader), tiles
larger than the image, strips or tiles that lie past the end of the file or are too short for
what they declare under their compression (compressions other than none, LZW, Deflate, PackBits
and JPEG are refused; YCbCr strips, subsampled, may hold a quarter of their size), more than
2^20 strips or tiles, and more than 4 samples per pixel. Everything libtiff and OpenCV reserve for
the tiles, strips and their tables is counted in `work_bytes`.
"""

from __future__ import annotations

import struct

import numpy as np

from brainseg.errors import FormatError
from brainseg.formats.image_header import ImageHeader, cut_short
from brainseg.formats.limits import check_pixels

_TYPE_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4}
_UNSIGNED = {1: "u1", 3: "u2", 4: "u4"}  # BYTE, SHORT, LONG: the types of the tags read here
# compression -> (name, most decoded bytes per stored byte)
_COMPRESSIONS = {1: ("none", 1), 5: ("LZW", 1400), 7: ("JPEG", 2048), 8: ("Deflate", 1032), 32946: ("Deflate", 1032),
                 32773: ("PackBits", 64)}
WIDTH, LENGTH, BITS, COMPRESSION, PHOTOMETRIC = 256, 257, 258, 259, 262
STRIP_OFFSETS, SAMPLES, ROWS_PER_STRIP, STRIP_COUNTS, PLANAR = 273, 277, 278, 279, 284
TILE_WIDTH, TILE_LENGTH, TILE_OFFSETS, TILE_COUNTS = 322, 323, 324, 325
ORIENTATION = 274
READ_TAGS = {WIDTH, LENGTH, BITS, COMPRESSION, PHOTOMETRIC, STRIP_OFFSETS, SAMPLES, ROWS_PER_STRIP, STRIP_COUNTS,
             PLANAR, TILE_WIDTH, TILE_LENGTH, TILE_OFFSETS, TILE_COUNTS, ORIENTATION}
YCBCR = 6  # the photometric interpretation whose subsampled strips hold fewer bytes than W x H x 3
MAX_CELLS = 1 << 20  # strips or tiles: a 16384 x 16384 image in 16 x 16 tiles


def inspect_tiff(data: bytes, max_pixels: int | None = None) -> ImageHeader:
    """The `ImageHeader` of a classic TIFF file's first image; FormatError for what the module
    docstring lists."""
    directory = _Directory(bytes(data))
    width, height = directory.one(WIDTH), directory.one(LENGTH)
    if not (0 < width < 2**31 and 0 < height < 2**31):
        raise FormatError(f"TIFF declares {width}x{height} pixels")
    if max_pixels is not None:
        check_pixels(width, height, max_pixels)
    samples = directory.one(SAMPLES, 1)
    if not 1 <= samples <= 4:
        raise FormatError(f"TIFF has {samples} samples per pixel; at most 4 are read")
    bits = set(directory.values(BITS, [1])[:samples].tolist())
    if len(bits) != 1 or not 1 <= min(bits) <= 64:
        raise FormatError(f"TIFF declares {sorted(bits)} bits per sample; one value from 1 to 64 is read")
    compression = directory.one(COMPRESSION, 1)
    if compression not in _COMPRESSIONS:
        names = ", ".join(sorted({name for name, _ in _COMPRESSIONS.values()}))
        raise FormatError(f"TIFF compression {compression} is not read; use {names}")
    layout = _Layout(directory, width, height, samples, bits.pop())
    photometric = directory.one(PHOTOMETRIC, 1)
    name, ratio = _COMPRESSIONS[compression]
    layout.check((name, max(ratio, 4) if photometric == YCBCR else ratio))
    gray = samples == 1 and photometric in (0, 1)
    channels = 1 if gray else 4
    decoded = width * height * channels * layout.sample_bytes
    rotated = decoded if directory.one(ORIENTATION, 1) != 1 else 0  # OpenCV flips a copy
    work = layout.work_bytes() + rotated + len(directory.data)
    return ImageHeader("TIFF", width, height, channels, layout.sample_bytes, work, directory.data)


class _Directory:
    """The first image file directory: {tag: (type, count, where its values start)}, each tag once."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.order = "<" if data[:2] == b"II" else ">"
        if len(data) < 8:
            raise cut_short("TIFF", len(data), 8)
        (ifd,) = struct.unpack_from(self.order + "I", data, 4)
        if ifd < 8:
            raise FormatError(f"TIFF's first directory is at byte {ifd}, inside its header (corrupt)")
        if ifd + 2 > len(data):
            raise FormatError(f"TIFF is truncated: its first directory is at byte {ifd}, the file holds {len(data)}")
        (count,) = struct.unpack_from(self.order + "H", data, ifd)
        if ifd + 2 + 12 * count + 4 > len(data):
            raise cut_short("TIFF", len(data), ifd + 2 + 12 * count + 4)
        self.fields: dict[int, tuple[int, int, int]] = {}
        for entry in range(ifd + 2, ifd + 2 + 12 * count, 12):
            tag, kind, n = struct.unpack_from(self.order + "HHI", data, entry)
            if tag in self.fields:
                raise FormatError(f"TIFF directory lists tag {tag} twice")
            if kind not in _TYPE_SIZES:
                if tag in READ_TAGS:
                    raise FormatError(f"TIFF tag {tag} has unknown type {kind}")
                continue  # libtiff ignores an entry of unknown type, with a warning
            size = _TYPE_SIZES[kind] * n
            start = entry + 8 if size <= 4 else struct.unpack_from(self.order + "I", data, entry + 8)[0]
            if start + size > len(data):
                raise FormatError(f"TIFF tag {tag}'s {n} values run past the end of the file (to byte "
                                  f"{start + size} of {len(data)})")
            self.fields[tag] = (kind, n, start)

    def __contains__(self, tag: int) -> bool:
        return tag in self.fields

    def values(self, tag: int, default: list[int] | None = None, most: int | None = None) -> np.ndarray:
        """The values of an integer tag (BYTE, SHORT or LONG) as int64, the first `most` of them;
        `default` when it is absent."""
        if tag not in self.fields:
            if default is None:
                raise FormatError(f"TIFF lacks tag {tag}, which it needs")
            return np.asarray(default, np.int64)
        kind, n, start = self.fields[tag]
        if kind not in _UNSIGNED:
            raise FormatError(f"TIFF tag {tag} has type {kind}; expected BYTE, SHORT or LONG")
        count = n if most is None else min(n, most)
        return np.frombuffer(self.data, self.order + _UNSIGNED[kind], count, start).astype(np.int64)

    def one(self, tag: int, default: int | None = None) -> int:
        """The single value of an integer tag; `default` when it is absent."""
        values = self.values(tag, None if default is None else [default])
        if len(values) != 1:
            raise FormatError(f"TIFF tag {tag} holds {len(values)} values; one is expected")
        return int(values[0])


class _Layout:
    """The strips or tiles of the first image: their size, where they lie, and what reading them takes."""

    def __init__(self, directory: _Directory, width: int, height: int, samples: int, bits: int) -> None:
        self.width, self.height, self.samples, self.bits = width, height, samples, bits
        self.planes = samples if directory.one(PLANAR, 1) == 2 else 1
        tiled = TILE_WIDTH in directory or TILE_LENGTH in directory
        if tiled and (STRIP_OFFSETS in directory or STRIP_COUNTS in directory):
            raise FormatError("TIFF has both strip and tile offsets")
        if tiled:
            self.cell = (directory.one(TILE_WIDTH), directory.one(TILE_LENGTH))
            limit = (-(-width // 16) * 16, -(-height // 16) * 16)
            if not (0 < self.cell[0] <= limit[0] and 0 < self.cell[1] <= limit[1]):
                raise FormatError(f"TIFF tiles are {self.cell[0]}x{self.cell[1]} for a {width}x{height} image; "
                                  f"a tile is at most {limit[0]}x{limit[1]}")
            across, down = -(-width // self.cell[0]), -(-height // self.cell[1])
            offsets, counts = TILE_OFFSETS, TILE_COUNTS
        else:
            rows = directory.one(ROWS_PER_STRIP, 2**32 - 1)
            self.cell = (width, height if rows == 0 or rows > height else rows)
            across, down = 1, -(-height // self.cell[1])
            offsets, counts = STRIP_OFFSETS, STRIP_COUNTS
        self.cells = across * down * self.planes
        what = "tiles" if tiled else "strips"
        if self.cells > MAX_CELLS:
            raise FormatError(f"TIFF has {self.cells} {what}; at most {MAX_CELLS} are read")
        self.offsets = directory.values(offsets, most=self.cells)
        self.counts = directory.values(counts, most=self.cells)
        if min(len(self.offsets), len(self.counts)) < self.cells:
            raise FormatError(f"TIFF lists {len(self.offsets)} offsets and {len(self.counts)} byte counts for its "
                              f"{self.cells} {what}")
        self.tiled, self.size = tiled, len(directory.data)

    @property
    def sample_bytes(self) -> int:
        """Bytes of one decoded sample: 1, 2, 4 or 8."""
        return 1 if self.bits <= 8 else 2 if self.bits <= 16 else 4 if self.bits <= 32 else 8

    @property
    def cell_bytes(self) -> int:
        """Bytes of one decoded strip or tile."""
        return self.cell[1] * -(-self.cell[0] * (self.samples // self.planes) * self.bits // 8)

    def check(self, compression: tuple[str, int]) -> None:
        """FormatError for a strip or tile past the end of the file or too short for what it declares."""
        ends = self.offsets + self.counts
        if ends.max() > self.size:
            at = int(ends.argmax())
            raise FormatError(f"TIFF is truncated: its {'tile' if self.tiled else 'strip'} {at} ends at byte "
                              f"{int(ends[at])} of {self.size}")
        name, ratio = compression
        needed = np.full(self.cells, self.cell_bytes, np.int64)
        if not self.tiled:  # the last strip of each plane holds the rows that are left
            per_plane = self.cells // self.planes
            last_rows = self.height - (per_plane - 1) * self.cell[1]
            needed[per_plane - 1::per_plane] = self.cell_bytes // self.cell[1] * last_rows
        short = self.counts * ratio < needed
        if short.any():
            at = int(short.argmax())
            raise FormatError(f"TIFF {'tile' if self.tiled else 'strip'} {at} holds {int(self.counts[at])} bytes "
                              f"({name}); it declares {int(needed[at])} (truncated or corrupt)")

    def work_bytes(self) -> int:
        """What libtiff and OpenCV hold while decoding: the strip and tile tables, one compressed and one
        decoded cell, and OpenCV's RGBA or unpacked buffer for one cell."""
        pixels = self.cell[0] * self.cell[1]
        buffers = pixels * (4 + 2 * self.samples * self.sample_bytes)
        return 16 * self.cells + int(self.counts.max()) + self.cell_bytes + buffers + 2**20
