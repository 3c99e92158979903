"""Segmentation metrics in numpy, shared by training, export and the runtime (no torch here).

Conventions, stated once and repeated in every report that uses them:

- Masks are boolean volumes (S, H, W): a patient's slices stacked in slice order.
- Dice and IoU are computed per patient over the whole volume (not averaged over slices).
  Both empty (no tumour, none predicted): 1.0. Exactly one empty: 0.0.
- The headline is the mean and median per-patient Dice over patients whose ground truth has
  tumour. Patients without tumour are reported apart, as how many got any false positive.
- HD95 is the larger of the two directed 95th-percentile surface distances (prediction to
  truth, truth to prediction), in mm when the voxel spacing is known, else in voxels (taking
  the slice step as one voxel). Both empty: 0. Exactly one empty: undefined (NaN), and counted
  apart as a missed or a spurious tumour; means of HD95 are over the defined cases.
- Empty slices (no tumour in the truth) are scored apart: the empty-slice false-positive rate is
  the share of them where at least `min_pixels` pixels are predicted as tumour.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from brainseg.data.volume import Volume

REGION_NAMES = {1: ("tumour",), 3: ("whole_tumour", "tumour_core", "enhancing_tumour")}

CONVENTIONS = (
    "per-patient foreground Dice/IoU on volumes stacked from slices; both empty = 1, one empty = 0; "
    "headline mean/median over patients with tumour; HD95 = max of directed 95th percentiles, "
    "mm if spacing known else voxels, NaN if exactly one side empty; empty slices scored apart "
    "(false-positive rate)"
)


def _as_bool(pred: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred, target = np.asarray(pred, dtype=bool), np.asarray(target, dtype=bool)
    if pred.shape != target.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from target shape {target.shape}")
    return pred, target


def dice(pred: np.ndarray, target: np.ndarray) -> float:
    """Foreground Dice of two binary masks of any shape; 1.0 when both are empty."""
    pred, target = _as_bool(pred, target)
    total = int(pred.sum()) + int(target.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(pred, target).sum()) / total


def iou(pred: np.ndarray, target: np.ndarray) -> float:
    """Foreground intersection over union; 1.0 when both are empty."""
    pred, target = _as_bool(pred, target)
    union = int(np.logical_or(pred, target).sum())
    if union == 0:
        return 1.0
    return int(np.logical_and(pred, target).sum()) / union


def _surface(mask: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    eroded = ndimage.binary_erosion(mask, structure=ndimage.generate_binary_structure(mask.ndim, 1))
    return mask & ~eroded


def hd95(
    pred: np.ndarray, target: np.ndarray, spacing: tuple[float, ...] | None = None
) -> float:
    """95th-percentile Hausdorff distance between the surfaces of two binary masks.

    `spacing` gives the voxel size per axis (mm); None means one unit per voxel. Returns 0.0 when
    both masks are empty and NaN when exactly one is.
    """
    from scipy import ndimage

    pred, target = _as_bool(pred, target)
    if not pred.any() and not target.any():
        return 0.0
    if not pred.any() or not target.any():
        return float("nan")
    sampling = spacing if spacing is not None else (1.0,) * pred.ndim
    if len(sampling) != pred.ndim:
        raise ValueError(f"spacing {spacing} has {len(sampling)} values for a {pred.ndim}-D mask")
    pred_surface, target_surface = _surface(pred), _surface(target)
    to_target = ndimage.distance_transform_edt(~target_surface, sampling=sampling)
    to_pred = ndimage.distance_transform_edt(~pred_surface, sampling=sampling)
    return float(
        max(
            np.percentile(to_target[pred_surface], 95),
            np.percentile(to_pred[target_surface], 95),
        )
    )


@dataclass(frozen=True)
class PatientScore:
    """One patient's scores for one target channel."""

    patient_id: str
    dice: float
    iou: float
    hd95: float
    has_tumour: bool
    predicted_tumour: bool
    tumour_slices: int
    empty_slices: int
    detected_slices: int  # tumour slices with any predicted tumour
    false_positive_slices: int  # empty slices with >= min_pixels predicted tumour


def score_patient(
    patient_id: str,
    pred: np.ndarray,
    target: np.ndarray,
    *,
    spacing: tuple[float, float] | None = None,
    slice_step: float | None = None,
    min_pixels: int = 1,
    with_hd95: bool = True,
) -> PatientScore:
    """Score one patient's (S, H, W) predicted mask against the truth.

    `spacing` is the in-plane pixel size in mm and `slice_step` the distance between slices;
    HD95 is in mm only when both are known, otherwise in voxels. `with_hd95=False` skips the
    (slow) distance transform and reports NaN, for per-epoch validation.
    """
    pred, target = _as_bool(pred, target)
    if pred.ndim != 3:
        raise ValueError(f"expected an (S, H, W) volume, got shape {pred.shape}")
    voxel = (slice_step, *spacing) if spacing is not None and slice_step is not None else None
    pred_pixels = pred.reshape(len(pred), -1).sum(axis=1)
    truth_has = target.reshape(len(target), -1).any(axis=1)
    return PatientScore(
        patient_id=patient_id,
        dice=dice(pred, target),
        iou=iou(pred, target),
        hd95=hd95(pred, target, voxel) if with_hd95 else float("nan"),
        has_tumour=bool(truth_has.any()),
        predicted_tumour=bool(pred.any()),
        tumour_slices=int(truth_has.sum()),
        empty_slices=int((~truth_has).sum()),
        detected_slices=int(((pred_pixels > 0) & truth_has).sum()),
        false_positive_slices=int(((pred_pixels >= min_pixels) & ~truth_has).sum()),
    )


def _stats(values: list[float]) -> dict[str, float | None]:
    finite = [v for v in values if np.isfinite(v)]
    if not finite:
        return {"mean": None, "median": None, "min": None, "max": None}
    return {
        "mean": float(np.mean(finite)),
        "median": float(np.median(finite)),
        "min": float(np.min(finite)),
        "max": float(np.max(finite)),
    }


def summarize(scores: list[PatientScore]) -> dict:
    """The report over patients: headline Dice over patients with tumour, the rest apart."""
    with_tumour = [s for s in scores if s.has_tumour]
    without = [s for s in scores if not s.has_tumour]
    empty_slices = sum(s.empty_slices for s in scores)
    tumour_slices = sum(s.tumour_slices for s in scores)
    worst = min(with_tumour, key=lambda s: s.dice) if with_tumour else None
    return {
        "patients": len(scores),
        "patients_with_tumour": len(with_tumour),
        "dice": _stats([s.dice for s in with_tumour]),
        "iou": _stats([s.iou for s in with_tumour]),
        "hd95": _stats([s.hd95 for s in with_tumour]),
        "hd95_undefined": sum(1 for s in with_tumour if not np.isfinite(s.hd95)),
        "worst_patient": None if worst is None else {"id": worst.patient_id, "dice": worst.dice},
        "patients_without_tumour": len(without),
        "patients_without_tumour_with_false_positive": sum(s.predicted_tumour for s in without),
        "empty_slices": empty_slices,
        "empty_slice_false_positive_rate": (
            sum(s.false_positive_slices for s in scores) / empty_slices if empty_slices else None
        ),
        "tumour_slices": tumour_slices,
        "tumour_slice_detection_rate": (
            sum(s.detected_slices for s in scores) / tumour_slices if tumour_slices else None
        ),
        "conventions": CONVENTIONS,
        "per_patient": [asdict(s) for s in scores],
    }


def score_volumes(
    volumes: list[Volume],
    probabilities: list[np.ndarray],
    *,
    threshold: float = 0.5,
    with_hd95: bool = True,
    refine: Callable[[np.ndarray], np.ndarray] | None = None,
) -> dict:
    """The metrics report (see brainseg.metrics) per target region, from probabilities.

    `refine`, when given, turns each thresholded (S, H, W) mask into the one scored (a
    post-processing rule such as `PostProcessing.refine`).
    """
    classes = volumes[0].mask.shape[-1]
    names = REGION_NAMES.get(classes, tuple(f"class_{k}" for k in range(classes)))
    report = {"threshold": threshold, "regions": {}}
    for k, name in enumerate(names):
        scores = [
            score_patient(
                volume.patient_id,
                refine(probs[..., k] >= threshold) if refine is not None else probs[..., k] >= threshold,
                volume.mask[..., k].astype(bool),
                spacing=volume.spacing,
                slice_step=volume.slice_step,
                with_hd95=with_hd95,
            )
            for volume, probs in zip(volumes, probabilities, strict=True)
        ]
        report["regions"][name] = summarize(scores)
    return report


def headline_dice(report: dict) -> float:
    """Mean per-patient Dice over patients with tumour, averaged over the target regions."""
    values = [r["dice"]["mean"] for r in report["regions"].values() if r["dice"]["mean"] is not None]
    return float(np.mean(values)) if values else 0.0
