"""What goes over the wire for `POST /v1/segment`: the body in, the mask and its numbers out.

A body, already checked against its Content-Type and its header (`brainseg.serve.formats`), is
decoded from memory by the runtime's own readers (`ScanSteps.read` of the served `Segmenter`,
given the bytes as the scan's `content`), so a slice served here is decoded, checked and resized
exactly as `seg-run` does it, and nothing of it is written to disk. The answer is built from the
runtime's `Prediction` with `brainseg.runtime.outputs`: the same mask PNG or NIfTI bytes `seg-run`
writes, and the numbers of its results.csv row. numpy and the runtime only: no Ray, no ASGI, no torch.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from brainseg.data.brats import DEFAULT_CONVENTION
from brainseg.errors import BrainsegError, InputSkipped, InputTooLarge, one_line
from brainseg.runtime import outputs
from brainseg.runtime.io.scans import Prediction, Scan, ScanData
from brainseg.runtime.segmenter import ScanSteps
from brainseg.serve import formats
from brainseg.serve.errors import RequestError

PNG, NIFTI_GZ, JSON = "image/png", "application/gzip", "application/json"
_NAMES = {"slice": Path("request"), "nifti": Path("request.nii")}  # names the body in the readers' messages


@dataclass(frozen=True)
class Answer:
    """A response body with its media type and headers."""

    body: bytes
    media_type: str
    headers: dict[str, str]


def check_declared_size(content_length: str | None, limit: int) -> None:
    """413 when the Content-Length header already says the body is over `limit` bytes."""
    if content_length is None:
        return
    if not content_length.strip().isdigit():
        raise RequestError(400, f"Content-Length {content_length[:32]!r} is not a number")
    declared = int(content_length)
    if declared > limit:
        raise RequestError(413, f"body is {declared} bytes; the limit is {limit} (seg-serve --max-body-mb)")


def wants_json(format_param: str | None, accept: str | None) -> bool:
    """JSON when `?format=json` or (without `format`) the Accept header names application/json."""
    if format_param is not None:
        if format_param not in ("json", "binary"):
            raise RequestError(400, f"format {format_param[:32]!r} is not one of json, binary")
        return format_param == "json"
    return JSON in (accept or "").lower()


def read_body(body: bytes, media: str, steps: ScanSteps) -> tuple[ScanData, np.ndarray]:
    """Decode one request body from memory as the runtime reads a file: (its ScanData, (S, h, w, C)
    at the graph's size). The body has passed `formats.inspect`; the reader checks it again, as
    seg-run's does for a file.

    Raises RequestError 413 when it declares more pixels or voxels than `steps.limits`, and 422,
    with the reader's reason, for a body the runtime's readers refuse (truncated, corrupt, wrong
    channel count, NaN voxels...).
    """
    kind = formats.MEDIA_TYPES[media]
    name = _NAMES[kind]
    scan = Scan(key="request", kind=kind, paths=(name,), root=name, content=body)
    try:
        data, image = steps.read(scan)
    except InputTooLarge as err:
        raise RequestError(413, err.reason) from None
    except InputSkipped as err:
        raise RequestError(422, err.reason) from None
    except BrainsegError:  # not the body's fault (e.g. a graph input that is not square)
        raise
    except Exception as err:  # a reader library choking on bytes it should have refused, as seg-run skips them
        raise RequestError(422, f"could not be read ({one_line(err)})") from None
    if data.num_slices == 0:
        raise RequestError(422, "the volume has no slices")
    return data, image


def answer(data: ScanData, prediction: Prediction, *, as_json: bool, manifest_sha256: str,
           brats_labels: str = DEFAULT_CONVENTION) -> Answer:
    """The mask `seg-run` would write for this scan (PNG for a slice, NIfTI for a volume, a BraTS
    label map in `brats_labels` for a BraTS-regions model) and its numbers.

    Headers always carry the results.csv numbers (and, with a label map, X-BraTS-Labels: its
    convention); with `as_json` the body is JSON with the mask base64-encoded under "mask" (see
    docs/serve.md for the shape).
    """
    mask, media_type = _mask_file(data, prediction, brats_labels)
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
    labelled = data.scan.kind != "slice" and prediction.mask.shape[-1] == outputs.BRATS_REGIONS
    if labelled:
        headers["X-BraTS-Labels"] = brats_labels
    if not as_json:
        return Answer(mask, media_type, headers)
    fields = ("slices", "height", "width", "tumour_pixels", "tumour_area_mm2", "tumour_volume_ml",
              "largest_component_pixels", "max_probability", "mean_disagreement", "qc_flag", "notes")
    record = {"mask": base64.b64encode(mask).decode("ascii"), "mask_media_type": media_type,
              **{name: row[name] for name in fields}, "manifest_sha256": manifest_sha256,
              **({"brats_labels": brats_labels} if labelled else {})}
    return Answer(json.dumps(record).encode(), JSON, headers)


def _mask_file(data: ScanData, prediction: Prediction, brats_labels: str) -> tuple[bytes, str]:
    """The bytes of the mask file seg-run writes for this scan, and their media type."""
    if data.scan.kind == "slice":
        return outputs.encode_png(outputs.mask_png_values(prediction.mask[0])), PNG
    if prediction.mask.shape[-1] == outputs.BRATS_REGIONS:
        axial = outputs.brats_label_map(prediction.mask, brats_labels)  # (S, H, W) BraTS labels
    else:
        axial = (prediction.mask[..., 0] > 0).astype(np.uint8)  # (S, H, W) 0/1
    return outputs.nifti_like(axial, data), NIFTI_GZ
