"""The built-in sample dataset: synthetic brain MRI with tumours, in the Kaggle LGG layout.

`write_sample_dataset` writes, offline and deterministically from a seed,

    ROOT/SAMPLE_P001_<date>/SAMPLE_P001_<date>_<N>.tif       RGB uint8: pre-contrast T1, FLAIR,
    ROOT/SAMPLE_P001_<date>/SAMPLE_P001_<date>_<N>_mask.tif  post-contrast T1; mask uint8 {0, 255}
    ROOT/sample_info.json                                      spec, generator version, anatomy

with N = 1..slices numbered from inferior to superior, as the `kaggle_3m` reader expects.

The head (pose, contrasts, bias field, noise) comes from `brainseg.data.phantom`. Its anatomy is
real: the ICBM152 2009a template that the `nilearn` package ships, read from disk and never
fetched, chosen over a procedural phantom of ellipses because real gyri, ventricles and brain
outline make a model learn MRI-like structure (`brainseg.data.phantom` says more).

This module adds the tumour. Every patient has one lobulated 3D tumour (a sum of Gaussian lobes
with a noisy surface, main-lobe sigma 6.5-22 mm) in the parenchyma of either hemisphere, spanning
several consecutive slices; about 60% of all slices are tumour-free. It pushes the tissue around
it aside, is dark on pre-contrast T1 and bright on FLAIR with varying strength, and may carry
oedema (bright on FLAIR but outside the mask), a cystic core and a patchy enhancing rim on
post-contrast T1.

`cached_sample_dataset` keeps one copy per spec under `$BRAINSEG_CACHE` (default
`~/.cache/brainseg`), so repeated training runs do not regenerate it.
"""

from __future__ import annotations

import datetime
import functools
import importlib.metadata
import json
import os
import shutil
import uuid
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TypeVar

import cv2
import numpy as np

from brainseg.data.phantom import (
    ANATOMY_SOURCE,
    Pose,
    Template,
    acquire,
    base_contrasts,
    correlation_cells,
    elastic_warp,
    load_template,
    mass_effect,
    random_pose,
    smooth_noise,
    soft_step,
    template_points,
)
from brainseg.errors import ConfigError, DataError

VERSION = 1  # bump whenever the same spec would produce different files
INFO_FILE = "sample_info.json"
CHANNELS = ("t1_pre_contrast", "flair", "t1_post_contrast")
_FIRST_STUDY_DATE = datetime.date(2026, 1, 1)
TUMOUR_THRESHOLD = 0.5  # level of the tumour field that bounds the mask
T = TypeVar("T")


@dataclass(frozen=True)
class SampleSpec:
    """What to generate: `patients` stacks of `slices` axial slices of `size` x `size` pixels."""

    patients: int = 32
    slices: int = 16
    size: int = 256
    seed: int = 0

    def __post_init__(self) -> None:
        limits = {"patients": (1, 10_000), "slices": (2, 500), "size": (32, 2048)}
        for name, (low, high) in limits.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ConfigError(f"sample {name} must be an integer in [{low}, {high}], got {value!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError(f"sample seed must be a non-negative integer, got {self.seed!r}")

    @property
    def cache_name(self) -> str:
        return f"sample-v{VERSION}-{self.patients}x{self.slices}-{self.size}-seed{self.seed}"


def write_sample_dataset(out: str | Path, spec: SampleSpec = SampleSpec(), *, progress: bool = False) -> Path:
    """Write the sample dataset in the `kaggle_3m` layout into `out` and return `out`.

    The files go into a hidden sibling folder first, which is renamed to `out` only once complete,
    so an interrupted run never leaves a folder that looks finished.

    Raises:
        DataError: `out` exists and is not an empty folder, or a file cannot be written.
        BrainsegError: nilearn or nibabel (the `sample` extra) is not installed.
    """
    out = Path(out)
    _require_empty_or_absent(out)
    partial = out.parent / f".{out.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        partial.mkdir(parents=True)
    except OSError as exc:
        raise DataError(f"cannot create a folder next to {out}: {exc}") from exc
    try:
        _write_patients(partial, spec, progress=progress)
        _move_into_place(partial, out)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return out


def cached_sample_dataset(spec: SampleSpec = SampleSpec(), *, cache_dir: str | Path | None = None) -> Path:
    """The sample dataset for `spec` under `cache_dir`, generated on first use.

    `cache_dir` defaults to `$BRAINSEG_CACHE`, else `~/.cache/brainseg`. Safe when several
    processes ask at once: each generates into its own temporary folder, the first rename wins and
    the others use its result.
    """
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = root / spec.cache_name
    if is_sample_dataset(target):
        return target
    try:
        return write_sample_dataset(target, spec)
    except DataError:
        if is_sample_dataset(target):  # another process finished first
            return target
        raise


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


# ---------------------------------------------------------------------------------------------
# Tumour


@dataclass(frozen=True)
class TumourParams:
    """One tumour: a sum of Gaussian lobes (template mm) plus how it looks on each contrast."""

    centres: np.ndarray  # (K, 3) lobe centres; [0] is the main lobe
    sigmas: np.ndarray  # (K,) mm
    amplitudes: np.ndarray  # (K,)
    lobulation: float  # relative amplitude of the noise that roughens the surface
    oedema: float  # 0 = none; up to 1 = the full oedema brightness on FLAIR next to the tumour
    oedema_reach: float  # field level (< TUMOUR_THRESHOLD) where the oedema fades out
    cyst: bool
    enhancing: float  # 0 = no enhancement on post-contrast T1
    push: float  # mass-effect strength
    flair: float  # tumour FLAIR level (grey matter is about 0.62)
    t1: float  # tumour pre-contrast T1 level (grey matter is about 0.65)

    def summary(self) -> dict:
        return {
            "centre_mm": [round(float(v), 1) for v in self.centres[0]],
            "hemisphere": "left" if self.centres[0][0] < 0 else "right",
            "sigma_mm": round(float(self.sigmas[0]), 1),
            "lobes": len(self.sigmas),
            "oedema": round(self.oedema, 2),
            "cyst": self.cyst,
            "enhancing": round(self.enhancing, 2),
            "flair": round(self.flair, 2),
        }


def random_tumour(rng: np.random.Generator, centre: np.ndarray) -> TumourParams:
    """Size from small to large (main-lobe sigma 6.5-22 mm), 2-5 extra lobes, varied appearance."""
    sigma = float(np.exp(rng.uniform(np.log(6.5), np.log(22.0))))
    lobes = int(rng.integers(2, 6))
    directions = rng.standard_normal((lobes, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    offsets = directions * sigma * rng.uniform(0.8, 1.6, (lobes, 1))
    return TumourParams(
        centres=np.vstack([centre, centre + offsets]),
        sigmas=sigma * np.concatenate([[1.0], rng.uniform(0.35, 0.75, lobes)]),
        amplitudes=np.concatenate([[1.0], rng.uniform(0.5, 1.0, lobes)]),
        lobulation=rng.uniform(0.15, 0.4),
        oedema=rng.uniform(0.6, 1.0) if rng.random() < 0.7 else 0.0,
        oedema_reach=TUMOUR_THRESHOLD * rng.uniform(0.06, 0.4),
        cyst=bool(rng.random() < 0.35) and sigma >= 10.0,  # small low-grade tumours are rarely cystic
        enhancing=rng.uniform(0.5, 1.0) if rng.random() < 0.4 else 0.0,
        push=rng.uniform(0.0, 0.25),
        flair=rng.uniform(0.8, 1.15),
        t1=rng.uniform(0.4, 0.55),
    )


@dataclass
class TumourMaps:
    """Per-voxel weights in [0, 1], each (S, H, W), and the binary mask."""

    mask: np.ndarray  # bool
    solid: np.ndarray  # tumour tissue, partial volume at the border
    oedema: np.ndarray  # outside the mask
    core: np.ndarray  # cystic or necrotic core, inside the mask
    rim: np.ndarray  # enhancing rim, inside the mask


def tumour_field(params: TumourParams, points: np.ndarray, roughness: np.ndarray) -> np.ndarray:
    """(S, H, W) float32 field: above TUMOUR_THRESHOLD is tumour. `points` (3, S, H, W) mm."""
    field = np.zeros(points.shape[1:], np.float32)
    for centre, sigma, amplitude in zip(params.centres, params.sigmas, params.amplitudes, strict=True):
        offset = points - centre.astype(np.float32)[:, None, None, None]
        r2 = np.einsum("c...,c...->...", offset, offset)
        field += np.float32(amplitude) * np.exp(r2 / np.float32(-2 * sigma**2))
    return field * np.clip(1 + params.lobulation * roughness, 0, None)


def tumour_maps(
    rng: np.random.Generator, params: TumourParams, field: np.ndarray, tissue: np.ndarray, pose: Pose
) -> TumourMaps:
    """Turn the field into mask and appearance weights; the tumour stays in the parenchyma."""
    gm, wm, brain = tissue[..., 1], tissue[..., 2], tissue[..., 3]
    parenchyma = np.minimum(gm + wm, brain)  # GM/WM maps reach a little past the skull-stripped brain
    mask = (field > TUMOUR_THRESHOLD) & (parenchyma > 0.3)
    solid = soft_step(field, TUMOUR_THRESHOLD, 0.08) * soft_step(parenchyma, 0.3, 0.2)
    shape = field.shape
    reach = np.clip((field - params.oedema_reach) / (TUMOUR_THRESHOLD - params.oedema_reach), 0, 1)
    fingers = np.clip(1 + 0.5 * smooth_noise(rng, shape, correlation_cells(pose, 6.0)), 0, None)
    wm_share = wm / np.maximum(parenchyma, 1e-3)
    oedema = params.oedema * reach**0.7 * fingers * (0.3 + 0.7 * wm_share) * np.clip(parenchyma, 0, 1)
    oedema = np.clip(oedema, 0, 1) * (1 - solid)
    core = np.zeros(shape, np.float32)
    top = float(field[mask].max()) if mask.any() else TUMOUR_THRESHOLD
    if params.cyst:
        level = TUMOUR_THRESHOLD + (top - TUMOUR_THRESHOLD) * rng.uniform(0.45, 0.7)
        core = soft_step(field, level, 0.06) * solid
    rim = np.zeros(shape, np.float32)
    if params.enhancing:
        width = rng.uniform(0.06, 0.14)
        band = np.exp(-(((field - TUMOUR_THRESHOLD - width) / width) ** 2))
        if params.cyst:
            band = np.maximum(band, np.exp(-(((field - level) / width) ** 2)))
        patches = np.clip(0.6 + 0.8 * smooth_noise(rng, shape, correlation_cells(pose, 8.0)), 0, 1)
        rim = params.enhancing * band * patches * solid
    return TumourMaps(mask=mask, solid=solid, oedema=oedema, core=core, rim=rim)


def add_tumour(
    rng: np.random.Generator, images: np.ndarray, maps: TumourMaps, params: TumourParams, pose: Pose
) -> None:
    """Paint oedema, tumour, cystic core and enhancing rim into `images` (S, H, W, 3), in place."""
    t1, flair, post = (images[..., c] for c in range(3))
    texture = 1 + rng.uniform(0.02, 0.06) * smooth_noise(rng, t1.shape, correlation_cells(pose, 4.0))
    oedema = maps.oedema
    t1 *= 1 - 0.15 * oedema
    post *= 1 - 0.15 * oedema
    flair += oedema * (params.flair * rng.uniform(0.8, 1.05) - flair)
    for channel, level in ((t1, params.t1), (flair, params.flair), (post, params.t1 + 0.03)):
        channel += maps.solid * (level * texture - channel)
    cyst_flair = rng.uniform(0.3, 0.7)
    for channel, level in ((t1, 0.22), (flair, cyst_flair), (post, 0.22)):
        channel += maps.core * (level - channel)
    post += maps.rim * (rng.uniform(1.0, 1.2) - post)


# ---------------------------------------------------------------------------------------------
# One patient


@dataclass(frozen=True)
class SyntheticPatient:
    """One patient's slab, slice 0 inferior."""

    image: np.ndarray  # (S, H, W, 3) uint8 RGB: pre-contrast T1, FLAIR, post-contrast T1
    mask: np.ndarray  # (S, H, W) uint8 in {0, 255}
    tumour: TumourParams
    pose: Pose


def synthesize_patient(
    rng: np.random.Generator, slices: int, size: int, template: Template | None = None
) -> SyntheticPatient:
    """A random patient with a tumour on at least min(2, slices) slices."""
    template = template if template is not None else load_template()
    for _ in range(50):
        centre = _pick_centre(rng, template)
        params = random_tumour(rng, centre)
        pose = random_pose(rng, centre, slices, size)
        points = template_points(pose, slices, size)
        elastic_warp(rng, points, pose, rng.uniform(1.5, 4.0))
        roughness = smooth_noise(rng, points.shape[1:], correlation_cells(pose, max(3.0, 0.6 * params.sigmas[0])))
        field = tumour_field(params, points, roughness)
        tissue = template.sample(mass_effect(points, centre, params.sigmas[0], params.push))
        maps = tumour_maps(rng, params, field, tissue, pose)
        if maps.mask.any(axis=(1, 2)).sum() >= min(2, slices):
            break
    else:
        raise DataError(f"could not place a tumour in {slices} slices of {size}x{size}; use more slices")
    images = base_contrasts(rng, tissue, pose)
    add_tumour(rng, images, maps, params, pose)
    image = acquire(rng, images, tissue[..., 3], pose)
    return SyntheticPatient(image=image, mask=maps.mask.astype(np.uint8) * 255, tumour=params, pose=pose)


def _pick_centre(rng: np.random.Generator, template: Template) -> np.ndarray:
    """A tumour centre in a random hemisphere."""
    left = rng.random() < 0.5
    pool = template.centres[(template.centres[:, 0] < 0) == left]
    return pool[rng.integers(len(pool))].astype(np.float64)


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
        "generator": "brainseg.data.sample",
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
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _write_patient(root: Path, spec: SampleSpec, template: Template, index: int) -> dict:
    """Synthesise and write patient `index`; return its entry for the info file."""
    rng = np.random.default_rng([spec.seed, index])
    name = patient_name(index, rng)
    patient = synthesize_patient(rng, spec.slices, spec.size, template)
    _write_slices(root / name, name, patient.image, patient.mask)
    tumour_slices = np.flatnonzero(patient.mask.any(axis=(1, 2))) + 1
    return {"folder": name, "tumour_slices": tumour_slices.tolist(), **patient.tumour.summary()}


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
    """`items`, under a rich progress bar when asked for and rich is installed."""
    if enabled:
        try:
            from rich.progress import track
        except ImportError:
            pass
        else:
            yield from track(items, total=total, description="Writing sample patients")
            return
    yield from items
