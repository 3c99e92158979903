"""The parsers of outside bytes (brainseg.formats) on the inputs issue 32's fuzzer found, and on real files.

Each reproducer is built here by hand, as small as the report describes it; the check is what the
parser, the reader and seg-serve's header check each do with it: refuse it with the project's own
error and a one-line reason, at once, allocating nothing the file does not hold.
"""

from __future__ import annotations

import gzip
import struct
import time
import tracemalloc
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from lying_headers import nifti_claiming

from brainseg.data.imageio import read_image
from brainseg.errors import FormatError, InputSkipped, InputTooLarge, LimitExceeded
from brainseg.formats import inflate as inflating
from brainseg.formats import nifti
from brainseg.formats.images import inspect_image
from brainseg.formats.limits import MAX_PIXELS
from brainseg.fuzz.seeds import seeds

nib = pytest.importorskip("nibabel")


def _cheaply(function, *args, seconds: float = 0.5, most: int = 4 * 2**20):
    """`function(*args)`, checked to return or raise within `seconds`, peaking under `most` bytes
    (Python's and numpy's allocations, as tracemalloc sees them)."""
    tracemalloc.start()
    started = time.perf_counter()
    try:
        return function(*args)
    finally:
        elapsed = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert elapsed < seconds, f"took {elapsed:.2f} s"
        assert peak < most, f"allocated {peak / 2**20:.1f} MiB"


def _chunk(kind: bytes, body: bytes, length: int | None = None) -> bytes:
    return struct.pack(">I", len(body) if length is None else length) + kind + body + \
        struct.pack(">I", zlib.crc32(kind + body))


def _png_1x1(*chunks: bytes) -> bytes:
    ihdr = _chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + ihdr + b"".join(chunks)


# --- NIfTI -------------------------------------------------------------------------------------


_HEADER = gzip.decompress(nifti_claiming(2, 2, 2))  # a NIfTI-1 header of 2 x 2 x 2 uint8: 352 bytes


@pytest.mark.parametrize(("body", "reason"), [
    (b"\x1c\x02\x00\x00n+2\x00\r\n\x1a\n", "NIfTI-2 header is cut short: 12 of its 544 bytes"),  # the 12 bytes
    (_HEADER[:350], "NIfTI-1 header is cut short: 350 of its 352 bytes"),
    (_HEADER[:300], "not a single-file NIfTI-1 or NIfTI-2 image"),
])
def test_a_header_cut_short_is_refused_not_a_struct_error(body, reason):
    with pytest.raises(FormatError, match=reason):
        nifti.parse_header(body)
    for content in (body, gzip.compress(body)):
        with pytest.raises(InputSkipped, match=reason):
            _cheaply(_read_nifti, content)


def _read_nifti(content: bytes):
    from brainseg.runtime.io.nifti import read_nifti

    return read_nifti(Path("request.nii"), content)


def _header_with(**fields) -> bytes:
    """A complete 2 x 2 x 2 uint8 NIfTI-1 with header fields overwritten in place."""
    raw = bytearray(_HEADER) + bytes(8)  # the eight voxels
    offsets = {"vox_offset": (108, "<f"), "datatype": (70, "<h"), "dim0": (40, "<h"), "extension": (348, "<i"),
               "sizeof_hdr": (0, "<i")}
    for name, value in fields.items():
        at, code = offsets[name]
        struct.pack_into(code, raw, at, value)
    return bytes(raw)


@pytest.mark.parametrize(("fields", "reason"), [
    ({"vox_offset": 2.3e12}, "puts its voxels at byte"),
    ({"vox_offset": float("inf")}, "puts its voxels at byte"),
    ({"vox_offset": float("nan")}, "puts its voxels at byte"),
    ({"vox_offset": 100.0}, "puts its voxels at byte 100"),
    ({"datatype": 32}, "complex64 voxels"),
    ({"datatype": 999}, "unknown data type code 999"),
    ({"dim0": 9}, "impossible dims"),
    ({"sizeof_hdr": 349}, "says it is 349 bytes, not 348"),
])
def test_a_header_nibabel_would_misread_is_refused_before_nibabel_sees_it(fields, reason):
    body = _header_with(**fields)
    with pytest.raises(InputSkipped, match=reason):
        _cheaply(_read_nifti, body)


def test_an_extension_that_runs_past_the_voxels_is_refused():
    raw = bytearray(_header_with(extension=1))
    raw[352:352] = struct.pack("<ii", 2**30, 4) + bytes(8)  # declares 1 GiB, in 16 bytes
    struct.pack_into("<f", raw, 108, 368.0)
    with pytest.raises(InputSkipped, match="extension at byte 352 .* declares 1073741824 bytes"):
        _cheaply(_read_nifti, bytes(raw))


def test_a_small_gzip_that_inflates_far_past_its_declared_volume_is_read_no_further_than_declared():
    declared = gzip.decompress(nifti_claiming(10, 10, 10)) + bytes(1000)  # 10 x 10 x 10 uint8, complete
    stream = zlib.compressobj(9, wbits=31)  # then 600 MiB of zeros: a 600 kB gzip bomb
    body = stream.compress(declared) + b"".join(stream.compress(bytes(2**20)) for _ in range(600)) + stream.flush()
    assert len(body) < 700_000
    data, _ = _cheaply(_read_nifti, body, seconds=2.0, most=16 * 2**20)
    assert data.shape == (10, 10, 10, 1)


def test_voxels_over_the_limit_are_refused_as_too_large_in_seg_run_and_seg_serve_words():
    with pytest.raises(InputTooLarge) as refused:
        _cheaply(_read_nifti, nifti_claiming(1024, 1024, 1024))
    assert refused.value.reason.endswith("the limit is 83886080 (--max-voxels)")


# --- gzip --------------------------------------------------------------------------------------


def test_empty_gzip_members_are_refused_in_linear_time():
    bomb = gzip.compress(b"") * 200_000  # 4 MiB: the 33-second stall
    with pytest.raises(FormatError, match="members"):
        _cheaply(inflating.inflate, bomb, nifti.HEAD_BYTES, seconds=0.1)
    with pytest.raises(InputSkipped, match="members"):
        _cheaply(_read_nifti, bomb, seconds=0.1)


def test_a_few_empty_members_before_the_volume_are_read_as_gzip_reads_them():
    volume = gzip.decompress(nifti_claiming(2, 2, 2)) + bytes(8)
    data, _ = _read_nifti(gzip.compress(b"") * 20 + gzip.compress(volume))
    assert data.shape == (2, 2, 2, 1)


def test_inflate_is_linear_in_the_body_and_never_returns_more_than_asked():
    members = b"".join(gzip.compress(bytes([i % 251]) * 5000) for i in range(2000))  # 2000 real members
    started = time.perf_counter()
    out = inflating.inflate(members, 10**8)
    assert time.perf_counter() - started < 0.5
    assert len(out) == 2000 * 5000
    assert len(inflating.inflate(members, 12345)) == 12345
    assert bytes(inflating.inflate(gzip.compress(b"abc") + bytes(100), 10)) == b"abc"  # zero padding is fine
    with pytest.raises(FormatError, match="corrupt"):
        inflating.inflate(gzip.compress(b"abc") + b"garbage", 10)


# --- PNG ---------------------------------------------------------------------------------------


def test_a_53_byte_png_whose_chunk_claims_2_gib_never_reaches_the_decoder():
    body = _png_1x1(struct.pack(">I", 0x7FFFFFF0) + b"tEXt" + b"abcd")
    assert len(body) == 45
    refusal = r"PNG is truncated or corrupt: chunk 'tEXt' at byte 33 declares 2147483632 bytes, 0 follow"
    with pytest.raises(FormatError, match=refusal):
        inspect_image(body)
    with pytest.raises(InputSkipped, match="tEXt"):
        _cheaply(read_image, Path("x.png"), body)


def test_the_decoder_gets_the_critical_chunks_only_and_decodes_the_same_pixels():
    for body in seeds("png"):
        header = inspect_image(body)
        assert b"tEXt" not in header.payload and b"zTXt" not in header.payload and b"gAMA" not in header.payload
        original = cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_UNCHANGED)
        if original is not None:
            np.testing.assert_array_equal(cv2.imdecode(np.frombuffer(header.payload, np.uint8), cv2.IMREAD_UNCHANGED),
                                          original)


def test_a_png_declaring_more_pixels_than_its_data_can_hold_is_refused():
    idat = _chunk(b"IDAT", zlib.compress(b"\0\0"))
    body = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", 8000, 8000, 8, 0, 0, 0, 0)) + idat + \
        _chunk(b"IEND", b"")
    with pytest.raises(FormatError, match="8000x8000 pixels need at least"):
        inspect_image(body)


# --- TIFF --------------------------------------------------------------------------------------


def _tiff(entries: list[tuple[int, int, int, int]], data: bytes = bytes(64 * 64)) -> bytes:
    """A little-endian TIFF: `data` at byte 8, then one directory of inline (tag, type, count, value) entries."""
    table = struct.pack("<H", len(entries)) + b"".join(struct.pack("<HHII", *e) for e in entries) + bytes(4)
    return b"II*\0" + struct.pack("<I", 8 + len(data)) + data + table


_SHORT, _LONG = 3, 4
_GRAY_64 = [(256, _SHORT, 1, 64), (257, _SHORT, 1, 64), (258, _SHORT, 1, 8), (259, _SHORT, 1, 1),
            (262, _SHORT, 1, 1), (277, _SHORT, 1, 1)]


def test_a_tiff_is_read_from_its_directory():
    body = _tiff([*_GRAY_64, (273, _LONG, 1, 8), (278, _SHORT, 1, 64), (279, _LONG, 1, 64 * 64)])
    header = inspect_image(body)
    assert (header.width, header.height, header.channels) == (64, 64, 1)
    assert read_image(Path("x.tif"), body).shape == (64, 64, 1)


def test_tiles_of_2_to_the_20_on_a_64_pixel_image_are_refused():
    body = _tiff([*_GRAY_64, (322, _LONG, 1, 2**20), (323, _LONG, 1, 2**20), (324, _LONG, 1, 8),
                  (325, _LONG, 1, 256)], data=bytes(256))
    assert len(body) < 400
    with pytest.raises(FormatError, match="tiles are 1048576x1048576 for a 64x64 image"):
        _cheaply(inspect_image, body)


def test_an_entry_of_unknown_type_is_skipped_as_libtiff_skips_it_unless_it_is_one_the_reader_needs():
    strips = [(273, _LONG, 1, 8), (278, _SHORT, 1, 64), (279, _LONG, 1, 64 * 64)]
    assert read_image(Path("x.tif"), _tiff([*_GRAY_64, *strips, (65000, 255, 1, 0)])).shape == (64, 64, 1)
    with pytest.raises(FormatError, match="tag 256 has unknown type 255"):
        inspect_image(_tiff([(256, 255, 1, 64), *_GRAY_64[1:], *strips]))


def test_a_tag_listed_twice_is_refused_whichever_value_would_count():
    small_last = [(256, _SHORT, 1, 64), (257, _LONG, 1, 60000), (257, _SHORT, 1, 64), *_GRAY_64[2:],
                  (273, _LONG, 1, 8), (279, _LONG, 1, 64 * 64)]
    with pytest.raises(FormatError, match="lists tag 257 twice"):
        inspect_image(_tiff(small_last))


@pytest.mark.parametrize("body", [b"II*\0", b"MM\0*\0\0\0", b"II*\0\xff\xff\xff\xff"])
def test_a_tiff_cut_inside_its_header_is_refused_not_a_struct_error(body):
    with pytest.raises(FormatError, match="TIFF"):
        inspect_image(body)
    with pytest.raises(InputSkipped):
        read_image(Path("x.tif"), body)


def test_a_strip_too_short_for_its_rows_is_refused():
    body = _tiff([*_GRAY_64, (273, _LONG, 1, 8), (278, _SHORT, 1, 64), (279, _LONG, 1, 100)])
    with pytest.raises(FormatError, match=r"strip 0 holds 100 bytes \(none\); it declares 4096"):
        inspect_image(body)


# --- JPEG, BMP and the pixel limit --------------------------------------------------------------


def _jpeg_declaring(width: int, height: int) -> bytes:
    small = seeds("jpeg")[0]  # a 24 x 16 baseline grayscale JPEG
    at = small.index(b"\xff\xc0")
    return small[:at + 5] + struct.pack(">HH", height, width) + small[at + 9:]


def test_bytes_between_jpeg_segments_are_skipped_as_libjpeg_skips_them():
    small = seeds("jpeg")[1]
    at = small.index(b"\xff\xdb")  # the quantisation table: garbage before it, and a stuffed 0xFF 0x00
    body = small[:at] + b"garbage\xff\x00" + small[at:]
    assert inspect_image(body).width == 16
    np.testing.assert_array_equal(read_image(Path("x.jpg"), body), read_image(Path("x.jpg"), small))
    trailing = small + b"after the end-of-image marker" * 10
    assert inspect_image(trailing).height == 16


@pytest.mark.parametrize("run", [b"\xff" * 2**16, b"\xff" * 2**16 + b"\x00", (b"\xff\x00") * 2**15])
def test_the_marker_search_is_linear_in_runs_of_0xff(run):
    """The fuzzer's seed 1 found an 8 kB file that took 0.33 s: 8000 bytes 0xFF, searched with a backtracking
    pattern (quadratic: a 64 KiB run then takes about 20 s). It must take milliseconds, refused or not."""
    small = seeds("jpeg")[0]
    at = small.index(b"\xff\xda")
    for body in (small[:at] + run + small[at:], small + run, small[:40] + run):
        try:
            _cheaply(inspect_image, body, seconds=0.05, most=8 * 2**20)
        except FormatError:
            pass


def test_a_jpeg_whose_data_cannot_code_its_declared_blocks_is_refused():
    assert inspect_image(_jpeg_declaring(24, 16)).width == 24
    with pytest.raises(FormatError, match=r"JPEG image data is \d+ bytes; 8000x8000 pixels need at least 125000"):
        inspect_image(_jpeg_declaring(8000, 8000))


@pytest.mark.parametrize(("marker", "kind"), [(0xC9, "arithmetic-coded"), (0xC5, "hierarchical")])
def test_jpeg_kinds_without_a_floor_on_their_size_are_refused(marker, kind):
    body = bytearray(seeds("jpeg")[0])
    body[body.index(b"\xff\xc0") + 1] = marker
    with pytest.raises(FormatError, match=kind):
        inspect_image(bytes(body))


def test_a_compressed_bmp_is_refused():
    body = bytearray(seeds("bmp")[0])
    struct.pack_into("<I", body, 30, 1)  # RLE8
    with pytest.raises(FormatError, match="compressed .RLE8."):
        inspect_image(bytes(body))


@pytest.mark.parametrize("family", ["png", "jpeg", "tiff", "bmp"])
def test_an_image_over_the_pixel_limit_is_too_large_as_soon_as_its_size_is_read(family):
    body = seeds(family)[0]
    header = inspect_image(body)
    inspect_image(body, header.pixels)  # at the limit: accepted
    with pytest.raises(LimitExceeded, match=r"the limit is \d+ \(--max-pixels\)"):
        inspect_image(body, header.pixels - 1)
    with pytest.raises(InputTooLarge):
        read_image(Path("x"), body, max_pixels=header.pixels - 1)
    assert read_image(Path("x"), body, max_pixels=MAX_PIXELS).shape[:2] == (header.height, header.width)


@pytest.mark.parametrize(("body", "named"), [(b"RIFF\0\0\0\0WEBPVP8 ", "WebP"), (b"GIF89a", "GIF"), (b"", "empty")])
def test_other_formats_are_refused_by_name(body, named):
    with pytest.raises(FormatError, match=named):
        inspect_image(body)
