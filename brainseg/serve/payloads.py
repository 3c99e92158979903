"""What goes over the wire for `POST /v1/segment`: the body in, the mask and its numbers out.

A body is read with a size limit, written to a private temporary file and read by the runtime's
own readers (`ScanSteps.read` of the served `Segmenter`), so a slice served here is decoded,
checked and resized exactly as `seg-run` does it. The answer is built from the runtime's
`Prediction` with `brainseg.runtime.outputs`: the same mask PNG or NIfTI bytes `seg-run` writes,
and the numbers of its results.csv row. numpy and the runtime only: no Ray, no Starlette, no torch.
"""

from __future__ import annotations

import base64
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from brainseg.errors import BrainsegError, InputSkipped
from brainseg.runtime import outputs
from brainseg.runtime.io.nifti import one_line
from brainseg.runtime.io.scans import Prediction, Scan, ScanData
from brainseg.runtime.segmenter import ScanSteps

# Content-Type -> the runtime's scan kind (2-D slice or NIfTI volume)
MEDIA_KINDS = {"image/png": "slice", "image/tiff": "slice", "image/jpeg": "slice",
               "application/gzip": "nifti", "application/x-nifti": "nifti"}
PNG, NIFTI_GZ, JSON = "image/png", "application/gzip", "application/json"
_GZIP_MAGIC = b"\x1f\x8b"


class RequestError(Exception):
    """A request the service refuses: an HTTP status and a one-line reason for `{"error": ...}`."""

    def __init__(self, status: int, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


@dataclass(frozen=True)
class Answer:
    """A response body with its media type and headers."""

    body: bytes
    media_type: str
    headers: dict[str, str]


def error_body(message: str) -> bytes:
    """`{"error": message}` as one line of JSON."""
    return json.dumps({"error": " ".join(message.split())}).encode()


def body_kind(content_type: str | None) -> str:
    """The scan kind of a Content-Type header ("slice" or "nifti"); 415 for anything else."""
    media = (content_type or "").split(";")[0].strip().lower()
    if media not in MEDIA_KINDS:
        given = f"Content-Type {media!r}" if media else "no Content-Type"
        raise RequestError(415, f"{given}; send one of {', '.join(MEDIA_KINDS)}")
    return MEDIA_KINDS[media]


def check_declared_size(content_length: str | None, limit: int) -> None:
    """413 when the Content-Length header already says the body is over `limit` bytes."""
    if content_length is None:
        return
    try:
        declared = int(content_length)
    except ValueError:
        raise RequestError(400, f"Content-Length {content_length!r} is not a number") from None
    if declared > limit:
        raise RequestError(413, f"body is {declared} bytes; the limit is {limit} (seg-serve --max-body-mb)")


def add_chunk(chunks: list[bytes], chunk: bytes, received: int, limit: int) -> int:
    """Append `chunk` to `chunks`; the bytes received so far, or 413 once they pass `limit`."""
    received += len(chunk)
    if received > limit:
        raise RequestError(413, f"body is over the limit of {limit} bytes (seg-serve --max-body-mb)")
    chunks.append(chunk)
    return received


def wants_json(format_param: str | None, accept: str | None) -> bool:
    """JSON when `?format=json` or (without `format`) the Accept header names application/json."""
    if format_param is not None:
        if format_param not in ("json", "binary"):
            raise RequestError(400, f"format {format_param!r} is not one of json, binary")
        return format_param == "json"
    return JSON in (accept or "").lower()


def read_body(body: bytes, kind: str, steps: ScanSteps, workdir: Path) -> tuple[ScanData, np.ndarray]:
    """Decode one request body as the runtime reads a file: (its ScanData, (S, h, w, C) at the graph's size).

    Raises RequestError 400 for an empty body and 422, with the reader's reason, for a body the
    runtime's readers refuse (not an image, truncated, wrong channel count, NaN voxels...).
    """
    if not body:
        raise RequestError(400, "the body is empty; send the image or volume bytes")
    suffix = ".img" if kind == "slice" else (".nii.gz" if body.startswith(_GZIP_MAGIC) else ".nii")
    with tempfile.NamedTemporaryFile(dir=workdir, prefix="body-", suffix=suffix) as file:
        file.write(body)
        file.flush()
        path = Path(file.name)
        scan = Scan(key="request", kind=kind, paths=(path,), root=path)
        try:
            data, image = steps.read(scan)
        except InputSkipped as err:
            raise RequestError(422, err.reason) from None
        except BrainsegError:  # not the body's fault (e.g. a graph input that is not square)
            raise
        except Exception as err:  # a reader library choking on bytes it should have refused, as seg-run skips them
            raise RequestError(422, f"could not be read ({one_line(err)})") from None
    if data.num_slices == 0:
        raise RequestError(422, "the volume has no slices")
    return data, image


def answer(data: ScanData, prediction: Prediction, *, as_json: bool, manifest_sha256: str) -> Answer:
    """The mask `seg-run` would write for this scan (PNG for a slice, NIfTI for a volume) and its numbers.

    Headers always carry the results.csv numbers; with `as_json` the body is JSON with the mask
    base64-encoded under "mask" (see docs/serve.md for the shape).
    """
    mask, media_type = _mask_file(data, prediction)
    row = outputs.scan_row(data, prediction)
    headers = {
        "X-Tumour-Pixels": str(row["tumour_pixels"]),
        "X-Max-Probability": f"{row['max_probability']:.6f}",
        "X-Disagreement": f"{row['mean_disagreement']:.6f}",
        "X-Slices": str(row["slices"]),
        "X-Manifest-Sha256": manifest_sha256,
    }
    if row["qc_flag"]:
        headers["X-QC-Flag"] = row["qc_flag"]
    if not as_json:
        return Answer(mask, media_type, headers)
    fields = ("slices", "height", "width", "tumour_pixels", "tumour_area_mm2", "tumour_volume_ml",
              "largest_component_pixels", "max_probability", "mean_disagreement", "qc_flag", "notes")
    record = {"mask": base64.b64encode(mask).decode("ascii"), "mask_media_type": media_type,
              **{name: row[name] for name in fields}, "manifest_sha256": manifest_sha256}
    return Answer(json.dumps(record).encode(), JSON, headers)


def _mask_file(data: ScanData, prediction: Prediction) -> tuple[bytes, str]:
    """The bytes of the mask file seg-run writes for this scan, and their media type."""
    if data.scan.kind == "slice":
        return outputs.encode_png(outputs.mask_png_values(prediction.mask[0])), PNG
    if prediction.mask.shape[-1] == len(outputs.BRATS_REGION_LABELS):
        axial = outputs.brats_label_map(prediction.mask)  # (S, H, W) BraTS labels
    else:
        axial = (prediction.mask[..., 0] > 0).astype(np.uint8)  # (S, H, W) 0/1
    return outputs.nifti_like(axial, data), NIFTI_GZ
