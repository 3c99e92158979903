"""`seg-run --submission DIR`: a BraTS challenge submission folder beside the run's own outputs.

The challenge takes one `<case>.nii.gz` per case, named by the case folder (`BraTS-GLI-00001-000.nii.gz`),
holding the label map on the case's own voxel grid and affine. seg-run writes there, for each BraTS
case a BraTS-regions model segments, the label map it writes as `volumes/<key>_seg.nii.gz`, as int8,
in the run's label convention; nothing else goes into DIR. A case done by an earlier run (resumed)
gets its file from that `_seg.nii.gz`, so a rerun with `--submission` completes the folder without
segmenting anything again. Two cases of one name (the same folder name under two parents) would
overwrite each other there, so such a run is refused before anything is read.
"""

from __future__ import annotations

import gzip
from collections import Counter
from pathlib import Path

import numpy as np

from brainseg.data.names import case_and_modality
from brainseg.errors import ConfigError, require
from brainseg.fileio import write_atomic
from brainseg.runtime.io.scans import Scan

SUFFIX = ".nii.gz"


def case_file(folder: Path, scan: Scan) -> Path:
    """DIR/<case>.nii.gz for a BraTS scan: the case its files name (`<case>_t1.nii.gz`, `<case>-t1n.nii.gz`),
    which is the case folder's name in the challenge's layout (the scan's key may carry a suffix that
    tells two cases of one name apart)."""
    named = case_and_modality(Path(scan.paths[0]).name)
    return folder / f"{named[0] if named else scan.key.rsplit('/', 1)[-1]}{SUFFIX}"


def check_cases(folder: Path, scans: list[Scan]) -> None:
    """ConfigError when `folder` is a file, or when two BraTS cases would share a submission file."""
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"--submission {folder} is a file; it must be a folder")
    names = Counter(case_file(folder, scan).name for scan in scans if scan.kind == "brats")
    twice = sorted(name for name, count in names.items() if count > 1)
    if twice:
        raise ConfigError(f"--submission: several BraTS cases are named {', '.join(twice)} (in different folders); "
                          "a submission has one file per case name: segment them in separate runs")


def as_submission(label_map: np.ndarray) -> np.ndarray:
    """A label map's values as the int8 the submission holds."""
    return label_map.astype(np.int8)


def complete(folder: Path, out: Path, scans: list[Scan], seg_file) -> int:
    """Write DIR/<case>.nii.gz for every done BraTS scan whose file is missing, from its
    `volumes/<key>_seg.nii.gz` (`seg_file(out, scan)`, None when the run wrote none); returns how
    many were written. The file keeps that label map's affine and header, as int8."""
    written = 0
    for scan in scans:
        target = case_file(folder, scan)
        if scan.kind != "brats" or target.exists():
            continue
        source = seg_file(out, scan)
        if source is None or not source.is_file():
            continue
        nib = require("nibabel", "nifti")
        image = nib.load(str(source))
        labels = np.asarray(image.dataobj)
        header = image.header.copy()
        header.set_data_dtype(np.int8)
        folder.mkdir(parents=True, exist_ok=True)
        converted = type(image)(as_submission(labels), image.affine, header)
        write_atomic(target, gzip.compress(converted.to_bytes(), mtime=0))
        written += 1
    return written
