"""What seg-serve judges from a body's first bytes, before it decodes anything: format, declared size, inflation.

No server here: these are the checks `brainseg.serve.formats` makes, on real encoded images and
real NIfTI files, plus the runtime's readers fed bytes instead of paths (seg-serve's only way in).
"""

from __future__ import annotations

import gzip
import struct
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from lying_headers import nifti_claiming, png_claiming

from brainseg.artifacts.sections import InputSpec
from brainseg.data.imageio import read_image
from brainseg.data.nifti_file import nifti_content
from brainseg.formats import nifti
from brainseg.formats.images import inspect_image
from brainseg.formats.limits import SizeLimits
from brainseg.postprocess import PostProcessing
from brainseg.runtime.io.nifti import read_nifti
from brainseg.runtime.segmenter import ScanSteps
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
def test_the_inspected_header_is_what_decoding_gives(suffix, shape, dtype):
    image = np.random.default_rng(0).integers(0, 200, shape).astype(dtype)
    header = inspect_image(_encoded(suffix, image))
    decoded = cv2.imdecode(np.frombuffer(header.payload, np.uint8), cv2.IMREAD_UNCHANGED)
    assert (header.height, header.width) == decoded.shape[:2] == shape[:2]
    assert header.channels >= (decoded.shape[2] if decoded.ndim == 3 else 1)
    assert header.sample_bytes == decoded.itemsize


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


def _steps(max_pixels: int = 16384 * 16384, max_voxels: int = 512 * 512 * 320) -> ScanSteps:
    spec = InputSpec(name="image", dtype="uint8", layout="NHWC", channels=3, height=64, width=64, normalisation={})
    return ScanSteps(spec, 0.5, PostProcessing(), SizeLimits(max_pixels, max_voxels))


@pytest.mark.parametrize(("claim", "media"), [(png_claiming, "image/png"), (_tiff_claiming, "image/tiff"),
                                              (_jpeg_claiming, "image/jpeg")])
def test_an_image_declaring_too_many_pixels_is_413_before_decoding(claim, media):
    with pytest.raises(RequestError) as refused:
        formats.inspect(claim(60000, 60000), media, _steps())
    assert refused.value.status == 413
    assert "60000x60000" in refused.value.message and "--max-pixels" in refused.value.message
    with pytest.raises(RequestError) as refused:  # at the limit: past the size check, refused for holding no pixels
        formats.inspect(claim(100, 50), media, _steps(max_pixels=5000))
    assert refused.value.status == 422


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
    header = nifti.parse_header(raw[:nifti.HEAD_BYTES])
    assert header.dims == (9, 7, 5) and header.itemsize == 2 and header.datatype == "int16"
    assert header.file_bytes == len(raw)
    assert header.vox_offset == len(raw) - 9 * 7 * 5 * 2
    for body, media in ((gzip.compress(raw), "application/gzip"), (raw, "application/x-nifti")):
        assert formats.inspect(body, media, _steps(max_voxels=315)).kind == "nifti"


def test_a_63_byte_volume_declaring_1024_cubed_voxels_is_413_at_once():
    body = nifti_claiming(1024, 1024, 1024)
    assert len(body) < 100
    started = time.perf_counter()
    with pytest.raises(RequestError) as refused:
        formats.inspect(body, "application/gzip", _steps())
    assert time.perf_counter() - started < 0.1
    assert refused.value.status == 413 and "1024x1024x1024" in refused.value.message


def _read_body(body: bytes, media: str, max_voxels: int = 512 * 512 * 320):
    from brainseg.serve import payloads

    return payloads.read_body(body, media, _steps(max_voxels=max_voxels))


def test_a_volume_under_the_limit_that_holds_fewer_bytes_than_declared_is_422_not_an_allocation():
    with pytest.raises(RequestError) as refused:
        _read_body(nifti_claiming(256, 256, 256), "application/gzip")
    assert refused.value.status == 422 and "truncated" in refused.value.message


def test_inflation_stops_at_the_declared_size():
    volume = _nifti((4, 4, 4))  # 64 voxels declared...
    body = gzip.compress(volume + b"\0" * (64 * 2**20))  # ...followed by 64 MiB more of zeros
    header, content = nifti_content(Path("request.nii"), body, max_voxels=64)
    assert bytes(content) == volume and header.file_bytes == len(volume)
    data, _ = _read_body(body, "application/gzip", max_voxels=64)
    assert data.image.shape[:3] == (4, 4, 4)


@pytest.mark.parametrize("broken", [b"\x1f\x8b" + b"\0" * 40, gzip.compress(b"not a nifti header" * 40)])
def test_a_broken_gzip_or_a_non_nifti_inside_is_422(broken):
    with pytest.raises(RequestError) as refused:
        formats.inspect(broken, "application/gzip", _steps())
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


def test_the_estimate_grows_with_what_the_header_declares():
    def estimate(body: bytes, media: str) -> int:
        return formats.inspect(body, media, _steps()).estimate

    small, large = (_encoded(".png", np.zeros(shape, np.uint8)) for shape in ((100, 100, 3), (1000, 1000, 3)))
    assert estimate(small, "image/png") >= 100 * 100 * 3  # at least the decoded samples
    per_pixel = (estimate(large, "image/png") - estimate(small, "image/png")) / (1000 * 1000 - 100 * 100)
    assert 3 * 2 <= per_pixel <= 64  # the decoded image and its copies, the answer at full size
    volume = _nifti((20, 20, 10), np.int16)
    assert estimate(gzip.compress(volume), "application/gzip") == estimate(volume, "application/x-nifti")
    assert estimate(volume, "application/x-nifti") >= len(volume) + 20 * 20 * 10 * 4  # the file and a float32 copy
