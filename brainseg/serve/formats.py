"""What seg-serve accepts on the wire, judged from the first bytes of a body before anything is decoded.

- `check_media`: the Content-Type must be one of `MEDIA_TYPES` and the body's magic bytes must
  say the same format (a TIFF posted as image/png is refused, 415), so only PNG, TIFF, JPEG and
  NIfTI reach a decoder; OpenCV's other formats (WebP, JPEG 2000, BMP...) never do.
- `check_image_size`: the pixels an image's header declares against `--max-pixels` (413), so
  OpenCV never allocates for a header that lies.
- `nifti_content`: a NIfTI body's header read first (from the first bytes of the gzip stream),
  its declared voxels checked against `--max-voxels` (413), and then only as many bytes
  decompressed as the header says the file holds: a 63-byte gzip that declares 1024^3 voxels is
  refused before a byte of it is inflated, and a gzip bomb stops at the size its header declared.

Standard library and numpy only; every refusal is a `RequestError` with a one-line reason.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

from brainseg.data.imageio import declared_size
from brainseg.serve.errors import RequestError

# Content-Type -> the runtime's scan kind (2-D slice or NIfTI volume)
MEDIA_TYPES = {"image/png": "slice", "image/tiff": "slice", "image/jpeg": "slice",
               "application/gzip": "nifti", "application/x-nifti": "nifti"}
_FORMATS = {"image/png": "PNG", "image/tiff": "TIFF", "image/jpeg": "JPEG", "application/gzip": "gzip'd NIfTI",
            "application/x-nifti": "NIfTI (.nii)"}
_NIFTI1_MAGIC, _NIFTI2_MAGIC = b"n+1\0", b"n+2\0\r\n\x1a\n"
_NIFTI1_SIZE, _NIFTI2_SIZE = 348, 540
_GZIP = b"\x1f\x8b"


def media_type(content_type: str | None) -> str:
    """The media type of a Content-Type header, lower-cased and without parameters; 415 unless accepted."""
    media = (content_type or "").split(";")[0].strip().lower()
    if media not in MEDIA_TYPES:
        given = f"Content-Type {media[:64]!r}" if media else "no Content-Type"
        raise RequestError(415, f"{given}; send one of {', '.join(MEDIA_TYPES)}")
    return media


def sniff(body: bytes) -> str | None:
    """The accepted media type the body's first bytes show, or None for anything else."""
    if body.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if body[:4] in (b"II*\0", b"MM\0*"):
        return "image/tiff"
    if body.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if body.startswith(_GZIP):
        return "application/gzip"
    if _nifti_layout(body) is not None:
        return "application/x-nifti"
    return None


def check_media(media: str, body: bytes) -> None:
    """415 unless the body's magic bytes are those of `media`'s format."""
    found = sniff(body)
    if found != media:
        what = f"a {_FORMATS[found]}" if found else "none of PNG, TIFF, JPEG or NIfTI"
        raise RequestError(415, f"the body is {what}, not the {_FORMATS[media]} its Content-Type {media} says")


def check_image_size(body: bytes, max_pixels: int) -> None:
    """413 when the image's header declares more than `max_pixels` pixels; 422 when it declares none."""
    size = declared_size(body)
    if size is None:
        raise RequestError(422, "the image's header does not say its size (cut short, or not a plain image)")
    height, width = size[:2]
    if height <= 0 or width <= 0:
        raise RequestError(422, f"the image's header declares {width}x{height} pixels")
    if height * width > max_pixels:
        raise RequestError(413, f"the image declares {width}x{height} = {width * height} pixels; the limit is "
                                f"{max_pixels} (seg-serve --max-pixels)")


# bytes held per decoded voxel, from the decoded float32 volume to the float32 probabilities resized
# back for the answer (see `decoded_estimate`)
_VOLUME_BYTES_PER_VOXEL = 18
_SLICE_BYTES_PER_PIXEL = 16  # besides the decoded samples: RGB copy, probabilities and mask at full size


def decoded_estimate(body: bytes, media: str) -> int:
    """The memory, in bytes, that decoding and answering this body will hold, from its header alone.

    An estimate, for the service's memory budget: for a slice, its decoded samples plus about 16
    bytes per pixel (the RGB copy, the probabilities resized back, the mask); for a volume, the
    inflated file plus about 18 bytes per voxel (float32 as read, the artifacts' input, the float32
    probability and disagreement resized back, the mask). 0 when the header does not say (the
    body is then refused by the checks that read it).
    """
    try:
        if formats_kind(media) == "slice":
            size = declared_size(body)
            if size is None:
                return 0
            height, width, channels, sample_bytes = size
            return height * width * (channels * sample_bytes + _SLICE_BYTES_PER_PIXEL)
        head = _inflate(body, _NIFTI2_SIZE) if media == "application/gzip" else body[:_NIFTI2_SIZE]
        header = parse_nifti_header(head)
    except RequestError:
        return 0
    return header.file_bytes + header.voxels * _VOLUME_BYTES_PER_VOXEL


def formats_kind(media: str) -> str:
    """"slice" or "nifti": the runtime's scan kind for an accepted media type."""
    return MEDIA_TYPES[media]


@dataclass(frozen=True)
class NiftiHeader:
    """What a NIfTI header declares: its dims, bytes per voxel and where the voxels start."""

    dims: tuple[int, ...]
    bytes_per_voxel: float
    vox_offset: int

    @property
    def voxels(self) -> int:
        count = 1
        for n in self.dims:
            count *= n
        return count

    @property
    def file_bytes(self) -> int:
        """Bytes the single-file .nii needs: header and extensions, then every voxel."""
        return self.vox_offset + int(self.voxels * self.bytes_per_voxel)


def check_nifti_size(body: bytes, media: str, max_voxels: int) -> NiftiHeader:
    """The body's NIfTI header (inflating only its first bytes); 413 when it declares more than
    `max_voxels` voxels, 422 when it is not a single-file NIfTI-1/2 header."""
    head = _inflate(body, _NIFTI2_SIZE) if media == "application/gzip" else body[:_NIFTI2_SIZE]
    header = parse_nifti_header(head)
    if header.voxels > max_voxels:
        shape = "x".join(str(n) for n in header.dims)
        raise RequestError(413, f"the volume declares {shape} = {header.voxels} voxels; the limit is {max_voxels} "
                                "(seg-serve --max-voxels)")
    return header


def nifti_content(body: bytes, media: str, max_voxels: int) -> bytes:
    """The .nii bytes of a NIfTI body (inflated when gzip'd), checked against what its header declares.

    Raises RequestError 413 when the header declares more than `max_voxels` voxels, 422 when it
    is not a single-file NIfTI-1/2 header, declares impossible dims, or the body holds fewer
    bytes than it declares (truncated). A gzip stream is inflated only up to the declared size.
    """
    header = check_nifti_size(body, media, max_voxels)
    gzipped = media == "application/gzip"
    content = _inflate(body, header.file_bytes) if gzipped else body[:header.file_bytes]
    if len(content) < header.file_bytes:
        raise RequestError(422, f"the NIfTI is truncated: its header declares {header.file_bytes} bytes, "
                                f"the body holds {len(content)}")
    return content


def parse_nifti_header(head: bytes) -> NiftiHeader:
    """The dims, voxel size and data offset of a NIfTI-1 or NIfTI-2 header; 422 for anything else."""
    layout = _nifti_layout(head)
    if layout is None:
        raise RequestError(422, "the body is not a single-file NIfTI-1 or NIfTI-2 image (no n+1/n+2 header)")
    order, version = layout
    if version == 1:
        dims = struct.unpack(order + "8h", head[40:56])
        bitpix = struct.unpack(order + "h", head[72:74])[0]
        offset = struct.unpack(order + "f", head[108:112])[0]
    else:
        bitpix = struct.unpack(order + "h", head[14:16])[0]
        dims = struct.unpack(order + "8q", head[16:80])
        offset = struct.unpack(order + "q", head[168:176])[0]
    rank = dims[0]
    if not 1 <= rank <= 7 or any(n < 1 for n in dims[1:rank + 1]):
        raise RequestError(422, f"the NIfTI header declares impossible dims {list(dims)}")
    if bitpix <= 0 or bitpix % 8 or offset != offset or not 0 <= offset <= 2**31:
        raise RequestError(422, f"the NIfTI header declares {bitpix} bits per voxel at offset {offset}")
    minimum = _NIFTI1_SIZE + 4 if version == 1 else _NIFTI2_SIZE + 4
    return NiftiHeader(tuple(int(n) for n in dims[1:rank + 1]), bitpix / 8, max(int(offset), minimum))


def _nifti_layout(head: bytes) -> tuple[str, int] | None:
    """(struct byte order, NIfTI version) of a single-file NIfTI header, or None."""
    for order in ("<", ">"):
        if len(head) < 4:
            return None
        size = struct.unpack(order + "i", head[:4])[0]
        if size == _NIFTI1_SIZE and head[344:348] == _NIFTI1_MAGIC:
            return order, 1
        if size == _NIFTI2_SIZE and head[4:12] == _NIFTI2_MAGIC:
            return order, 2
    return None


def _inflate(body: bytes, most: int) -> bytes:
    """Up to `most` bytes of the gzip stream(s) in `body`: never inflates more; 422 for a broken stream."""
    pieces: list[bytes] = []
    have, rest = 0, body
    try:
        while rest and have < most:
            stream = zlib.decompressobj(wbits=31)
            piece = stream.decompress(rest, most - have)
            pieces.append(piece)
            have += len(piece)
            if not stream.eof:
                break  # the limit was reached, or the stream is cut short
            rest = stream.unused_data
    except zlib.error as err:
        raise RequestError(422, f"the gzip stream is corrupt ({err})") from None
    return b"".join(pieces)
