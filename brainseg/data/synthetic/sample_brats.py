"""The built-in sample in the BraTS layout: NIfTI volumes with necrosis, oedema and enhancing tumour.

`write_brats_sample` writes, offline and deterministically from a seed, in the BraTS 2021 convention

    ROOT/SAMPLE_BRATS_001/SAMPLE_BRATS_001_{t1,t1ce,t2,flair}.nii.gz   float32, scanner units
    ROOT/SAMPLE_BRATS_001/SAMPLE_BRATS_001_seg.nii.gz                  uint8 labels 0, 1, 2, 4
    ROOT/sample_info.json                                              spec, version, per-case facts

or, with `BratsSampleSpec(year=2023)`, in the BraTS 2023 one (the same voxels, enhancing tumour 3)

    ROOT/BraTS-GLI-00001-000/BraTS-GLI-00001-000-{t1n,t1c,t2w,t2f}.nii.gz
    ROOT/BraTS-GLI-00001-000/BraTS-GLI-00001-000-seg.nii.gz            uint8 labels 0, 1, 2, 3

which `read_dataset(ROOT)` detects as the `brats` layout, and reads with either year's modality
names. The cases come from `brainseg.data.synthetic.brats_phantom`. Their affines are those of a
scanner, not the identity: voxels of `size` x `size` over a 200 mm field of view, slices spread
over 80-110 mm (at most 6 mm apart), an origin away from the grid's centre, and the voxel axes
stored as LPS, RAS or LAS in turn (case 1, 2, 3, ...), so that the reader's reorientation is
exercised.

`cached_brats_sample` keeps one copy per spec in the same cache as `cached_sample_dataset`.
`write_sample` is `seg-sample`: either layout, with that layout's defaults.
"""

from __future__ import annotations

import functools
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from brainseg.data.names import BRATS_LABEL, sequence_names
from brainseg.data.synthetic.brats_phantom import ENHANCING, MODALITIES, NECROSIS, OEDEMA, BratsCase, synthesize_case
from brainseg.data.synthetic.phantom import ANATOMY_SOURCE, Template, load_template
from brainseg.data.synthetic.sample import (
    INFO_FILE,
    SampleSpec,
    _installed_version,
    _maybe_track,
    cached,
    check_spec,
    default_cache_dir,
    write_sample_dataset,
    write_staged,
)
from brainseg.errors import ConfigError, DataError, require

VERSION = 2  # bump whenever the same spec would produce different files
SAMPLE_LAYOUTS = ("kaggle_3m", "brats")
ORIENTATIONS = ("LPS", "RAS", "LAS")  # voxel axis codes of case 1, 2, 3, then again
_RNG_STREAM = 2  # cases draw from their own stream, not the kaggle_3m patients' with the same seed


@dataclass(frozen=True)
class BratsConvention:
    """How one BraTS release names a case's folder and files, and which label enhancing tumour has."""

    case_format: str  # the folder of case `index`, formatted with `index + 1`
    separator: str  # between the case and the modality in a file name
    modalities: dict[str, str]  # the phantom's sequence (`MODALITIES`) -> its name this year
    enhancing: int

    def case_name(self, index: int) -> str:
        return self.case_format.format(index + 1)

    def file_name(self, case: str, modality: str) -> str:
        """`<case>_t1ce.nii.gz` (2021) or `<case>-t1c.nii.gz` (2023) for "t1ce"; "seg" keeps its name."""
        return f"{case}{self.separator}{self.modalities.get(modality, modality)}.nii.gz"


DEFAULT_YEAR = 2021
CONVENTIONS = {  # 2023 takes sequence_names(m)[1]: t1 -> t1n, t1ce -> t1c, t2 -> t2w, flair -> t2f
    2021: BratsConvention("SAMPLE_BRATS_{:03d}", "_", {m: m for m in MODALITIES}, ENHANCING),
    2023: BratsConvention("BraTS-GLI-{:05d}-000", "-", {m: sequence_names(m)[1] for m in MODALITIES}, 3),
}


@dataclass(frozen=True)
class BratsSampleSpec:
    """What to generate: `cases` volumes of `slices` axial slices of `size` x `size` voxels, named
    and labelled as BraTS `year` (2021 or 2023, `CONVENTIONS`) does; the year changes no voxel.

    The defaults (24 cases of 24 x 128 x 128) give 576 slices, about the 512 of the kaggle_3m
    sample, at the quick preset's 128 x 128 training size: a quick run costs about the same, and
    24 cases still split into 16-18 training and 3-4 validation and test cases.
    """

    cases: int = 24
    slices: int = 24
    size: int = 128
    seed: int = 0
    year: int = DEFAULT_YEAR

    def __post_init__(self) -> None:
        check_spec(self, "BraTS sample", {"cases": (1, 10_000), "slices": (2, 500), "size": (32, 2048)})
        if isinstance(self.year, bool) or not isinstance(self.year, int) or self.year not in CONVENTIONS:
            raise ConfigError(
                f"BraTS sample year must be one of {', '.join(map(str, CONVENTIONS))}, got {self.year!r}"
            )

    @property
    def convention(self) -> BratsConvention:
        return CONVENTIONS[self.year]

    @property
    def cache_name(self) -> str:
        year = "" if self.year == DEFAULT_YEAR else f"-{self.year}"  # 2021 keeps the name it had before years
        return f"sample-brats{year}-v{VERSION}-{self.cases}x{self.slices}-{self.size}-seed{self.seed}"


def case_name(index: int, year: int = DEFAULT_YEAR) -> str:
    """`SAMPLE_BRATS_001` (2021) or `BraTS-GLI-00001-000` (2023) for case 0."""
    return CONVENTIONS[year].case_name(index)


def generate_case(spec: BratsSampleSpec, index: int, template: Template | None = None) -> BratsCase:
    """Case `index` of `spec` in memory, exactly as `write_brats_sample` writes it."""
    rng = np.random.default_rng([spec.seed, index, _RNG_STREAM])
    return synthesize_case(rng, spec.slices, spec.size, template if template is not None else load_template())


def write_brats_sample(out: str | Path, spec: BratsSampleSpec = BratsSampleSpec(), *, progress: bool = False) -> Path:
    """Write the BraTS-layout sample into `out` and return `out`.

    The files go into a hidden sibling folder first, which is renamed to `out` only once complete.

    Raises:
        DataError: `out` exists and is not an empty folder, or a file cannot be written.
        BrainsegError: nilearn or nibabel (the `sample` extra) is not installed.
    """
    nib = require("nibabel", "sample")
    return write_staged(out, lambda folder: _write_cases(folder, spec, nib, progress=progress))


def cached_brats_sample(spec: BratsSampleSpec = BratsSampleSpec(), *, cache_dir: str | Path | None = None) -> Path:
    """The BraTS sample for `spec` under `cache_dir` (default: `default_cache_dir()`), generated on
    first use; safe when several processes ask at once, as `cached_sample_dataset` is."""
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return cached(root / spec.cache_name, lambda target: write_brats_sample(target, spec))


def write_sample(
    out: str | Path, layout: str = "kaggle_3m", *, patients: int | None = None, slices: int | None = None,
    size: int | None = None, seed: int = 0, brats_year: int | None = None, progress: bool = False,
) -> Path:
    """`seg-sample`: the built-in sample in `layout` ("kaggle_3m" or "brats"); None takes the
    layout's default (`SampleSpec`, `BratsSampleSpec`). `brats_year` (2021 or 2023) names and
    labels the brats layout's files as that BraTS release does; it has no meaning for kaggle_3m."""
    if layout not in SAMPLE_LAYOUTS:
        raise ConfigError(f"unknown sample layout {layout!r}; valid layouts: {', '.join(SAMPLE_LAYOUTS)}")
    if brats_year is not None and layout != "brats":
        raise ConfigError(f"a BraTS year ({brats_year}) applies to the brats layout only, not {layout}; "
                          "ask for the brats layout or leave the year out")
    sizes = {key: value for key, value in (("slices", slices), ("size", size)) if value is not None}
    count = "cases" if layout == "brats" else "patients"
    if patients is not None:
        sizes[count] = patients
    if layout == "brats":
        year = {"year": brats_year} if brats_year is not None else {}
        return write_brats_sample(out, BratsSampleSpec(seed=seed, **sizes, **year), progress=progress)
    return write_sample_dataset(out, SampleSpec(seed=seed, **sizes), progress=progress)


def _write_cases(root: Path, spec: BratsSampleSpec, nib, *, progress: bool) -> None:
    """All case folders, then the info file; cases are independent, so threads write them."""
    write_one = functools.partial(_write_case, root, spec, load_template(), nib)
    executor = ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1, spec.cases))
    try:
        results = executor.map(write_one, range(spec.cases))
        cases = list(_maybe_track(results, spec.cases, enabled=progress))
    finally:
        executor.shutdown(wait=True, cancel_futures=True)
    recorded = asdict(spec)
    if spec.year == DEFAULT_YEAR:
        del recorded["year"]  # the 2021 info file stays byte for byte what it was before years, when all were 2021
    info = {
        "generator": "brainseg.data.synthetic.sample_brats",
        "version": VERSION,
        "spec": recorded,
        "layout": "brats",
        "modalities": [spec.convention.modalities[m] for m in MODALITIES],
        "labels": {str(NECROSIS): "necrotic / non-enhancing core", str(OEDEMA): "oedema",
                   str(spec.convention.enhancing): "enhancing tumour"},
        "units": "float32 scanner units, gain per case and sequence; 0 outside the brain",
        "anatomy": ANATOMY_SOURCE,
        "anatomy_package": f"nilearn {_installed_version('nilearn')}",
        "cases": cases,
    }
    (root / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")


def _write_case(root: Path, spec: BratsSampleSpec, template: Template, nib, index: int) -> dict:
    """Synthesise and write case `index`; return its entry for the info file."""
    case = generate_case(spec, index, template)
    name = spec.convention.case_name(index)
    folder = root / name
    folder.mkdir()
    orientation = ORIENTATIONS[index % len(ORIENTATIONS)]
    rng = np.random.default_rng([spec.seed, index, _RNG_STREAM, 1])
    centre = np.array([rng.normal(0, 5), rng.normal(15, 10), rng.normal(20, 15)])  # table position, mm
    seg = case.seg.copy()
    seg[case.seg == ENHANCING] = spec.convention.enhancing
    volumes = {**case.images, BRATS_LABEL: seg}
    for modality, volume in volumes.items():
        data, affine = to_nifti(volume, case.pose.pixel_mm, case.pose.spacing_mm, centre, orientation)
        image = nib.Nifti1Image(data, affine)
        image.set_qform(affine, code=1)  # scanner coordinates
        image.set_sform(affine, code=1)
        image.header.set_xyzt_units("mm")
        path = folder / spec.convention.file_name(name, modality)
        try:
            nib.save(image, path)
        except OSError as exc:
            raise DataError(f"could not write {path}: {exc}; check the disk and the folder's permissions") from exc
    voxel_ml = case.pose.pixel_mm**2 * case.pose.spacing_mm / 1000
    counts = np.bincount(case.seg.ravel(), minlength=ENHANCING + 1)
    return {
        "folder": name,
        "orientation": orientation,
        "voxel_mm": [round(case.pose.pixel_mm, 4), round(case.pose.pixel_mm, 4), round(case.pose.spacing_mm, 4)],
        "centre_mm": [round(float(v), 1) for v in case.tumour.centres[0]],
        "sigma_mm": round(float(case.tumour.sigmas[0]), 1),
        "volume_ml": {label: round(float(counts[value] * voxel_ml), 2)
                      for label, value in (("necrosis", NECROSIS), ("oedema", OEDEMA), ("enhancing", ENHANCING))},
        "scanner": {key: value for key, value in case.scanner.summary().items() if key in _FLOAT_PROFILE},
    }


_FLOAT_PROFILE = ("curve", "curve_value", "bias", "noise")  # no window or gains: NIfTI units do not saturate


def to_nifti(
    volume: np.ndarray, pixel_mm: float, spacing_mm: float, centre_mm: np.ndarray, orientation: str
) -> tuple[np.ndarray, np.ndarray]:
    """(S, H, W) axial slices (slice 0 inferior, row 0 anterior, column 0 left) -> NIfTI (X, Y, Z)
    data stored with voxel axes `orientation` (e.g. "LPS") and its affine, centred on `centre_mm`."""
    data = np.ascontiguousarray(volume.transpose(2, 1, 0)[:, ::-1])  # RAS: (left->right, post->ant, inf->sup)
    affine = np.diag([pixel_mm, pixel_mm, spacing_mm, 1.0])
    affine[:3, 3] = centre_mm - affine[:3, :3] @ ((np.array(data.shape) - 1) / 2)
    for axis, (code, ras) in enumerate(zip(orientation, "RAS", strict=True)):
        if code != ras:
            affine[:3, 3] += affine[:3, axis] * (data.shape[axis] - 1)
            affine[:3, axis] *= -1
            data = np.flip(data, axis)
    return np.ascontiguousarray(data), affine
