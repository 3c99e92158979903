"""Read BraTS-style NIfTI cases: `ROOT/<case>/<case>_{t1,t1ce,t2,flair,seg}.nii.gz`.

Each case becomes one `Volume` of axial slices: every modality is reoriented to the closest
canonical (RAS+) orientation, z-scored over its own non-zero (brain) voxels with background left
at 0, and stacked as channels in the order asked for. Only slices where some modality is non-zero
are kept. The file suffix may follow `_` (BraTS 2018-2021) or `-` (BraTS 2023, whose modalities
are `t1n`, `t1c`, `t2w`, `t2f`), and `.nii` works as well as `.nii.gz`. A modality asked for by
one year's name reads the file named with the other's (`t1` reads `<case>-t1n.nii.gz`), so a model
trained on either year's names reads both; a case with both files of one sequence is skipped.

Slices are laid out as (H, W) = (posterior <- anterior rows, left -> right columns): row 0 is the
most anterior row and the patient's left is on the left of the image (neurological convention).

A case that cannot be used (a file missing or unreadable, NaN voxels, shapes that disagree,
unknown labels) is skipped with a reason; nibabel is imported only when BraTS data is read.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Sequence
from pathlib import Path

import numpy as np

from brainseg.data.names import BRATS_LABEL, NIFTI_SUFFIXES, names_modality, sequence_names
from brainseg.data.nifti_file import open_nifti
from brainseg.data.volume import Volume
from brainseg.errors import ConfigError, InputSkipped, one_line, require

TARGETS = ("wt", "brats-regions")
# enhancing tumour is 4 up to BraTS 2021 and 3 from BraTS 2023; one file uses one convention
BRATS_LABEL_SETS = ((0, 1, 2, 4), (0, 1, 2, 3))
# the label conventions by the year that introduced them: the label of each region's own tissue,
# (whole tumour's outer tissue = oedema/SNFH, tumour core's = necrosis/NETC, enhancing tumour)
LABEL_CONVENTIONS = {"2021": (2, 1, 4), "2023": (2, 1, 3)}
DEFAULT_CONVENTION = "2021"  # what brainseg wrote before it recorded a convention


def check_convention(convention: str) -> str:
    """`convention` ("2021" or "2023"), or a ConfigError naming the valid ones."""
    if convention not in LABEL_CONVENTIONS:
        raise ConfigError(f"BraTS label convention {convention!r} is not one of {', '.join(LABEL_CONVENTIONS)} "
                          "(2021: enhancing tumour 4; 2023: enhancing tumour 3)")
    return convention


def labels_convention(labels: Collection[int]) -> str | None:
    """The convention a label map's values show: "2023" with a 3, "2021" with a 4, None with neither."""
    return "2023" if 3 in labels else "2021" if 4 in labels else None

SkipFn = Callable[[Path, str], None]


def check_target(target: str) -> None:
    """Raise `ConfigError` unless `target` is one of `TARGETS`."""
    if target not in TARGETS:
        raise ConfigError(f"unknown target {target!r}; valid targets: {', '.join(TARGETS)}")


def is_brats_case(folder: Path) -> bool:
    """Whether `folder` holds a `<case>_seg.nii.gz` (or `.nii`, or `-seg`) file."""
    return any(names_modality(p.name, BRATS_LABEL) for p in folder.iterdir() if p.is_file())


def read_brats(
    root: Path, modalities: Sequence[str], target: str, skip: SkipFn, wanted: Collection[str] | None = None
) -> Iterator[tuple[Path, Volume]]:
    """Read the case folders under `root` one at a time, in name order (only those named in `wanted`,
    when given): a case's files are opened only when the iteration reaches it, so a consumer that
    keeps one case at a time holds one case in memory. `skip(path, reason)` records each case left
    out. Modalities and target are checked before the first case is read."""
    nib = require("nibabel", "nifti")
    modalities = _check_modalities(modalities)
    check_target(target)
    return _cases(root, modalities, target, skip, wanted, nib)


def _cases(root, modalities, target, skip, wanted, nib) -> Iterator[tuple[Path, Volume]]:
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if wanted is not None and folder.name not in wanted:
            continue
        try:
            yield folder, _read_case(folder, modalities, target, nib)
        except InputSkipped as exc:
            skip(Path(exc.path), exc.reason)


def target_masks(seg: np.ndarray, target: str) -> np.ndarray:
    """(..., ) integer labels -> (..., K) uint8 masks: K=1 whole tumour, or K=3 WT, TC, ET."""
    if target == "wt":
        channels = [seg > 0]
    else:
        channels = [seg > 0, np.isin(seg, (1, 3, 4)), np.isin(seg, (3, 4))]
    return np.stack(channels, axis=-1).astype(np.uint8)


def _check_modalities(modalities: Sequence[str]) -> tuple[str, ...]:
    if isinstance(modalities, str):
        modalities = (modalities,)
    modalities = tuple(m.lower() for m in modalities)
    if not modalities or len(set(modalities)) != len(modalities) or BRATS_LABEL in modalities:
        raise ConfigError(
            "modalities must be distinct names other than 'seg', e.g. t1,t1ce,t2,flair; "
            f"got {modalities}"
        )
    sequences = [sequence_names(m) for m in modalities]
    if len(set(sequences)) != len(sequences):
        raise ConfigError(
            f"modalities {modalities} name one sequence twice: t1 = t1n, t1ce = t1c, t2 = t2w, flair = t2f "
            "(BraTS 2021 and 2023 names); keep one name of each"
        )
    return modalities


def _read_case(folder: Path, modalities: tuple[str, ...], target: str, nib) -> Volume:
    files = _case_files(folder, modalities)
    seg, _, seg_affine = _load(files[BRATS_LABEL], nib)
    images, zooms, affines = zip(*(_load(files[m], nib) for m in modalities), strict=True)
    for modality, image, affine in zip(modalities, images, affines, strict=True):
        if image.shape != seg.shape:
            raise InputSkipped(
                folder,
                f"{files[modality].name} is {image.shape} but {files[BRATS_LABEL].name} is {seg.shape}",
            )
        if not same_grid(affine, seg_affine):
            raise InputSkipped(
                folder, f"{files[modality].name} and {files[BRATS_LABEL].name} have different affines (not one grid)"
            )
    labels = _check_labels(files[BRATS_LABEL], seg)
    convention = labels_convention(set(np.unique(labels).tolist()))
    stack = np.stack(images, axis=-1)  # (X, Y, Z, C)
    keep = np.flatnonzero(np.any(stack != 0, axis=(0, 1, 3)))
    if keep.size == 0:
        raise InputSkipped(folder, "every modality is zero everywhere (no brain voxels)")
    normalised = np.stack(
        [zscore_nonzero(files[m], image) for m, image in zip(modalities, images, strict=True)], axis=-1
    )
    return Volume(
        patient_id=folder.name,
        image=axial_slices(normalised[:, :, keep]).astype(np.float32),
        mask=target_masks(axial_slices(labels[:, :, keep]), target),
        slice_names=[f"{folder.name}:z{z}" for z in keep],
        spacing=(float(zooms[0][1]), float(zooms[0][0])),
        source="brats",
        slice_step=float(zooms[0][2]),
        label_convention=convention,
    )


def _case_files(folder: Path, modalities: tuple[str, ...]) -> dict[str, Path]:
    """Map each modality and 'seg' to its file, or raise naming the missing ones."""
    names = [p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")]
    if not any(p.name.lower().endswith(NIFTI_SUFFIXES) for p in names):
        raise InputSkipped(folder, f"no NIfTI files (expected {folder.name}_<modality>.nii.gz)")
    files, missing = {}, []
    for modality in (*modalities, BRATS_LABEL):
        hits = [p for p in names if names_modality(p.name, modality)]
        aliases = sequence_names(modality)
        if len(hits) > 1:
            known_as = f" ({' = '.join(aliases)}, its BraTS 2021 and 2023 names)" if len(aliases) > 1 else ""
            raise InputSkipped(
                folder, f"several {modality} files{known_as}: {', '.join(sorted(p.name for p in hits))}; keep one"
            )
        if hits:
            files[modality] = hits[0]
        else:
            missing.append(" or ".join(f"{folder.name}_{alias}.nii.gz" for alias in aliases))
    if missing:
        raise InputSkipped(folder, f"missing {', '.join(missing)} (or .nii)")
    return files


def same_grid(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two NIfTI affines put voxels in the same place (to 1e-3 mm, as written to float32 headers)."""
    return bool(np.allclose(a, b, atol=1e-3, rtol=0))


def _load(path: Path, nib) -> tuple[np.ndarray, tuple[float, ...], np.ndarray]:
    """Load one NIfTI in closest-canonical orientation as float32 (X, Y, Z), its zooms and its affine
    (opened by `open_nifti`, as seg-run's reader opens it: header checked, --max-voxels' default)."""
    original = open_nifti(path)
    try:
        image = nib.as_closest_canonical(original)
        data = image.get_fdata(dtype=np.float32)
    except Exception as exc:  # nibabel raises many types for a header it cannot make sense of
        raise InputSkipped(path, f"cannot read NIfTI ({one_line(exc)})") from None
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise InputSkipped(path, f"is {data.ndim}-D {data.shape}; expected one 3-D volume")
    if not np.isfinite(data).all():
        bad = int(data.size - np.isfinite(data).sum())
        raise InputSkipped(path, f"has {bad} NaN or infinite voxels")
    return data, tuple(float(z) for z in image.header.get_zooms()[:3]), image.affine


def _check_labels(path: Path, seg: np.ndarray) -> np.ndarray:
    labels = np.rint(seg)
    if not np.array_equal(labels, seg):
        raise InputSkipped(path, "segmentation has non-integer labels")
    found = set(np.unique(labels).astype(int).tolist())
    unknown = sorted(found - set().union(*BRATS_LABEL_SETS))
    if unknown:
        raise InputSkipped(
            path, f"segmentation labels {unknown} found; BraTS labels are {list(BRATS_LABEL_SETS[0])} "
                  f"({list(BRATS_LABEL_SETS[1])} from BraTS 2023)"
        )
    if {3, 4} <= found:
        raise InputSkipped(path, "segmentation has both label 3 and label 4; enhancing tumour is 4 up to "
                                 "BraTS 2021 and 3 from BraTS 2023, one file must use one")
    return labels.astype(np.uint8)


def zscore_nonzero(path: Path, volume: np.ndarray) -> np.ndarray:
    """(X, Y, Z) -> same, (v - mean) / std over the non-zero voxels; zero voxels stay 0."""
    # whole-array float32 arithmetic with float64 sums: no gather and scatter of the brain voxels,
    # no 8-byte copy (this is most of the time seg-run spends reading a BraTS case)
    brain = volume != 0
    count = np.count_nonzero(brain)
    if count == 0:
        raise InputSkipped(path, "is zero everywhere (an empty modality)")
    out = np.subtract(volume, np.float32(volume.sum(dtype=np.float64) / count), dtype=np.float32)
    np.multiply(out, brain, out=out)  # background back to 0
    std = float(np.sqrt(np.square(out).sum(dtype=np.float64) / count))
    if std == 0:
        raise InputSkipped(path, "has one value over the whole brain (standard deviation 0)")
    out *= np.float32(1 / std)
    return out


def axial_slices(data: np.ndarray) -> np.ndarray:
    """RAS+ (X, Y, Z, ...) -> (Z, H, W, ...) axial slices, row 0 anterior, column 0 patient left."""
    return np.ascontiguousarray(axial_view(data))


def axial_view(data: np.ndarray) -> np.ndarray:
    """`axial_slices` as a view of `data` (no copy), for writing straight into a larger array."""
    return np.moveaxis(data, (0, 1, 2), (2, 1, 0))[:, ::-1]  # (Z, Y, X, ...), Y flipped
