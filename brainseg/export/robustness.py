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

    def dice(scored: list[Volume]) -> float:
        probs = predict_volumes(predict, scored, img_size=img_size)
        refine = post.refine if post.components != "none" else None
        return headline_dice(score_volumes(scored, probs, threshold=threshold, with_hd95=False, refine=refine))

    clean = dice(volumes)
    shifts = {name: dice([replace(v, image=shift_intensities(v.image, name)) for v in volumes]) for name in SHIFTS}
    worst = min(shifts, key=shifts.get)
    drop = clean - shifts[worst]
    return {"applicable": True, "on": f"{len(volumes)} validation patients, the deployed fp32 file as it deploys",
            "clean": clean, "shifts": shifts, "worst": worst, "worst_drop": drop, "max_drop": max_drop,
            "passed": None if max_drop is None else bool(drop <= max_drop)}


def markdown(report: dict) -> list[str]:
    """accuracy.md's lines for `report`."""
    lines = ["## The shipped candidate under intensity shifts (validation Dice)", ""]
    if not report.get("applicable"):
        return lines + [f"Not applicable: {report.get('reason', 'not measured')}.", ""]
    lines += ["| shift | Dice | drop |", "|---|---|---|", f"| none | {report['clean']:.4f} | |"]
    lines += [f"| {name} | {dice:.4f} | {report['clean'] - dice:+.4f} |" for name, dice in report["shifts"].items()]
    gate = ("no gate (--max-shift-drop not set)" if report["max_drop"] is None else
            f"gate --max-shift-drop {report['max_drop']}: {'pass' if report['passed'] else 'FAIL'}")
    lines += ["", f"Worst: {report['worst']}, a drop of {report['worst_drop']:.4f}; {gate}.", ""]
    return lines
