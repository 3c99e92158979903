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

from brainseg.data.imageio import declared_size
from brainseg.runtime.io import declared
from brainseg.runtime.io.declared import NIFTI2_SIZE, NiftiHeader
from brainseg.serve.errors import RequestError

# Content-Type -> the runtime's scan kind (2-D slice or NIfTI volume)
MEDIA_TYPES = {"image/png": "slice", "image/tiff": "slice", "image/jpeg": "slice",
               "application/gzip": "nifti", "application/x-nifti": "nifti"}
_FORMATS = {"image/png": "PNG", "image/tiff": "TIFF", "image/jpeg": "JPEG", "application/gzip": "gzip'd NIfTI",
            "application/x-nifti": "NIfTI (.nii)"}
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
    if declared.nifti_layout(body) is not None:
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
        head = _inflate(body, NIFTI2_SIZE) if media == "application/gzip" else body[:NIFTI2_SIZE]
        header = parse_nifti_header(head)
    except RequestError:
        return 0
    return header.file_bytes + header.voxels * _VOLUME_BYTES_PER_VOXEL


def formats_kind(media: str) -> str:
    """"slice" or "nifti": the runtime's scan kind for an accepted media type."""
    return MEDIA_TYPES[media]


def check_nifti_size(body: bytes, media: str, max_voxels: int) -> NiftiHeader:
    """The body's NIfTI header (inflating only its first bytes); 413 when it declares more than
    `max_voxels` voxels, 422 when it is not a single-file NIfTI-1/2 header."""
    head = _inflate(body, NIFTI2_SIZE) if media == "application/gzip" else body[:NIFTI2_SIZE]
    header = parse_nifti_header(head)
    if header.voxels > max_voxels:
        raise RequestError(413, f"the volume declares {header.shape} = {header.voxels} voxels; the limit is "
                                f"{max_voxels} (seg-serve --max-voxels)")
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
    try:
        return declared.parse_nifti_header(head)
    except declared.HeaderError as err:
        raise RequestError(422, f"the body is {err}" if str(err).startswith("not ") else str(err)) from None


def _inflate(body: bytes, most: int) -> bytes:
    """Up to `most` bytes of the gzip stream(s) in `body`; 422 for a broken stream."""
    try:
        return declared.inflate(body, most)
    except declared.HeaderError as err:
        raise RequestError(422, str(err)) from None
