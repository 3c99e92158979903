"""What the runtime passes between its stages: a discovered scan, its pixels, its prediction.

`Scan` is what discovery finds (paths only, nothing read). `ScanData` is a scan read from disk
and brought to the artifacts' input dtype and channel order, still at its own size. `Prediction`
is the ensemble graph's output for every slice of one scan, resized back to that size.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

KINDS = ("slice", "kaggle_3m", "nifti", "brats", "dicom")


@dataclass(frozen=True)
class Scan:
    """One unit of work and one row of results.csv.

    Attributes:
        key: unique relative name of the scan's outputs, with '/' separators and no suffix,
            e.g. "TCGA_CS_4941_19960909" or "slices/img_003"; made from the path below the
            input root it was found under.
        kind: one of KINDS.
        paths: the files it is read from (slices in order for kaggle_3m and DICOM; the modality
            files in the manifest's order for BraTS; one file otherwise).
        root: the input path it was discovered under.
        content: for a scan that arrives in memory (a seg-serve request): the bytes of its one
            file, read from there instead of `paths[0]`, which then only names it in messages.
    """

    key: str
    kind: str
    paths: tuple[Path, ...]
    root: Path
    content: bytes | None = field(default=None, repr=False, compare=False)


@dataclass
class ScanData:
    """A scan's slices as the graph wants them, at the scan's own in-plane size.

    Attributes:
        image: (S, H, W, C) in the manifest's input dtype (uint8, or float32 z-scored per
            volume) and channel order.
        slice_names: one per slice (file stem, or "z<index>" for volumes).
        spacing: in-plane (row, column) pixel size in mm when the source says so.
        slice_step: distance between slices in mm when known (volumes).
        nifti: for volume sources, what is needed to write a mask aligned with the input:
            {"affine": (4, 4) array, "header": nibabel header (None for DICOM, whose affine is
            built from its position and orientation tags), "shape": original (X, Y, Z),
            "to_axial": how the slices were taken, to invert}; None for 2-D sources.
        notes: facts worth reporting, e.g. "16-bit slices rescaled to 8-bit".
    """

    scan: Scan
    image: np.ndarray
    slice_names: list[str]
    spacing: tuple[float, float] | None = None
    slice_step: float | None = None
    nifti: dict | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def num_slices(self) -> int:
        return self.image.shape[0]


@dataclass
class Prediction:
    """The ensemble's outputs for one scan, resized back to the scan's own size.

    K is the number of target classes: 1 for a binary tumour mask, 3 for the nested BraTS
    regions (whole tumour, tumour core, enhancing tumour).

    Attributes:
        probability: (S, H, W, K) float32 ensemble probability.
        mask: (S, H, W, K) uint8 in {0, 1} (probability above the manifest's threshold).
        disagreement: (S, H, W, K) float32, max minus min member probability.
    """

    probability: np.ndarray
    mask: np.ndarray
    disagreement: np.ndarray
