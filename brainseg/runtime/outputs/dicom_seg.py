"""A DICOM Segmentation object (DICOM SEG) for a scan read from a DICOM series, made with highdicom.

`seg-run` writes it as `volumes/<key>_seg.dcm` next to the NIfTI mask, so a PACS or viewer can
show the result on the very images it came from:

- BINARY segmentation, one segment per output region of the model: "tumour" for a one-class
  model; "whole tumour", "tumour core", "enhancing tumour" for the three BraTS regions. Each is
  coded as SCT "Morphologically abnormal structure" / "Neoplasm" in the brain, AUTOMATIC, with an
  AlgorithmIdentificationSequence naming "brainseg", its version and, as a parameter, the
  artifacts' manifest sha256 (which also ends the ContentDescription).
- It references the source series and each of its instances, frame for frame: the mask is put
  back from the runtime's axial RAS+ slices onto the source grid (`to_original`) and each source
  image gets its own rows and columns, in the slice order `read_dicom` used.
- Frames without tumour are left out (highdicom's default); a mask with no tumour at all is still
  written, with every frame present and empty, so "nothing found" is a result a viewer can show.
- Attributes a SEG copies from its source but that a de-identified series may lack are filled in
  on the in-memory copies only: absent Type 2 patient/study attributes as empty values, an absent
  SliceThickness as the spacing between slices. A series lacking a Type 1 UID a SEG must reference
  (StudyInstanceUID, FrameOfReferenceUID) or its Modality cannot have one.

Any failure raises `DicomSegError` (a DataError) with a one-line reason. pydicom and highdicom
are imported inside the functions that need them.
"""

from __future__ import annotations

import io

import numpy as np

from brainseg.data.brats import LABEL_CONVENTIONS
from brainseg.errors import BrainsegError, DataError, one_line, require
from brainseg.machine import package_version
from brainseg.runtime.io.dicom import slice_order
from brainseg.runtime.io.nifti import to_original
from brainseg.runtime.io.scans import Prediction, ScanData

SEGMENT_LABELS = {1: ("tumour",), 3: ("whole tumour", "tumour core", "enhancing tumour")}
# the tissues (indices into a convention's labels: oedema, necrotic core, enhancing) each BraTS region holds
REGION_TISSUES = ((0, 1, 2), (1, 2), (2,))
SEG_SERIES_NUMBER = 1000  # the SEG's own series (it gets a new SeriesInstanceUID); any fixed number would do
_REQUIRED = ("StudyInstanceUID", "FrameOfReferenceUID", "Modality")
_TYPE2_COPIED = ("PatientID", "PatientName", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID",
                 "StudyDate", "StudyTime")  # fmt: skip


class DicomSegError(DataError):
    """A scan's DICOM SEG cannot be made; the message is the one-line reason."""


def segmentation_bytes(
    data: ScanData, pred: Prediction, *, manifest_sha256: str | None, algorithm_version: str | None = None,
    brats_labels: str | None = None,
) -> bytes:
    """The bytes of a DICOM SEG of `pred.mask` on the DICOM series `data` was read from.

    Args:
        data: a `dicom` scan as `brainseg.runtime.io.loading.load` read it (its paths and geometry).
        pred: its prediction; K = 1 or 3 regions (SEGMENT_LABELS).
        manifest_sha256: the artifacts' manifest sha256, recorded in the algorithm identification.
        algorithm_version: defaults to the installed brainseg version.
        brats_labels: for the three BraTS regions, the label convention ("2021", "2023") whose labels
            each segment's label names, e.g. "enhancing tumour (BraTS 2023 label 3)", as in the
            label map written beside it.

    Raises:
        DicomSegError: highdicom is missing, a source file cannot be read again, the series lacks
            an attribute a SEG needs, or highdicom refuses the object; the message says which.
    """
    hd = _require("highdicom")
    labels = SEGMENT_LABELS.get(pred.mask.shape[-1])
    if labels is None:
        raise DicomSegError(f"no DICOM SEG segment labels for a {pred.mask.shape[-1]}-region model; "
                            f"expected {' or '.join(map(str, SEGMENT_LABELS))} regions")
    if len(labels) == len(REGION_TISSUES) and brats_labels is not None:
        labels = tuple(f"{name} ({_label_names(brats_labels, tissues)})"
                       for name, tissues in zip(labels, REGION_TISSUES, strict=True))
    sources = source_datasets(data)
    frames = source_frames(pred.mask, data)  # (S, rows, columns, K)
    if len(sources) != frames.shape[0]:
        raise DicomSegError(f"the series has {len(sources)} files now, but {frames.shape[0]} when it was read")
    version = algorithm_version or _installed_version()
    descriptions = _segment_descriptions(hd, labels, version, manifest_sha256)
    content = f"brainseg {version}" + (f", manifest sha256 {manifest_sha256[:12]}" if manifest_sha256 else "")
    try:
        seg = hd.seg.Segmentation(
            source_images=sources, pixel_array=frames, segmentation_type="BINARY",
            segment_descriptions=descriptions, series_instance_uid=hd.UID(), series_number=SEG_SERIES_NUMBER,
            sop_instance_uid=hd.UID(), instance_number=1, manufacturer="brainseg",
            manufacturer_model_name="brainseg seg-run", software_versions=version,
            # Type 1 here; the artifacts identify the "device" the way a serial number would
            device_serial_number=(manifest_sha256 or "unknown")[:16],
            series_description="brainseg tumour segmentation", content_description=content[:64],
            content_label="BRAINSEG", omit_empty_frames=bool(frames.any()),
        )
        buffer = io.BytesIO()
        seg.save_as(buffer)
    except Exception as exc:  # highdicom raises ValueError, AttributeError, TypeError... for bad sources
        raise DicomSegError(f"cannot make its DICOM SEG ({one_line(exc)})") from exc
    return buffer.getvalue()


def source_datasets(data: ScanData) -> list:
    """The series' headers (no pixels), in the slice order `read_dicom` used, ready for highdicom."""
    pydicom = _require("pydicom")
    members = []
    for path in data.scan.paths:
        try:
            members.append((path, pydicom.dcmread(path, stop_before_pixels=True)))
        except Exception as exc:  # pydicom raises many types for a broken file
            raise DicomSegError(f"cannot read {path} again for its DICOM SEG ({one_line(exc)})") from exc
    datasets = [ds for _, ds in slice_order(members)]
    missing = [keyword for keyword in _REQUIRED if not datasets[0].get(keyword)]
    if missing:
        raise DicomSegError(f"the series has no {', '.join(missing)}, which a DICOM SEG needs")
    slice_step = float(np.linalg.norm(np.asarray(data.nifti["affine"])[:3, 2]))
    for ds in datasets:
        for keyword in _TYPE2_COPIED:
            if keyword not in ds:
                setattr(ds, keyword, None)
        if ds.get("SliceThickness") in (None, ""):
            ds.SliceThickness = round(slice_step, 6)
    return datasets


def source_frames(mask: np.ndarray, data: ScanData) -> np.ndarray:
    """(S, H, W, K) axial RAS+ mask -> (slices, rows, columns, K) uint8 {0, 1}, one frame per source image.

    `read_dicom` stacks each image's (rows, columns) plane transposed, as (columns, rows, slices),
    before reorienting it; `to_original` undoes the reorientation, and this undoes the stacking.
    """
    original = to_original((mask > 0).astype(np.uint8), data.nifti)  # (columns, rows, slices, K)
    return np.ascontiguousarray(np.transpose(original, (2, 1, 0, 3)))


def _segment_descriptions(hd, labels: tuple[str, ...], version: str, manifest_sha256: str | None) -> list:
    codes = _require("pydicom.sr.codedict").codes
    algorithm = hd.AlgorithmIdentificationSequence(
        name="brainseg", family=codes.DCM.ArtificialIntelligence, version=version,
        parameters={"manifest_sha256": manifest_sha256} if manifest_sha256 else None,
    )
    return [
        hd.seg.SegmentDescription(
            segment_number=number, segment_label=label,
            segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
            segmented_property_type=codes.SCT.Neoplasm, algorithm_type="AUTOMATIC",
            algorithm_identification=algorithm, anatomic_regions=[codes.SCT.Brain],
        )
        for number, label in enumerate(labels, start=1)
    ]


def _label_names(convention: str, tissues: tuple[int, ...]) -> str:
    """"BraTS 2023 labels 1, 2, 3" for the whole tumour's tissues in that convention."""
    labels = sorted(LABEL_CONVENTIONS[convention][tissue] for tissue in tissues)
    return f"BraTS {convention} label{'s' if len(labels) > 1 else ''} {', '.join(map(str, labels))}"


def _installed_version() -> str:
    return package_version("brainseg") or "unknown"


def _require(module: str):
    """`module`, or DicomSegError naming the extra: a plain BrainsegError would stop the whole run,
    where a DataError skips this one scan with its reason."""
    try:
        return require(module, "dicom")
    except BrainsegError as exc:
        raise DicomSegError(str(exc)) from exc
