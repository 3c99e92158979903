"""The in-memory form every data reader produces: one `Volume` per patient.

Readers turn a folder on disk (kaggle_3m, BraTS, plain image/mask folders, the built-in sample)
into a list of volumes plus a list of inputs they skipped and why. Everything downstream
(splits, training, metrics) sees only this form.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Volume:
    """One patient's slices, stacked in slice order.

    Attributes:
        patient_id: the id that groups slices; splits never put one id in two sets.
        image: (S, H, W, C). uint8 for 8-bit sources (kaggle_3m, PNG/TIFF folders, sample);
            float32 for NIfTI sources, already z-scored per volume over brain voxels.
        mask: (S, H, W, K) uint8 with values in {0, 1}; K is 1 for a binary target, 3 for the
            BraTS regions (whole tumour, tumour core, enhancing tumour).
        slice_names: one name per slice (the source file's stem, or "<case>:z<index>").
        spacing: in-plane pixel size (row, column) in mm when the source says so, else None.
        slice_step: distance between consecutive slices in mm when known, else None.
        source: the layout it came from: "kaggle_3m", "brats", "folders" or "sample".
        label_convention: for BraTS, the year of the label convention its label file used ("2021":
            enhancing tumour 4, "2023": 3), None where it shows neither (no enhancing tumour).
    """

    patient_id: str
    image: np.ndarray
    mask: np.ndarray
    slice_names: list[str]
    spacing: tuple[float, float] | None = None
    source: str = ""
    slice_step: float | None = None
    label_convention: str | None = None

    def __post_init__(self) -> None:
        if self.image.ndim != 4 or self.mask.ndim != 4:
            raise ValueError(
                f"patient {self.patient_id}: image and mask must be (S, H, W, C), "
                f"got {self.image.shape} and {self.mask.shape}"
            )
        if self.image.shape[:3] != self.mask.shape[:3]:
            raise ValueError(
                f"patient {self.patient_id}: image {self.image.shape[:3]} and mask "
                f"{self.mask.shape[:3]} differ in slices or size"
            )
        if len(self.slice_names) != self.image.shape[0]:
            raise ValueError(
                f"patient {self.patient_id}: {len(self.slice_names)} slice names for "
                f"{self.image.shape[0]} slices"
            )

    @property
    def num_slices(self) -> int:
        return self.image.shape[0]

    @property
    def tumour_slices(self) -> np.ndarray:
        """(S,) bool: which slices have any foreground in any target channel."""
        return self.mask.reshape(self.num_slices, -1).any(axis=1)


@dataclass(frozen=True)
class SkippedInput:
    """An input a reader left out, with a one-line reason that names the problem."""

    path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


@dataclass
class Dataset:
    """What a reader returns: the volumes it read and everything it skipped."""

    volumes: list[Volume]
    skipped: list[SkippedInput] = field(default_factory=list)
    layout: str = ""

    @property
    def in_channels(self) -> int:
        return self.volumes[0].image.shape[-1]

    @property
    def classes(self) -> int:
        return self.volumes[0].mask.shape[-1]

    @property
    def num_slices(self) -> int:
        return sum(v.num_slices for v in self.volumes)
