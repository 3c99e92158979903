"""Read a labelled data folder into a `Dataset` of per-patient volumes.

Three layouts are understood (`detect_layout` tells them apart):

- `kaggle_3m`: the Kaggle LGG set, `ROOT/<patient>/<patient>_<N>.tif` with
  `<patient>_<N>_mask.tif`; the patient id is the folder name and slices follow N numerically.
  ROOT may also be a folder that holds `kaggle_3m/` (as the Kaggle download does).
- `brats`: `ROOT/<case>/<case>_{t1,t1ce,t2,flair,seg}.nii.gz`, see `brainseg.data.brats`.
- `folders`: `ROOT/images/<stem>.<ext>` with its mask `ROOT/masks/<stem>.<ext>` or
  `ROOT/masks/<stem>_mask.<ext>` (any of `IMAGE_SUFFIXES`; two candidates for one image are an
  error for that image). The patient id comes from the stem (see `read_dataset`); slices of a
  patient are in natural order (`slice_2` before `slice_10`).

A missing or empty root, or nothing usable in it, raises `DataError`. A bad file is skipped
(a slice for 2-D layouts, a whole case for BraTS): it is recorded in `Dataset.skipped` with a
one-line reason and announced with a `SkippedInputWarning`. Nothing is dropped silently.
"""

from __future__ import annotations

import re
import warnings
from collections import Counter
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from brainseg.data.brats import check_target, is_brats_case, read_brats
from brainseg.data.imageio import IMAGE_SUFFIXES
from brainseg.data.names import BRATS_MODALITIES, MASK_SUFFIX, TIFF_SUFFIXES, natural_key, numbered_slice
from brainseg.data.pairs import SlicePair, read_patient
from brainseg.data.volume import Dataset, SkippedInput, Volume
from brainseg.errors import ConfigError, DataError

LAYOUTS = ("kaggle_3m", "brats", "folders")
_LOOKED_FOR = (
    "kaggle_3m patient folders (<patient>/<patient>_<N>_mask.tif), "
    "BraTS cases (<case>/<case>_seg.nii.gz) or images/+masks/ folders"
)

SkipFn = Callable[[Path, str], None]


class SkippedInputWarning(UserWarning):
    """Warned once for every input a reader skips; the same line is in `Dataset.skipped`."""


def detect_layout(root: Path) -> str:
    """Name the layout of `root`: "folders", "brats" or "kaggle_3m" (checked in that order).

    Raises:
        DataError: `root` is missing, not a folder, empty, or matches none of the layouts.
    """
    root = _existing_root(Path(root))
    if (root / "images").is_dir() and (root / "masks").is_dir():
        return "folders"
    if any(is_brats_case(folder) for folder in _subdirs(root)):
        return "brats"
    if _kaggle_root(root) is not None:
        return "kaggle_3m"
    raise DataError(f"{root} has no {_LOOKED_FOR}")


def read_dataset(
    root: str | Path,
    *,
    layout: str = "auto",
    modalities: Sequence[str] = BRATS_MODALITIES,
    target: str = "wt",
    patient_regex: str | None = None,
    patients: Collection[str] | None = None,
) -> Dataset:
    """Read a data folder into volumes sorted by patient id, plus what was skipped and why.

    Args:
        root: the data folder.
        layout: one of `LAYOUTS`, or "auto" to use `detect_layout`.
        modalities: BraTS only: the modalities to stack as channels, in this order.
        target: "wt" (one whole-tumour channel) or, for BraTS, "brats-regions" (WT, TC, ET).
        patient_regex: folders only: a regex matched (`re.match`) against each image stem; the
            patient id is its `patient` group, else its first group, else the whole match.
            Default: the stem up to its last "_" (the whole stem if it has none).
        patients: read only these patient ids; the others' files are never opened (export and
            seg-eval need a run's validation or test patients, not the whole set in memory).

    Raises:
        ConfigError: unknown layout or target, or an option that does not apply to the layout.
        DataError: `root` is missing or empty, or no usable volume could be read from it.
    """
    root, layout = _checked(root, layout, target, patient_regex)
    skipped: list[SkippedInput] = []
    skip = partial(_record_skip, skipped)
    wanted = None if patients is None else frozenset(patients)
    if layout == "kaggle_3m":
        read = _read_kaggle(root, skip, wanted)
    elif layout == "brats":
        read = list(read_brats(root, modalities, target, skip, wanted))
    else:
        read = _read_folders(root, _patient_of(patient_regex), skip, wanted)
    volumes = _same_channels(read, skip)
    if not volumes:
        raise DataError(_nothing_usable(root, layout, skipped))
    volumes.sort(key=lambda v: v.patient_id)
    return Dataset(volumes=volumes, skipped=skipped, layout=layout)


@dataclass
class VolumeStream:
    """`stream_dataset`'s answer: iterate it once for the volumes in patient-id order; `skipped`
    fills as the iteration goes; `check_read(count)` raises the error `read_dataset` would have
    raised when nothing was usable."""

    root: Path
    layout: str
    skipped: list[SkippedInput]
    volumes: Iterator[Volume]

    def __iter__(self) -> Iterator[Volume]:
        return self.volumes

    def check_read(self, count: int) -> None:
        if count == 0:
            raise DataError(_nothing_usable(self.root, self.layout, self.skipped))


def stream_dataset(
    root: str | Path,
    *,
    layout: str = "auto",
    modalities: Sequence[str] = BRATS_MODALITIES,
    target: str = "wt",
    patient_regex: str | None = None,
) -> VolumeStream:
    """`read_dataset`, one volume at a time: a BraTS case (float32, ~140 MB for a real one) is
    read when the iteration reaches it, so memory does not grow with the number of cases. 8-bit
    layouts are small and read at once (their channel counts are compared across patients)."""
    root, layout = _checked(root, layout, target, patient_regex)
    if layout != "brats":
        dataset = read_dataset(root, layout=layout, target=target, patient_regex=patient_regex)
        return VolumeStream(root, layout, dataset.skipped, iter(dataset.volumes))
    skipped: list[SkippedInput] = []
    cases = read_brats(root, modalities, target, partial(_record_skip, skipped))
    return VolumeStream(root, layout, skipped, (volume for _, volume in cases))


def _checked(root: str | Path, layout: str, target: str, patient_regex: str | None) -> tuple[Path, str]:
    """The existing root and its layout, after checking the options fit together."""
    if layout != "auto" and layout not in LAYOUTS:
        raise ConfigError(f"unknown layout {layout!r}; valid layouts: auto, {', '.join(LAYOUTS)}")
    check_target(target)
    root = _existing_root(Path(root))
    layout = detect_layout(root) if layout == "auto" else layout
    _check_combination(layout, target, patient_regex)
    return root, layout


def _existing_root(root: Path) -> Path:
    if not root.exists():
        raise DataError(f"data folder {root} does not exist")
    if not root.is_dir():
        raise DataError(f"data folder {root} is a file, not a folder")
    if not any(p for p in root.iterdir() if not p.name.startswith(".")):
        raise DataError(f"data folder {root} is empty; expected {_LOOKED_FOR}")
    return root


def _check_combination(layout: str, target: str, patient_regex: str | None) -> None:
    if target != "wt" and layout != "brats":
        raise ConfigError(
            f"target {target!r} needs BraTS labels; {layout} masks are binary, use target 'wt'"
        )
    if patient_regex is not None and layout != "folders":
        raise ConfigError(f"patient_regex applies to the folders layout only, not {layout}")


def _record_skip(skipped: list[SkippedInput], path: Path, reason: str) -> None:
    entry = SkippedInput(str(path), reason)
    skipped.append(entry)
    warnings.warn(f"skipped {entry}", SkippedInputWarning, stacklevel=2)


def _nothing_usable(root: Path, layout: str, skipped: list[SkippedInput]) -> str:
    if not skipped:
        return f"{root} ({layout} layout) holds no slices with masks"
    first = "; ".join(str(s) for s in skipped[:3])
    more = f" (and {len(skipped) - 3} more)" if len(skipped) > 3 else ""
    return (
        f"{root} ({layout} layout) has no usable volume: "
        f"{len(skipped)} inputs skipped: {first}{more}"
    )


def _subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _has_kaggle_masks(folder: Path) -> bool:
    return any(p.stem.lower().endswith(MASK_SUFFIX) and p.suffix.lower() in TIFF_SUFFIXES for p in folder.iterdir())


def _kaggle_root(root: Path) -> Path | None:
    """The folder whose subfolders hold masks: root, root/kaggle_3m or root's only subfolder."""
    children = _subdirs(root)
    candidates = [root, root / "kaggle_3m"] + (children if len(children) == 1 else [])
    for candidate in candidates:
        if candidate.is_dir() and any(_has_kaggle_masks(folder) for folder in _subdirs(candidate)):
            return candidate
    return None


def _read_kaggle(root: Path, skip: SkipFn, wanted: frozenset[str] | None) -> list[tuple[Path, Volume]]:
    read = []
    for folder in _subdirs(_kaggle_root(root) or root):
        if wanted is not None and folder.name not in wanted:
            continue
        pairs = _kaggle_pairs(folder, skip)
        volume = read_patient(folder.name, folder, pairs, "kaggle_3m", skip) if pairs else None
        if volume is not None:
            read.append((folder, volume))
    return read


def _kaggle_pairs(folder: Path, skip: SkipFn) -> list[SlicePair]:
    """One patient folder's (image, mask) pairs by slice number; records what cannot be paired."""
    images: dict[int, Path] = {}
    masks: dict[int, Path] = {}
    for path in sorted(p for p in folder.iterdir() if p.suffix.lower() in TIFF_SUFFIXES):
        numbered = numbered_slice(path.stem)
        if numbered is None:
            skip(path, "name does not follow <patient>_<N>.tif or <patient>_<N>_mask.tif")
            continue
        _, number, is_mask = numbered
        table = masks if is_mask else images
        if number in table:
            skip(path, f"second file for slice {number} (also {table[number].name})")
            continue
        table[number] = path
    if not images or not masks:
        skip(folder, f"patient {folder.name}: {_unpaired_reason(len(images), len(masks))}")
        return []
    for number in sorted(masks.keys() - images.keys()):
        skip(
            masks[number],
            f"mask without an image (expected {masks[number].name.replace('_mask', '')})",
        )
    pairs = []
    for number in sorted(images):
        if number in masks:
            pairs.append(SlicePair(images[number].stem, images[number], masks[number]))
        else:
            skip(images[number], f"image without a mask (expected {images[number].stem}_mask.tif)")
    if not pairs:
        skip(folder, f"patient {folder.name}: no image has a matching mask")
    return pairs


def _unpaired_reason(images: int, masks: int) -> str:
    if images:
        return f"{images} images but no <patient>_<N>_mask.tif masks"
    if masks:
        return f"{masks} masks but no images"
    return "no <patient>_<N>.tif slices"


def _read_folders(
    root: Path, patient_of: Callable[[str], str | None], skip: SkipFn, wanted: frozenset[str] | None
) -> list[tuple[Path, Volume]]:
    images_dir, masks_dir = root / "images", root / "masks"
    for needed in (images_dir, masks_dir):
        if not needed.is_dir():
            raise DataError(
                f"{root} has no {needed.name}/ folder; the folders layout needs images/ and masks/"
            )
    masks = _index_masks(masks_dir, skip)
    groups: dict[str, list[SlicePair]] = {}
    counts: Counter[str] = Counter()
    for path in _image_files(images_dir, skip):
        patient = patient_of(path.stem)
        mask = masks.pop(path.stem, None)
        if wanted is not None and patient is not None and patient not in wanted:
            continue
        if patient is None:
            skip(path, "name does not match patient_regex, so it (and its mask) has no patient id")
            continue
        counts[patient] += 1
        if mask is None:
            skip(
                path,
                f"image without a mask (expected masks/{path.stem}.<ext> "
                f"or masks/{path.stem}_mask.<ext>)",
            )
            continue
        groups.setdefault(patient, []).append(SlicePair(path.stem, path, mask))
    for mask in masks.values():
        skip(mask, "mask without an image in images/")
    for patient in sorted(counts.keys() - groups.keys()):
        skip(images_dir, f"patient {patient}: {counts[patient]} images but none has a mask")
    read = []
    for patient in sorted(groups):
        pairs = sorted(groups[patient], key=lambda pair: natural_key(pair.name))
        volume = read_patient(patient, images_dir, pairs, "folders", skip)
        if volume is not None:
            read.append((images_dir, volume))
    return read


def _image_files(folder: Path, skip: SkipFn) -> list[Path]:
    files = []
    for path in sorted(p for p in folder.iterdir() if not p.name.startswith(".")):
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
            files.append(path)
        else:
            skip(path, f"not an image file (expected one of {', '.join(IMAGE_SUFFIXES)})")
    return files


def _index_masks(masks_dir: Path, skip: SkipFn) -> dict[str, Path]:
    """Image stem -> mask file, from `<stem>.<ext>` or `<stem>_mask.<ext>` names."""
    index: dict[str, Path] = {}
    for path in _image_files(masks_dir, skip):
        stem = path.stem.removesuffix(MASK_SUFFIX)
        if stem in index:
            skip(path, f"second mask for image {stem} (also {index[stem].name}); rename one")
            continue
        index[stem] = path
    return index


def _patient_of(patient_regex: str | None) -> Callable[[str], str | None]:
    if patient_regex is None:
        return lambda stem: stem.rpartition("_")[0] or stem
    try:
        pattern = re.compile(patient_regex)
    except re.error as exc:
        raise ConfigError(
            f"patient_regex {patient_regex!r} is not a valid regular expression: {exc}"
        ) from exc
    group = "patient" if "patient" in pattern.groupindex else (1 if pattern.groups else 0)

    def patient_of(stem: str) -> str | None:
        match = pattern.match(stem)
        return match[group] if match and match[group] else None

    return patient_of


def _same_channels(read: list[tuple[Path, Volume]], skip: SkipFn) -> list[Volume]:
    """Keep the volumes with the most common channel count; skip the others with a reason."""
    if not read:
        return []
    counts = Counter(volume.image.shape[-1] for _, volume in read)
    channels = counts.most_common(1)[0][0]  # ties: the first patient's
    kept = []
    for path, volume in read:
        if volume.image.shape[-1] == channels:
            kept.append(volume)
        else:
            skip(
                path,
                f"patient {volume.patient_id} has {volume.image.shape[-1]} channels, "
                f"the other patients {channels}",
            )
    return kept

