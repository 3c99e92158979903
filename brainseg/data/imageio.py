"""Decode 2-D image and mask slices (PNG, JPEG, TIFF, BMP) with OpenCV, and refuse damaged files.

OpenCV returns `None` for some broken files, quietly decodes others (a truncated JPEG comes back
with grey blocks), and reserves what a header declares before it finds the bytes missing. Every
file is therefore read by `brainseg.formats.images` first: its structure is checked as its
decoder will read it, its declared pixels against --max-pixels, and OpenCV is handed only what
that check passed. A damaged or oversized slice is an error that names the file, never garbage
pixels or an allocation nobody counted.

This module is shared with the runtime, so it imports numpy and OpenCV only (no torch).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from brainseg.errors import FormatError, InputSkipped, InputTooLarge
from brainseg.formats.images import inspect_image
from brainseg.formats.limits import MAX_PIXELS

IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")
MASK_VALUE_SETS = ({0, 1}, {0, 255})
_BYTES_PER_PIXEL = 8  # the most an image file needs per pixel (16-bit RGBA, uncompressed)


def read_image(path: Path | str, content: bytes | None = None, *, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Read one slice as (H, W, C) in RGB order, keeping its stored dtype (uint8 or uint16).

    Grayscale files get a channel axis (C = 1); colour files are converted from OpenCV's BGR to
    RGB (C = 3); an alpha channel is dropped. With `content`, those bytes are decoded from memory
    and `path` only names them in errors.

    Raises:
        InputSkipped: (a `DataError`) the file is missing, empty, not a PNG, JPEG, TIFF or BMP,
            truncated or corrupt (`brainseg.formats.images`), undecodable, or has a dtype or
            channel count other than the above; `InputTooLarge` when it declares more than
            `max_pixels` pixels (nothing is decoded then).
    """
    path = Path(path)
    data = _read_bytes(path, max_pixels * _BYTES_PER_PIXEL + 2**24) if content is None else content
    if not data:
        raise InputSkipped(path, "file is empty (0 bytes)")
    try:
        header = inspect_image(data, max_pixels)
    except FormatError as err:
        raise err.at(path) from None
    try:
        image = cv2.imdecode(np.frombuffer(header.payload, np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error as exc:
        detail = str(exc).strip().splitlines()[-1] if str(exc).strip() else "cv2.error"
        raise InputSkipped(path, f"OpenCV cannot decode it ({detail})") from None
    except Exception as exc:  # MemoryError, or anything else OpenCV's bindings raise
        raise InputSkipped(path, f"OpenCV cannot decode it ({type(exc).__name__}: {exc})") from None
    if image is None:
        raise InputSkipped(
            path, "OpenCV cannot decode it as an image (corrupt or unsupported format)"
        )
    if image.dtype not in (np.uint8, np.uint16):
        raise InputSkipped(
            path, f"has dtype {image.dtype}; only 8- and 16-bit unsigned images are supported"
        )
    return _to_rgb(path, image)


def read_mask(path: Path | str) -> np.ndarray:
    """Read a binary mask as (H, W) uint8 with values in {0, 1}.

    The file may be single-channel or have three identical channels, with values in {0, 1} or
    {0, 255} (an all-zero mask is fine).

    Raises:
        InputSkipped: the file cannot be read (see `read_image`), its channels differ, or it
            holds other values (e.g. a JPEG mask with compression noise, or a label map).
    """
    image = read_image(path)  # (H, W, C)
    if image.shape[2] == 3 and not (
        np.array_equal(image[..., 0], image[..., 1])
        and np.array_equal(image[..., 0], image[..., 2])
    ):
        raise InputSkipped(path, "mask has 3 channels that differ; expected a grayscale mask")
    mask = image[..., 0]
    values = np.unique(mask)
    found = {int(v) for v in values}
    if not any(found <= allowed for allowed in MASK_VALUE_SETS):
        shown = ", ".join(str(v) for v in values[:10]) + (", ..." if len(values) > 10 else "")
        raise InputSkipped(
            path, f"mask values {{{shown}}} found; allowed are {{0, 1}} or {{0, 255}}"
        )
    return (mask > 0).astype(np.uint8)


def to_uint8(image: np.ndarray, peak: float | None = None) -> np.ndarray:
    """Return `image` as uint8: uint8 unchanged, anything else scaled so that `peak` maps to 255.

    `peak` defaults to the image's own maximum. Note that this is a contrast stretch, not a
    calibration: scaling each file by its own maximum makes intensities incomparable between
    files, so pass one `peak` for all slices of a patient (the readers do).
    """
    if image.dtype == np.uint8:
        return image
    peak = float(image.max()) if peak is None else float(peak)
    if peak <= 0:
        return np.zeros(image.shape, np.uint8)
    scaled = np.rint(image.astype(np.float32) * (255.0 / peak))
    return np.clip(scaled, 0, 255).astype(np.uint8)


def _read_bytes(path: Path, most: int) -> bytes:
    """The file's bytes; InputSkipped when it is missing, unreadable, empty or over `most` bytes."""
    try:
        size = path.stat().st_size
        if size > most:
            raise InputTooLarge(path, f"is {size} bytes; an image within --max-pixels needs at most {most}")
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise InputSkipped(path, "file does not exist") from exc
    except OSError as exc:
        raise InputSkipped(path, f"cannot be read ({exc.strerror or exc})") from exc
    if not data:
        raise InputSkipped(path, "file is empty (0 bytes)")
    return data


def _to_rgb(path: Path, image: np.ndarray) -> np.ndarray:
    if image.ndim == 2:
        return image[..., None]  # (H, W, 1)
    channels = image.shape[2]
    if channels == 1:
        return image
    if channels == 2:  # gray + alpha
        return np.ascontiguousarray(image[..., :1])
    if channels == 3:
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    if channels == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
    raise InputSkipped(path, f"has {channels} channels; expected 1 (gray), 3 (RGB) or 4 (RGBA)")
