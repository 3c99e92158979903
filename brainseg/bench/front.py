"""seg-bench's front: every candidate the export weighed, timed again side by side in this run, as a speed-up
over PyTorch eager FP32 of the three-model ensemble.

The candidates (networks, weights, TTA) are the manifest's; their graphs are rebuilt from the source
run's checkpoints and timed by the export's own code (brainseg.export.front_timing: seg-run's backend
and CPU precision here, batch 1, interleaved rounds). Needs the `train` extra and the source run; a
folder exported before the front has nothing to time. Either is reported as a reason, not a failure.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from brainseg.artifacts.manifest import Manifest
from brainseg.errors import BrainsegError, DataError, require


def time_front(manifest: Manifest, images: np.ndarray, *, rounds: int, seconds: float,
               progress: Callable[[str], None]) -> dict:
    """{"deployed", "timed", "eager_ensemble_ms", "rows"} or {"skipped": reason}; `images` are real-sized
    slices in the graph's input form (the first is timed, all calibrate the int8 graphs)."""
    deployment = manifest.deployment
    if deployment is None or not deployment.front:
        return {"skipped": "the folder was exported before the Dice-latency front (seg-export again to weigh it)"}
    try:
        require("torch", "train")
        if not Path(manifest.source_run).is_dir():
            raise DataError(f"the source run {manifest.source_run} is not on this machine; the front's graphs are "
                            "rebuilt from its checkpoints")
        return _time(manifest, images, rounds=rounds, seconds=seconds, progress=progress)
    except BrainsegError as err:
        return {"skipped": str(err)}


def _time(manifest: Manifest, images: np.ndarray, *, rounds: int, seconds: float,
          progress: Callable[[str], None]) -> dict:
    from brainseg.export.front import Candidate
    from brainseg.export.front_timing import time_run_front, timing_plan
    from brainseg.export.trained_run import load_run

    deployment = manifest.deployment
    run = load_run(manifest.source_run)
    candidates = [Candidate(row["name"], tuple(row["networks"]), tuple(row["weights"]), row["tta"],
                            row["components"], val_dice=row["val_dice"], test_dice=row["test_dice"])
                  for row in deployment.front]
    plan = timing_plan(cpu_int8="int8" in manifest.usable_precisions("cpu"), rounds=rounds, seconds=seconds)
    baseline = time_run_front(run, candidates, plan, images, progress=progress)
    return {"deployed": deployment.candidate, "timed": plan.describe(), "eager_ensemble_ms": baseline["ms"],
            "eager_ensemble_ms_range": baseline["ms_range"], "rows": [c.to_row() for c in candidates]}


def markdown(front: dict | None) -> list[str]:
    """report.md's section on the front."""
    if not front:
        return []
    lines = ["", "## The Dice-latency front, timed in this run", ""]
    if "skipped" in front:
        return lines + [f"Not timed: {front['skipped']}."]
    lines += [f"Timed {front['timed']}. Speed-up: PyTorch eager FP32 of the three-model ensemble "
              f"({front['eager_ensemble_ms']:.2f} ms/slice here) over each candidate, round by round (median and "
              f"range). The folder ships **{front['deployed']}**; Dice are the export's (validation chose, test "
              "reports).", "",
              "| candidate | val Dice | ms/slice (range) | speed-up vs eager ensemble (range) | GFLOP/slice | "
              "test Dice |", "|---|---|---|---|---|---|"]
    for row in sorted(front["rows"], key=lambda r: r["ms_per_slice"]):
        name = f"**{row['name']}**" if row["name"] == front["deployed"] else row["name"]
        low, high = row["ms_range"]
        test = "n/a" if row["test_dice"] is None else f"{row['test_dice']:.4f}"
        lines.append(f"| {name} | {row['val_dice']:.4f} | {row['ms_per_slice']:.2f} ({low:.2f}-{high:.2f}) | "
                     f"{row['speedup_vs_eager_ensemble']:.2f}x ({row['speedup_range'][0]:.2f}-"
                     f"{row['speedup_range'][1]:.2f}) | {row['gflop_per_slice']:.2f} | {test} |")
    return lines
