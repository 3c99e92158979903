"""Decode 2-D image and mask slices (PNG, TIFF, JPEG) with OpenCV, and refuse damaged files.

OpenCV returns `None` for some broken files and quietly decodes others (a truncated JPEG comes
back with grey blocks). Every file is therefore checked for a complete structure before it is
decoded, so a truncated slice is an error that names the file, never garbage pixels.

This module is shared with the runtime, so it imports numpy and OpenCV only (no torch).
"""

from __future__ import annotations

import struct
from pathlib import Path

import cv2
import numpy as np

from brainseg.errors import InputSkipped

IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")
MASK_VALUE_SETS = ({0, 1}, {0, 255})

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_JPEG_SIGNATURE = b"\xff\xd8"
_TAIL = 64  # bytes at the end of a file searched for an end marker (some writers pad)
_TIFF_STRIP_TAGS = ((273, 279), (324, 325))  # (StripOffsets, StripByteCounts), tiles likewise


def read_image(path: Path | str, content: bytes | None = None) -> np.ndarray:
    """Read one slice as (H, W, C) in RGB order, keeping its stored dtype (uint8 or uint16).

    Grayscale files get a channel axis (C = 1); colour files are converted from OpenCV's BGR to
    RGB (C = 3); an alpha channel is dropped. With `content`, those bytes are decoded from memory
    and `path` only names them in errors.

    Raises:
        InputSkipped: (a `DataError`) the file is missing, empty, truncated, undecodable,
            or has a dtype or channel count other than the above.
    """
    path = Path(path)
    data = _read_bytes(path) if content is None else content
    if not data:
        raise InputSkipped(path, "file is empty (0 bytes)")
    _check_complete(path, data)
    try:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error as exc:
        detail = str(exc).strip().splitlines()[-1] if str(exc).strip() else "cv2.error"
        raise InputSkipped(path, f"OpenCV cannot decode it ({detail})") from exc
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


def declared_size(data: bytes) -> tuple[int, int, int, int] | None:
    """(height, width, channels, bytes per sample) that a PNG, JPEG or classic TIFF's header
    declares, read from the header alone (nothing decoded); None for another format or a header
    that does not say (a JPEG with no frame header before its scan, a TIFF cut short).

    This is what decoding the image would allocate, so a service can refuse an image that is too
    large before OpenCV reserves the memory.
    """
    if data.startswith(_PNG_SIGNATURE) and len(data) >= 26 and data[12:16] == b"IHDR":
        width, height, depth, colour = struct.unpack(">IIBB", data[16:26])
        channels = {0: 1, 2: 3, 3: 3, 4: 2, 6: 4}.get(colour, 4)
        return height, width, channels, 2 if depth == 16 else 1
    if data.startswith(_JPEG_SIGNATURE):
        return _jpeg_frame_size(data)
    if data[:4] in (b"II*\x00", b"MM\x00*") and len(data) >= 8:
        order, fields, _ = _tiff_directory(data)
        values = {tag: _tiff_values(data, order, *fields[tag]) for tag in (256, 257, 258, 277) if tag in fields}
        if not values.get(256) or not values.get(257):
            return None
        channels = (values.get(277) or [1])[0]
        bits = max(values.get(258) or [8])
        return values[257][0], values[256][0], channels, max(1, -(-bits // 8))
    return None


def _jpeg_frame_size(data: bytes) -> tuple[int, int, int, int] | None:
    """The frame header's (height, width, components, 1) of a JPEG, walking its markers."""
    at = 2
    while at + 4 <= len(data):
        if data[at] != 0xFF:
            return None
        marker = data[at + 1]
        if marker == 0xFF:  # fill byte
            at += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # markers with no length
            at += 2
            continue
        (length,) = struct.unpack(">H", data[at + 2 : at + 4])
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # a start-of-frame
            if at + 10 > len(data):
                return None
            height, width, components = struct.unpack(">HHB", data[at + 5 : at + 10])
            return height, width, components, 1 if data[at + 4] <= 8 else 2
        if marker == 0xDA:  # start of scan with no frame header before it
            return None
        at += 2 + length
    return None


def _read_bytes(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise InputSkipped(path, "file does not exist") from exc
    except OSError as exc:
        raise InputSkipped(path, f"cannot be read ({exc.strerror or exc})") from exc
    if not data:
        raise InputSkipped(path, "file is empty (0 bytes)")
    return data


def _check_complete(path: Path, data: bytes) -> None:
    """Raise if a PNG, JPEG or TIFF file ends before its own structure says it should."""
    if data.startswith(_PNG_SIGNATURE) and b"IEND" not in data[-_TAIL:]:
        raise InputSkipped(path, "PNG is truncated (no IEND chunk at the end)")
    if data.startswith(_JPEG_SIGNATURE) and b"\xff\xd9" not in data[-_TAIL:]:
        raise InputSkipped(path, "JPEG is truncated (no end-of-image marker)")
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        needed = _tiff_required_size(data)
        if needed > len(data):
            raise InputSkipped(
                path, f"TIFF is truncated ({len(data)} bytes, its first image needs {needed})"
            )


def _tiff_directory(data: bytes) -> tuple[str, dict[int, tuple[int, int, bytes]], int]:
    """(byte order, {tag: (type, count, raw value)}, end of the table) of a classic TIFF's first
    directory; the dict is empty when the file ends before the table does."""
    order = "<" if data[:2] == b"II" else ">"
    (ifd,) = struct.unpack(order + "I", data[4:8])
    if ifd + 2 > len(data):
        return order, {}, ifd + 2
    (count,) = struct.unpack(order + "H", data[ifd : ifd + 2])
    table_end = ifd + 2 + 12 * count + 4
    if table_end > len(data):
        return order, {}, table_end
    fields = {}
    for i in range(count):
        tag, kind, n, raw = struct.unpack(
            order + "HHI4s", data[ifd + 2 + 12 * i : ifd + 14 + 12 * i]
        )
        fields[tag] = (kind, n, raw)
    return order, fields, table_end


def _tiff_required_size(data: bytes) -> int:
    """Bytes a classic TIFF needs for its first directory and that image's strips or tiles."""
    order, fields, table_end = _tiff_directory(data)
    if not fields:
        return table_end
    needed = table_end
    for offsets_tag, counts_tag in _TIFF_STRIP_TAGS:
        if offsets_tag in fields and counts_tag in fields:
            offsets = _tiff_values(data, order, *fields[offsets_tag])
            counts = _tiff_values(data, order, *fields[counts_tag])
            if offsets is None or counts is None:
                return len(data) + 1  # the tables themselves lie past the end of the file
            # zip(strict=False): a table shorter than its partner is for libtiff to report
            needed = max([needed] + [o + c for o, c in zip(offsets, counts, strict=False)])
    return needed


def _tiff_values(data: bytes, order: str, kind: int, n: int, raw: bytes) -> list[int] | None:
    """The SHORT or LONG values of one TIFF field ([] for other types), None if out of the file."""
    code = {3: "H", 4: "I"}.get(kind)
    if code is None:
        return []
    size = struct.calcsize(code) * n
    if size <= 4:
        return list(struct.unpack(order + code * n, raw[:size]))
    (start,) = struct.unpack(order + "I", raw)
    if start + size > len(data):
        return None
    return list(struct.unpack(order + code * n, data[start : start + size]))


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
