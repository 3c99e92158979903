"""The shipped candidate under another scanner's contrast: validation Dice under the benchmark's intensity shifts.

The five shifts of brainseg.data.intensity_shifts (x0.3, x0.5, x1.5 clipped, gamma 0.67, gamma 1.5)
are applied to the validation patients' 8-bit slices, and the deployed fp32 file is scored on each
as it deploys (its TTA and component rule). The worst drop against the unshifted Dice is recorded;
`--max-shift-drop` turns it into a gate. Float (z-scored NIfTI) inputs are normalised per scan
inside the graph, and the shifts are defined on 8-bit values, so they are recorded as not applicable.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from brainseg.data.intensity_shifts import SHIFTS, shift_intensities
from brainseg.data.volume import Volume
from brainseg.export.accuracy import Predict, predict_volumes
from brainseg.metrics import headline_dice, score_volumes
from brainseg.postprocess import PostProcessing


def shift_report(predict: Predict, volumes: list[Volume], *, img_size: int, threshold: float,
                 post: PostProcessing, max_drop: float | None = None) -> dict:
    """{"clean", "shifts": {name: Dice}, "worst", "worst_drop", "max_drop", "passed"} on `volumes`;
    `predict` already runs the TTA of `post`. "passed" is None when no `max_drop` is set."""
    if not volumes or volumes[0].image.dtype != np.uint8:
        return {"applicable": False, "reason": "the intensity shifts are defined on 8-bit slices; float inputs are "
                                               "z-scored per scan inside the graph"}

    def scores(scored: list[Volume]) -> tuple[float, dict[str, float]]:
        """The headline Dice and each patient's Dice (first region) on `scored`."""
        probs = predict_volumes(predict, scored, img_size=img_size)
        refine = post.refine if post.components != "none" else None
        report = score_volumes(scored, probs, threshold=threshold, with_hd95=False, refine=refine)
        region = next(iter(report["regions"].values()))
        return headline_dice(report), {p["patient_id"]: p["dice"] for p in region["per_patient"] if p["has_tumour"]}

    clean, clean_patients = scores(volumes)
    shifts, patient_drops = {}, {}
    for name in SHIFTS:
        shifts[name], patients = scores([replace(v, image=shift_intensities(v.image, name)) for v in volumes])
        patient_drops[name] = max((clean_patients[p] - dice for p, dice in patients.items()), default=0.0)
    worst = min(shifts, key=shifts.get)
    drop = clean - shifts[worst]
    return {"applicable": True, "on": f"{len(volumes)} validation patients, the deployed fp32 file as it deploys",
            "clean": clean, "shifts": shifts, "worst_patient_drop": patient_drops, "worst": worst,
            "worst_drop": drop, "max_drop": max_drop, "passed": None if max_drop is None else bool(drop <= max_drop)}


def markdown(report: dict) -> list[str]:
    """accuracy.md's lines for `report`."""
    lines = ["## The shipped candidate under intensity shifts (validation Dice)", ""]
    if not report.get("applicable"):
        return lines + [f"Not applicable: {report.get('reason', 'not measured')}.", ""]
    patient = report.get("worst_patient_drop", {})  # absent from manifests written before it existed
    lines += ["| shift | Dice | drop of the mean | worst patient's drop |", "|---|---|---|---|",
              f"| none | {report['clean']:.4f} | | |"]
    for name, dice in report["shifts"].items():
        worst = "" if name not in patient else format(patient[name], "+.4f")
        lines.append(f"| {name} | {dice:.4f} | {report['clean'] - dice:+.4f} | {worst} |")
    gate = ("no gate (--max-shift-drop not set)" if report["max_drop"] is None else
            f"gate --max-shift-drop {report['max_drop']}: {'pass' if report['passed'] else 'FAIL'}")
    lines += ["", f"Worst: {report['worst']}, a drop of {report['worst_drop']:.4f}; {gate}.", ""]
    return lines
