"""The functions fuzzed, each with its contract: the exceptions it may raise, its deadline and its
allocation bound.

Every function of brainseg that reads bytes from outside is here: sniffing the format, the PNG,
JPEG, TIFF, BMP and NIfTI header readers, the bounded inflate, seg-serve's header check with its
memory estimate, the image and volume readers, and the runtime's whole read path (`ScanSteps.read`,
what seg-run and seg-serve run for a scan). A call keeps its contract when it returns, or raises
`BrainsegError` (the project's errors: `FormatError`, `InputSkipped`) or seg-serve's `RequestError`;
within its deadline; and allocating at most its bound plus `SLACK` (the bound of a reader is the
estimate its header gives, `read_bytes`, so the fuzzer also checks the estimate seg-serve budgets with).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from brainseg.errors import BrainsegError
from brainseg.formats import bmp, jpeg, nifti, png, tiff
from brainseg.formats.images import image_format, inspect_image
from brainseg.formats.inflate import GZIP_MAGIC, inflate

SLACK = 16 * 2**20  # bytes any call may allocate beyond its bound (imports warmed up, small buffers)
INFLATE_MOST = 4 * 2**20  # the bound the inflate target asks for
IMAGES = ("png", "jpeg", "tiff", "bmp")
VOLUMES = ("nifti", "nifti_gz")


@dataclass(frozen=True)
class Target:
    """One function under test: what it is, which seed families feed it, and its contract."""

    name: str
    what: str
    families: tuple[str, ...]
    call: Callable[[bytes], object]
    bound: Callable[[bytes], int]  # bytes the call may allocate, besides SLACK
    deadline_s: float
    check: Callable[[bytes, object], str | None] = lambda body, result: None  # what is wrong with a result


def _copies(body: bytes) -> int:
    return 2 * len(body)


def _sniff(body: bytes) -> tuple:
    from brainseg.serve.formats import sniff

    return sniff(body), image_format(body), nifti.nifti_version(body)


def _nifti_header(body: bytes) -> nifti.NiftiHeader:
    if body.startswith(GZIP_MAGIC):
        return nifti.parse_header(inflate(body, nifti.HEAD_BYTES))
    header = nifti.parse_header(body[:nifti.HEAD_BYTES])
    nifti.check_extensions(body, header)
    return header


def _inflate_check(body: bytes, result) -> str | None:
    if len(result) > INFLATE_MOST:
        return f"inflated {len(result)} bytes, more than the {INFLATE_MOST} asked for"
    return None


@cache
def _steps(kind: str):
    """The runtime's read path for a graph of 128 x 128 slices: 8-bit RGB, or float32 single-channel."""
    from brainseg.artifacts.sections import InputSpec
    from brainseg.postprocess import PostProcessing
    from brainseg.runtime.segmenter import ScanSteps

    spec = InputSpec(name="image", dtype="uint8" if kind == "uint8" else "float32", layout="NHWC",
                     channels=3 if kind == "uint8" else 1, height=128, width=128, normalisation={})
    return ScanSteps(spec, 0.5, PostProcessing())


def _estimate(body: bytes):
    from brainseg.serve.formats import inspect, sniff

    return inspect(body, sniff(body) or "image/png", _steps("uint8"))


def _estimate_check(body: bytes, result) -> str | None:
    if result.kind in ("slice", "nifti") and isinstance(result.estimate, int) and result.estimate > 0:
        return None
    return f"inspected as {result.kind!r} with an estimate of {result.estimate!r} bytes"


def _is_volume(body: bytes) -> bool:
    return image_format(body) is None


def _read_image(body: bytes):
    from brainseg.data.imageio import read_image

    return read_image(Path("fuzz.png"), body)


def _read_nifti(body: bytes):
    from brainseg.runtime.io.nifti import read_nifti

    return read_nifti(Path("fuzz.nii"), body)


def _scan_steps(body: bytes):
    """8-bit RGB artifacts for images; for volumes, float32 or 8-bit by the body's length (both paths)."""
    return _steps("float32" if _is_volume(body) and len(body) % 2 else "uint8")


def _read_scan(body: bytes):
    from brainseg.runtime.io.scans import Scan

    kind = "nifti" if _is_volume(body) else "slice"
    name = Path("fuzz.nii" if kind == "nifti" else "fuzz.png")
    return _scan_steps(body).read(Scan("fuzz", kind, (name,), name, content=body))


def _image_bound(body: bytes) -> int:
    """The image reader's own estimate (`read_bytes`) when its header passes, else the body's copies."""
    try:
        return inspect_image(body).read_bytes + len(body)
    except BrainsegError:
        return _copies(body)


def _volume_bound(body: bytes) -> int:
    try:
        return _nifti_header(body).read_bytes + len(body)
    except BrainsegError:
        return _copies(body)


def _scan_bound(body: bytes) -> int:
    """The reader's bound and the slices at the graph's size (`ScanSteps.graph_bytes`)."""
    if not _is_volume(body):
        return _image_bound(body) + _scan_steps(body).graph_bytes(1)
    try:
        slices = max(_nifti_header(body).dims[:3])  # whichever axis turns out axial
    except BrainsegError:
        return _copies(body)
    return _volume_bound(body) + _scan_steps(body).graph_bytes(slices)


TARGETS: dict[str, Target] = {target.name: target for target in (
    Target("sniff", "brainseg.serve.formats.sniff, formats.images.image_format, formats.nifti.nifti_version",
           (*IMAGES, *VOLUMES), _sniff, lambda body: 0, 0.1),
    Target("png", "brainseg.formats.png.inspect_png", ("png",), png.inspect_png, _copies, 0.25),
    Target("jpeg", "brainseg.formats.jpeg.inspect_jpeg", ("jpeg",), jpeg.inspect_jpeg, _copies, 0.25),
    Target("tiff", "brainseg.formats.tiff.inspect_tiff", ("tiff",), tiff.inspect_tiff, _copies, 0.25),
    Target("bmp", "brainseg.formats.bmp.inspect_bmp", ("bmp",), bmp.inspect_bmp, _copies, 0.25),
    Target("nifti_header", "brainseg.formats.nifti.parse_header and check_extensions (inflating the header of a .gz)",
           VOLUMES, _nifti_header, _copies, 0.25),
    Target("inflate", f"brainseg.formats.inflate.inflate(body, {INFLATE_MOST})", ("nifti_gz",),
           lambda body: inflate(body, INFLATE_MOST), lambda body: 2 * INFLATE_MOST + len(body), 0.5, _inflate_check),
    Target("estimate", "brainseg.serve.formats.inspect: seg-serve's header check and memory estimate",
           (*IMAGES, *VOLUMES), _estimate, _copies, 0.25, _estimate_check),
    Target("read_image", "brainseg.data.imageio.read_image from bytes (seg-run's and seg-serve's slice reader)",
           IMAGES, _read_image, _image_bound, 2.0),
    Target("read_nifti", "brainseg.runtime.io.nifti.read_nifti from bytes (the NIfTI reader)", VOLUMES, _read_nifti,
           _volume_bound, 2.0),
    Target("read_scan", "brainseg.runtime.segmenter.ScanSteps.read: a scan read and resized as seg-run and "
           "seg-serve read it", (*IMAGES, *VOLUMES), _read_scan, _scan_bound, 2.0),
)}
