"""Find the scans under the paths given to `seg-run`, and read each one into the artifacts' input form.

`discover` looks at names only (and DICOM headers). Under each path, recursively and in sorted
order, with hidden files and folders (names starting with '.') ignored:

- 2-D images (.png .tif .tiff .jpg .jpeg .bmp) are one `slice` scan each, except a numbered
  series: images of one folder named `<prefix>_<N>.<ext>` with the same prefix, at least two of
  them and no N twice, form ONE `kaggle_3m` scan with its slices in N order (`_2` before `_10`),
  as in a kaggle_3m patient folder. `*_mask.<ext>` images are training labels and are ignored.
- NIfTI files (.nii, .nii.gz) are one `nifti` scan each, except BraTS cases when the manifest
  names modalities: files of one folder named `<case>_<modality>` or `<case>-<modality>`, where
  the modality is a BraTS name (t1 t1ce t2 flair t1n t1c t2w t2f), one the manifest names, or seg,
  at least two with the same `<case>`, form ONE `brats` scan whose paths are the manifest's
  modalities in its order; a case without one of them is skipped with a reason naming the file.
  `*_seg` / `*-seg` label files are ignored.
- DICOM files (.dcm) of one folder form one `dicom` scan per SeriesInstanceUID (needs pydicom;
  without it the folder is skipped with a reason).
- Anything else is skipped with a reason, e.g. "unsupported file type '.txt'".

Keys (`Scan.key`) are the path below the given root, '/'-separated, without the file suffix
(`scans/a/b.nii.gz` -> "a/b"); a series, case or DICOM scan takes its folder's path, plus
`/<prefix>`, `/<case>` or `/series<N>` when the folder holds more than one scan of that family. A
root that is itself the scan (a file, or a patient folder) gives its own name. Characters other
than letters, digits, '.', '-', '_' and '+' become '_', as do '.' alone and runs of dots. Scans
whose keys clash all get their suffix or kind appended (`x_png`, `x_tif`), then `_2`, `_3`...
if still needed. A scan whose files were all found already (overlapping roots) is dropped. Scans
come sorted by key.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from brainseg.data.brats import CaseSkipped
from brainseg.data.imageio import IMAGE_SUFFIXES, UnreadableImage, read_image, to_uint8
from brainseg.data.readers import natural_key
from brainseg.data.volume import SkippedInput
from brainseg.errors import ArtifactError, BrainsegError, DataError
from brainseg.runtime.nifti import (
    NIFTI_SUFFIXES,
    brats_cases,
    dicom_series,
    file_stem,
    file_suffix,
    is_label,
    read_dicom,
    read_nifti,
    volume_to_input,
)
from brainseg.runtime.scans import Scan, ScanData

DICOM_SUFFIXES = (".dcm",)
INPUT_DTYPES = ("uint8", "float32")
_NOT_SCANS = {"mask": "is a training mask (*_mask), not a scan", "label": "is a segmentation label (*_seg), not a scan"}

_NUMBERED = re.compile(r"^(?P<prefix>.+)_(?P<n>\d+)$")
_UNSAFE = re.compile(r"[^\w.+-]")
_DOTS = re.compile(r"\.{2,}|^\.$")


class ScanSkipped(DataError):
    """A scan that cannot be used, with the file at fault and a one-line reason.

    Attributes:
        path: the file (or folder) at fault.
        reason: what is wrong with it, without the path.
    """

    def __init__(self, path: Path | str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason

    def as_skipped(self) -> SkippedInput:
        return SkippedInput(self.path, self.reason)


def discover(paths: Sequence[Path], spec: dict) -> tuple[list[Scan], list[SkippedInput]]:
    """The scans under `paths` (files or folders) and the inputs left out, with reasons.

    See the module docstring for the rules. `spec` is the manifest's "input" entry; only its
    "modalities" is used here. Finding nothing is not an error.

    Raises:
        DataError: one of `paths` does not exist.
    """
    finder = _Finder(tuple(m.lower() for m in spec.get("modalities") or ()))
    for root in map(Path, paths):
        if not root.exists():
            raise DataError(f"input {root} does not exist")
        finder.add_root(root)
    return _assign_keys(finder.found), finder.skipped


def load(scan: Scan, spec: dict) -> ScanData:
    """Read `scan` as (S, H, W, C) slices in the artifacts' input dtype and channel count.

    - 2-D images: uint8 RGB (as `read_image` gives). 16-bit pixels are rescaled to 8-bit with one
      peak per scan (its maximum -> 255; a series shares it). Float32 artifacts (trained on NIfTI)
      refuse 2-D images: 8-bit slices lack the volume statistics those models were trained with.
    - Volumes (NIfTI, BraTS, DICOM): reoriented to RAS+ and cut into ALL axial slices as in
      training, so outputs align with the input; z-scored per channel for float32 artifacts,
      0 -> 0 and 99.5th percentile -> 255 for uint8 ones (`nifti.volume_to_input`).
    - Channels: a 1-channel source for 3-channel uint8 artifacts is replicated, a 3-channel one
      with identical channels for 1-channel artifacts is reduced, both with a note; any other
      mismatch skips the scan.

    Raises:
        ScanSkipped: a file is empty, truncated, unreadable or has NaN/infinite voxels; the
            channel count does not fit; the slices of a series or the modalities of a case
            differ in size; a modality is empty (float32); nibabel or pydicom is missing.
        ArtifactError: `spec` names an input dtype other than uint8 or float32.
    """
    dtype = spec.get("dtype")
    if dtype not in INPUT_DTYPES:
        raise ArtifactError(f"manifest input dtype {dtype!r} is not supported; expected one of {INPUT_DTYPES}")
    readers = {"slice": _load_images, "kaggle_3m": _load_images, "nifti": _load_volume, "brats": _load_brats,
               "dicom": _load_volume}
    try:
        return readers[scan.kind](scan, dtype, int(spec["channels"]), spec)
    except ScanSkipped:
        raise
    except (UnreadableImage, CaseSkipped) as exc:
        raise ScanSkipped(exc.path, exc.reason) from exc
    except BrainsegError as exc:  # nibabel or pydicom is not installed
        raise ScanSkipped(scan.paths[0], str(exc)) from exc


# ---------------------------------------------------------------- discovery


@dataclass
class _Found:
    """A scan before its key is final: key components and a tag to tell clashing keys apart."""

    parts: list[str]
    tag: str
    kind: str
    paths: list[Path]
    root: Path


class _Finder:
    """Walks the given roots and collects scans and skipped inputs in sorted order."""

    def __init__(self, modalities: tuple[str, ...]) -> None:
        self.modalities = modalities
        self.found: list[_Found] = []
        self.skipped: list[SkippedInput] = []
        self._walked: set[Path] = set()

    def add_root(self, root: Path) -> None:
        if root.is_dir():
            self._walk(root, root)
            return
        role = _role(root)
        if role in ("image", "nifti"):
            self._add_file(root, root)
        elif role == "dicom":
            self._add_dicom(root, [root], [file_stem(root.name)])
        elif role in _NOT_SCANS:
            self._skip(root, _NOT_SCANS[role])
        else:
            self._skip(root, _unsupported(root))

    def _walk(self, root: Path, folder: Path) -> None:
        if folder.resolve() in self._walked:  # a link loop, or a root inside another root
            return
        self._walked.add(folder.resolve())
        try:
            entries = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
        except OSError as exc:
            self._skip(folder, f"cannot list the folder ({exc.strerror or exc})")
            return
        by_role: dict[str | None, list[Path]] = {}
        for entry in entries:
            if entry.is_file():
                by_role.setdefault(_role(entry), []).append(entry)
            elif not entry.is_dir():
                self._skip(entry, "not a regular file or folder (a broken link?)")
        for path in by_role.get(None, []):
            self._skip(path, _unsupported(path))
        self._add_images(root, folder, by_role.get("image", []))
        self._add_niftis(root, folder, by_role.get("nifti", []) + by_role.get("label", []))
        if by_role.get("dicom"):
            self._add_dicom(root, by_role["dicom"], _folder_parts(root, folder))
        for sub in (p for p in entries if p.is_dir()):
            self._walk(root, sub)

    def _add_images(self, root: Path, folder: Path, images: list[Path]) -> None:
        series, loose = _numbered_series(images)
        for prefix, paths in series.items():
            inner = [] if len(series) == 1 and not loose else [prefix]
            self.found.append(_Found(_folder_parts(root, folder) + inner, "kaggle_3m", "kaggle_3m", paths, root))
        for path in loose:
            self._add_file(root, path)

    def _add_niftis(self, root: Path, folder: Path, files: list[Path]) -> None:
        cases, loose = brats_cases(files, self.modalities)
        for case, members in cases.items():
            inner = [] if len(cases) == 1 and not loose else [case]
            paths = self._case_paths(folder, case, members)
            if paths is not None:
                self.found.append(_Found(_folder_parts(root, folder) + inner, "brats", "brats", paths, root))
        for path in loose:
            if _role(path) == "nifti":
                self._add_file(root, path)

    def _case_paths(self, folder: Path, case: str, members: list[tuple[str, Path]]) -> list[Path] | None:
        """The case's files in the manifest's modality order, or None after recording why not."""
        by_modality: dict[str, list[Path]] = {}
        for modality, path in members:
            by_modality.setdefault(modality, []).append(path)
        twice = [f"{m}: {', '.join(p.name for p in ps)}" for m, ps in by_modality.items() if len(ps) > 1]
        if twice:
            self._skip(folder, f"BraTS case {case} has several files for one modality ({'; '.join(twice)})")
            return None
        example = members[0][1].name
        separator, suffix = example[len(case)], file_suffix(example)
        missing = [f"{case}{separator}{m}{suffix}" for m in self.modalities if m not in by_modality]
        if missing:
            needed = ", ".join(self.modalities)
            self._skip(folder, f"BraTS case {case}: missing {', '.join(missing)} (the artifacts need {needed})")
            return None
        return [by_modality[m][0] for m in self.modalities]

    def _add_dicom(self, root: Path, files: list[Path], parts: list[str]) -> None:
        try:
            series, unreadable = dicom_series(files)
        except BrainsegError as exc:  # pydicom is not installed
            self._skip(files[0].parent if len(files) > 1 else files[0], str(exc))
            return
        for path, reason in unreadable:
            self._skip(path, reason)
        for label, paths in series:
            inner = [label] if len(series) > 1 else []
            self.found.append(_Found(parts + inner, "dicom", "dicom", paths, root))

    def _add_file(self, root: Path, path: Path) -> None:
        kind = "nifti" if _role(path) == "nifti" else "slice"
        if path == root:
            parts = [file_stem(path.name)]
        else:
            *folders, name = path.relative_to(root).parts
            parts = [*folders, file_stem(name)]
        tag = file_suffix(path.name).lstrip(".").replace(".", "_")
        self.found.append(_Found(parts, tag, kind, [path], root))

    def _skip(self, path: Path, reason: str) -> None:
        self.skipped.append(SkippedInput(str(path), reason))


def _role(path: Path) -> str | None:
    """"image", "mask", "nifti", "label", "dicom", or None for an unsupported file."""
    name = path.name.lower()
    if name.endswith(NIFTI_SUFFIXES):
        return "label" if is_label(name) else "nifti"
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return "mask" if path.stem.lower().endswith("_mask") else "image"
    if path.suffix.lower() in DICOM_SUFFIXES:
        return "dicom"
    return None


def _unsupported(path: Path) -> str:
    if not path.suffix:
        return "no file suffix; expected an image, NIfTI (.nii, .nii.gz) or DICOM (.dcm) file"
    return f"unsupported file type '{path.suffix.lower()}'"


def _numbered_series(images: list[Path]) -> tuple[dict[str, list[Path]], list[Path]]:
    """({prefix: paths in N order} for each numbered series, the images that are in none)."""
    groups: dict[str, list[tuple[int, Path]]] = {}
    loose = []
    for path in images:
        match = _NUMBERED.match(path.stem)
        if match:
            groups.setdefault(match["prefix"], []).append((int(match["n"]), path))
        else:
            loose.append(path)
    series = {}
    for prefix, members in sorted(groups.items()):
        numbers = [n for n, _ in members]
        if len(members) >= 2 and len(set(numbers)) == len(numbers):
            series[prefix] = [path for _, path in sorted(members)]
        else:
            loose.extend(path for _, path in members)
    return series, sorted(loose)


def _folder_parts(root: Path, folder: Path) -> list[str]:
    relative = folder.relative_to(root)
    if relative.parts:
        return list(relative.parts)
    return [root.name if root.name not in ("", "..") else (root.resolve().name or "scan")]


def _safe(part: str) -> str:
    return _DOTS.sub("_", _UNSAFE.sub("_", part)) or "_"


def _assign_keys(found: list[_Found]) -> list[Scan]:
    """Final unique keys (see the module docstring); drops scans found twice; sorted by key."""
    unique: list[tuple[str, _Found]] = []
    seen: set[Path] = set()
    for item in found:
        files = {p.resolve() for p in item.paths}
        if not files <= seen:
            seen |= files
            unique.append(("/".join(map(_safe, item.parts)), item))
    clashes = Counter(base for base, _ in unique)
    used: set[str] = set()
    scans = []
    for base, item in sorted(unique, key=lambda b: (natural_key(b[0]), [str(p) for p in b[1].paths])):
        key = base if clashes[base] == 1 else f"{base}_{item.tag}"
        candidate, n = key, 2
        while candidate in used:
            candidate, n = f"{key}_{n}", n + 1
        used.add(candidate)
        scans.append(Scan(candidate, item.kind, tuple(item.paths), item.root))
    return sorted(scans, key=lambda s: natural_key(s.key))


# ---------------------------------------------------------------- loading


def _load_images(scan: Scan, dtype: str, channels: int, spec: dict) -> ScanData:
    if dtype != "uint8":
        needed = ", ".join(spec.get("modalities") or ()) or "float32"
        raise ScanSkipped(
            scan.paths[0],
            f"is a 2-D image, but these artifacts take volumes ({needed}) z-scored per scan; give NIfTI or DICOM",
        )
    images = [read_image(path) for path in scan.paths]  # (H, W, C) each
    for path, image in zip(scan.paths[1:], images[1:], strict=True):
        if (image.shape, image.dtype) != (images[0].shape, images[0].dtype):
            raise ScanSkipped(path, f"is {image.shape} {image.dtype} but {scan.paths[0].name} is "
                                    f"{images[0].shape} {images[0].dtype}; the slices of one scan must match")
    stack = np.stack(images)  # (S, H, W, C)
    notes = []
    if stack.dtype != np.uint8:
        peak = int(stack.max())
        stack = to_uint8(stack, peak)
        notes.append(f"16-bit pixels rescaled to 8-bit by the scan's maximum ({peak} -> 255)")
    stack = _match_channels(stack, channels, scan.paths[0], notes, replicate=True)
    return ScanData(scan, stack, [path.stem for path in scan.paths], notes=notes)


def _load_volume(scan: Scan, dtype: str, channels: int, spec: dict) -> ScanData:
    data, info = read_nifti(scan.paths[0]) if scan.kind == "nifti" else read_dicom(scan.paths)
    return _volume_data(scan, data, info, dtype, channels)


def _load_brats(scan: Scan, dtype: str, channels: int, spec: dict) -> ScanData:
    volumes, info = [], None
    for path in scan.paths:
        data, read_info = read_nifti(path)  # (X, Y, Z, 1) in RAS+
        if data.shape[3] != 1:
            raise ScanSkipped(path, f"is 4-D {data.shape}; a BraTS modality must be one 3-D volume")
        if volumes and data.shape != volumes[0].shape:
            raise ScanSkipped(path, f"is {data.shape[:3]} but {scan.paths[0].name} is {volumes[0].shape[:3]}")
        volumes.append(data)
        info = info or read_info
    return _volume_data(scan, np.concatenate(volumes, axis=-1), info, dtype, channels)


def _volume_data(scan: Scan, data: np.ndarray, info: dict, dtype: str, channels: int) -> ScanData:
    """RAS+ (X, Y, Z, C) float32 -> ScanData of all its axial slices in the artifacts' form."""
    notes: list[str] = []
    data = _match_channels(data, channels, scan.paths[0], notes, replicate=dtype == "uint8")
    sources = scan.paths if len(scan.paths) == data.shape[-1] else [scan.paths[0]] * data.shape[-1]
    image = volume_to_input(data, info, dtype, sources, notes)  # (Z, H, W, C)
    zx, zy, zz = info["zooms"]
    return ScanData(scan, image, [f"z{z}" for z in range(image.shape[0])], spacing=(zy, zx), slice_step=zz,
                    nifti=info, notes=notes)


def _match_channels(image: np.ndarray, channels: int, path: Path, notes: list[str], *, replicate: bool) -> np.ndarray:
    """(..., C) -> (..., channels): replicate grayscale to 3 (uint8 only), reduce identical RGB, else skip."""
    have = image.shape[-1]
    if have == channels:
        return image
    if have == 1 and channels == 3 and replicate:
        notes.append("grayscale replicated to 3 channels")
        return np.repeat(image, 3, axis=-1)
    if have == 3 and channels == 1 and (image == image[..., :1]).all():
        notes.append("3 identical channels taken as grayscale")
        return np.ascontiguousarray(image[..., :1])
    raise ScanSkipped(path, f"has {have} channel{'s' if have != 1 else ''}; the artifacts expect {channels}")
