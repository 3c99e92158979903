"""What a training run writes for people: metrics.csv, curves, JSON and Markdown reports."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from brainseg.fileio import write_atomic
from brainseg.metrics import CONVENTIONS

METRIC_COLUMNS = ("epoch", "train_loss", "val_dice_mean", "val_dice_median", "val_empty_fp_rate", "lr", "seconds")


def write_json(path: Path, data: dict) -> None:
    write_atomic(path, json.dumps(data, indent=2, allow_nan=True) + "\n")


def epoch_row(epoch: int, loss: float, report: dict, lr: float, seconds: float) -> dict:
    """One metrics.csv row; Dice values are the first target region's."""
    region = next(iter(report["regions"].values()))
    fp_rate = region["empty_slice_false_positive_rate"]
    return {
        "epoch": epoch,
        "train_loss": round(loss, 5),
        "val_dice_mean": round(region["dice"]["mean"] or 0.0, 5),
        "val_dice_median": round(region["dice"]["median"] or 0.0, 5),
        "val_empty_fp_rate": None if fp_rate is None else round(fp_rate, 5),
        "lr": float(f"{lr:.3g}"),
        "seconds": round(seconds, 1),
    }


def write_metrics_csv(path: Path, rows: list[dict]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=METRIC_COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(path, buffer.getvalue())


def plot_curves(path: Path, rows: list[dict], title: str) -> None:
    """Training loss and validation per-patient Dice against epoch, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5))
    left.plot(epochs, [r["train_loss"] for r in rows], marker="o")
    left.set(xlabel="epoch", ylabel="train loss (Dice + BCE)", title=title)
    right.plot(epochs, [r["val_dice_mean"] for r in rows], marker="o", label="mean")
    right.plot(epochs, [r["val_dice_median"] for r in rows], marker="s", label="median")
    right.set(xlabel="epoch", ylabel="val per-patient Dice", ylim=(0, 1))
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _fmt(value, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def summary_table(rows: dict[str, dict], split_name: str) -> str:
    """A Markdown table: one row per model (and the ensemble) from their reports."""
    lines = [
        f"Per-patient foreground Dice on the {split_name} patients.",
        "",
        "| model | patients | Dice mean | Dice median | worst patient | IoU mean | HD95 mean "
        "| empty-slice FP rate | tumour-slice detection |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, report in rows.items():
        for region_name, r in report["regions"].items():
            label = name if len(report["regions"]) == 1 else f"{name} / {region_name}"
            worst = r["worst_patient"]
            lines.append(
                f"| {label} | {r['patients_with_tumour']} | {_fmt(r['dice']['mean'])} | "
                f"{_fmt(r['dice']['median'])} | {_fmt(worst and worst['dice'])} | {_fmt(r['iou']['mean'])} | "
                f"{_fmt(r['hd95']['mean'], 2)} | {_fmt(r['empty_slice_false_positive_rate'])} | "
                f"{_fmt(r['tumour_slice_detection_rate'])} |"
            )
    lines += ["", f"Conventions: {CONVENTIONS}.", ""]
    return "\n".join(lines)
