"""The healthy head and the scanner behind the sample dataset: anatomy, pose, contrasts, noise.

Anatomy source: the ICBM152 2009a nonlinear template (T1 plus grey- and white-matter probability
maps, 1 mm isotropic, skull-stripped) that the `nilearn` wheel ships inside the package, as
`nilearn/datasets/data/mni_icbm152_{t1,gm,wm}_tal_nlin_sym_09a_converted.nii.gz` (since nilearn
0.8.1). The files are read with nibabel straight from the installed package directory, found with
`importlib.util.find_spec`, so nothing is fetched and nilearn itself (with its pandas and
scikit-learn imports) is never imported. Real gyri, sulci, ventricles, deep grey nuclei and brain
outline were chosen over a procedural phantom of ellipses because a segmenter trained on them
learns MRI-like structure rather than the quirks of a drawing; the price is the `sample` extra
(nilearn, nibabel). The template is (C) 1993-2009 Louis Collins, McConnell Brain Imaging Centre,
Montreal Neurological Institute, McGill University, and may be used and redistributed with that
notice.

A patient's head is the template under a random pose (rotation, scale 0.9-1.1, shift) and a
smooth elastic warp, cut into a slab of consecutive axial slices (`random_pose`,
`template_points`, `elastic_warp`, `Template.sample`). Three contrasts are synthesised from the
tissue maps (`base_contrasts`), then a smooth multiplicative bias field, Rician noise, per-channel
gains and the patient's own window and contrast curve turn them into 8-bit slices (`acquire`, with
a profile from `brainseg.data.synthetic.scanner`). The tumour that goes into the head is
modelled in `brainseg.data.synthetic.sample`.
"""

from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from scipy import ndimage as ndi

from brainseg.data.synthetic.scanner import ScannerProfile, random_profile
from brainseg.errors import DataError, missing_extra, require

TEMPLATE_FILES = {
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}
ANATOMY_SOURCE = "ICBM152 2009a nonlinear template (T1, GM, WM maps) shipped in the nilearn package"

FOV_MM = 200.0  # nominal in-plane field of view of the output image
BRAIN_Z_MM = (-45.0, 76.0)  # axial extent worth imaging, template (MNI) z
BRAIN_CENTRE_MM = (0.0, -18.0)  # in-plane centre of the brain, template (MNI) x, y


@dataclass(frozen=True)
class Template:
    """The anatomy, laid out for fast trilinear sampling with `cv2.remap`.

    Attributes:
        atlas: (rows, cols, 4) uint8 with channels T1, GM, WM, brain mask; axial plane k of the
            (X, Y, Z) volume is the tile at (k // tiles_per_row, k % tiles_per_row), rows = y, cols = x.
        shape: the volume's (X, Y, Z) in voxels.
        tiles_per_row: tiles across the atlas.
        voxel_from_mm: (4, 4) inverse of the NIfTI affine.
        centres: (N, 3) template mm: deep-parenchyma points where a tumour may be centred.
    """

    atlas: np.ndarray
    shape: tuple[int, int, int]
    tiles_per_row: int
    voxel_from_mm: np.ndarray
    centres: np.ndarray

    def sample(self, points_mm: np.ndarray) -> np.ndarray:
        """(3, S, H, W) template mm -> (S, H, W, 4) float32 in [0, 1]: T1, GM, WM, brain."""
        nx, ny, nz = self.shape
        m = self.voxel_from_mm.astype(np.float32)
        px, py, pz = points_mm.astype(np.float32, copy=False)
        x = np.clip(m[0, 0] * px + m[0, 1] * py + m[0, 2] * pz + m[0, 3], 0, nx - 1)
        y = np.clip(m[1, 0] * px + m[1, 1] * py + m[1, 2] * pz + m[1, 3], 0, ny - 1)
        z = np.clip(m[2, 0] * px + m[2, 1] * py + m[2, 2] * pz + m[2, 3], 0, nz - 1.001)
        z0 = z.astype(np.int32)  # floor, as z >= 0
        frac = (z - z0)[..., None] * np.float32(1 / 255)
        planes = np.arange(nz + 1)
        tile_x = ((planes % self.tiles_per_row) * (nx + 1)).astype(np.float32)
        tile_y = ((planes // self.tiles_per_row) * (ny + 1)).astype(np.float32)
        width = z.shape[-1]
        below, above = (
            self._remap((tile_x[k] + x).reshape(-1, width), (tile_y[k] + y).reshape(-1, width)).reshape(*z.shape, 4)
            for k in (z0, z0 + 1)
        )
        below = below.astype(np.float32)
        return below * np.float32(1 / 255) + (above - below) * frac

    def _remap(self, map_x: np.ndarray, map_y: np.ndarray) -> np.ndarray:
        """cv2.remap of the atlas, in row blocks: OpenCV refuses maps of 32,767 rows or more."""
        rows = 16_384
        return np.concatenate([
            cv2.remap(self.atlas, map_x[i : i + rows], map_y[i : i + rows], cv2.INTER_LINEAR)
            for i in range(0, len(map_x), rows)
        ])


def template_dir() -> Path:
    """The folder inside the installed nilearn package that holds the ICBM152 files."""
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise missing_extra("nilearn", "sample")
    return Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"


@functools.lru_cache(maxsize=1)
def load_template() -> Template:
    """Read the ICBM152 T1/GM/WM volumes from the nilearn package (cached per process)."""
    nibabel = require("nibabel", "sample")
    folder = template_dir()
    volumes, affine = {}, None
    for name, file in TEMPLATE_FILES.items():
        path = folder / file
        if not path.is_file():
            raise DataError(
                f"{path} is missing: the installed nilearn does not ship the ICBM152 2009a "
                "template; upgrade it with: pip install -U 'nilearn>=0.10'"
            )
        image = nibabel.load(path)
        volumes[name] = np.asarray(image.dataobj).astype(np.uint8)
        if affine is not None and not np.allclose(affine, image.affine):
            raise DataError(f"{path} is not on the same grid as the other ICBM152 files")
        affine = image.affine
    brain = (volumes["t1"] > 0).astype(np.uint8) * 255
    stack = np.stack([volumes["t1"], volumes["gm"], volumes["wm"], brain], axis=-1)  # (X, Y, Z, 4)
    atlas, per_row = _tile_axial_planes(stack)
    return Template(
        atlas=atlas,
        shape=stack.shape[:3],
        tiles_per_row=per_row,
        voxel_from_mm=np.linalg.inv(affine),
        centres=_tumour_centres(volumes["gm"], volumes["wm"], brain, affine),
    )


def _tile_axial_planes(stack: np.ndarray) -> tuple[np.ndarray, int]:
    nx, ny, nz, channels = stack.shape
    per_row = int(np.ceil(np.sqrt(nz)))
    rows = int(np.ceil(nz / per_row))
    tile_h, tile_w = ny + 1, nx + 1  # one voxel of zero padding: no bleeding between tiles
    atlas = np.zeros((rows * tile_h, per_row * tile_w, channels), np.uint8)
    for k in range(nz):
        r, c = divmod(k, per_row)
        atlas[r * tile_h : r * tile_h + ny, c * tile_w : c * tile_w + nx] = stack[:, :, k].swapaxes(0, 1)
    return atlas, per_row


def _tumour_centres(gm, wm, brain, affine) -> np.ndarray:
    """Points (mm) at least 12 mm inside the brain, in parenchyma of the cerebrum, off the midline."""
    step = 2
    inside = brain[::step, ::step, ::step] > 0
    depth = ndi.distance_transform_edt(inside) * step * abs(affine[0, 0])
    parenchyma = (gm[::step, ::step, ::step].astype(np.int32) + wm[::step, ::step, ::step]) > 200
    idx = np.argwhere((depth > 12) & parenchyma) * step
    mm = idx @ affine[:3, :3].T + affine[:3, 3]
    x, y, z = mm.T
    keep = (np.abs(x) > 10) & (z > -20) & (z < 55) & ~((y < -45) & (z < 5))
    return mm[keep].astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Random fields


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int, int], cell: tuple[float, float]) -> np.ndarray:
    """(S, H, W) float32 noise with unit std, correlated over `cell` = (slices, pixels)."""
    s, h, w = shape
    cz = max(2, int(np.ceil(s / max(cell[0], 1e-3))) + 1)
    cy = max(2, int(np.ceil(h / max(cell[1], 1e-3))) + 1)
    cx = max(2, int(np.ceil(w / max(cell[1], 1e-3))) + 1)
    coarse = rng.standard_normal((cz, cy * cx)).astype(np.float32)
    along_z = cv2.resize(coarse, (cy * cx, s), interpolation=cv2.INTER_CUBIC).reshape(s, cy, cx)
    field = np.stack([cv2.resize(p, (w, h), interpolation=cv2.INTER_CUBIC) for p in along_z])
    field -= field.mean()
    return field / max(float(field.std()), 1e-6)


def soft_step(value: np.ndarray, edge: float, width: float) -> np.ndarray:
    """0 below `edge - width / 2`, 1 above `edge + width / 2`, linear between: partial volume."""
    return np.clip((value - edge) / width + 0.5, 0.0, 1.0)


# ---------------------------------------------------------------------------------------------
# Geometry


@dataclass(frozen=True)
class Pose:
    """Where the patient's image grid lies in the template: q = rotation @ p / scale + origin."""

    rotation: np.ndarray  # (3, 3)
    scale: float
    origin: np.ndarray  # (3,) template mm under the patient origin
    pixel_mm: float
    spacing_mm: float
    origin_slice: float  # slice index (fractional) through the patient origin


def correlation_cells(pose: Pose, mm: float) -> tuple[float, float]:
    """A correlation length in mm as (slices, pixels) for `smooth_noise`."""
    return mm / pose.spacing_mm, mm / pose.pixel_mm


def random_pose(rng: np.random.Generator, centre: np.ndarray, slices: int, size: int) -> Pose:
    """A random pose whose slab of `slices` axial slices passes through `centre` (template mm)."""
    scale = rng.uniform(0.9, 1.1)
    yaw, pitch, roll = np.deg2rad(rng.uniform(-10, 10)), *np.deg2rad(rng.uniform(-5, 5, 2))
    spacing = min(rng.uniform(80, 110) / max(slices - 1, 1), 6.0)
    span = max(spacing * (slices - 1), 1e-6)
    lo, hi = BRAIN_Z_MM
    u_lo = float(np.clip(max(0.15, (centre[2] + span - hi) / span), 0.0, 1.0))
    u_hi = float(np.clip(min(0.85, (centre[2] - lo) / span), 0.0, 1.0))
    u = rng.uniform(u_lo, u_hi) if u_lo < u_hi else 0.5 * (u_lo + u_hi)
    origin = np.array([BRAIN_CENTRE_MM[0] + rng.normal(0, 3), BRAIN_CENTRE_MM[1] + rng.normal(0, 4), centre[2]])
    return Pose(
        rotation=_rotation(yaw, pitch, roll),
        scale=scale,
        origin=origin,
        pixel_mm=FOV_MM / size,
        spacing_mm=spacing,
        origin_slice=u * (slices - 1),
    )


def _rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    cz, sz, cx, sx, cy, sy = np.cos(yaw), np.sin(yaw), np.cos(pitch), np.sin(pitch), np.cos(roll), np.sin(roll)
    about_z = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    about_x = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    about_y = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    return about_z @ about_x @ about_y


def template_points(pose: Pose, slices: int, size: int) -> np.ndarray:
    """(3, S, H, W) float32 template mm of every output voxel (before any warp).

    Row 0 is anterior and column 0 the patient's right (radiological display); slice 0 is inferior.
    """
    half = (size - 1) / 2
    px = ((np.arange(size) - half) * pose.pixel_mm)[None, None, :]
    py = ((half - np.arange(size)) * pose.pixel_mm)[None, :, None]
    pz = ((np.arange(slices) - pose.origin_slice) * pose.spacing_mm)[:, None, None]
    matrix = pose.rotation / pose.scale
    shape = (slices, size, size)
    points = np.empty((3, *shape), np.float32)
    for c in range(3):
        points[c] = matrix[c, 0] * px + matrix[c, 1] * py + matrix[c, 2] * pz + pose.origin[c]
    return points


def elastic_warp(rng: np.random.Generator, points: np.ndarray, pose: Pose, amplitude_mm: float) -> None:
    """Add a smooth random displacement (about 40 mm correlation) to `points`, in place."""
    cell = (40.0 / pose.spacing_mm, 40.0 / pose.pixel_mm)
    for c in range(3):
        points[c] += amplitude_mm * smooth_noise(rng, points.shape[1:], cell)


def mass_effect(points: np.ndarray, centre: np.ndarray, radius_mm: float, strength: float) -> np.ndarray:
    """Points pulled towards `centre`, so the tissue that they sample is pushed outwards."""
    centre = centre.astype(np.float32)[:, None, None, None]
    offset = points - centre
    r2 = np.einsum("c...,c...->...", offset, offset)
    pull = np.float32(strength) * np.exp(r2 * np.float32(-0.5 / (1.5 * radius_mm) ** 2))
    return centre + offset * (1 - pull)


# ---------------------------------------------------------------------------------------------
# Contrasts and acquisition


def base_contrasts(rng: np.random.Generator, tissue: np.ndarray, pose: Pose) -> np.ndarray:
    """(S, H, W, 4) tissue -> (S, H, W, 3) float32: pre-contrast T1, FLAIR, post-contrast T1.

    T1: white > grey > CSF (the template's own T1, with a random gamma). FLAIR: grey > white,
    CSF dark, and in some patients small bright white-matter lesions that are not tumour.
    Post-contrast T1: T1 plus enhancing vessels in the sulci.
    """
    t1, gm, wm, brain = (tissue[..., c] for c in range(4))
    csf = np.clip(brain - gm - wm, 0, 1)
    images = np.empty((*t1.shape, 3), np.float32)
    images[..., 0] = t1 ** rng.uniform(0.85, 1.2)
    grey, white, fluid = (np.array([0.62, 0.47, 0.10]) * rng.uniform(0.94, 1.06, 3)).astype(np.float32)
    images[..., 1] = grey * gm + white * wm + fluid * csf
    lines = np.exp(-((smooth_noise(rng, t1.shape, correlation_cells(pose, 5.0)) / 0.12) ** 2))
    vessels = rng.uniform(0.3, 0.7) * lines * csf * brain
    images[..., 2] = images[..., 0] * 0.97
    images[..., 2] += vessels * (1.0 - images[..., 2])
    _add_white_matter_lesions(rng, images, wm, pose)
    return images


def _add_white_matter_lesions(rng: np.random.Generator, images: np.ndarray, wm: np.ndarray, pose: Pose) -> None:
    """Punctate FLAIR-bright spots in deep white matter (age-related, outside any tumour mask), so
    that a bright FLAIR voxel alone does not mean tumour."""
    noise = smooth_noise(rng, wm.shape, correlation_cells(pose, 5.0))
    present = rng.random() < 0.6
    spots = soft_step(noise, rng.uniform(2.6, 3.2), 0.5) * np.clip(5 * wm - 4, 0, 1) * present
    images[..., 1] += spots * (rng.uniform(0.8, 1.05) - images[..., 1])
    images[..., 0] *= 1 - 0.08 * spots
    images[..., 2] *= 1 - 0.08 * spots


def acquire(
    rng: np.random.Generator, images: np.ndarray, brain: np.ndarray, pose: Pose
) -> tuple[np.ndarray, ScannerProfile]:
    """Bias field, Rician noise, per-channel gain, then the patient's own window and contrast
    curve (`brainseg.data.synthetic.scanner`) -> (S, H, W, 3) uint8 with background 0, and the
    profile drawn."""
    shape = brain.shape
    profile = random_profile(rng, images.shape[-1])
    shared_bias = profile.bias * smooth_noise(rng, shape, correlation_cells(pose, 120.0))
    sigma = np.float32(profile.noise)
    out = np.empty((*shape, 3), np.uint8)
    for c in range(3):
        bias = np.exp(shared_bias + 0.05 * smooth_noise(rng, shape, correlation_cells(pose, 100.0)))
        signal = images[..., c] * bias + sigma * rng.standard_normal(shape, dtype=np.float32)
        magnitude = np.hypot(signal, sigma * rng.standard_normal(shape, dtype=np.float32))
        out[..., c] = profile.to_8bit(magnitude * brain * np.float32(profile.gains[c]))
    return out, profile
