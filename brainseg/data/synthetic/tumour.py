"""The tumour of the built-in sample: shape, placement and how it looks on each contrast.

Every patient has one lobulated 3D tumour (a sum of Gaussian lobes with a noisy surface,
main-lobe sigma 6.5-22 mm) in the parenchyma of either hemisphere, spanning several consecutive
slices. It pushes the tissue around it aside, is dark on pre-contrast T1 and bright on FLAIR
with varying strength, and may carry oedema (bright on FLAIR but outside the mask), a cystic core
and a patchy enhancing rim on post-contrast T1. `synthesize_patient` puts it into a head from
`brainseg.data.synthetic.phantom`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from brainseg.data.synthetic.phantom import (
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
from brainseg.data.synthetic.scanner import ScannerProfile
from brainseg.errors import DataError

TUMOUR_THRESHOLD = 0.5  # level of the tumour field that bounds the mask


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
    scanner: ScannerProfile


@dataclass(frozen=True)
class PlacedTumour:
    """A random head with a random tumour in it, before any contrast: what both samples start from."""

    params: TumourParams
    pose: Pose
    field: np.ndarray  # (S, H, W) tumour field (>= TUMOUR_THRESHOLD inside the tumour)
    tissue: np.ndarray  # (S, H, W, 4) T1, GM, WM, brain mask, pushed aside by the tumour


def place_tumour(rng: np.random.Generator, template: Template, slices: int, size: int) -> PlacedTumour:
    """Pose and warp a head, grow a tumour in a random hemisphere, and let it push the tissue aside."""
    centre = _pick_centre(rng, template)
    params = random_tumour(rng, centre)
    pose = random_pose(rng, centre, slices, size)
    points = template_points(pose, slices, size)
    elastic_warp(rng, points, pose, rng.uniform(1.5, 4.0))
    roughness = smooth_noise(rng, points.shape[1:], correlation_cells(pose, max(3.0, 0.6 * params.sigmas[0])))
    field = tumour_field(params, points, roughness)
    tissue = template.sample(mass_effect(points, centre, params.sigmas[0], params.push))
    return PlacedTumour(params, pose, field, tissue)


def synthesize_patient(
    rng: np.random.Generator, slices: int, size: int, template: Template | None = None
) -> SyntheticPatient:
    """A random patient with a tumour on at least min(2, slices) slices."""
    template = template if template is not None else load_template()
    for _ in range(50):
        placed = place_tumour(rng, template, slices, size)
        params, pose, field, tissue = placed.params, placed.pose, placed.field, placed.tissue
        maps = tumour_maps(rng, params, field, tissue, pose)
        if maps.mask.any(axis=(1, 2)).sum() >= min(2, slices):
            break
    else:
        raise DataError(f"could not place a tumour in {slices} slices of {size}x{size}; use more slices")
    images = base_contrasts(rng, tissue, pose)
    add_tumour(rng, images, maps, params, pose)
    image, scanner = acquire(rng, images, tissue[..., 3], pose)
    return SyntheticPatient(image=image, mask=maps.mask.astype(np.uint8) * 255, tumour=params, pose=pose,
                            scanner=scanner)


def _pick_centre(rng: np.random.Generator, template: Template) -> np.ndarray:
    """A tumour centre in a random hemisphere."""
    left = rng.random() < 0.5
    pool = template.centres[(template.centres[:, 0] < 0) == left]
    return pool[rng.integers(len(pool))].astype(np.float64)
