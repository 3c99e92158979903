"""What seg-serve accepts on the wire, judged from a body's first bytes and its header before anything is decoded.

- `media_type` and `check_media`: the Content-Type must be one of `MEDIA_TYPES` and the body's
  magic bytes must say the same format (a TIFF posted as image/png is refused, 415), so only
  PNG, TIFF, JPEG and NIfTI reach a decoder; OpenCV's other formats (WebP, JPEG 2000, BMP...)
  never do.
- `inspect`: the body's header and structure read by `brainseg.formats`, the same parsers seg-run's
  readers use (413 beyond --max-pixels or --max-voxels, 422 for a file they refuse, with the
  reason seg-run gives), and what decoding and answering it will hold, for the memory budget. A
  gzip'd NIfTI is inflated only as far as its header here; the reader inflates it later no
  further than the file its header declares.

Standard library, `brainseg.formats` and the runtime's `ScanSteps`; every refusal is a
`RequestError` with a one-line reason.
"""

from __future__ import annotations

from dataclasses import dataclass

from brainseg.errors import FormatError, LimitExceeded
from brainseg.formats import nifti
from brainseg.formats.images import image_format, inspect_image
from brainseg.formats.inflate import GZIP_MAGIC, inflate
from brainseg.formats.limits import check_voxels
from brainseg.runtime.segmenter import ScanSteps
from brainseg.serve.errors import RequestError

# Content-Type -> the runtime's scan kind (2-D slice or NIfTI volume)
MEDIA_TYPES = {"image/png": "slice", "image/tiff": "slice", "image/jpeg": "slice",
               "application/gzip": "nifti", "application/x-nifti": "nifti"}
_FORMATS = {"image/png": "PNG", "image/tiff": "TIFF", "image/jpeg": "JPEG", "application/gzip": "gzip'd NIfTI",
            "application/x-nifti": "NIfTI (.nii)"}
_IMAGE_MEDIA = {"PNG": "image/png", "TIFF": "image/tiff", "JPEG": "image/jpeg"}
# bytes held per pixel or voxel to answer, besides reading: the float32 probability and disagreement
# resized back to the input's size, the mask, and the encoded mask file
_ANSWER_BYTES_PER_PIXEL = 16
_ANSWER_BYTES_PER_VOXEL = 18


@dataclass(frozen=True)
class Inspected:
    """A body whose header passed: its scan kind and the memory decoding and answering it will hold."""

    kind: str  # "slice" or "nifti"
    estimate: int  # bytes


def media_type(content_type: str | None) -> str:
    """The media type of a Content-Type header, lower-cased and without parameters; 415 unless accepted."""
    media = (content_type or "").split(";")[0].strip().lower()
    if media not in MEDIA_TYPES:
        given = f"Content-Type {media[:64]!r}" if media else "no Content-Type"
        raise RequestError(415, f"{given}; send one of {', '.join(MEDIA_TYPES)}")
    return media


def sniff(body: bytes) -> str | None:
    """The accepted media type the body's first bytes show, or None for anything else."""
    found = image_format(body)
    if found in _IMAGE_MEDIA:
        return _IMAGE_MEDIA[found]
    if body.startswith(GZIP_MAGIC):
        return "application/gzip"
    if nifti.nifti_version(body) is not None:
        return "application/x-nifti"
    return None


def check_media(media: str, body: bytes) -> None:
    """415 unless the body's magic bytes are those of `media`'s format."""
    found = sniff(body)
    if found != media:
        what = f"a {_FORMATS[found]}" if found else "none of PNG, TIFF, JPEG or NIfTI"
        raise RequestError(415, f"the body is {what}, not the {_FORMATS[media]} its Content-Type {media} says")


def inspect(body: bytes, media: str, steps: ScanSteps) -> Inspected:
    """What the first bytes and the header of a body decide, nothing decoded: 400 when it is empty,
    415 when its magic bytes are not those of `media`, 413 when its header declares more pixels or
    voxels than `steps.limits`, 422 when `brainseg.formats` refuses its structure; else its
    estimate: reading it (`read_bytes`), its slices at the graph's size in and out, and the
    answer at its own size."""
    if not body:
        raise RequestError(400, "the body is empty; send the image or volume bytes")
    check_media(media, body)
    limits = steps.limits
    try:
        if MEDIA_TYPES[media] == "slice":
            image = inspect_image(body, limits.max_pixels)
            answer = image.pixels * _ANSWER_BYTES_PER_PIXEL
            return Inspected("slice", image.read_bytes + 2 * steps.graph_bytes(1) + answer)
        head = inflate(body, nifti.HEAD_BYTES) if media == "application/gzip" else body[:nifti.HEAD_BYTES]
        header = nifti.parse_header(head)
        check_voxels(header.dims, limits.max_voxels)
    except LimitExceeded as err:
        raise RequestError(413, err.reason) from None
    except FormatError as err:
        raise RequestError(422, err.reason) from None
    slices = max(header.dims[:3])  # whichever axis turns out axial
    answer = header.voxels * _ANSWER_BYTES_PER_VOXEL
    return Inspected("nifti", header.read_bytes + 2 * steps.graph_bytes(slices) + answer)
