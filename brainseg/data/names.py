"""How the data layouts name their files: kaggle_3m slices, BraTS modalities and labels, NIfTI suffixes.

Training's readers and seg-run's scan discovery both recognise files by these names, so they
are defined once here.

- kaggle_3m: `<patient>_<N>.tif` and its mask `<patient>_<N>_mask.tif`; slices are ordered by N.
  seg-run applies the same `<prefix>_<N>` pattern to any image suffix.
- BraTS: `<case>_<modality>.nii.gz` (2018-2021: t1, t1ce, t2, flair) or `<case>-<modality>.nii.gz`
  (2023: t1n, t1c, t2w, t2f), and the label volume `<case>_seg` / `<case>-seg`; `.nii` works too.
  The two years' names are one sequence each (t1 = t1n, t1ce = t1c, t2 = t2w, flair = t2f): a
  modality asked for by either name finds the file named with the other, whatever the separator.
"""

from __future__ import annotations

import re
from pathlib import Path

NIFTI_SUFFIXES = (".nii.gz", ".nii")
TIFF_SUFFIXES = (".tif", ".tiff")
MASK_SUFFIX = "_mask"

# <prefix>_<N>, optionally followed by _mask, matched against a file name without its suffix
NUMBERED_SLICE = re.compile(r"^(?P<prefix>.+)_(?P<n>\d+)(?P<mask>_mask)?$", re.IGNORECASE)

BRATS_MODALITIES = ("t1", "t1ce", "t2", "flair")  # the default channels, in this order
BRATS_2023_MODALITIES = ("t1n", "t1c", "t2w", "t2f")  # the same sequences, as BraTS 2023 names them
BRATS_MODALITY_NAMES = (*BRATS_MODALITIES, *BRATS_2023_MODALITIES)  # every year's names
_SEQUENCES = {name: pair for pair in zip(BRATS_MODALITIES, BRATS_2023_MODALITIES, strict=True) for name in pair}
BRATS_LABEL = "seg"
BRATS_SEPARATORS = ("_", "-")
_MODALITY_FILE = re.compile(r"^(?P<case>.+)[_-](?P<modality>[A-Za-z0-9]+)$")


def natural_key(text: str) -> list[int | str]:
    """Sort key that orders digit runs by value: "s_2" < "s_10"."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", text)]


def file_suffix(name: str) -> str:
    """".nii.gz" for gzipped NIfTI files, else the last suffix (".png", ".nii")."""
    return ".nii.gz" if name.lower().endswith(".nii.gz") else Path(name).suffix


def file_stem(name: str) -> str:
    """The name without `file_suffix`: "case_t1.nii.gz" -> "case_t1"."""
    return name[: len(name) - len(file_suffix(name))]


def is_nifti(name: str) -> bool:
    return name.lower().endswith(NIFTI_SUFFIXES)


def numbered_slice(stem: str) -> tuple[str, int, bool] | None:
    """("TCGA_CS_4941", 7, is_mask) for "TCGA_CS_4941_7" or "TCGA_CS_4941_7_mask"; None otherwise."""
    match = NUMBERED_SLICE.match(stem)
    if match is None:
        return None
    return match["prefix"], int(match["n"]), match["mask"] is not None


def case_and_modality(name: str) -> tuple[str, str] | None:
    """("BraTS_001", "t1ce") for "BraTS_001_t1ce.nii.gz" (modality lower-cased); None if not so named."""
    match = _MODALITY_FILE.match(file_stem(name))
    return (match["case"], match["modality"].lower()) if match else None


def is_label(name: str) -> bool:
    """Whether a NIfTI file name is a BraTS segmentation label: `<case>_seg` or `<case>-seg`."""
    found = case_and_modality(name)
    return found is not None and found[1] == BRATS_LABEL


def sequence_names(modality: str) -> tuple[str, ...]:
    """Every BraTS year's name of `modality`'s sequence, 2021's first: ("t1", "t1n") for "t1" or
    "t1n"; `(modality,)` for a name with no other (the label "seg", a sequence of your own)."""
    modality = modality.lower()
    return _SEQUENCES.get(modality, (modality,))


def names_modality(name: str, modality: str) -> bool:
    """Whether `name` is the NIfTI file of `modality` (or of the label, "seg") of some case, under
    any year's name of that sequence: "x-t1n.nii.gz" names "t1" as well as "t1n"."""
    name = name.lower()
    return not name.startswith(".") and any(
        name.endswith(f"{separator}{alias}{suffix}")
        for alias in sequence_names(modality)
        for separator in BRATS_SEPARATORS
        for suffix in NIFTI_SUFFIXES
    )
