"""What a 2-D image file declares (`ImageHeader`), as each format's parser reads it, and the magic bytes.

Shared by `png`, `jpeg`, `tiff` and `bmp`; `images` picks the parser by the magic bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

from brainseg.errors import FormatError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SIGNATURE = b"\xff\xd8\xff"
TIFF_SIGNATURES = (b"II*\0", b"MM\0*")
BMP_SIGNATURE = b"BM"


@dataclass(frozen=True)
class ImageHeader:
    """What an image file declares, from its structure alone (nothing decoded).

    Attributes:
        format: "PNG", "JPEG", "TIFF" or "BMP".
        width, height: pixels as decoded.
        channels: samples per pixel OpenCV decodes to (alpha included; the reader drops it).
        sample_bytes: bytes per decoded sample (1, or 2 for 16-bit files).
        work_bytes: what the decoder holds besides the decoded image: tile and strip buffers,
            JPEG coefficients, a copy of the file.
        payload: the bytes to hand the decoder (for PNG, the file without its ancillary chunks).
    """

    format: str
    width: int
    height: int
    channels: int
    sample_bytes: int
    work_bytes: int
    payload: bytes | memoryview

    @property
    def pixels(self) -> int:
        return self.width * self.height

    @property
    def decoded_bytes(self) -> int:
        """Bytes of the decoded image as OpenCV returns it."""
        return self.pixels * self.channels * self.sample_bytes

    @property
    def read_bytes(self) -> int:
        """The most that reading the file into the runtime's 8-bit RGB holds at once (`read_image`, then
        `brainseg.runtime.io.loading`), not counting the file's own bytes: the decoder's work, the
        decoded image and one copy of it, 3 bytes of RGB and, for 16-bit files, 32 bytes of float32
        rescaling per pixel (measured with `brainseg.fuzz.allocations`; docs/security.md)."""
        per_pixel = 2 * self.channels * self.sample_bytes + 3 + (32 if self.sample_bytes > 1 else 0)
        return self.work_bytes + self.pixels * per_pixel


def cut_short(kind: str, have: int, need: int) -> FormatError:
    """The refusal of a file that ends before its own structure says it does."""
    return FormatError(f"{kind} is truncated ({have} bytes; its structure needs {need})")
