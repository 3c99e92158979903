"""What `seg-run` writes under `--out` for each scan, and how an interrupted run resumes.

Layout, with `<key>` the scan's '/'-separated key:

- `kind == "slice"`: `masks/<key>.png` and `overlays/<key>.png`.
- `kaggle_3m`: `masks/<key>/<slice_name>.png` and `overlays/<key>/<slice_name>.png`, one per slice.
- Volumes (`nifti`, `brats`, `dicom`): `volumes/<key>.nii.gz` (uint8 mask on the input's own
  voxel grid, with its affine, and for NIfTI inputs a copy of its header; a DICOM series gets the
  affine built from its position, orientation and spacing tags), or for a BraTS-regions model
  `volumes/<key>_seg.nii.gz` (the BraTS label map, below); `volumes/<key>_probability.nii.gz`
  (float32, one channel per region) when asked, and one overlay `overlays/<key>.png` of the slice
  with the largest tumour area (the middle slice when there is none).
- `dicom` scans, when `OutputOptions.manifest_sha256` is set: also `volumes/<key>_seg.dcm`, a DICOM
  SEG on the source images (one segment per region; see `brainseg.runtime.outputs.dicom_seg`).
- `.rows/<key>.json`: the scan's results.csv row, written last; its presence means "done".
- `results.csv` and `summary.json`, written by the caller with `write_results_csv`, `write_summary`.

Mask values: PNG masks are 0/255 for one class; for K nested classes the PNG value is the number
of regions the pixel is in times 255 // K (K=3: 0, 85, 170, 255). NIfTI masks are 0/1 for one
class; for the three BraTS regions (whole tumour, tumour core, enhancing tumour) they are the
BraTS labels every BraTS tool reads: 2 (oedema / SNFH) where the whole tumour is, overwritten by 1
(necrotic core / NETC) where the tumour core is, overwritten by the enhancing tumour's label where
that is: 4 in the BraTS 2021 convention, 3 from BraTS 2023 (`OutputOptions.brats_labels`). Every
file is written with
`write_atomic`, and an existing file is kept unless `overwrite` is set. Never imports torch.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path, PureWindowsPath

import cv2
import numpy as np
from scipy import ndimage

from brainseg.data.brats import DEFAULT_CONVENTION, LABEL_CONVENTIONS, check_convention
from brainseg.errors import DataError
from brainseg.fileio import write_atomic
from brainseg.runtime.io.scans import Prediction, Scan, ScanData
from brainseg.runtime.outputs import submission
from brainseg.runtime.outputs.dicom_seg import segmentation_bytes
from brainseg.runtime.outputs.images import DISAGREEMENT_RGB as DISAGREEMENT_RGB
from brainseg.runtime.outputs.images import HIGH_DISAGREEMENT as HIGH_DISAGREEMENT
from brainseg.runtime.outputs.images import TUMOUR_RGB as TUMOUR_RGB
from brainseg.runtime.outputs.images import draw_overlay, mask_png_values
from brainseg.runtime.outputs.images import outline as outline
from brainseg.runtime.outputs.images import overlay_base as overlay_base

ROW_COLUMNS = (
    "key", "kind", "source", "slices", "height", "width", "tumour_pixels", "tumour_area_mm2",
    "tumour_volume_ml", "wt_volume_ml", "tc_volume_ml", "et_volume_ml", "largest_component_pixels",
    "max_probability", "mean_disagreement", "qc_flag", "notes", "manifest_sha256", "precision", "postprocessing",
    "brats_labels",
)  # fmt: skip
# which model made a row, and how its labels were written: a resume must match them
MADE_BY = ("manifest_sha256", "precision", "postprocessing", "brats_labels")
VOLUME_KINDS = ("nifti", "brats", "dicom")
PROBABILITY_FLOOR = 0.1  # ensemble probability above which some member may have seen tumour
BRATS_REGIONS = 3  # a model with three outputs segments the BraTS regions WT, TC, ET
REGION_VOLUME_COLUMNS = ("wt_volume_ml", "tc_volume_ml", "et_volume_ml")

VolumeWriter = Callable[[np.ndarray, ScanData], bytes]  # axial (S, H, W[, K]) -> the file's bytes


class ScanOutputError(DataError):
    """A scan's outputs cannot be written safely (e.g. its key would escape the output folder)."""


@dataclass
class OutputOptions:
    """How `write_scan` treats one scan.

    Attributes:
        overwrite: rewrite outputs that exist (and redo scans already done); else keep them.
        save_probability: also write the float32 probability volume (NIfTI-header sources only).
        overlays: write overlay PNGs.
        qc_threshold: a scan is flagged "disagree" when its mean disagreement is above this.
        manifest_sha256: the artifacts' manifest sha256; when set, a DICOM series also gets a DICOM
            SEG that names it in its algorithm identification (None: no DICOM SEG is written).
        made_by: MADE_BY's values (manifest sha256, precision, post-processing description, label
            convention), written into every row, so that a later run into the same folder can tell
            which model made it.
        brats_labels: the BraTS label convention of label maps, "2021" (enhancing tumour 4) or "2023" (3).
        submission: a folder that also gets each BraTS case's label map as `<case>.nii.gz`, int8
            (`brainseg.runtime.outputs.submission`); None: none is written.
    """

    overwrite: bool = False
    save_probability: bool = False
    overlays: bool = True
    qc_threshold: float = 0.25
    manifest_sha256: str | None = None
    made_by: dict | None = None
    brats_labels: str = DEFAULT_CONVENTION
    submission: Path | None = None


def check_relative_name(name: str, what: str = "output name") -> None:
    """Refuse a name that is empty, absolute, or has '', '.' or '..' parts (ScanOutputError)."""
    parts = name.split("/")
    if "\x00" in name or PureWindowsPath(name).drive or any(part in ("", ".", "..") for part in parts):
        raise ScanOutputError(f"{what} {name!r} must be relative, with no empty, '.' or '..' parts")


def safe_output_path(out: Path, relative: str) -> Path:
    """`out / relative`, refusing a malformed name (check_relative_name) or one that resolves outside `out`.

    Resolving follows symlinks, so a sub-folder linked to somewhere outside `out` is refused too.
    Raises ScanOutputError with a one-line reason.
    """
    check_relative_name(relative)
    root = Path(out).resolve()
    path = (root / relative).resolve()
    if not path.is_relative_to(root):
        raise ScanOutputError(f"output {relative!r} resolves to {path}, outside the output folder {root}")
    return path


def _row_path(out: Path, scan: Scan) -> Path:
    check_relative_name(scan.key, "scan key")
    return safe_output_path(out, f".rows/{scan.key}.json")


def is_done(out: Path, scan: Scan) -> bool:
    """True when the scan's row record exists (it is written after all its other files).

    A scan whose key cannot have outputs (ScanOutputError) is never done.
    """
    try:
        return _row_path(out, scan).is_file()
    except ScanOutputError:
        return False


def load_row(out: Path, scan: Scan) -> dict:
    """The results row recorded for a done scan; ScanOutputError if it is missing or unreadable."""
    path = _row_path(out, scan)
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ScanOutputError(f"cannot read the row record {path}: {exc}") from exc


def collect_rows(out: Path, scans: list[Scan]) -> list[dict]:
    """The rows of the scans that are done, in the order of `scans`."""
    return [load_row(out, scan) for scan in scans if is_done(out, scan)]


def write_results_csv(out: Path, rows: list[dict]) -> Path:
    """Write `out/results.csv` atomically: ROW_COLUMNS in that order, None as an empty cell."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=ROW_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: ("" if row.get(k) is None else row[k]) for k in ROW_COLUMNS} for row in rows)
    write_atomic(path := Path(out) / "results.csv", buffer.getvalue())
    return path


def write_summary(out: Path, summary: dict) -> Path:
    """Write `out/summary.json` atomically as indented JSON (paths and numpy scalars as plain values)."""
    write_atomic(path := Path(out) / "summary.json", json.dumps(summary, indent=2, default=_json_default) + "\n")
    return path


def _json_default(value):
    if isinstance(value, Path | np.generic):
        return str(value) if isinstance(value, Path) else value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def scan_row(data: ScanData, pred: Prediction, qc_threshold: float = 0.25) -> dict:
    """The scan's results.csv row, from class 0 (the whole tumour when K > 1).

    - tumour_pixels: mask pixels over all slices; tumour_area_mm2: that times the pixel area
      (row x column spacing), None when spacing is unknown.
    - tumour_volume_ml: volumes only, voxels x row x column x slice_step / 1000, None unless both
      spacing and slice_step are known; wt/tc/et_volume_ml: the same per BraTS region (three-region
      models only).
    - largest_component_pixels: 3-D 26-connected for volumes (nifti, brats, dicom); the largest
      8-connected 2-D component of any slice otherwise (kaggle_3m slices are not joined).
    - mean_disagreement: mean of the disagreement map over pixels with probability above
      PROBABILITY_FLOOR or in the mask; 0.0 when there are none. qc_flag: "disagree" when it is
      strictly above `qc_threshold`, else "".
    """
    _check_prediction(data, pred)
    scan = data.scan
    mask = pred.mask[..., 0] > 0  # (S, H, W)
    probability, disagreement = pred.probability[..., 0], pred.disagreement[..., 0]
    pixels = int(mask.sum())
    pixel_mm2 = data.spacing[0] * data.spacing[1] if data.spacing else None
    voxel_ml = None
    if scan.kind in VOLUME_KINDS and pixel_mm2 is not None and data.slice_step:
        voxel_ml = pixel_mm2 * data.slice_step / 1000.0
    regions = pred.mask.shape[-1] == len(REGION_VOLUME_COLUMNS)
    region_ml = {column: round(int((pred.mask[..., k] > 0).sum()) * voxel_ml, 6) if regions and voxel_ml else None
                 for k, column in enumerate(REGION_VOLUME_COLUMNS)}
    considered = mask | (probability > PROBABILITY_FLOOR)
    mean_disagreement = float(disagreement[considered].mean()) if considered.any() else 0.0
    largest = _largest_component(mask, across_slices=scan.kind in VOLUME_KINDS)
    return {
        "key": scan.key,
        "kind": scan.kind,
        "source": str(scan.paths[0]) if scan.paths else "",
        "slices": data.num_slices,
        "height": int(data.image.shape[1]),
        "width": int(data.image.shape[2]),
        "tumour_pixels": pixels,
        "tumour_area_mm2": None if pixel_mm2 is None else round(pixels * pixel_mm2, 6),
        "tumour_volume_ml": None if voxel_ml is None else round(pixels * voxel_ml, 6),
        **region_ml,
        "largest_component_pixels": largest,
        "max_probability": round(float(probability.max()), 6),
        "mean_disagreement": round(mean_disagreement, 6),
        "qc_flag": "disagree" if mean_disagreement > qc_threshold else "",
        "notes": "; ".join(data.notes),
    }


def _check_prediction(data: ScanData, pred: Prediction) -> None:
    """Refuse a prediction that does not match its scan's (S, H, W) (a runtime bug, not bad data)."""
    if data.num_slices == 0:
        raise ScanOutputError(f"scan {data.scan.key!r} has no slices")
    if len(data.slice_names) != data.num_slices:
        raise ValueError(f"scan {data.scan.key!r}: {len(data.slice_names)} slice names for {data.num_slices} slices")
    expected = tuple(data.image.shape[:3])
    for name in ("probability", "mask", "disagreement"):
        array = getattr(pred, name)
        if array.ndim != 4 or tuple(array.shape[:3]) != expected:
            raise ValueError(f"scan {data.scan.key!r}: {name} is {array.shape}, expected {expected} + (K,)")


def _largest_component(mask: np.ndarray, *, across_slices: bool) -> int:
    """Largest connected component of a (S, H, W) bool mask, in voxels: 26-connected in 3-D when
    `across_slices`, else 8-connected within each slice (a slice's neighbours are not joined)."""
    structure = np.ones((3, 3, 3), dtype=bool)
    if not across_slices:
        structure[[0, 2]] = False  # neighbours in the slice itself only
    occupied = [np.flatnonzero(mask.any(axis=other)) for other in ((1, 2), (0, 2), (0, 1))]
    if occupied[0].size == 0:
        return 0
    box = tuple(slice(int(o[0]), int(o[-1]) + 1) for o in occupied)  # label the tumour's bounding box only
    labels, count = ndimage.label(mask[box], structure=structure)
    return int(np.bincount(labels.ravel())[1:].max()) if count else 0


def encode_png(array: np.ndarray) -> bytes:
    """PNG bytes of a (H, W) gray or (H, W, 3) RGB uint8 array (converted to BGR for OpenCV)."""
    if array.ndim == 3:
        array = cv2.cvtColor(array, cv2.COLOR_RGB2BGR)
    ok, encoded = cv2.imencode(".png", array)
    if not ok:
        raise ScanOutputError(f"OpenCV could not encode a {array.shape} {array.dtype} PNG")
    return encoded.tobytes()


def nifti_like(axial: np.ndarray, data: ScanData) -> bytes:
    """Default VolumeWriter: (S, H, W[, K]) axial slices -> .nii.gz bytes in the input's grid and header."""
    from brainseg.runtime.io.nifti import nifti_bytes, to_original

    return nifti_bytes(to_original(axial, data.nifti), data.nifti, dtype=axial.dtype)


def _planned_files(out: Path, data: ScanData, pred: Prediction, options: OutputOptions, writer: VolumeWriter):
    """[(path, produce bytes)] for every file of the scan; every path is checked before any write."""
    key, kind, names = data.scan.key, data.scan.kind, data.slice_names
    for name in names:
        check_relative_name(name, "slice name")
    if len(set(names)) != len(names):
        raise ScanOutputError(f"scan {key!r} has repeated slice names; their outputs would overwrite each other")
    plan = []
    if kind in VOLUME_KINDS:
        if data.nifti is None:
            raise ValueError(f"volume scan {key!r} was read without its geometry (ScanData.nifti)")
        if pred.mask.shape[-1] == BRATS_REGIONS:
            labels = brats_label_map(pred.mask, options.brats_labels)
            plan.append((f"volumes/{key}_seg.nii.gz", partial(writer, labels, data)))
        else:
            plan.append((f"volumes/{key}.nii.gz", partial(writer, (pred.mask[..., 0] > 0).astype(np.uint8), data)))
        if options.save_probability:
            prob = pred.probability.astype(np.float32)
            prob = prob[..., 0] if prob.shape[-1] == 1 else prob  # (S, H, W[, K])
            plan.append((f"volumes/{key}_probability.nii.gz", partial(writer, prob, data)))
    elif kind == "slice":
        if data.num_slices != 1:
            raise ValueError(f"scan {key!r} of kind 'slice' has {data.num_slices} slices, expected 1")
        plan.append((f"masks/{key}.png", partial(_mask_bytes, pred, 0)))
    else:
        plan.extend((f"masks/{key}/{name}.png", partial(_mask_bytes, pred, i)) for i, name in enumerate(names))
    if options.overlays:
        plan.extend(_planned_overlays(data, pred))
    if kind == "dicom" and options.manifest_sha256:  # last: if it fails, the NIfTI and overlay are kept
        seg = partial(segmentation_bytes, data, pred, manifest_sha256=options.manifest_sha256,
                      brats_labels=options.brats_labels)
        plan.append((f"volumes/{key}_seg.dcm", seg))
    return [(safe_output_path(out, relative), produce) for relative, produce in plan]


def _planned_overlays(data: ScanData, pred: Prediction) -> list:
    key = data.scan.key
    if data.scan.kind == "kaggle_3m":
        names = data.slice_names
        return [(f"overlays/{key}/{name}.png", partial(_overlay_bytes, data, pred, i)) for i, name in enumerate(names)]
    index = overlay_slice(pred) if data.scan.kind in VOLUME_KINDS else 0
    return [(f"overlays/{key}.png", partial(_overlay_bytes, data, pred, index))]


def brats_label_map(mask: np.ndarray, convention: str = DEFAULT_CONVENTION) -> np.ndarray:
    """(S, H, W, 3) WT/TC/ET masks -> (S, H, W) uint8 BraTS labels in `convention`: {0, 1, 2, 4} for
    "2021", {0, 1, 2, 3} for "2023", painted ET inside TC inside WT (see the module docstring)."""
    labels = np.zeros(mask.shape[:-1], np.uint8)
    for region, label in enumerate(LABEL_CONVENTIONS[check_convention(convention)]):
        labels[mask[..., region] > 0] = label
    return labels


def overlay_slice(pred: Prediction) -> int:
    """Index of the slice with the largest class-0 tumour area; the middle slice when none has any."""
    areas = (pred.mask[..., 0] > 0).sum(axis=(1, 2))
    return int(areas.argmax()) if areas.max(initial=0) > 0 else pred.mask.shape[0] // 2


def _mask_bytes(pred: Prediction, index: int) -> bytes:
    return encode_png(mask_png_values(pred.mask[index]))


def _overlay_bytes(data: ScanData, pred: Prediction, index: int) -> bytes:
    return encode_png(draw_overlay(data.image[index], pred.mask[index], pred.disagreement[index]))


def write_scan(
    out: Path,
    data: ScanData,
    pred: Prediction,
    options: OutputOptions | None = None,
    *,
    volume_writer: VolumeWriter | None = None,
) -> dict:
    """Write one scan's masks, overlays and volumes, then its row record; return its row.

    A scan already done is left alone and its recorded row returned, unless `options.overwrite`.
    Otherwise each file that exists is kept (unless overwrite), the others are written atomically,
    and `.rows/<key>.json` is written last. `volume_writer(axial, data)` returns the bytes of a
    NIfTI file for header-carrying volumes (default `nifti_like`); tests may inject their own.
    Raises ScanOutputError (a DataError) when the scan's outputs cannot be placed safely, and
    DicomSegError (a DataError) when a DICOM series' SEG cannot be made (its other files are kept).
    """
    out, options = Path(out), options or OutputOptions()
    row_path = _row_path(out, data.scan)
    if row_path.is_file() and not options.overwrite:
        return load_row(out, data.scan)
    row = {**scan_row(data, pred, options.qc_threshold), **(options.made_by or {})}
    writer = volume_writer or nifti_like
    for path, produce in _planned_files(out, data, pred, options, writer):
        if options.overwrite or not path.exists():
            write_atomic(path, produce())
    if options.submission is not None and data.scan.kind == "brats" and pred.mask.shape[-1] == BRATS_REGIONS:
        labels = submission.as_submission(brats_label_map(pred.mask, options.brats_labels))
        write_atomic(submission.case_file(options.submission, data.scan), writer(labels, data))
    write_atomic(row_path, json.dumps(row, indent=2) + "\n")
    return row


def label_map_file(out: Path, scan: Scan) -> Path | None:
    """`volumes/<key>_seg.nii.gz`, where a BraTS-regions model's label map of `scan` is written."""
    return safe_output_path(out, f"volumes/{scan.key}_seg.nii.gz") if scan.kind in VOLUME_KINDS else None
