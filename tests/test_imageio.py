"""Decoding 2-D slices and masks, and refusing damaged files (brainseg.data.imageio)."""

from __future__ import annotations

import numpy as np
import pytest
from data_files import SIZE, slice_mask, slice_rgb, tiff_ifd_first, truncate, write_gray, write_rgb

from brainseg.data.imageio import read_image, read_mask, to_uint8
from brainseg.errors import DataError


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_read_image_returns_rgb_order_and_keeps_dtype(tmp_path, suffix):
    rgb = slice_rgb(7, 1)
    image = read_image(write_rgb(tmp_path / f"a{suffix}", rgb))
    assert image.dtype == np.uint8 and image.shape == (SIZE, SIZE, 3)
    assert image[0, 0].tolist() == [7, 51, 200]


def test_read_image_gray_gets_channel_axis_alpha_is_dropped_16bit_kept(tmp_path):
    gray = read_image(write_gray(tmp_path / "g.png", np.full((4, 5), 9, np.uint8)))
    assert gray.shape == (4, 5, 1) and gray[0, 0, 0] == 9
    bgra = np.zeros((4, 5, 4), np.uint8)
    bgra[..., 0], bgra[..., 2], bgra[..., 3] = 10, 30, 128  # B=10, R=30, alpha
    rgb = read_image(write_gray(tmp_path / "rgba.png", bgra))
    assert rgb.shape == (4, 5, 3) and rgb[0, 0].tolist() == [30, 0, 10]
    deep = read_image(write_gray(tmp_path / "d.png", np.full((4, 5), 40000, np.uint16)))
    assert deep.dtype == np.uint16 and deep[0, 0, 0] == 40000


def test_to_uint8_rescales_by_peak():
    image = np.array([[0, 1000, 2000]], np.uint16)
    assert to_uint8(image).tolist() == [[0, 128, 255]]
    assert to_uint8(image, peak=4000).tolist() == [[0, 64, 128]]
    assert to_uint8(np.zeros((2, 2), np.uint16)).max() == 0
    same = np.ones((2, 2), np.uint8)
    assert to_uint8(same) is same


@pytest.mark.parametrize("suffix", [".png", ".tif", ".jpg"])
def test_truncated_file_is_an_error_not_garbage(tmp_path, suffix):
    rng = np.random.default_rng(0)
    path = write_rgb(
        tmp_path / f"slice{suffix}", rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)
    )
    for fraction in (0.3, 0.95):
        truncate(path, fraction)
        with pytest.raises(DataError, match=r"slice\.\w+: .*truncated"):
            read_image(path)


def test_truncated_tiff_with_directory_first_is_caught_by_strip_table(tmp_path):
    pixels = np.arange(SIZE * SIZE, dtype=np.uint32).reshape(SIZE, SIZE).astype(np.uint8)
    path = tmp_path / "first.tif"
    path.write_bytes(tiff_ifd_first(pixels))
    assert np.array_equal(read_image(path)[..., 0], pixels)  # the hand-made TIFF is valid
    truncate(path, 0.7)
    with pytest.raises(
        DataError, match=r"first\.tif: TIFF is truncated: its strip 0 ends at byte 1\d+ of \d+"
    ):
        read_image(path)


@pytest.mark.parametrize(
    ("content", "message"),
    [(None, "does not exist"), (b"", "empty"), (b"not an image at all" * 10, "is not a PNG, JPEG, TIFF or BMP image")],
)
def test_missing_empty_or_undecodable_file_is_an_error(tmp_path, content, message):
    path = tmp_path / "bad.png"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(DataError, match=rf"bad\.png: .*{message}"):
        read_image(path)


def test_read_mask_accepts_0_255_0_1_and_identical_channels(tmp_path):
    expected = slice_mask(2, on=1)
    assert np.array_equal(read_mask(write_gray(tmp_path / "a.png", slice_mask(2))), expected)
    assert np.array_equal(read_mask(write_gray(tmp_path / "b.png", slice_mask(2, on=1))), expected)
    three = np.repeat(slice_mask(2)[..., None], 3, axis=2)
    mask = read_mask(write_gray(tmp_path / "c.tif", three))
    assert mask.dtype == np.uint8 and mask.shape == (SIZE, SIZE) and np.array_equal(mask, expected)


def test_read_mask_rejects_other_values_and_differing_channels(tmp_path):
    values = slice_mask(2, on=128)
    values[0, 0] = 7
    with pytest.raises(
        DataError,
        match=r"m\.png: mask values \{0, 7, 128\} found; allowed are \{0, 1\} or \{0, 255\}",
    ):
        read_mask(write_gray(tmp_path / "m.png", values))
    colour = np.zeros((4, 4, 3), np.uint8)
    colour[0, 0, 0] = 255
    with pytest.raises(DataError, match="3 channels that differ"):
        read_mask(write_gray(tmp_path / "c.png", colour))


