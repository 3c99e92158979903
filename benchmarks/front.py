"""Benchmark: what an export's Dice-latency front shipped, against issue 21's targets.

Reads an artifacts folder's manifest (the front seg-export weighed and timed: every candidate's
validation and test Dice, and its ms/slice at batch 1 in seg-run's runtime and CPU precision, timed
in interleaved rounds in one run beside PyTorch eager FP32 of the three-model ensemble) and reports:

- the shipped candidate and why; its test Dice as deployed (the CPU int8 file where exported, else
  fp32, with the folder's TTA and component rule) against the best single member's test Dice
  (its fp32 file with its own component rule): target >= best member - 0.005;
- its latency against the three-model ensemble with the same TTA, ratio taken round by round
  (median and range): target <= 0.5;
- the distilled student against the three-model ensemble (same TTA as the shipped one): test Dice
  >= ensemble - 0.005 at <= 0.4x its latency.

Test Dice chose nothing: the rule used validation Dice only.

    python benchmarks/front.py demo/artifacts --out benchmarks/results/<machine>/front_quick.json
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from _report import emit

from brainseg.artifacts.manifest import Manifest
from brainseg.bench.environment import cpu_description

FLIP = "/flip"


def _ratio(row: dict, base: dict) -> dict:
    ratios = [a / b for a, b in zip(row["round_ms"], base["round_ms"], strict=True)]
    return {"median": round(float(np.median(ratios)), 3), "min": round(min(ratios), 3), "max": round(max(ratios), 3)}


def _target(value: float | None, limit: float, kind: str) -> dict:
    met = None if value is None else (value >= limit if kind == ">=" else value <= limit)
    return {"value": value, "target": f"{kind} {limit:.4f}", "met": met}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("artifacts", type=Path)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    manifest = Manifest.load(args.artifacts)
    deployment = manifest.deployment
    if deployment is None or not deployment.front or not deployment.timed:
        raise SystemExit(f"{args.artifacts}: no timed front in the manifest (export it again with --deploy auto)")
    rows = {row["name"]: row for row in deployment.front}
    shipped = rows[deployment.candidate]
    suffix = FLIP if shipped["tta"] == "flip" else ""
    ensemble = rows.get("ensemble" + suffix)
    members = [name for name in manifest.source.members if name != "student"]
    best_member = max((rows[name] for name in members if name in rows), key=lambda r: r["test_dice"] or -1)
    precision = "int8" if "int8" in manifest.usable_precisions("cpu") else "fp32"
    deployed_test = manifest.dice(precision, "cpu", split="test")
    result = {
        "machine": cpu_description(), "artifacts": str(args.artifacts), "manifest_sha256": manifest.sha256,
        "timed": deployment.timed, "eager_ensemble_ms": deployment.eager_ensemble_ms,
        "rule": deployment.rule, "dice_tolerance": deployment.dice_tolerance,
        "shipped": {"candidate": deployment.candidate, "reason": deployment.reason, "precision": precision,
                    "test_dice_as_deployed": deployed_test, "front_row": shipped},
        "best_member": {"name": best_member["name"], "test_dice_fp32": best_member["test_dice"]},
        "front": deployment.front,
        "robustness": deployment.robustness,
        "conventions": "per-patient foreground Dice, mean over patients with tumour (first region for BraTS); "
                       "front rows scored from each network's fp32 file as the candidate deploys (weights, TTA, "
                       "component rule); ms/slice at batch 1, median of interleaved rounds' medians",
    }
    targets = {"shipped_test_dice_vs_best_member": _target(
        deployed_test, best_member["test_dice"] - 0.005, ">=") if best_member["test_dice"] is not None else None}
    if ensemble is not None:
        ratio = _ratio(shipped, ensemble)
        targets["shipped_latency_vs_ensemble"] = {**_target(ratio["median"], 0.5, "<="), "rounds": ratio,
                                                  "ensemble": ensemble["name"],
                                                  "ensemble_test_dice": ensemble["test_dice"]}
        student = rows.get("student" + suffix)
        if student is not None:
            s_ratio = _ratio(student, ensemble)
            targets["student_test_dice_vs_ensemble"] = _target(student["test_dice"], ensemble["test_dice"] - 0.005,
                                                               ">=")
            targets["student_latency_vs_ensemble"] = {**_target(s_ratio["median"], 0.4, "<="), "rounds": s_ratio}
    result["targets"] = targets
    emit(result, args.out)


if __name__ == "__main__":
    main()
