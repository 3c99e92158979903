"""The accuracy table and gate: every format scored by the same code on the same patients.

A format is anything with a `predict(images) -> probability` function: PyTorch FP32, or an ONNX
file in ONNX Runtime. Images are raw slices at the model size (N, H, W, C) in the graph's input
dtype; probabilities come back as (N, K, H, W) float32.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import numpy as np

from brainseg.data.preprocess import resize_back, resize_slices
from brainseg.data.volume import Volume
from brainseg.metrics import CONVENTIONS, headline_dice, score_volumes

Predict = Callable[[np.ndarray], np.ndarray]


def predict_volumes(
    predict: Predict, volumes: list[Volume], *, img_size: int, batch_size: int = 16
) -> list[np.ndarray]:
    """Probabilities (S, H, W, K) per volume at its native size."""
    results = []
    for volume in volumes:
        images = resize_slices(volume.image, img_size, is_mask=False)  # (S, s, s, C)
        chunks = [predict(images[i : i + batch_size]) for i in range(0, len(images), batch_size)]
        probs = np.concatenate(chunks).transpose(0, 2, 3, 1)  # (S, s, s, K)
        results.append(resize_back(probs, *volume.image.shape[1:3]).astype(np.float32))
    return results


def accuracy_row(volumes: list[Volume], probabilities: list[np.ndarray], *, threshold: float) -> dict:
    """One row of the accuracy table (first target region; all regions under 'regions')."""
    report = score_volumes(volumes, probabilities, threshold=threshold)
    region = next(iter(report["regions"].values()))
    return {
        "dice_mean": region["dice"]["mean"],
        "dice_median": region["dice"]["median"],
        "dice_worst": region["dice"]["min"],
        "worst_patient": (region["worst_patient"] or {}).get("id"),
        "hd95_mean": region["hd95"]["mean"],
        "empty_slice_fp_rate": region["empty_slice_false_positive_rate"],
        "headline_dice": headline_dice(report),
        "patients": region["patients_with_tumour"],
    }


def apply_gate(table: dict[str, dict], *, reference: str, max_drop: float) -> dict[str, dict]:
    """Mark each row with its Dice drop against `reference` and whether it is within `max_drop`."""
    ref = table[reference]["headline_dice"]
    for row in table.values():
        row["dice_drop"] = ref - row["headline_dice"]
        row["passed"] = row["dice_drop"] <= max_drop
    return table


def max_abs_difference(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    """Largest absolute difference between two sets of per-volume probabilities."""
    return float(max(np.abs(x - y).max() for x, y in zip(a, b, strict=True)))


def fit_weights(
    member_probs: list[list[np.ndarray]], volumes: list[Volume], *, threshold: float, step: float = 0.1
) -> tuple[list[float], float]:
    """Ensemble weights on a simplex grid that maximise mean per-patient Dice on `volumes`.

    `member_probs[m][v]` is member m's probability for volume v. Returns (weights, Dice). Every
    member keeps at least one step of weight: a zero weight would still run the model in the
    graph while it contributes nothing. Ties go to the most even weights, so 'auto' falls back
    to equal weights when nothing is better.
    """
    units = round(1 / step)
    best: tuple[float, float, list[float]] = (-1.0, 0.0, [])
    for combo in itertools.product(range(1, units + 1), repeat=len(member_probs)):
        if sum(combo) != units:
            continue
        weights = [c / units for c in combo]
        mixed = [sum(w * p[v] for w, p in zip(weights, member_probs, strict=True)) for v in range(len(volumes))]
        dice = headline_dice(score_volumes(volumes, mixed, threshold=threshold, with_hd95=False))
        evenness = -float(np.std(weights))
        if (dice, evenness) > best[:2]:
            best = (dice, evenness, weights)
    return best[2], best[0]


def table_markdown(table: dict[str, dict], *, max_drop: float, parity: dict[str, float]) -> str:
    """accuracy.md: the accuracy table with its conventions."""
    lines = [
        "# Accuracy of the exported ensemble",
        "",
        f"Validation patients, per-patient foreground Dice; gate: a drop of at most {max_drop} against PyTorch FP32.",
        "",
        "| format | Dice mean | median | worst patient | HD95 mean | empty-slice FP rate | drop | gate |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, row in table.items():
        hd95 = "n/a" if row["hd95_mean"] is None else f"{row['hd95_mean']:.2f}"
        fp_rate = "n/a" if row["empty_slice_fp_rate"] is None else f"{row['empty_slice_fp_rate']:.4f}"
        lines.append(
            f"| {name} | {row['dice_mean']:.4f} | {row['dice_median']:.4f} | {row['dice_worst']:.4f} | {hd95} | "
            f"{fp_rate} | {row['dice_drop']:+.4f} | {'pass' if row['passed'] else 'FAIL'} |"
        )
    lines += ["", "Parity of the FP32 graphs with PyTorch (max abs difference of probabilities on real slices):", ""]
    lines += [f"- {name}: {value:.2e}" for name, value in parity.items()]
    lines += ["", f"Conventions: {CONVENTIONS}.", ""]
    return "\n".join(lines)
