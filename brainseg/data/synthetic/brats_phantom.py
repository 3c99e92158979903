"""One synthetic BraTS case: a head from `brainseg.data.synthetic.phantom`, a glioma with BraTS compartments.

The anatomy, pose, elastic warp and tumour shape are those of the kaggle_3m sample (the ICBM152
template under `random_pose` + `elastic_warp`, the lobulated field of `brainseg.data.synthetic.tumour`).
On top of them this module builds what a BraTS label volume holds, nested as BraTS defines it:

- tumour core (TC) = the tumour field above its threshold, in parenchyma;
- enhancing tumour (ET, label 4) = the outer 2-6 mm shell of the core, of uneven thickness and
  with gaps that do not enhance (those count as core, label 1);
- necrotic / non-enhancing core (label 1) = the rest of the core, inside the shell;
- oedema (label 2) = an irregular region around the core that reaches further into white matter
  than into grey matter, and touches the core everywhere inside the brain.

Four sequences are synthesised from the tissue maps (T1, T1ce, T2, FLAIR) and each compartment
is painted as it shows on real scans: T1 tumour hypo-intense; T1ce rim bright, necrosis dark;
T2 core, oedema and CSF bright; FLAIR oedema bright, CSF dark. The scanner then adds a smooth bias
field, Rician noise, the case's contrast curve (`brainseg.data.synthetic.scanner`) and a gain per
sequence, in float scanner units (hundreds to thousands), with the background exactly 0 outside
the brain (skull-stripped, as BraTS distributes its cases).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from brainseg.data.synthetic.phantom import (
    Pose,
    Template,
    base_contrasts,
    correlation_cells,
    smooth_noise,
)
from brainseg.data.synthetic.scanner import ScannerProfile, random_profile
from brainseg.data.synthetic.tumour import TUMOUR_THRESHOLD, TumourParams, place_tumour
from brainseg.errors import DataError

MODALITIES = ("t1", "t1ce", "t2", "flair")
NECROSIS, OEDEMA, ENHANCING = 1, 2, 4
MIN_VOXELS = 4  # each of the three labels, per case
# The gain of each sequence varies per case over this range (log-uniform), as between scanners.
GAINS = {"t1": (600.0, 2000.0), "t1ce": (600.0, 2400.0), "t2": (700.0, 3000.0), "flair": (500.0, 1800.0)}
# Relative signal of each compartment on (t1, t1ce, t2, flair); grey matter is about 0.6 on every
# sequence, white matter 0.45 (FLAIR, T2) or brighter (T1), CSF 0.1 (FLAIR) or 1.0 (T2).
_LOOKS = {
    "oedema": ((0.40, 0.50), (0.40, 0.50), (0.80, 0.95), (0.85, 1.10)),
    "enhancing": ((0.42, 0.52), (1.05, 1.35), (0.65, 0.80), (0.75, 0.95)),
    "non_enhancing": ((0.45, 0.55), (0.47, 0.57), (0.70, 0.85), (0.80, 1.00)),
    "necrosis": ((0.15, 0.25), (0.18, 0.28), (0.90, 1.05), (0.35, 0.75)),
}


@dataclass(frozen=True)
class BratsCase:
    """One case in the reader's axial layout: (S, H, W), slice 0 inferior, row 0 anterior, column 0
    the patient's left (what `brainseg.data.brats.axial_slices` returns for a RAS volume)."""

    images: dict[str, np.ndarray]  # modality -> (S, H, W) float32 scanner units, 0 outside the brain
    seg: np.ndarray  # (S, H, W) uint8 in {0, 1, 2, 4}
    tumour: TumourParams  # its shape; the appearance fields are not used here
    pose: Pose
    scanner: ScannerProfile


def synthesize_case(rng: np.random.Generator, slices: int, size: int, template: Template) -> BratsCase:
    """A random head with one tumour that shows all of labels 1, 2 and 4 on at least two slices."""
    for _ in range(50):
        placed = place_tumour(rng, template, slices, size)
        params, pose, field, tissue = placed.params, placed.pose, placed.field, placed.tissue  # tissue (S, H, W, 4)
        brain = tissue[..., 3] > 0.5
        seg = tumour_labels(rng, field, tissue, brain, pose)
        if _usable(seg, slices):
            break
    else:
        raise DataError(f"could not place a BraTS tumour in {slices} slices of {size}x{size}; use more slices")
    images = healthy_contrasts(rng, tissue, pose)
    paint_tumour(rng, images, seg, pose)
    volumes, scanner = acquire_scanner_units(rng, images, brain, pose)
    return BratsCase(images=volumes, seg=seg, tumour=params, pose=pose, scanner=scanner)


def _usable(seg: np.ndarray, slices: int) -> bool:
    counts = np.bincount(seg.ravel(), minlength=ENHANCING + 1)
    on_slices = int(seg.any(axis=(1, 2)).sum())
    return min(counts[NECROSIS], counts[OEDEMA], counts[ENHANCING]) >= MIN_VOXELS and on_slices >= min(2, slices)


def tumour_labels(
    rng: np.random.Generator, field: np.ndarray, tissue: np.ndarray, brain: np.ndarray, pose: Pose
) -> np.ndarray:
    """(S, H, W) tumour field and (S, H, W, 4) tissue -> (S, H, W) uint8 BraTS labels 0, 1, 2, 4."""
    gm, wm = tissue[..., 1], tissue[..., 2]
    parenchyma = np.minimum(gm + wm, tissue[..., 3])  # GM/WM maps reach a little past the brain mask
    core = (field > TUMOUR_THRESHOLD) & (parenchyma > 0.3) & brain
    shape = field.shape
    if not core.any():  # the tumour missed the slab: the caller draws another
        return np.zeros(shape, np.uint8)
    depth = np.zeros(shape, np.float32)
    box = bounding_box(core, pad=1)  # no closer background outside it: a faster, identical transform
    depth[box] = ndi.distance_transform_edt(core[box], sampling=(pose.spacing_mm, pose.pixel_mm, pose.pixel_mm))
    uneven = np.clip(1 + 0.35 * smooth_noise(rng, shape, correlation_cells(pose, 8.0)), 0.4, None)
    shell_mm = np.minimum(rng.uniform(2.0, 6.0) * uneven, 0.6 * float(depth.max()))
    gaps = smooth_noise(rng, shape, correlation_cells(pose, 10.0)) < rng.uniform(-1.6, -0.8)
    enhancing = core & (depth < shell_mm) & ~gaps
    reach_level = TUMOUR_THRESHOLD * rng.uniform(0.03, 0.2)
    reach = np.clip((field - reach_level) / (TUMOUR_THRESHOLD - reach_level), 0, 1)
    fingers = 1 + 0.5 * smooth_noise(rng, shape, correlation_cells(pose, 6.0))
    wm_share = wm / np.maximum(parenchyma, 1e-3)
    spread = reach**0.7 * fingers * (0.25 + 0.75 * wm_share)
    around = ndi.binary_dilation(core)  # oedema borders the core wherever the brain does
    oedema = ((spread > 0.3) | around) & (parenchyma > 0.2) & brain & ~core
    seg = np.zeros(shape, np.uint8)
    seg[oedema] = OEDEMA
    seg[core] = NECROSIS
    seg[enhancing] = ENHANCING
    return seg


def healthy_contrasts(rng: np.random.Generator, tissue: np.ndarray, pose: Pose) -> np.ndarray:
    """(S, H, W, 4) tissue -> (S, H, W, 4) float32 relative signal: T1, T1ce, T2, FLAIR.

    T1, FLAIR and T1ce (vessels enhancing in the sulci) are those of the kaggle_3m sample; T2 is
    CSF brightest, then grey, then white matter.
    """
    t1, flair, t1ce = np.moveaxis(base_contrasts(rng, tissue, pose), -1, 0)
    gm, wm, brain = tissue[..., 1], tissue[..., 2], tissue[..., 3]
    csf = np.clip(brain - gm - wm, 0, 1)
    grey, white, fluid = (np.array([0.62, 0.45, 1.0]) * rng.uniform(0.94, 1.06, 3)).astype(np.float32)
    t2 = grey * gm + white * wm + fluid * csf
    return np.stack([t1, t1ce, t2, flair], axis=-1)


def paint_tumour(rng: np.random.Generator, images: np.ndarray, seg: np.ndarray, pose: Pose) -> None:
    """Paint oedema, enhancing rim, non-enhancing gaps and necrosis into `images`, in place.

    Each compartment's mask is blurred by about a voxel first: its edge is partial volume.
    """
    box = bounding_box(seg > 0, pad=3)  # the blur below reaches 3 voxels at most
    images, seg = images[box], seg[box]
    core = seg == NECROSIS
    gaps = core & ndi.binary_dilation((seg == 0) | (seg == OEDEMA))  # label 1 on the core's surface
    compartments = {
        "oedema": seg == OEDEMA,
        "enhancing": seg == ENHANCING,
        "non_enhancing": gaps,  # label 1 where the rim does not enhance: solid tumour
        "necrosis": core & ~gaps,
    }
    texture = 1 + rng.uniform(0.02, 0.06) * smooth_noise(rng, seg.shape, correlation_cells(pose, 4.0))
    sigma = (0.5 * pose.pixel_mm / pose.spacing_mm, 0.6, 0.6)  # voxels: (slice, row, column)
    for name, mask in compartments.items():
        weight = ndi.gaussian_filter(mask.astype(np.float32), sigma, truncate=4.0)
        for c, (low, high) in enumerate(_LOOKS[name]):
            images[..., c] += weight * (rng.uniform(low, high) * texture - images[..., c])


def bounding_box(mask: np.ndarray, pad: int) -> tuple[slice, ...]:
    """The bounding box of a non-empty `mask`, `pad` voxels wider on every side within the array."""
    (found,) = ndi.find_objects(mask.astype(np.uint8), max_label=1)
    return tuple(slice(max(s.start - pad, 0), min(s.stop + pad, n)) for s, n in zip(found, mask.shape, strict=True))


def acquire_scanner_units(
    rng: np.random.Generator, images: np.ndarray, brain: np.ndarray, pose: Pose
) -> tuple[dict[str, np.ndarray], ScannerProfile]:
    """Bias field, Rician noise, the case's contrast curve and a gain per sequence -> modality ->
    (S, H, W) float32, and the profile drawn (its window and gains are not used).

    The pieces of `brainseg.data.synthetic.phantom.acquire` (shared plus per-sequence bias, magnitude of
    complex Gaussian noise, a `ScannerProfile` per case for bias strength, noise and curve), but four
    sequences in whole scanner units instead of three 8-bit channels: no window, so nothing
    saturates. Brain voxels are at least 1, so the reader's non-zero brain mask is exactly `brain`.
    """
    shape, inside = brain.shape, int(brain.sum())
    profile = random_profile(rng, len(MODALITIES))
    shared_bias = profile.bias * smooth_noise(rng, shape, correlation_cells(pose, 120.0))[brain]
    sigma = np.float32(profile.noise)
    volumes = {}
    for c, modality in enumerate(MODALITIES):
        gain = np.float32(np.exp(rng.uniform(*np.log(GAINS[modality]))))
        bias = np.exp(shared_bias + 0.05 * smooth_noise(rng, shape, correlation_cells(pose, 100.0))[brain])
        signal = images[..., c][brain] * bias + sigma * rng.standard_normal(inside, dtype=np.float32)
        magnitude = np.hypot(signal, sigma * rng.standard_normal(inside, dtype=np.float32))  # (inside,)
        curved = _CEILING * profile.curve_of(np.clip(magnitude / _CEILING, 0.0, 1.0))
        volume = np.zeros(shape, np.float32)
        volume[brain] = np.maximum(np.rint(curved * gain), 1)
        volumes[modality] = volume
    return volumes, profile


_CEILING = np.float32(1.6)  # above every compartment's signal: the curve acts on [0, _CEILING]
