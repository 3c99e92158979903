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


def accuracy_row(volumes: list[Volume], probabilities: list[np.ndarray], *, threshold: float,
                 refine: Callable[[np.ndarray], np.ndarray] | None = None) -> dict:
    """One row of the accuracy table (first target region), masks refined by `refine` when given."""
    report = score_volumes(volumes, probabilities, threshold=threshold, refine=refine)
    region = next(iter(report["regions"].values()))
    return {
        "dice_mean": region["dice"]["mean"],
        "dice_median": region["dice"]["median"],
        "dice_worst": region["dice"]["min"],
        "worst_patient": (region["worst_patient"] or {}).get("id"),
        "hd95_mean": region["hd95"]["mean"],
        "hd95_undefined": region["hd95_undefined"],
        "empty_slice_fp_rate": region["empty_slice_false_positive_rate"],
        "headline_dice": headline_dice(report),
        "region_dice": {name: summary["dice"]["mean"] for name, summary in report["regions"].items()},
        "region_hd95": {name: summary["hd95"]["mean"] for name, summary in report["regions"].items()},
        "patients": region["patients_with_tumour"],
    }


def _drop(reference: dict, row: dict) -> float:
    """The largest per-region Dice drop of `row` against `reference` (its headline drop for older rows)."""
    regions = [name for name, dice in reference.get("region_dice", {}).items()
               if dice is not None and row.get("region_dice", {}).get(name) is not None]
    if not regions:
        return reference["headline_dice"] - row["headline_dice"]
    return max(reference["region_dice"][name] - row["region_dice"][name] for name in regions)


def apply_gate(table: dict[str, dict], *, reference: str, max_drop: float) -> dict[str, dict]:
    """Mark each row with its Dice drop against `reference` and whether it is within `max_drop`.

    The drop is the largest over the target regions, so a precision that loses the enhancing
    tumour cannot pass on the strength of the whole tumour.
    """
    for row in table.values():
        row["dice_drop"] = _drop(table[reference], row)
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


def add_drops(table: dict[str, dict], *, reference: str) -> dict[str, dict]:
    """Mark each row with its largest per-region Dice drop against `reference` (the test table: no gate there)."""
    if reference in table:
        for row in table.values():
            row["dice_drop"] = _drop(table[reference], row)
    return table


def _rows(table: dict[str, dict], *, gated: bool) -> list[str]:
    """Markdown rows; with several target regions, a column of each region's Dice (the gate's drop is the worst)."""
    regions = list(next(iter(table.values()), {}).get("region_dice", {}))
    per_region = f" {' / '.join(regions)} |" if len(regions) > 1 else ""
    hd95_header = "HD95 mean, mm, per region (undefined, first region)" if per_region else "HD95 mean (undefined)"
    header = (f"| format | Dice mean | median | worst patient |{per_region} {hd95_header} | "
              "empty-slice FP rate | drop |")
    lines = [header + (" gate |" if gated else ""), "|---" * (header.count("|") - 1 + gated) + "|"]
    for name, row in table.items():
        hd95 = _hd95_cell(row, regions if per_region and "region_hd95" in row else [])
        fp_rate = "n/a" if row["empty_slice_fp_rate"] is None else f"{row['empty_slice_fp_rate']:.4f}"
        region_cell = ""
        if per_region:
            values = [row.get("region_dice", {}).get(region) for region in regions]
            region_cell = " " + " / ".join("n/a" if v is None else f"{v:.4f}" for v in values) + " |"
        drop = row.get("dice_drop", 0.0)
        line = (f"| {name} | {row['dice_mean']:.4f} | {row['dice_median']:.4f} | {row['dice_worst']:.4f} |"
                f"{region_cell} {hd95} ({row.get('hd95_undefined', 0)}) | {fp_rate} | {drop:+.4f} |")
        lines.append(line + (f" {'pass' if row['passed'] else 'FAIL'} |" if gated else ""))
    return lines


def _hd95_cell(row: dict, regions: list[str]) -> str:
    """The row's HD95 mean, or each region's ("1.56 / 2.10 / 3.05") when `regions` are given; n/a when undefined."""
    values = [row["region_hd95"].get(region) for region in regions] if regions else [row["hd95_mean"]]
    return " / ".join("n/a" if value is None else f"{value:.2f}" for value in values)


def table_markdown(table: dict[str, dict], *, max_drop: float, parity: dict[str, float],
                   test_table: dict[str, dict] | None = None, postprocessing: dict | None = None) -> str:
    """accuracy.md: the validation table with its gate, the test table, the post-processing choice."""
    lines = ["# Accuracy of the shipped graph", ""]
    if postprocessing:
        lines += [f"Every row is scored as it deploys: {postprocessing['description']} "
                  f"(chosen on {postprocessing['decided_on']}).", ""]
    lines += [f"## Validation patients (the gate: a drop of at most {max_drop} against PyTorch FP32)", ""]
    lines += _rows(table, gated=True)
    if test_table:
        patients = next(iter(test_table.values()))["patients"]
        lines += ["", f"## Held-out test patients ({patients} with tumour; nothing was chosen on them)", ""]
        lines += _rows(test_table, gated=False)
    if postprocessing:
        found = postprocessing["validation_dice"]
        lines += ["", "## Post-processing candidates (validation Dice of the fp32 file)", ""]
        lines += [f"- TTA {mode}: {dice:.4f}" for mode, dice in found["tta"].items()]
        lines += [f"- components {rule}: {dice:.4f}" for rule, dice in found["components"].items()]
    lines += ["", "Parity of the FP32 graphs with PyTorch (max abs difference of probabilities on real slices):", ""]
    lines += [f"- {name}: {value:.2e}" for name, value in parity.items()]
    lines += ["", "HD95 means are over the patients where it is defined; the count in brackets is of patients "
              "with a tumour in only one of truth and prediction.", "", f"Conventions: {CONVENTIONS}.", ""]
    return "\n".join(lines)
