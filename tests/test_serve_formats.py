"""What seg-serve judges from a body's first bytes, before it decodes anything: format, declared size, inflation.

No server here: these are the checks `brainseg.serve.formats` makes, on real encoded images and
real NIfTI files, plus the runtime's readers fed bytes instead of paths (seg-serve's only way in).
"""

from __future__ import annotations

import gzip
import struct
import time

import cv2
import numpy as np
import pytest
from lying_headers import nifti_claiming, png_claiming

from brainseg.data.imageio import declared_size, read_image
from brainseg.runtime.io.nifti import read_nifti
from brainseg.serve import formats
from brainseg.serve.errors import RequestError

nib = pytest.importorskip("nibabel")


def _encoded(suffix: str, image: np.ndarray) -> bytes:
    ok, data = cv2.imencode(suffix, image)
    assert ok
    return data.tobytes()


@pytest.mark.parametrize(("suffix", "shape", "dtype"), [(".png", (37, 53), np.uint8), (".png", (20, 31, 3), np.uint16),
                                                        (".tif", (41, 29, 3), np.uint8), (".tif", (12, 70), np.uint16),
                                                        (".jpg", (33, 47, 3), np.uint8), (".jpg", (64, 16), np.uint8)])
def test_declared_size_is_what_decoding_gives(suffix, shape, dtype):
    image = np.random.default_rng(0).integers(0, 200, shape).astype(dtype)
    data = _encoded(suffix, image)
    height, width, channels, sample_bytes = declared_size(data)
    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert (height, width) == decoded.shape[:2] == shape[:2]
    assert channels == (shape[2] if len(shape) == 3 else 1)
    assert sample_bytes == decoded.itemsize


def _tiff_claiming(width: int, height: int) -> bytes:
    """A little-endian TIFF whose first directory declares width x height, with no strips."""
    entries = [(256, 4, 1, width), (257, 4, 1, height), (258, 3, 1, 8), (277, 3, 1, 1)]
    table = struct.pack("<H", len(entries)) + b"".join(struct.pack("<HHII", *e) for e in entries) + b"\0" * 4
    return b"II*\0" + struct.pack("<I", 8) + table


def _jpeg_claiming(width: int, height: int) -> bytes:
    """SOI, then a baseline frame header declaring width x height with 3 components."""
    frame = struct.pack(">BHHB", 8, height, width, 3) + b"\x01\x11\x00\x02\x11\x00\x03\x11\x00"
    app0 = b"\xff\xe0" + struct.pack(">H", 4) + b"\0\0"
    return b"\xff\xd8" + app0 + b"\xff\xc0" + struct.pack(">H", 2 + len(frame)) + frame


@pytest.mark.parametrize("claim", [png_claiming, _tiff_claiming, _jpeg_claiming])
def test_an_image_declaring_too_many_pixels_is_413_before_decoding(claim):
    body = claim(60000, 60000)
    assert declared_size(body)[:2] == (60000, 60000)
    with pytest.raises(RequestError) as refused:
        formats.check_image_size(body, max_pixels=16384 * 16384)
    assert refused.value.status == 413
    assert "60000x60000" in refused.value.message and "--max-pixels" in refused.value.message
    formats.check_image_size(claim(100, 50), max_pixels=5000)  # at the limit: accepted


@pytest.mark.parametrize(("media", "body", "found"), [
    ("image/png", _encoded(".tif", np.zeros((8, 8), np.uint8)), "TIFF"),
    ("image/tiff", _encoded(".png", np.zeros((8, 8), np.uint8)), "PNG"),
    ("image/png", _encoded(".bmp", np.zeros((8, 8, 3), np.uint8)), "none of"),
    ("image/jpeg", _encoded(".webp", np.zeros((8, 8, 3), np.uint8)), "none of"),
    ("image/png", _encoded(".ppm", np.zeros((8, 8, 3), np.uint8)), "none of"),
    ("application/gzip", _encoded(".png", np.zeros((8, 8), np.uint8)), "PNG"),
    ("application/x-nifti", gzip.compress(b"x" * 400), "gzip"),
])
def test_a_body_that_is_not_what_its_content_type_says_is_415(media, body, found):
    with pytest.raises(RequestError) as refused:
        formats.check_media(media, body)
    assert refused.value.status == 415 and found in refused.value.message


def test_only_the_five_media_types_are_taken():
    assert formats.media_type("image/PNG; charset=binary") == "image/png"
    for media in ("image/webp", "image/bmp", "image/jp2", "text/plain", None, "x" * 5000):
        with pytest.raises(RequestError) as refused:
            formats.media_type(media)
        assert refused.value.status == 415 and len(refused.value.message) < 200


def _nifti(shape, dtype=np.uint8, version=1) -> bytes:
    kind = nib.Nifti1Image if version == 1 else nib.Nifti2Image
    data = np.arange(np.prod(shape)).reshape(shape).astype(dtype)
    return kind(data, np.diag([0.9, 0.9, 2.5, 1.0])).to_bytes()


@pytest.mark.parametrize("version", [1, 2])
def test_a_nifti_header_is_read_as_nibabel_reads_it(version):
    raw = _nifti((9, 7, 5), np.int16, version)
    header = formats.parse_nifti_header(raw[:540])
    assert header.dims == (9, 7, 5) and header.bytes_per_voxel == 2
    assert header.file_bytes == len(raw)
    assert formats.nifti_content(gzip.compress(raw), "application/gzip", max_voxels=315) == raw
    assert formats.nifti_content(raw, "application/x-nifti", max_voxels=315) == raw


def test_a_63_byte_volume_declaring_1024_cubed_voxels_is_413_at_once():
    body = nifti_claiming(1024, 1024, 1024)
    assert len(body) < 100
    started = time.perf_counter()
    with pytest.raises(RequestError) as refused:
        formats.nifti_content(body, "application/gzip", max_voxels=512 * 512 * 320)
    assert time.perf_counter() - started < 0.1
    assert refused.value.status == 413 and "1024x1024x1024" in refused.value.message


def test_a_volume_under_the_limit_that_holds_fewer_bytes_than_declared_is_422_not_an_allocation():
    with pytest.raises(RequestError) as refused:
        formats.nifti_content(nifti_claiming(256, 256, 256), "application/gzip", max_voxels=512 * 512 * 320)
    assert refused.value.status == 422 and "truncated" in refused.value.message


def test_inflation_stops_at_the_declared_size():
    header = _nifti((4, 4, 4))  # 64 voxels declared...
    body = gzip.compress(header + b"\0" * (64 * 2**20))  # ...followed by 64 MiB more of zeros
    content = formats.nifti_content(body, "application/gzip", max_voxels=64)
    assert content == header


@pytest.mark.parametrize("broken", [b"\x1f\x8b" + b"\0" * 40, gzip.compress(b"not a nifti header" * 40)])
def test_a_broken_gzip_or_a_non_nifti_inside_is_422(broken):
    with pytest.raises(RequestError) as refused:
        formats.nifti_content(broken, "application/gzip", max_voxels=10**6)
    assert refused.value.status == 422


def test_the_readers_read_bytes_as_they_read_the_file(tmp_path):
    path = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(np.random.default_rng(1).random((6, 5, 4)).astype(np.float32), np.eye(4)), str(path))
    from_file, info_file = read_nifti(path)
    from_bytes, info_bytes = read_nifti(tmp_path / "elsewhere.nii", path.read_bytes())
    np.testing.assert_array_equal(from_file, from_bytes)
    np.testing.assert_array_equal(info_file["affine"], info_bytes["affine"])
    image = tmp_path / "slice.png"
    cv2.imwrite(str(image), np.random.default_rng(2).integers(0, 255, (9, 11, 3)).astype(np.uint8))
    np.testing.assert_array_equal(read_image(image), read_image("unnamed", image.read_bytes()))


def test_the_decoded_estimate_grows_with_what_the_header_declares():
    small, large = png_claiming(100, 100), png_claiming(1000, 1000)
    assert formats.decoded_estimate(large, "image/png") == 100 * formats.decoded_estimate(small, "image/png")
    assert formats.decoded_estimate(small, "image/png") >= 100 * 100 * 3  # at least the decoded samples
    volume = _nifti((20, 20, 10), np.int16)
    estimate = formats.decoded_estimate(gzip.compress(volume), "application/gzip")
    assert estimate >= len(volume) + 20 * 20 * 10 * 4  # the inflated file and a float32 copy at least
    assert estimate == formats.decoded_estimate(volume, "application/x-nifti")
    assert formats.decoded_estimate(b"not an image", "image/png") == 0
