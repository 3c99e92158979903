"""The built-in sample dataset: synthetic brain MRI with tumours, in the Kaggle LGG layout.

`write_sample_dataset` writes, offline and deterministically from a seed,

    ROOT/SAMPLE_P001_<date>/SAMPLE_P001_<date>_<N>.tif       RGB uint8: pre-contrast T1, FLAIR,
    ROOT/SAMPLE_P001_<date>/SAMPLE_P001_<date>_<N>_mask.tif  post-contrast T1; mask uint8 {0, 255}
    ROOT/sample_info.json                                      spec, generator version, anatomy

with N = 1..slices numbered from inferior to superior, as the `kaggle_3m` reader expects.

The head (pose, contrasts, bias field, noise) comes from `brainseg.data.synthetic.phantom`. Its anatomy is
real: the ICBM152 2009a template that the `nilearn` package ships, read from disk and never
fetched, chosen over a procedural phantom of ellipses because real gyri, ventricles and brain
outline make a model learn MRI-like structure (`brainseg.data.synthetic.phantom` says more).

The tumour (one per patient, lobulated, spanning several consecutive slices; about 60% of all
slices are tumour-free) comes from `brainseg.data.synthetic.tumour`; this module writes patients to disk.

`cached_sample_dataset` keeps one copy per spec under `$BRAINSEG_CACHE` (default
`~/.cache/brainseg`), so repeated training runs do not regenerate it.
"""

from __future__ import annotations

import datetime
import functools
import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TypeVar

import cv2
import numpy as np

from brainseg.data.synthetic.phantom import (
    ANATOMY_SOURCE,
    Template,
    load_template,
)
from brainseg.data.synthetic.tumour import synthesize_patient
from brainseg.errors import ConfigError, DataError
from brainseg.machine import package_version

VERSION = 2  # bump whenever the same spec would produce different files
INFO_FILE = "sample_info.json"
CHANNELS = ("t1_pre_contrast", "flair", "t1_post_contrast")
_FIRST_STUDY_DATE = datetime.date(2026, 1, 1)
T = TypeVar("T")


@dataclass(frozen=True)
class SampleSpec:
    """What to generate: `patients` stacks of `slices` axial slices of `size` x `size` pixels."""

    patients: int = 32
    slices: int = 16
    size: int = 256
    seed: int = 0

    def __post_init__(self) -> None:
        check_spec(self, "sample", {"patients": (1, 10_000), "slices": (2, 500), "size": (32, 2048)})

    @property
    def cache_name(self) -> str:
        return f"sample-v{VERSION}-{self.patients}x{self.slices}-{self.size}-seed{self.seed}"


def check_spec(spec, what: str, limits: dict[str, tuple[int, int]]) -> None:
    """Raise ConfigError unless each of `limits` names an integer field of `spec` within its range
    and `spec.seed` is a non-negative integer; `what` names the spec in the message."""
    for name, (low, high) in limits.items():
        value = getattr(spec, name)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ConfigError(f"{what} {name} must be an integer in [{low}, {high}], got {value!r}")
    if isinstance(spec.seed, bool) or not isinstance(spec.seed, int) or spec.seed < 0:
        raise ConfigError(f"{what} seed must be a non-negative integer, got {spec.seed!r}")


def write_sample_dataset(out: str | Path, spec: SampleSpec = SampleSpec(), *, progress: bool = False) -> Path:
    """Write the sample dataset in the `kaggle_3m` layout into `out` and return `out`.

    The files go into a hidden sibling folder first, which is renamed to `out` only once complete,
    so an interrupted run never leaves a folder that looks finished.

    Raises:
        DataError: `out` exists and is not an empty folder, or a file cannot be written.
        BrainsegError: nilearn or nibabel (the `sample` extra) is not installed.
    """
    return write_staged(out, lambda folder: _write_patients(folder, spec, progress=progress))


def write_staged(out: str | Path, write: Callable[[Path], None]) -> Path:
    """Run `write(folder)` on a hidden sibling of `out` and rename it to `out` once complete, so an
    interrupted run never leaves a folder that looks finished; returns `out`.

    Raises DataError when `out` exists and is not an empty folder, or the sibling cannot be made.
    """
    out = Path(out)
    _require_empty_or_absent(out)
    partial = out.parent / f".{out.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        partial.mkdir(parents=True)
    except OSError as exc:
        raise DataError(f"cannot create a folder next to {out}: {exc}") from exc
    try:
        write(partial)
        _move_into_place(partial, out)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return out


def cached(target: Path, write: Callable[[Path], Path]) -> Path:
    """`target` if a complete sample is there, else `write(target)`; when another process wins the
    race to write it, its result is used."""
    if is_sample_dataset(target):
        return target
    try:
        return write(target)
    except DataError:
        if is_sample_dataset(target):  # another process finished first
            return target
        raise


def cached_sample_dataset(spec: SampleSpec = SampleSpec(), *, cache_dir: str | Path | None = None) -> Path:
    """The sample dataset for `spec` under `cache_dir`, generated on first use.

    `cache_dir` defaults to `$BRAINSEG_CACHE`, else `~/.cache/brainseg`. Safe when several
    processes ask at once: each generates into its own temporary folder, the first rename wins and
    the others use its result.
    """
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return cached(root / spec.cache_name, lambda target: write_sample_dataset(target, spec))


def default_cache_dir() -> Path:
    """`$BRAINSEG_CACHE` if set, else `~/.cache/brainseg`."""
    return Path(os.environ.get("BRAINSEG_CACHE") or Path.home() / ".cache" / "brainseg")


def is_sample_dataset(folder: Path) -> bool:
    """Whether `folder` is a complete sample dataset (only complete ones carry the info file)."""
    return (Path(folder) / INFO_FILE).is_file()


def patient_name(index: int, rng: np.random.Generator) -> str:
    """`SAMPLE_P001_20260314`: a 1-based number and a random study date, like Kaggle's folders."""
    date = _FIRST_STUDY_DATE + datetime.timedelta(days=int(rng.integers(0, 365)))
    return f"SAMPLE_P{index + 1:03d}_{date:%Y%m%d}"


def _require_empty_or_absent(out: Path) -> None:
    if not out.exists():
        return
    if not out.is_dir():
        raise DataError(f"{out} exists and is not a folder; choose another output path")
    if any(out.iterdir()):
        raise DataError(f"{out} is not empty; choose a new folder or remove this one first")


def _move_into_place(partial: Path, out: Path) -> None:
    try:
        if out.is_dir():
            out.rmdir()  # an empty folder that was there before (Windows cannot rename onto it)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise DataError(f"{out} was filled while the sample dataset was being written: {exc}") from exc
    try:
        partial.rename(out)
    except OSError as exc:
        raise DataError(f"{out} appeared while the sample dataset was being written: {exc}") from exc


def _write_patients(root: Path, spec: SampleSpec, *, progress: bool) -> None:
    """All patient folders, then the info file. Patients are independent (each has its own
    random stream), so threads write them in parallel without changing a byte."""
    write_one = functools.partial(_write_patient, root, spec, load_template())
    executor = ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1, spec.patients))
    try:
        results = executor.map(write_one, range(spec.patients))
        patients = list(_maybe_track(results, spec.patients, enabled=progress))
    finally:
        executor.shutdown(wait=True, cancel_futures=True)
    info = {
        "generator": "brainseg.data.synthetic.sample",
        "version": VERSION,
        "spec": asdict(spec),
        "layout": "kaggle_3m",
        "channels": list(CHANNELS),
        "slice_order": "N = 1 is the most inferior slice",
        "anatomy": ANATOMY_SOURCE,
        "anatomy_package": f"nilearn {_installed_version('nilearn')}",
        "tumour_slice_fraction": round(
            sum(len(p["tumour_slices"]) for p in patients) / (spec.patients * spec.slices), 3
        ),
        "patients": patients,
    }
    (root / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")


def _installed_version(package: str) -> str:
    return package_version(package) or "unknown"


def _write_patient(root: Path, spec: SampleSpec, template: Template, index: int) -> dict:
    """Synthesise and write patient `index`; return its entry for the info file."""
    rng = np.random.default_rng([spec.seed, index])
    name = patient_name(index, rng)
    patient = synthesize_patient(rng, spec.slices, spec.size, template)
    _write_slices(root / name, name, patient.image, patient.mask)
    tumour_slices = np.flatnonzero(patient.mask.any(axis=(1, 2))) + 1
    return {"folder": name, "tumour_slices": tumour_slices.tolist(), **patient.tumour.summary(),
            "scanner": patient.scanner.summary()}


def _write_slices(folder: Path, name: str, image: np.ndarray, mask: np.ndarray) -> None:
    """(S, H, W, 3) RGB and (S, H, W) masks -> `<name>_<N>.tif` and `<name>_<N>_mask.tif`."""
    folder.mkdir()
    for n, (rgb, mask_slice) in enumerate(zip(image, mask, strict=True), start=1):
        _imwrite(folder / f"{name}_{n}.tif", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        _imwrite(folder / f"{name}_{n}_mask.tif", mask_slice)


def _imwrite(path: Path, pixels: np.ndarray) -> None:
    if not cv2.imwrite(str(path), pixels):
        raise DataError(f"OpenCV could not write {path}; check the disk and the folder's permissions")


def _maybe_track(items: Iterable[T], total: int, *, enabled: bool) -> Iterator[T]:
    """`items`, under a rich progress bar when asked for."""
    if enabled:
        from rich.progress import track

        yield from track(items, total=total, description="Writing sample patients")
        return
    yield from items
