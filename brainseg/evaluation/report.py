"""seg-eval's outputs: report.md (what a person reads), report.json, the per-patient Dice plot, overlays.

- report.json: everything report.md shows, per patient and per region (see `evaluate.build_report`).
- report.md: the headline per-patient Dice with its conventions, IoU, HD95 with the count of
  patients whose HD95 is undefined next to its mean, the slice-level rates, a per-patient table
  (worst first), the overlays and the unlabelled patients.
- dice_per_patient.png: one bar per patient (needs matplotlib; left out with a note without it).
- overlays/: the worst patients' worst slices, truth in green and prediction in red, drawn with
  seg-run's overlay code.

Every file is written with `write_atomic`.
"""

from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from brainseg.errors import BrainsegError, require
from brainseg.fileio import write_atomic
from brainseg.runtime.outputs import draw_overlay, encode_png, outline

REPORT_JSON, REPORT_MD, PLOT, OVERLAYS = "report.json", "report.md", "dice_per_patient.png", "overlays"
OVERLAY_PATIENTS = 3
TRUTH_RGB = (0, 255, 0)  # seg-run's overlays draw the prediction in red, high disagreement in yellow
PLOT_LABELS_UP_TO = 60  # patients named on the plot's axis; more get unnamed bars
UNDEFINED_HD95 = "tumour in only one of truth and prediction"


@dataclass(frozen=True)
class OverlaySlice:
    """One slice of the headline region to draw, and why it was picked."""

    patient_id: str
    slice_name: str
    why: str
    image: np.ndarray  # (H, W, C) as the reader gave it
    truth: np.ndarray  # (H, W) bool
    mask: np.ndarray  # (H, W, 1) uint8 prediction
    disagreement: np.ndarray  # (H, W, 1) float32


def write_outputs(out: Path, report: dict, overlays: list[OverlaySlice]) -> tuple[dict, list[Path]]:
    """Write the plot, the overlays, report.json and report.md under `out`: (the final report, files written).

    Overlays and the plot of an earlier report in `out` are removed first, so none is left stale.
    """
    out.mkdir(parents=True, exist_ok=True)
    for old in [out / PLOT, *(out / OVERLAYS).glob("*.png")]:
        old.unlink(missing_ok=True)
    plot_note = write_dice_plot(out / PLOT, report)
    drawn = write_overlays(out, worst_patients(report, overlays))
    report = {**report, "plot": None if plot_note else PLOT, "plot_note": plot_note, "overlays": drawn}
    write_atomic(out / REPORT_JSON, json.dumps(report, indent=2, allow_nan=False) + "\n")
    write_atomic(out / REPORT_MD, markdown(report))
    files = [out / REPORT_JSON, out / REPORT_MD, *([] if plot_note else [out / PLOT])]
    return report, files + [out / item["file"] for item in drawn]


def by_dice(per_patient: list[dict]) -> list[dict]:
    """Per-patient rows worst first (lowest Dice; ties by patient id)."""
    return sorted(per_patient, key=lambda row: (row["dice"], row["patient_id"]))


def worst_patients(report: dict, overlays: list[OverlaySlice]) -> list[OverlaySlice]:
    """The slices of the OVERLAY_PATIENTS patients with the lowest Dice that have one to show."""
    by_patient = {item.patient_id: item for item in overlays}
    ranked = [by_patient[row["patient_id"]] for row in by_dice(report["per_patient"])
              if row["patient_id"] in by_patient]
    return ranked[:OVERLAY_PATIENTS]


def write_overlays(out: Path, slices: list[OverlaySlice]) -> list[dict]:
    """One PNG per slice under out/overlays/, numbered worst first: [{file, patient_id, slice, why}]."""
    drawn = []
    for rank, item in enumerate(slices, start=1):
        slice_name = item.slice_name if item.slice_name.startswith(item.patient_id) else \
            f"{item.patient_id}_{item.slice_name}"  # kaggle_3m slice names start with the patient id already
        name = f"{OVERLAYS}/{rank}_{_file_safe(slice_name)}.png"
        canvas = draw_overlay(item.image, item.mask, item.disagreement)  # (H, W, 3) RGB
        outline(canvas, item.truth, TRUTH_RGB)
        write_atomic(out / name, encode_png(canvas))
        drawn.append({"file": name, "patient_id": item.patient_id, "slice": item.slice_name, "why": item.why})
    return drawn


def _file_safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)


def write_dice_plot(path: Path, report: dict) -> str | None:
    """A bar per patient, worst at the top, with the headline mean; returns why it was left out, or None."""
    try:
        require("matplotlib", "eval")
    except BrainsegError as err:
        return f"the per-patient Dice plot is left out: {err}"
    from matplotlib.figure import Figure  # a Figure of its own: no pyplot, no global backend switch

    rows = by_dice(report["per_patient"])
    figure = Figure(figsize=(7, 1.4 + 0.22 * min(len(rows), PLOT_LABELS_UP_TO)))
    axes = figure.add_subplot()
    positions = np.arange(len(rows))
    colours = ["tab:blue" if row["has_tumour"] else "tab:gray" for row in rows]
    axes.barh(positions, [row["dice"] for row in rows], color=colours)
    if len(rows) <= PLOT_LABELS_UP_TO:
        axes.set_yticks(positions, [row["patient_id"] for row in rows], fontsize=7)
    else:
        axes.set_yticks([])
    axes.invert_yaxis()
    if report["dice_mean"] is not None:
        axes.axvline(report["dice_mean"], color="tab:red", linestyle="--",
                     label=f"mean over patients with tumour: {report['dice_mean']:.3f}")
        axes.legend(loc="lower right", fontsize=8)
    axes.set_xlim(0, 1)
    axes.set_xlabel(f"per-patient Dice, {report['region']} (gray: no tumour in the truth)")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    write_atomic(path, buffer.getvalue())
    return None


def _number(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _share(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def hd95_line(summary: dict, unit: str) -> str:
    """'HD95 mean X unit (N undefined: ...)': the mean is over the defined cases only."""
    stats = summary["hd95"]
    return (f"HD95 mean {_number(stats['mean'])} {unit} ({summary['hd95_undefined']} undefined: {UNDEFINED_HD95}), "
            f"median {_number(stats['median'])}, worst {_number(stats['max'])}")


def markdown(report: dict) -> str:
    """report.md: what the numbers are, then the detail a person checks them with."""
    lines = [f"# seg-eval: {Path(report['artifacts']).name} on {Path(report['data']).name}", ""]
    lines += _provenance(report) + [""] + _headline(report) + [""]
    if len(report["regions"]) > 1:
        lines += _regions(report) + [""]
    if "brats" in report:
        lines += _challenge(report["brats"]) + [""]
    lines += _per_patient(report) + [""] + _pictures(report) + [""] + _left_out(report)
    return "\n".join(lines) + "\n"


def _provenance(report: dict) -> list[str]:
    backend = report["backend"]
    split = {"all": "every labelled patient", "patients": "the patients asked for"}.get(
        report["split"], f"the source run's {report['split']} patients")
    return [
        f"- Artifacts: `{report['artifacts']}` (manifest sha256 `{report['manifest_sha256']}`)",
        f"- Run with: {backend.get('deployed') or 'ensemble'} (the export's shipped candidate) on "
        f"{backend['chosen']} {report['precision']} "
        f"(`{report['file']}`; {backend['reason']}), threshold {report['threshold']}",
        f"- Post-processing: {report['postprocessing']['description']}",
        f"- Data: `{report['data']}` ({report['layout']} layout; read with {report['data_settings']['source']})",
        f"- Patients: {split}: {report['patients']} scored, {report['patients_with_tumour']} with tumour",
    ]


def _headline(report: dict) -> list[str]:
    dice, iou = report["dice"], report["iou"]
    worst = report["worst_patient"]
    worst_text = "n/a" if worst is None else f"{worst['dice']:.3f} ({worst['id']})"
    free = report["patients_without_tumour"]
    return [
        f"## Headline: {report['region']}",
        "",
        "| Per-patient Dice over patients with tumour | mean | median | worst |",
        "|---|---|---|---|",
        f"| {report['patients_with_tumour']} patients | {_number(dice['mean'])} | {_number(dice['median'])} "
        f"| {worst_text} |",
        "",
        f"- IoU mean {_number(iou['mean'])}, median {_number(iou['median'])}",
        f"- {hd95_line(report, report['hd95_unit'])}",
        f"- Empty-slice false-positive rate: {_share(report['empty_slice_false_positive_rate'])} "
        f"of {report['empty_slices']} slices without tumour",
        f"- Tumour-slice detection rate: {_share(report['tumour_slice_detection_rate'])} "
        f"of {report['tumour_slices']} slices with tumour",
        f"- Patients without tumour: {free}, {report['patients_without_tumour_with_false_positive']} of them "
        "with a false positive",
        "",
        f"Conventions: {report['conventions']} (docs/metrics.md).",
    ]


def _regions(report: dict) -> list[str]:
    lines = ["## Every region", "", "| region | Dice mean | median | worst | HD95 mean | HD95 undefined |",
             "|---|---|---|---|---|---|"]
    for name, summary in report["regions"].items():
        dice = summary["dice"]
        lines.append(f"| {name} | {_number(dice['mean'])} | {_number(dice['median'])} | {_number(dice['min'])} "
                     f"| {_number(summary['hd95']['mean'])} | {summary['hd95_undefined']} |")
    return lines


def _challenge(brats: dict) -> list[str]:
    lines = ["## As the BraTS challenge scores it (lesion-wise, panoptica)", "",
             f"| region | lesion-wise Dice | lesion-wise HD95 ({brats['hd95_unit']}) | lesion-wise NSD | global Dice "
             f"| global HD95 ({brats['hd95_unit']}) | global NSD | TP | FP | FN | F1 |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for region, row in brats["means"].items():
        lines.append(f"| {region.upper()} | {_number(row['lesion_wise_dice'])} | {_number(row['lesion_wise_hd95'], 2)} "
                     f"| {_number(row['lesion_wise_nsd'])} | {_number(row['global_dice'])} "
                     f"| {_number(row['global_hd95'], 2)} | {_number(row['global_nsd'])} | {int(row['tp'])} "
                     f"| {int(row['fp'])} | {int(row['fn'])} | {_number(row['f1'])} |")
    return [*lines, "", f"Conventions: {brats['conventions']}."]


def _per_patient(report: dict) -> list[str]:
    lines = [f"## Per patient, worst first ({report['region']})", "",
             f"| patient | tumour | Dice | IoU | HD95 ({report['hd95_unit']}) | tumour slices | detected "
             "| false-positive slices |", "|---|---|---|---|---|---|---|---|"]
    for row in by_dice(report["per_patient"]):
        hd95 = "undefined" if row["hd95"] is None else f"{row['hd95']:.2f}"
        lines.append(f"| {row['patient_id']} | {'yes' if row['has_tumour'] else 'no'} | {row['dice']:.3f} "
                     f"| {row['iou']:.3f} | {hd95} | {row['tumour_slices']} | {row['detected_slices']} "
                     f"| {row['false_positive_slices']} |")
    return lines


def _pictures(report: dict) -> list[str]:
    lines = ["## Pictures", ""]
    lines.append(f"- Note: {report['plot_note']}" if report["plot_note"] else f"![per-patient Dice]({PLOT})")
    lines.append("")
    if not report["overlays"]:
        return lines + ["No overlays: no patient has a tumour slice or a false positive to show."]
    lines.append("Worst patients' worst slices (truth in green, prediction in red, high model disagreement "
                 "in yellow):")
    lines += [f"- [{item['file']}]({item['file']}): {item['patient_id']}, slice {item['slice']}: {item['why']}"
              for item in report["overlays"]]
    return lines


def _left_out(report: dict) -> list[str]:
    lines = ["## Unlabelled patients (no masks; not scored)", ""]
    lines += [f"- {entry['patient_id']}: {entry['reason']}" for entry in report["unlabelled"]] or ["None."]
    skipped = report["skipped"]
    if skipped:
        lines += ["", f"## Other inputs the reader skipped ({len(skipped)}; all in report.json)", ""]
        lines += [f"- {entry['path']}: {entry['reason']}" for entry in skipped[:20]]
    return lines
