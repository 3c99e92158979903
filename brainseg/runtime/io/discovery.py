"""Find the scans under the paths given to `seg-run`: which files make up one scan, and its output key.

`discover` looks at names only (and DICOM headers); `brainseg.runtime.io.loading` reads the files.
Under each path, recursively and in sorted order, with hidden files and folders (names starting
with '.') ignored:

- 2-D images (.png .tif .tiff .jpg .jpeg .bmp) are one `slice` scan each, except a numbered
  series: images of one folder named `<prefix>_<N>.<ext>` with the same prefix, at least two of
  them and no N twice, form ONE `kaggle_3m` scan with its slices in N order (`_2` before `_10`),
  as in a kaggle_3m patient folder. `*_mask.<ext>` images are training labels and are ignored.
- NIfTI files (.nii, .nii.gz) are one `nifti` scan each, except BraTS cases when the manifest
  names modalities: files of one folder named `<case>_<modality>` or `<case>-<modality>`, where
  the modality is a BraTS name (t1 t1ce t2 flair t1n t1c t2w t2f), one the manifest names, or seg,
  at least two with the same `<case>`, form ONE `brats` scan whose paths are the manifest's
  modalities in its order; a case without one of them is skipped with a reason naming the file.
  A modality's BraTS 2021 and 2023 names are one sequence (t1 = t1n, t1ce = t1c, t2 = t2w,
  flair = t2f): either file serves, and a case with both is skipped with a reason naming them.
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

from brainseg.data.imageio import IMAGE_SUFFIXES
from brainseg.data.names import (
    BRATS_LABEL,
    BRATS_MODALITY_NAMES,
    MASK_SUFFIX,
    case_and_modality,
    file_stem,
    file_suffix,
    is_label,
    is_nifti,
    natural_key,
    numbered_slice,
    sequence_names,
)
from brainseg.data.volume import SkippedInput
from brainseg.errors import BrainsegError, DataError
from brainseg.runtime.io.dicom import dicom_series
from brainseg.runtime.io.scans import Scan

DICOM_SUFFIXES = (".dcm",)
_NOT_SCANS = {"mask": "is a training mask (*_mask), not a scan", "label": "is a segmentation label (*_seg), not a scan"}
_UNSAFE = re.compile(r"[^\w.+-]")
_DOTS = re.compile(r"\.{2,}|^\.$")


def discover(paths: Sequence[Path], modalities: Sequence[str] | None) -> tuple[list[Scan], list[SkippedInput]]:
    """The scans under `paths` (files or folders) and the inputs left out, with reasons.

    See the module docstring for the rules. `modalities` are the MRI sequences the artifacts
    stack as channels (BraTS cases are grouped only when given). Finding nothing is not an error.

    Raises:
        DataError: one of `paths` does not exist.
    """
    finder = _Finder(tuple(m.lower() for m in modalities or ()))
    for root in map(Path, paths):
        if not root.exists():
            raise DataError(f"input {root} does not exist")
        finder.add_root(root)
    return _assign_keys(finder.found), finder.skipped


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
        by_sequence: dict[tuple[str, ...], list[Path]] = {}
        for modality, path in members:
            by_sequence.setdefault(sequence_names(modality), []).append(path)
        twice = [f"{' = '.join(s)}: {', '.join(p.name for p in ps)}" for s, ps in by_sequence.items() if len(ps) > 1]
        if twice:
            self._skip(folder, f"BraTS case {case} has several files for one modality ({'; '.join(twice)})")
            return None
        example = members[0][1].name
        separator, suffix = example[len(case)], file_suffix(example)
        missing = [
            " or ".join(f"{case}{separator}{name}{suffix}" for name in sequence_names(m))
            for m in self.modalities if sequence_names(m) not in by_sequence
        ]
        if missing:
            needed = ", ".join(self.modalities)
            self._skip(folder, f"BraTS case {case}: missing {', '.join(missing)} (the artifacts need {needed})")
            return None
        return [by_sequence[sequence_names(m)][0] for m in self.modalities]

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
    if is_nifti(name):
        return "label" if is_label(name) else "nifti"
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return "mask" if path.stem.lower().endswith(MASK_SUFFIX) else "image"
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
        numbered = numbered_slice(path.stem)
        if numbered:
            groups.setdefault(numbered[0], []).append((numbered[1], path))
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


def brats_cases(
    files: Sequence[Path], modalities: Sequence[str]
) -> tuple[dict[str, list[tuple[str, Path]]], list[Path]]:
    """Group one folder's NIfTI files into BraTS cases: ({case: [(modality, path)]}, the rest).

    A case is two or more files `<case>_<modality>` / `<case>-<modality>` with one `<case>`,
    where the modality is in `BRATS_MODALITY_NAMES` or `modalities`, or is the label "seg" (the
    label counts towards the two but is left out of the case). Without `modalities` there are no
    cases. The rest is sorted and still holds any label files.
    """
    if not modalities:
        return {}, sorted(files)
    known = {*BRATS_MODALITY_NAMES, *modalities, BRATS_LABEL}
    groups: dict[str, list[tuple[str, Path]]] = {}
    rest = []
    for path in files:
        found = case_and_modality(path.name)
        if found and found[1] in known:
            groups.setdefault(found[0], []).append((found[1], path))
        else:
            rest.append(path)
    cases = {}
    for case, members in sorted(groups.items()):
        images = [(m, p) for m, p in members if m != BRATS_LABEL]
        if len(members) >= 2 and images:
            cases[case] = images
        else:
            rest.extend(path for _, path in members)
    return cases, sorted(rest)
