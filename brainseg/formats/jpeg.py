"""JPEG files walked marker by marker as libjpeg reads them, before libjpeg sees a byte.

libjpeg decodes whatever the frame header declares: a 700-byte file that declares 16000 x 16000
pixels decodes, grey, to 16000 x 16000 pixels, and a progressive file of thousands of tiny scans
makes it pass over every block thousands of times. `inspect_jpeg` walks every marker to the
end-of-image marker, takes Huffman-coded frames only (baseline, extended, progressive, lossless:
the kinds whose coded size has a floor), refuses image data too short to code the declared
blocks of every component (at least one bit each) and more than `MAX_SCANS` scans, and needs the
end-of-image marker.
"""

from __future__ import annotations

import re
import struct

from brainseg.errors import FormatError
from brainseg.formats.image_header import ImageHeader
from brainseg.formats.limits import check_pixels

MAX_SEGMENTS = 1 << 16
MAX_SCANS = 100  # libjpeg's progressive scripts use about 10
# a marker: the last 0xFF of a run (fill bytes), then a byte other than 0x00 (stuffed data), 0xFF and a
# restart marker. One 0xFF, not "\xff+": the search must stay linear on a long run of 0xFF bytes.
_MARKER = re.compile(rb"\xff([^\x00\xff\xd0-\xd7])")
_READ = {0xC0: "baseline", 0xC1: "extended", 0xC2: "progressive", 0xC3: "lossless"}
_NOT_READ = {0xC5: "hierarchical", 0xC6: "hierarchical", 0xC7: "hierarchical", 0xC9: "arithmetic-coded",
             0xCA: "arithmetic-coded", 0xCB: "arithmetic-coded", 0xCD: "hierarchical arithmetic-coded",
             0xCE: "hierarchical arithmetic-coded", 0xCF: "hierarchical arithmetic-coded", 0xF7: "JPEG-LS"}


def inspect_jpeg(data: bytes, max_pixels: int | None = None) -> ImageHeader:
    """The `ImageHeader` of a JPEG file; FormatError for a segment that runs past the file, a frame
    kind libjpeg would decode without a floor on its coded size, too little image data for the
    declared pixels, too many scans, or no end-of-image marker.

    Markers are found as libjpeg finds them: bytes that are not a marker are skipped up to the next
    0xFF (libjpeg warns and goes on), and inside a scan's coded data 0xFF 0x00 and the restart
    markers are data. Before the first scan an unknown marker, or a segment running past the end,
    is an error, as it is for libjpeg; after it, such a marker ends the image data, where libjpeg
    stops decoding (OpenCV keeps what was decoded)."""
    data = bytes(data)
    at, segments, frame, scans, coded_from = 2, 0, None, 0, None
    while True:
        found = _MARKER.search(data, at)
        if found is None:
            raise FormatError("JPEG is truncated (no end-of-image marker)")
        marker, at = found.group(1)[0], found.end()
        if marker in (0xD9, 0x01):  # the end of the image; TEM, a marker without a length
            if marker == 0xD9:
                break
            continue
        length = struct.unpack_from(">H", data, at)[0] if at + 2 <= len(data) else 0
        problem = _segment_problem(marker, at, length, len(data))
        if coded_from is not None and (problem or marker in _READ):  # libjpeg stops decoding here
            _needs_end(data, at)
            break
        if problem:
            raise FormatError(problem)
        segments += 1
        if segments > MAX_SEGMENTS:
            raise FormatError(f"JPEG has more than {MAX_SEGMENTS} segments")
        if marker in _READ:
            if frame is not None:
                raise FormatError("JPEG has two frame headers")
            frame = _frame(data[at + 2:at + length], marker)
            if max_pixels is not None:
                check_pixels(frame[2], frame[1], max_pixels)
        if marker == 0xDA:
            if frame is None:
                raise FormatError("JPEG has image data before its frame header (corrupt)")
            scans += 1
            if scans > MAX_SCANS:
                raise FormatError(f"JPEG has more than {MAX_SCANS} scans")
            coded_from = at + length if coded_from is None else coded_from
        at += length
    if coded_from is None:
        raise FormatError("JPEG has no image data before its end-of-image marker")
    return _header(data, at - 2 - coded_from, scans, frame)


def _segment_problem(marker: int, at: int, length: int, size: int) -> str | None:
    """Why the segment of `marker` whose length field is at byte `at` cannot be read, or None."""
    if marker in _NOT_READ:
        return (f"JPEG is {_NOT_READ[marker]} (SOF 0x{marker:02X}); baseline, extended, progressive and lossless "
                "Huffman-coded JPEG is read")
    if not (0xC0 <= marker <= 0xCF or 0xDA <= marker <= 0xEF or marker == 0xFE):
        return f"JPEG has an unknown marker 0x{marker:02X} at byte {at - 2}"
    if length < 2 or at + length > size:
        return (f"JPEG is truncated or corrupt: segment 0x{marker:02X} at byte {at - 2} declares {length} bytes, "
                f"{max(0, size - at)} follow it")
    return None


def _needs_end(data: bytes, at: int) -> None:
    """FormatError unless an end-of-image marker follows byte `at` (a file cut short decodes grey)."""
    if data.find(b"\xff\xd9", at) < 0:
        raise FormatError("JPEG is truncated (no end-of-image marker)")


def _frame(body: bytes, marker: int) -> tuple[int, int, int, int, int, int]:
    """(precision, height, width, components, marker, blocks of all components) of a frame header's body."""
    if len(body) < 6:
        raise FormatError(f"JPEG frame header is {len(body)} bytes; at least 6 are needed")
    precision, height, width, components = struct.unpack_from(">BHHB", body)
    if len(body) != 6 + 3 * components or not 1 <= components <= 4:
        raise FormatError(f"JPEG frame header declares {components} components in {len(body)} bytes")
    if height == 0:
        raise FormatError("JPEG declares its height later, in a DNL marker; such files are not read")
    if width == 0 or not (2 <= precision <= 16 if marker == 0xC3 else precision in (8, 12)):
        raise FormatError(f"JPEG declares {width}x{height} pixels at {precision} bits")
    sampling = [(body[7 + 3 * i] >> 4, body[7 + 3 * i] & 15) for i in range(components)]
    if any(not (1 <= h <= 4 and 1 <= v <= 4) for h, v in sampling):
        raise FormatError(f"JPEG frame header declares sampling factors {sampling}; each must be 1 to 4")
    most_h, most_v = max(h for h, _ in sampling), max(v for _, v in sampling)
    blocks = sum(_ceil(_ceil(width * h, most_h), 8) * _ceil(_ceil(height * v, most_v), 8) for h, v in sampling)
    return precision, height, width, components, marker, blocks


def _header(data: bytes, coded: int, scans: int, frame: tuple[int, int, int, int, int, int]) -> ImageHeader:
    """The header of a walked JPEG: `coded` bytes from its first scan's data to its end-of-image marker."""
    precision, height, width, components, marker, blocks = frame
    if coded * 8 < blocks:
        raise FormatError(f"JPEG image data is {coded} bytes; {width}x{height} pixels need at least "
                          f"{-(-blocks // 8)} (truncated or corrupt)")
    sample_bytes = 1 if precision <= 8 else 2
    # a progressive or multi-scan file keeps every block's coefficients (64 x 2 bytes) until the end
    coefficients = blocks * 128 if marker == 0xC2 or scans > 1 else 0
    work = len(data) + coefficients + 32 * width * components * sample_bytes + 2**20
    return ImageHeader("JPEG", width, height, 1 if components == 1 else 3, sample_bytes, work, data)


def _ceil(a: int, b: int) -> int:
    return -(-a // b)
